//! Reads: `find`, `find_together`, and copying `HMGET` replies into the caller's rows.

use super::{Defaults, LOOKUP_FAILURE_LOG_INTERVAL, Lookup, Table, shared_backend, with_batch};
use crate::backend::{self, Batch, Role};
use crate::codec::Keys;
use crate::error::{Error, Result};
use crate::throttle::held_back_note;

/// Where [`Table::find_with_slots`] puts what a fused row stores after the row.
struct SlotsOut<'a> {
    /// One id's slots for ids stored without any; its length is every id's slot width.
    defaults: &'a [u8],
    /// One slot group per requested id.
    out: &'a mut [u8],
}

impl SlotsOut<'_> {
    /// The same buffers, borrowed again for one reply.
    fn reborrow(&mut self) -> SlotsOut<'_> {
        SlotsOut {
            defaults: self.defaults,
            out: &mut *self.out,
        }
    }

    /// Copies the slots stored after id `i`'s row (`stored`, maybe empty), or the defaults
    /// when it is empty; `Err(len)` when `stored` is of another size.
    fn copy(&mut self, i: usize, stored: &[u8]) -> std::result::Result<(), usize> {
        let w = self.defaults.len();
        let src = match stored.len() {
            0 => self.defaults,
            n if n == w => stored,
            n => return Err(n),
        };
        self.out[i * w..(i + 1) * w].copy_from_slice(src);
        Ok(())
    }
}

