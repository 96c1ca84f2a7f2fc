//! Writes: `insert`, `insert_together`, `remove`, `accum`, and how a write is encoded and sent
//! window by window.

use super::{Table, WINDOW_KEYS, shared_backend, with_batch};
use crate::backend::{self, Batch, Commands as _, Retry, Role};
use crate::codec::{Keys, ValueDtype};
use crate::error::{Error, Result};

/// The Lua body of `accum`: TFRA's BP-v2 semantics without the HMACCUM server module.
/// Per field: present and flagged -> element-wise add; present and not flagged -> unchanged;
/// absent and not flagged -> set; absent and flagged (removed meanwhile) -> nothing.
const ACCUM_LUA: &str = include_str!("../accum.lua");

/// `HSETNX` for many fields in one round trip: KEYS[1] = bucket, then field, value pairs.
const SETNX_LUA: &str =
    "for i = 1, #ARGV, 2 do redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end return 0";

/// `HSET` of rows that keeps what a `redis_fused_row` table stores after each row (the id's
/// optimizer slots): KEYS[1] = bucket, ARGV[1] = row bytes, then field, row pairs. It costs an
/// `HGET` per field on the server and sends the script with every command (as accum does), so
/// writing rows alone to such a table costs more than a plain `HSET`; an optimizer step writes
/// whole values with `insert_with_slots` instead.
const KEEP_SLOTS_LUA: &str = "local n = tonumber(ARGV[1]) \
for i = 2, #ARGV, 2 do \
  local v = ARGV[i + 1] \
  local old = redis.call('HGET', KEYS[1], ARGV[i]) \
  if old and #old > n then v = v .. string.sub(old, n + 1) end \
  redis.call('HSET', KEYS[1], ARGV[i], v) \
end return 0";

/// Replaces what a `redis_fused_row` table stores after each row (the id's optimizer slots)
/// and keeps the row as the server holds it: KEYS[1] = bucket, ARGV[1] = row bytes, then
/// field, tail pairs. An id without a stored value is left alone (a slot conversion never
/// makes up a row), and an empty tail strips the slots. On the server, so a row written
/// meanwhile is never replaced by an older copy.
const SET_TAILS_LUA: &str = "local n = tonumber(ARGV[1]) \
for i = 2, #ARGV, 2 do \
  local old = redis.call('HGET', KEYS[1], ARGV[i]) \
  if old and (#old > n or #ARGV[i + 1] > 0) then \
    redis.call('HSET', KEYS[1], ARGV[i], string.sub(old, 1, n) .. ARGV[i + 1]) \
  end \
end return 0";

/// One window of a write, encoded where the backend sends it: command `i` writes the keys at
/// `window[i].1` to bucket `window[i].0`, as `make` encodes it.
struct WindowWrites<'w, F> {
    table: &'w Table,
    /// Every command's name (upper case), as `make` writes it.
    name: &'static str,
    window: &'w [(usize, Vec<u32>)],
    make: &'w F,
}

impl<F: Fn(&mut Batch, usize, &[u32]) + Sync> backend::Commands for WindowWrites<'_, F> {
    fn len(&self) -> usize {
        self.window.len()
    }

    fn name_of(&self, _: usize) -> &str {
        self.name
    }

    fn key_of(&self, i: usize) -> &[u8] {
        self.table.buckets[self.window[i].0].as_bytes()
    }

    fn encoded(&self, _: usize) -> Option<&[u8]> {
        None
    }

    fn encode(&self, i: usize, out: &mut Batch) {
        let (b, pos) = &self.window[i];
        (self.make)(out, *b, pos);
        debug_assert_eq!(out.name_of(out.len() - 1), self.name);
        debug_assert_eq!(out.key_of(out.len() - 1), self.key_of(i));
    }
}

/// The commands of [`Table::insert_together`]: command `i` writes the keys at `plan[i].2` of
/// write `plan[i].0` to that table's bucket `plan[i].1`.
struct TogetherWrites<'w, 'k> {
    writes: &'w [(&'w Table, Keys<'k>, &'w [u8])],
    plan: &'w [(usize, usize, &'w [u32])],
}

impl backend::Commands for TogetherWrites<'_, '_> {
    fn len(&self) -> usize {
        self.plan.len()
    }

    fn name_of(&self, i: usize) -> &str {
        let table = self.writes[self.plan[i].0].0;
        table.rows_cmd_name(false, table.row_bytes)
    }

