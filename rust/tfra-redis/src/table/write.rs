//! Writes: `insert`, `insert_together`, `remove`, `accum`, and how a write is encoded and sent
//! window by window.

use super::{Table, shared_backend, with_batch};
use crate::backend::{self, Batch, Retry, Role};
use crate::codec::{Keys, ValueDtype};
use crate::error::{Error, Result};

/// The Lua body of `accum`: TFRA's BP-v2 semantics without the HMACCUM server module.
/// Per field: present and flagged -> element-wise add; present and not flagged -> unchanged;
/// absent and not flagged -> set; absent and flagged (removed meanwhile) -> nothing.
const ACCUM_LUA: &str = include_str!("../accum.lua");

/// `HSETNX` for many fields in one round trip: KEYS[1] = bucket, then field, value pairs.
const SETNX_LUA: &str =
    "for i = 1, #ARGV, 2 do redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end return 0";
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

    fn name_of(&self, _: usize) -> &str {
        "HSET"
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
        table.rows_cmd(out, false, b, keys, rows, pos);
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
        self.write_rows(keys.into(), values, false)
    }

    /// Writes rows only for ids that are not stored yet (`HSETNX` semantics). Moving data
    /// between layouts uses this, so a row written to the new layout meanwhile is never
    /// overwritten by an older copy.
    pub(crate) fn insert_missing<'k>(
        &self,
        keys: impl Into<Keys<'k>>,
        values: &[u8],
    ) -> Result<()> {
        self.write_rows(keys.into(), values, true)
    }

    fn write_rows(&self, keys: Keys<'_>, values: &[u8], only_missing: bool) -> Result<()> {
        self.check_keys(keys)?;
        self.check_len("values", values.len(), keys.len())?;
        if keys.is_empty() {
            return Ok(());
        }
        let name = if only_missing { "EVAL" } else { "HSET" };
        self.write_windows(keys, Retry::Idempotent, name, |batch, b, pos| {
            self.rows_cmd(batch, only_missing, b, keys, values, pos)
        })
    }

    /// Adds the command writing the rows of the keys at `pos` to bucket `b`: `HSET`, or the
    /// `HSETNX` script when `only_missing`.
    fn rows_cmd(
        &self,
        batch: &mut Batch,
        only_missing: bool,
        b: usize,
        keys: Keys<'_>,
        rows: &[u8],
        pos: &[u32],
    ) {
        let bucket = self.buckets[b].as_bytes();
        if only_missing {
            batch.command("EVAL", 3 + 2 * pos.len());
            batch.arg(SETNX_LUA.as_bytes());
            batch.arg(b"1");
            batch.key(bucket);
        } else {
            batch.command("HSET", 1 + 2 * pos.len());
            batch.key(bucket);
        }
        self.push_pairs(batch, keys, rows, pos);
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
            batch.arg(self.spec.value_dtype.tf_name().as_bytes());
            batch.arg(&flags);
            self.push_pairs(batch, keys, deltas, pos);
        })
    }
}