impl Table {
    /// Looks ids up. `out` receives `keys.len()` rows; missing ids get their default row, and
    /// `exists` (when given) says which ids were found. A Redis failure is an error, never a
    /// silent default row, unless the config sets `redis_lookup_defaults_on_error`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when `out`, the defaults or `exists` do not fit `keys`
    /// ([`ArgumentKind::Shape`](crate::ArgumentKind::Shape)) or an id does not fit an int32 table
    /// ([`ArgumentKind::KeyOutOfRange`](crate::ArgumentKind::KeyOutOfRange)); nothing is sent then.
    ///
    /// [`Error::Connection`] or [`Error::Timeout`] when Redis cannot be reached within the retry
    /// deadline, [`Error::Auth`] when the ACL user may not run the commands, [`Error::Command`]
    /// when Redis refuses one (unless `redis_lookup_defaults_on_error` is set: then transient
    /// failures give the default rows); [`Error::Data`] when a stored row has the wrong length.
    pub fn find<'k>(
        &self,
        keys: impl Into<Keys<'k>>,
        defaults: Defaults<'_>,
        out: &mut [u8],
        mut exists: Option<&mut [bool]>,
    ) -> Result<()> {
        let keys = keys.into();
        let n = keys.len();
        self.check_lookup(keys, defaults, out)?;
        if let Some(e) = exists.as_deref()
            && e.len() != n
        {
            return Err(Error::invalid(
                crate::error::ArgumentKind::Shape,
                format!("exists has {} entries, expected {n} (one per key)", e.len()),
            ));
        }
        if n == 0 {
            return Ok(());
        }
        let result = self.find_inner(keys, defaults, out, exists.as_deref_mut(), None);
        match result {
            Err(e) if self.config.redis_lookup_defaults_on_error && e.is_transient() => {
                // Once per call would flood the log (and the Python bridge) while a server
                // is down: see `throttle.rs`.
                if let Some(held_back) = self.lookup_failures.admit() {
                    // The logger users configure is `tfra_redis.table` (the bridge names
                    // Python loggers after the target), whichever file of the table module
                    // this code lives in.
                    log::warn!(
                        target: "tfra_redis::table",
                        "lookup in {} failed, returning default rows because \
                         redis_lookup_defaults_on_error is set: {e}{}",
                        self.spec.name,
                        held_back_note(held_back, LOOKUP_FAILURE_LOG_INTERVAL)
                    );
                }
                for i in 0..n {
                    self.write_default(defaults, i, out);
                }
                if let Some(e) = exists {
                    e.fill(false);
                }
                Ok(())
            }
            other => other,
        }
    }

    fn write_default(&self, defaults: Defaults<'_>, i: usize, out: &mut [u8]) {
        let rb = self.row_bytes;
        let src = match defaults {
            Defaults::Row(r) => r,
            Defaults::PerKey(r) => &r[i * rb..(i + 1) * rb],
        };
        out[i * rb..(i + 1) * rb].copy_from_slice(src);
    }

    /// The round trips of a lookup: rows into `out`, found flags into `exists`, and with
    /// `slots` (a `redis_fused_row` table) what is stored after each row.
    fn find_inner(
        &self,
        keys: Keys<'_>,
        defaults: Defaults<'_>,
        out: &mut [u8],
        mut exists: Option<&mut [bool]>,
        mut slots: Option<SlotsOut<'_>>,
    ) -> Result<()> {
        let backend = self.backend()?;
        self.by_window(
            keys,
            |batch, b, pos| self.fields_cmd(batch, "HMGET", b, keys, pos),
            |batch, window| {
                // Each reply's rows are copied while the server still answers the next ones.
                backend.run_each(batch, Role::Read, &mut |i, reply| {
                    let (b, pos) = &window[i];
                    self.copy_rows(
                        *b,
                        pos,
                        reply,
                        keys,
                        (defaults, out),
                        exists.as_deref_mut(),
                        slots.as_mut().map(SlotsOut::reborrow),
                    )
                })
            },
        )
    }

    /// Cuts `keys` into windows (see [`Table::plan`] and [`Table::windows`]); per window,
    /// `make` adds the command of each (bucket, positions) to a batch, and `send` runs it.
    fn by_window(
        &self,
        keys: Keys<'_>,
        make: impl Fn(&mut Batch, usize, &[u32]),
        mut send: impl FnMut(&Batch, &[(usize, Vec<u32>)]) -> Result<()>,
    ) -> Result<()> {
        let plan = self.plan(keys);
        with_batch(self.config.redis_client_buffer_keep_bytes, |batch| {
            for window in Self::windows(&plan) {
                batch.clear();
                for (b, pos) in window {
                    make(batch, *b, pos);
                }
                send(batch, window)?;
            }
            Ok(())
        })
    }

    /// Checks a lookup's buffers against this table's row size.
    fn check_lookup(&self, keys: Keys<'_>, defaults: Defaults<'_>, out: &[u8]) -> Result<()> {
        self.check_keys(keys)?;
        self.check_len("out", out.len(), keys.len())?;
        match defaults {
            Defaults::Row(r) => self.check_len("the default row", r.len(), 1),
            Defaults::PerKey(r) => self.check_len("the per-key defaults", r.len(), keys.len()),
        }
    }

    /// Copies the rows of one `HMGET` reply (bucket `b`, the keys at `pos`) into `out`,
    /// defaults for nils.
    ///
    /// A `redis_fused_row` table accepts a stored value of any whole number of rows and
    /// copies its first row; with `slots`, what follows the row goes there (the slot defaults
    /// when nothing follows it, an error when it is not one slot group long).
    #[allow(clippy::too_many_arguments)]
    fn copy_rows(
        &self,
        b: usize,
        pos: &[u32],
        reply: backend::ReplyView<'_>,
        keys: Keys<'_>,
        (defaults, out): (Defaults<'_>, &mut [u8]),
        mut exists: Option<&mut [bool]>,
        mut slots: Option<SlotsOut<'_>>,
    ) -> Result<()> {
        let rb = self.row_bytes;
        let fused = self.config.redis_fused_row;
        let wrong_count = || self.reply_error(b, "HMGET answered with the wrong count");
        let copied = reply.for_each_bulk(|k, item| {
            let i = *pos.get(k).ok_or_else(wrong_count)? as usize;
            let found = match item {
                Some(bytes)
                    if bytes.len() == rb
                        || (fused && bytes.len() > rb && bytes.len().is_multiple_of(rb)) =>
                {
                    out[i * rb..(i + 1) * rb].copy_from_slice(&bytes[..rb]);
                    if let Some(s) = slots.as_mut() {
                        s.copy(i, &bytes[rb..])
                            .map_err(|got| self.slots_len_error(b, &keys.label(i), got))?;
                    }
                    true
                }
                Some(bytes) => return Err(self.row_len_error(b, &keys.label(i), bytes.len())),
                None => {
                    self.write_default(defaults, i, out);
                    if let Some(s) = slots.as_mut() {
                        s.copy(i, &[]).expect("no stored slots always fit");
                    }
                    false
                }
            };
            if let Some(e) = exists.as_deref_mut() {
                e[i] = found;
            }
            Ok(())
        });
        match copied {
            Ok(Ok(n)) if n == pos.len() => Ok(()),
            Ok(Ok(_)) => Err(wrong_count()),
            Ok(Err(e)) => Err(e),
            Err(backend::Unexpected(what)) => {
                Err(self.reply_error(b, &format!("HMGET reply: {what}")))
            }
        }
    }

    /// Looks ids up in a `redis_fused_row` table with their optimizer slots: `out` receives
    /// the rows as [`Table::find`] gives them, `slots` per id what is stored after its row,
    /// which must be one `slot_defaults` long (`slot_defaults.len()` is a whole number of
    /// rows). Ids that are missing, or stored without slots (never trained by this
    /// optimizer), get `slot_defaults`. One `HMGET` field per id reads both.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when the table does not set `redis_fused_row`
    /// ([`ArgumentKind::TableSet`](crate::ArgumentKind::TableSet)) or a buffer does not fit
    /// `keys` ([`ArgumentKind::Shape`](crate::ArgumentKind::Shape)); [`Error::Data`] when a
    /// stored value holds slots of another size (another optimizer's) or is not a whole number
    /// of rows; otherwise as [`Table::find`] (without its `redis_lookup_defaults_on_error`
    /// fallback: an optimizer must not train on default slots).
    pub fn find_with_slots<'k>(
        &self,
        keys: impl Into<Keys<'k>>,
        defaults: Defaults<'_>,
        out: &mut [u8],
        slot_defaults: &[u8],
        slots: &mut [u8],
    ) -> Result<()> {
        let keys = keys.into();
        self.check_lookup(keys, defaults, out)?;
        let width = self.slots_width(slot_defaults.len(), 1)?;
        if slots.len() != keys.len() * width {
            return Err(Error::invalid(
                crate::error::ArgumentKind::Shape,
                format!(
                    "slots has {} bytes, expected {} keys x {width} bytes of slot defaults",
                    slots.len(),
                    keys.len(),
                ),
            ));
        }
        if keys.is_empty() {
            return Ok(());
        }
        let slots = SlotsOut {
            defaults: slot_defaults,
            out: slots,
        };
        self.find_inner(keys, defaults, out, None, Some(slots))
    }

    /// Looks several tables up with one pipeline, as [`Table::find`] does one (without its
    /// `exists` output or its `redis_lookup_defaults_on_error` fallback). An optimizer step
    /// reads a table and its slot tables for the same ids: one pipeline on one connection
    /// keeps the server as busy as three, without three threads competing with it for CPU.
    /// Tables on different backends are looked up one after another.
    ///
    /// # Errors
    ///
    /// As [`Table::find`], for the first lookup that fails; the outputs of the others are then
    /// unspecified.
    pub fn find_together(lookups: &mut [Lookup<'_>]) -> Result<()> {
        for l in lookups.iter() {
            l.table.check_lookup(l.keys, l.defaults, l.out)?;
        }
        let Some(backend) = shared_backend(lookups.iter().map(|l| l.table))? else {
            for l in lookups.iter_mut() {
                l.table.find_inner(l.keys, l.defaults, l.out, None, None)?;
            }
            return Ok(());
        };
        // (lookup, bucket, positions) of every command, in batch order.
        let mut commands: Vec<(usize, usize, Vec<u32>)> = Vec::new();
        let keep = lookups[0].table.config.redis_client_buffer_keep_bytes;
        with_batch(keep, |batch| {
            for (t, l) in lookups.iter().enumerate() {
                for (b, pos) in l.table.plan(l.keys) {
                    l.table.fields_cmd(batch, "HMGET", b, l.keys, &pos);
                    commands.push((t, b, pos));
                }
            }
            backend.run_each(batch, Role::Read, &mut |i, reply| {
                let (t, b, pos) = &commands[i];
                let l = &mut lookups[*t];
                l.table.copy_rows(
                    *b,
                    pos,
                    reply,
                    l.keys,
                    (l.defaults, &mut *l.out),
                    None,
                    None,
                )
            })
        })
    }
}