    fn key_of(&self, i: usize) -> &[u8] {
        let (w, b, _) = self.plan[i];
        self.writes[w].0.buckets[b].as_bytes()
    }

    fn encoded(&self, _: usize) -> Option<&[u8]> {
        None
    }

    fn encode(&self, i: usize, out: &mut Batch) {
        let (w, b, pos) = self.plan[i];
        let (table, keys, rows) = self.writes[w];
        table.rows_cmd(out, false, b, keys, (rows, table.row_bytes), pos);
    }
}

impl Table {
    /// Upserts rows into several tables with one pipeline (see [`Table::find_together`]);
    /// each entry is `(table, keys, rows)`.
    ///
    /// # Errors
    ///
    /// As [`Table::insert`]; when an error is returned, some of the writes may have been applied.
    pub fn insert_together(writes: &[(&Table, Keys<'_>, &[u8])]) -> Result<()> {
        for (table, keys, rows) in writes {
            table.check_keys(*keys)?;
            table.check_len("rows", rows.len(), keys.len())?;
        }
        let Some(backend) = shared_backend(writes.iter().map(|(t, ..)| *t))? else {
            for (table, keys, rows) in writes {
                table.insert(*keys, rows)?;
            }
            return Ok(());
        };
        // One plan over every table, in table order, sent as one pipeline (one round trip): the
        // backend encodes the commands where it sends them (a cluster: each node's share in
        // that node's thread) instead of this thread encoding them all first.
        let plans: Vec<Vec<(usize, Vec<u32>)>> =
            writes.iter().map(|(t, keys, _)| t.plan(*keys)).collect();
        let plan: Vec<(usize, usize, &[u32])> = plans
            .iter()
            .enumerate()
            .flat_map(|(w, p)| p.iter().map(move |(b, pos)| (w, *b, pos.as_slice())))
            .collect();
        let cmds = TogetherWrites {
            writes,
            plan: &plan,
        };
        let delays: Option<Vec<_>> = writes.iter().map(|(t, ..)| t.write_behind()).collect();
        if let Some(delay) = delays.and_then(|d| d.into_iter().min())
            && writes.iter().map(|(_, k, _)| k.len()).sum::<usize>() <= WINDOW_KEYS
        {
            let mut batch = Batch::new();
            for i in 0..plan.len() {
                cmds.encode(i, &mut batch);
            }
            return backend.defer(batch, delay);
        }
        let keep = writes[0].0.config.redis_client_buffer_keep_bytes;
        with_batch(keep, |scratch| {
            let cmds = TogetherWrites {
                writes,
                plan: &plan,
            };
            backend
                .run_deferred(&cmds, scratch, Role::Write, Retry::Idempotent)
                .map(|_| ())
        })
    }

    /// Writes whole values of a `redis_fused_row` table: per id its row followed by its
    /// optimizer slots (`slots` holds `keys.len()` equal-sized groups of whole rows, possibly
    /// empty), one `HSET` field per id. What was stored after a row before is replaced: this
    /// is the optimizer's write, which holds every slot.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when the table does not set `redis_fused_row`
    /// ([`ArgumentKind::TableSet`](crate::ArgumentKind::TableSet)) or `rows`, `slots` do not
    /// fit `keys` ([`ArgumentKind::Shape`](crate::ArgumentKind::Shape)); otherwise as
    /// [`Table::insert`].
    pub fn insert_with_slots<'k>(
        &self,
        keys: impl Into<Keys<'k>>,
        rows: &[u8],
        slots: &[u8],
    ) -> Result<()> {
        let keys = keys.into();
        self.check_keys(keys)?;
        self.check_len("rows", rows.len(), keys.len())?;
        let width = self.slots_width(slots.len(), keys.len())?;
        if keys.is_empty() {
            return Ok(());
        }
        let rb = self.row_bytes;
        self.write_or_defer(keys, "HSET", |batch, b, pos| {
            batch.command("HSET", 1 + 2 * pos.len());
            batch.key(self.buckets[b].as_bytes());
            for &i in pos {
                let i = i as usize;
                batch.arg(keys.field(i, self.spec.key_dtype).as_ref());
                batch.arg_parts(&[
                    &rows[i * rb..(i + 1) * rb],
                    &slots[i * width..(i + 1) * width],
                ]);
            }
        })
    }

    /// On a `redis_fused_row` table, replaces what each stored id keeps after its row with
    /// its tail (`width` bytes per id, a whole number of rows; 0 strips the slots), keeping
    /// the row; ids without a stored value are skipped. The slot converter's write and delete.
    pub(crate) fn set_row_tails<'k>(
        &self,
        keys: impl Into<Keys<'k>>,
        tails: &[u8],
        width: usize,
    ) -> Result<()> {
        let keys = keys.into();
        self.check_keys(keys)?;
        if !self.config.redis_fused_row
            || !width.is_multiple_of(self.row_bytes)
            || tails.len() != keys.len() * width
        {
            return Err(Error::invalid(
                crate::error::ArgumentKind::Shape,
                format!(
                    "row tails of {} bytes for {} keys of {width} bytes on table {:?} \
                     (redis_fused_row {})",
                    tails.len(),
                    keys.len(),
                    self.spec.name,
                    self.config.redis_fused_row
                ),
            ));
        }
        if keys.is_empty() {
            return Ok(());
        }
        self.write_windows(keys, Retry::Idempotent, "EVAL", |batch, b, pos| {
            batch.command("EVAL", 4 + 2 * pos.len());
            batch.arg(SET_TAILS_LUA.as_bytes());
            batch.arg(b"1");
            batch.key(self.buckets[b].as_bytes());
            batch.arg(self.row_bytes.to_string().as_bytes());
            self.push_values(batch, keys, tails, width, pos);
        })
    }

    /// Upserts rows (raw little-endian bytes, `keys.len()` rows). Within one batch the last
    /// row of a repeated id wins.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when `values` does not hold `keys.len()` rows
    /// ([`ArgumentKind::Shape`](crate::ArgumentKind::Shape)) or an id does not fit an int32 table
    /// ([`ArgumentKind::KeyOutOfRange`](crate::ArgumentKind::KeyOutOfRange)); nothing is sent then.
    ///
    /// [`Error::Connection`] or [`Error::Timeout`] when Redis cannot be reached within the retry
    /// deadline, [`Error::Auth`] when the ACL user may not run the commands, [`Error::Command`]
    /// when Redis refuses one; after an error some rows may have been written (writes are
    /// idempotent: repeat the call).
    pub fn insert<'k>(&self, keys: impl Into<Keys<'k>>, values: &[u8]) -> Result<()> {
        self.write_rows(keys.into(), values, self.row_bytes, false)
    }

    /// Writes stored values of `width` bytes each (a row, or on a `redis_fused_row` table a
    /// row and its slots) only for ids that are not stored yet (`HSETNX` semantics). Moving
    /// data between layouts uses this, so a row written to the new layout meanwhile is never
    /// overwritten by an older copy.
    pub(crate) fn insert_missing<'k>(
        &self,
        keys: impl Into<Keys<'k>>,
        values: &[u8],
        width: usize,
    ) -> Result<()> {
        self.write_rows(keys.into(), values, width, true)
    }

    /// Upserts stored values of `width` bytes each, as [`Table::scan_bucket`] hands them
    /// over: copies between layouts keep a fused row's slots.
    pub(crate) fn insert_values<'k>(
        &self,
        keys: impl Into<Keys<'k>>,
        values: &[u8],
        width: usize,
    ) -> Result<()> {
        self.write_rows(keys.into(), values, width, false)
    }

    fn write_rows(
        &self,
        keys: Keys<'_>,
        values: &[u8],
        width: usize,
        only_missing: bool,
    ) -> Result<()> {
        self.check_keys(keys)?;
        let rb = self.row_bytes;
        if width == rb {
            self.check_len("values", values.len(), keys.len())?;
        } else if !(self.config.redis_fused_row && width.is_multiple_of(rb))
            || values.len() != keys.len() * width
        {
            // Wider values are whole fused rows (row and slots) copied between layouts.
            return Err(Error::invalid(
                crate::error::ArgumentKind::Shape,
                format!(
                    "values has {} bytes, expected {} keys x {width} bytes (rows of {rb} bytes)",
                    values.len(),
                    keys.len()
                ),
            ));
        }
        if keys.is_empty() {
            return Ok(());
        }
        let name = self.rows_cmd_name(only_missing, width);
        self.write_windows(keys, Retry::Idempotent, name, |batch, b, pos| {
            self.rows_cmd(batch, only_missing, b, keys, (values, width), pos)
        })
    }

    /// The name of the command [`Table::rows_cmd`] writes.
    fn rows_cmd_name(&self, only_missing: bool, width: usize) -> &'static str {
        if only_missing || self.keeps_slots(width) {
            "EVAL"
        } else {
            "HSET"
        }
    }

    /// Whether writing values `width` bytes wide must keep the slots stored after each row
    /// (`redis_fused_row` and rows alone).
    fn keeps_slots(&self, width: usize) -> bool {
        self.config.redis_fused_row && width == self.row_bytes
    }

    /// Adds the command writing the values (`width` bytes each) of the keys at `pos` to
    /// bucket `b`: `HSET`, the `HSETNX` script when `only_missing`, the slot-keeping script
    /// when rows alone go to a `redis_fused_row` table.
    fn rows_cmd(
        &self,
        batch: &mut Batch,
        only_missing: bool,
        b: usize,
        keys: Keys<'_>,
        (rows, width): (&[u8], usize),
        pos: &[u32],
    ) {
        let bucket = self.buckets[b].as_bytes();
        if only_missing {
            batch.command("EVAL", 3 + 2 * pos.len());
            batch.arg(SETNX_LUA.as_bytes());
            batch.arg(b"1");
            batch.key(bucket);
        } else if self.keeps_slots(width) {
            batch.command("EVAL", 4 + 2 * pos.len());
            batch.arg(KEEP_SLOTS_LUA.as_bytes());
            batch.arg(b"1");
            batch.key(bucket);
            batch.arg(self.row_bytes.to_string().as_bytes());
        } else {
            batch.command("HSET", 1 + 2 * pos.len());
            batch.key(bucket);
        }
        self.push_values(batch, keys, rows, width, pos);
    }

    /// Runs one write command per (bucket, chunk of keys) built by `make`, window by window;
    /// every command is called `name`. The backend encodes the commands where it sends them
    /// (a cluster: each node's in that node's thread; see [`backend::Commands`]).
    fn write_windows(
        &self,
        keys: Keys<'_>,
        retry: Retry,
        name: &'static str,
        make: impl Fn(&mut Batch, usize, &[u32]) + Sync,
    ) -> Result<()> {
        let backend = self.backend()?;
        let plan = self.plan(keys);
        with_batch(self.config.redis_client_buffer_keep_bytes, |scratch| {
            for window in Self::windows(&plan) {
                // A row, its field and RESP framing per key (more for fused rows: the buffer
                // grows then).
                let keys_here: usize = window.iter().map(|(_, pos)| pos.len()).sum();
                scratch.reserve_for(keys_here * (self.row_bytes + 48));
                let cmds = WindowWrites {
                    table: self,
                    name,
                    window,
                    make: &make,
                };
                backend.run_deferred(&cmds, scratch, Role::Write, retry)?;
            }
            Ok(())
        })
    }

    /// With `redis_write_behind_ms`, how long this table's step writes may wait in the client.
    fn write_behind(&self) -> Option<std::time::Duration> {
        (self.config.redis_write_behind_ms > 0)
            .then(|| std::time::Duration::from_millis(self.config.redis_write_behind_ms))
    }

    /// [`Table::write_windows`] of idempotent commands for an optimizer step's write: with
    /// `redis_write_behind_ms`, a write of at most one window of ids is queued for the next
    /// command on its buckets to carry (see `backend/write_behind.rs`); bigger writes are sent
    /// now, since one round trip less does not matter next to theirs.
    fn write_or_defer(
        &self,
        keys: Keys<'_>,
        name: &'static str,
        make: impl Fn(&mut Batch, usize, &[u32]) + Sync,
    ) -> Result<()> {
        if let Some(delay) = self.write_behind()
            && keys.len() <= WINDOW_KEYS
        {
            let mut batch = Batch::new();
            for (b, pos) in self.plan(keys) {
                make(&mut batch, b, &pos);
            }
            return self.backend()?.defer(batch, delay);
        }
        self.write_windows(keys, Retry::Idempotent, name, make)
    }

    /// Deletes ids from one given runtime bucket, wherever the layout would put them.
    pub(crate) fn remove_from_bucket<'k>(
        &self,
        bucket: usize,
        keys: impl Into<Keys<'k>>,
    ) -> Result<()> {
        let keys = keys.into();
        self.check_keys(keys)?;
        let backend = self.backend()?;
        let pos: Vec<u32> = (0..keys.len() as u32).collect();
        let mut batch = Batch::new();
        for chunk in pos.chunks(self.chunk) {
            self.fields_cmd(&mut batch, "HDEL", bucket, keys, chunk);
        }
        backend
            .run_batch(&batch, Role::Write, Retry::Idempotent)
            .map(|_| ())
    }

    /// Imports pairs: an upsert, as TFRA's import is (the table is not cleared first).
    ///
    /// # Errors
    ///
    /// As [`Table::insert`].
    pub fn import<'k>(&self, keys: impl Into<Keys<'k>>, values: &[u8]) -> Result<()> {
        self.insert(keys, values)
    }

    /// Removes ids; missing ones are ignored.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] ([`ArgumentKind::KeyOutOfRange`](crate::ArgumentKind::KeyOutOfRange)) for an id an int32 table cannot
    /// hold, and [`Error::Connection`] or [`Error::Timeout`] when Redis cannot be reached within
    /// the retry deadline, [`Error::Auth`] when the ACL user may not run the commands,
    /// [`Error::Command`] when Redis refuses one.
    pub fn remove<'k>(&self, keys: impl Into<Keys<'k>>) -> Result<()> {
        let keys = keys.into();
        self.check_keys(keys)?;
        if keys.is_empty() {
            return Ok(());
        }
        self.write_windows(keys, Retry::Idempotent, "HDEL", |batch, b, pos| {
            self.fields_cmd(batch, "HDEL", b, keys, pos)
        })
    }

    /// Adds deltas to present rows and sets absent ones, per TFRA's BP-v2 rule (see
    /// `ACCUM_LUA`); atomic per command on the server. Not retried when the outcome of a
    /// failed attempt is unknown, since applying a delta twice would be wrong.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when `deltas` or `exists` do not fit `keys`
    /// ([`ArgumentKind::Shape`](crate::ArgumentKind::Shape)), for a value dtype without accum ([`ArgumentKind::Dtype`](crate::ArgumentKind::Dtype)) or an
    /// id an int32 table cannot hold ([`ArgumentKind::KeyOutOfRange`](crate::ArgumentKind::KeyOutOfRange)).
    ///
    /// [`Error::Connection`] or [`Error::Timeout`] when Redis cannot be reached within the retry
    /// deadline, [`Error::Auth`] when the ACL user may not run the commands, [`Error::Command`]
    /// when Redis refuses one. After an error whose outcome is unknown, some deltas may have been
    /// applied: do not blindly repeat the call.
    pub fn accum<'k>(
        &self,
        keys: impl Into<Keys<'k>>,
        deltas: &[u8],
        exists: &[bool],
    ) -> Result<()> {
        let keys = keys.into();
        self.check_keys(keys)?;
        self.check_len("deltas", deltas.len(), keys.len())?;
        if exists.len() != keys.len() {
            return Err(Error::invalid(
                crate::error::ArgumentKind::Shape,
                format!(
                    "exists has {} entries, expected {} (one per key)",
                    exists.len(),
                    keys.len()
                ),
            ));
        }
        if matches!(self.spec.value_dtype, ValueDtype::F16 | ValueDtype::BF16) {
            return Err(Error::invalid(
                crate::error::ArgumentKind::Dtype,
                format!(
                    "accum does not support {} values (TFRA's HMACCUM does not either)",
                    self.spec.value_dtype.numpy_name()
                ),
            ));
        }
        if keys.is_empty() {
            return Ok(());
        }
        self.write_windows(keys, Retry::AtMostOnce, "EVAL", |batch, b, pos| {
            let flags: Vec<u8> = pos.iter().map(|&i| exists[i as usize] as u8).collect();
            batch.command("EVAL", 5 + 2 * pos.len());
            batch.arg(ACCUM_LUA.as_bytes());
            batch.arg(b"1");
            batch.key(self.buckets[b].as_bytes());
            if self.config.redis_fused_row {
                batch.arg(format!("{}+slots", self.spec.value_dtype.tf_name()).as_bytes());
            } else {
                batch.arg(self.spec.value_dtype.tf_name().as_bytes());
            }
            batch.arg(&flags);
            self.push_pairs(batch, keys, deltas, pos);
        })
    }
}
