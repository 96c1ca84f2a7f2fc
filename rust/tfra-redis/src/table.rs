//! The embedding table: find, insert, remove, accum, size, clear, export and import over the
//! bucket hashes TFRA lays out. It knows embeddings and nothing about which Redis mode is used.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use redis::{Cmd, Value};

use crate::backend::{self, Backend, Batch, Retry, Role};
use crate::codec::{
    Dim, Element, KeyBuf, KeyDtype, Keys, ValueDtype, elements_as_bytes_mut, elements_to_le,
    le_to_native_in_place,
};
use crate::config::{ConnectionMode, RedisConfig};
use crate::error::{Error, Result};
use crate::layout::{
    BucketFn, BucketKey, HashTag, KeyPrefix, bucket_keys, bucket_of, bucket_of_string,
    embedding_name, hypodispersion_tags, topology_tags,
};
use crate::throttle::{Throttle, held_back_note};

/// What a table holds: its name and the shape of its keys and rows.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TableSpec {
    /// The table name; the Redis name is the part before `_mht_` (TFRA's rule).
    pub name: String,
    /// int64, int32 or string ids.
    pub key_dtype: KeyDtype,
    /// The element type of the rows.
    pub value_dtype: ValueDtype,
    /// Elements per row.
    pub dim: Dim,
}

impl TableSpec {
    /// A table description.
    pub fn new(
        name: impl Into<String>,
        key_dtype: KeyDtype,
        value_dtype: ValueDtype,
        dim: Dim,
    ) -> Self {
        TableSpec {
            name: name.into(),
            key_dtype,
            value_dtype,
            dim,
        }
    }
}

/// One table's part of [`Table::find_together`].
pub struct Lookup<'a> {
    /// The table.
    pub table: &'a Table,
    /// The ids to read.
    pub keys: Keys<'a>,
    /// Rows for ids that are not stored.
    pub defaults: Defaults<'a>,
    /// `keys.len()` rows.
    pub out: &'a mut [u8],
}

/// Rows to use for ids that are not in Redis.
///
/// `T` is the element type: `u8` (the default) for the byte methods ([`Table::find`],
/// [`Lookup`]), where rows are raw little-endian bytes, or the table's [`Element`] type for
/// [`Table::find_rows`].
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Defaults<'a, T = u8> {
    /// One row for every missing id.
    Row(&'a [T]),
    /// One row per requested id (TFRA's "full default", e.g. from a random initializer), all
    /// `keys.len()` rows back to back.
    PerKey(&'a [T]),
}

/// Keys per pipeline round trip. Large enough that the round trip is paid rarely, small enough
/// that replies for one window stay a modest multiple of the output buffer.
const WINDOW_KEYS: usize = 1 << 16;

/// At most one "lookup served defaults" warning per table in this time.
const LOOKUP_FAILURE_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Fields per `HSCAN` page when exporting.
const SCAN_COUNT: usize = 1024;

/// The Lua body of `accum`: TFRA's BP-v2 semantics without the HMACCUM server module.
/// Per field: present and flagged -> element-wise add; present and not flagged -> unchanged;
/// absent and not flagged -> set; absent and flagged (removed meanwhile) -> nothing.
const ACCUM_LUA: &str = include_str!("accum.lua");

/// `HSETNX` for many fields in one round trip: KEYS[1] = bucket, then field, value pairs.
const SETNX_LUA: &str =
    "for i = 1, #ARGV, 2 do redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end return 0";

thread_local! {
    /// The command buffer of this thread's last call, reused by its next one: a fresh buffer
    /// of tens of MB per insert paid a page fault for every 4 KB of rows.
    static SPARE_BATCH: RefCell<Batch> = RefCell::new(Batch::new());
}

/// Runs `f` with this thread's spare batch (or a new one when it is in use further up the
/// stack). A buffer that grew beyond `keep` bytes (`redis_client_buffer_keep_bytes`) is freed
/// afterwards: every thread that ever sent a big insert kept tens of MB otherwise.
fn with_batch<T>(keep: u64, f: impl FnOnce(&mut Batch) -> T) -> T {
    let mut batch = SPARE_BATCH
        .with(|s| s.try_borrow_mut().map(|mut b| std::mem::take(&mut *b)))
        .unwrap_or_default();
    let out = f(&mut batch);
    batch.clear();
    if batch.capacity() as u64 <= keep {
        SPARE_BATCH.with(|s| {
            if let Ok(mut spare) = s.try_borrow_mut() {
                *spare = batch;
            }
        });
    }
    out
}

/// The backend all `tables` share, or `None` when they are on different ones (or there are
/// none).
fn shared_backend<'t>(
    mut tables: impl Iterator<Item = &'t Table>,
) -> Result<Option<Arc<dyn Backend>>> {
    let Some(first) = tables.next() else {
        return Ok(None);
    };
    let backend = first.backend()?;
    for t in tables {
        if !Arc::ptr_eq(&t.backend()?, &backend) {
            return Ok(None);
        }
    }
    Ok(Some(backend))
}

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

/// An open table. Open one with [`crate::TableBuilder`].
///
/// # Threads and blocking
///
/// `Table` is `Send + Sync`: share one between threads (in an `Arc`, say) rather than opening
/// it once per thread. Calls from several threads run at the same time, each on its own pooled
/// connection (`redis_conn_pool_size` per pool; all tables of a process with the same
/// connection settings share the pools), and wait for a free one for at most
/// `redis_wait_timeout`.
///
/// Every method is blocking: it returns when Redis has answered, or when the socket timeout
/// and retry deadline have run out (see [`crate::Error::is_transient`]); nothing runs in the
/// background. From async code, call it on a blocking thread (e.g. tokio's `spawn_blocking`).
/// A table used in a `fork()`ed child reconnects on its first call there instead of sharing
/// the parent's sockets.
pub struct Table {
    spec: TableSpec,
    config: RedisConfig,
    connection: Mutex<(u32, Arc<dyn Backend>)>,
    prefix: KeyPrefix,
    buckets: Vec<BucketKey>,
    bucket_fn: BucketFn,
    /// Buckets that hold data: all of them in cluster mode, bucket 0 alone otherwise (TFRA's
    /// standalone and sentinel modes only ever write bucket 0, whatever `storage_slice` is).
    data_buckets: u32,
    row_bytes: usize,
    chunk: usize,
    /// Rate limit of the "lookup served defaults" warning, per table.
    lookup_failures: Throttle,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("spec", &self.spec)
            .field("buckets", &self.bucket_names())
            .finish()
    }
}

impl Table {
    /// Connects (or reuses a connection for the same config) and works out the bucket keys.
    pub(crate) fn open(config: &RedisConfig, spec: TableSpec) -> Result<Table> {
        // A config built or changed in code never went through the parser's checks, and the
        // layout code relies on them (a bucket count past the slot table panicked).
        config.validate()?;
        let backend = backend::connect(config)?;
        let slices = config.storage_slice as usize;
        let tags = layout_tags(
            config,
            backend.as_ref(),
            slices,
            &config.redis_hash_tags_runtime,
            "redis_hash_tags_runtime",
        )?;
        let prefix = KeyPrefix::new(
            &config.model_tag_runtime,
            embedding_name(&spec.name),
            config.using_md5_prefix_name,
        );
        let buckets = bucket_keys(&prefix, &tags);
        let data_buckets = match backend.mode() {
            ConnectionMode::Cluster => buckets.len() as u32,
            _ => 1,
        };
        let row_bytes = spec.value_dtype.width() * spec.dim.get();
        Ok(Table {
            row_bytes,
            chunk: config.keys_sending_size.max(1),
            lookup_failures: Throttle::new(LOOKUP_FAILURE_LOG_INTERVAL),
            bucket_fn: BucketFn::from_flag(config.using_hash_storage_slice),
            data_buckets,
            prefix,
            buckets,
            connection: Mutex::new((std::process::id(), backend)),
            config: config.clone(),
            spec,
        })
    }

    /// The table's description.
    pub fn spec(&self) -> &TableSpec {
        &self.spec
    }

    /// The config the table was opened with.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// The key prefix (`model_tag:name`, or TFRA's 16-byte digest).
    pub fn prefix(&self) -> &KeyPrefix {
        &self.prefix
    }

    /// The runtime bucket keys, in bucket order.
    pub fn buckets(&self) -> &[BucketKey] {
        &self.buckets
    }

    /// Printable bucket names.
    pub fn bucket_names(&self) -> Vec<String> {
        self.buckets.iter().map(|b| b.to_string()).collect()
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// The backend, reconnected when this process is a fork of the one that opened the table:
    /// sockets inherited across fork() are shared with the parent and must not be used.
    pub(crate) fn backend(&self) -> Result<Arc<dyn Backend>> {
        let mut guard = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id();
        if guard.0 != pid {
            let fresh = backend::connect(&self.config)?;
            // Dropped, not forgotten: see `backend::connect` (closes inherited sockets).
            *guard = (pid, fresh);
        }
        Ok(guard.1.clone())
    }

    fn bucket_index(&self, keys: Keys<'_>, i: usize) -> usize {
        if self.data_buckets == 1 {
            return 0;
        }
        let b = match keys {
            Keys::Ints(k) => {
                bucket_of(k[i], self.spec.key_dtype, self.data_buckets, self.bucket_fn)
            }
            Keys::Ints32(k) => bucket_of(
                i64::from(k[i]),
                self.spec.key_dtype,
                self.data_buckets,
                self.bucket_fn,
            ),
            Keys::Bytes(k) => bucket_of_string(k.get(i), self.data_buckets),
        };
        b as usize
    }

    /// Groups key positions by bucket and cuts them into commands of at most
    /// `keys_sending_size` fields; returns (bucket, positions) per command.
    fn plan(&self, keys: Keys<'_>) -> Vec<(usize, Vec<u32>)> {
        let mut per_bucket: Vec<Vec<u32>> = vec![Vec::new(); self.data_buckets as usize];
        for i in 0..keys.len() {
            per_bucket[self.bucket_index(keys, i)].push(i as u32);
        }
        let mut plan = Vec::new();
        for (b, positions) in per_bucket.into_iter().enumerate() {
            if positions.len() <= self.chunk {
                if !positions.is_empty() {
                    plan.push((b, positions));
                }
            } else {
                plan.extend(positions.chunks(self.chunk).map(|c| (b, c.to_vec())));
            }
        }
        plan
    }

    /// Splits a plan into windows of about `WINDOW_KEYS` keys, one round trip each.
    fn windows(plan: &[(usize, Vec<u32>)]) -> Vec<&[(usize, Vec<u32>)]> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut keys = 0;
        for (i, (_, pos)) in plan.iter().enumerate() {
            keys += pos.len();
            if keys >= WINDOW_KEYS {
                out.push(&plan[start..=i]);
                start = i + 1;
                keys = 0;
            }
        }
        if start < plan.len() {
            out.push(&plan[start..]);
        }
        out
    }

    /// Ids of the wrong kind for the table (integers for a string table, strings for an int
    /// table) are an error, and so are ids an int32 table cannot hold: encoding would keep
    /// their low 32 bits and silently read or write another id's row.
    fn check_keys(&self, keys: Keys<'_>) -> Result<()> {
        let dtype = self.spec.key_dtype;
        match keys {
            Keys::Ints(_) | Keys::Ints32(_) if dtype == KeyDtype::Str => {
                Err(self.key_kind_error(keys))
            }
            Keys::Bytes(_) if dtype != KeyDtype::Str => Err(self.key_kind_error(keys)),
            Keys::Ints(k) if dtype == KeyDtype::I32 => {
                match k.iter().find(|&&k| i32::try_from(k).is_err()) {
                    Some(key) => Err(Error::invalid(
                        crate::error::ArgumentKind::KeyOutOfRange,
                        format!(
                            "id {key} does not fit the int32 keys of table {:?}",
                            self.spec.name
                        ),
                    )),
                    None => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    fn key_kind_error(&self, keys: Keys<'_>) -> Error {
        Error::invalid(
            crate::error::ArgumentKind::Dtype,
            format!(
                "table {:?} has {} keys, but {} ids were given",
                self.spec.name,
                self.spec.key_dtype.name(),
                keys.kind()
            ),
        )
    }

    fn check_len(&self, what: &str, got: usize, rows: usize) -> Result<()> {
        let want = rows * self.row_bytes;
        if got != want {
            return Err(Error::invalid(
                crate::error::ArgumentKind::Shape,
                format!(
                    "{what} has {got} bytes, expected {rows} rows x {} bytes ({} x {}) = {want}",
                    self.row_bytes,
                    self.spec.dim.get(),
                    self.spec.value_dtype.numpy_name()
                ),
            ));
        }
        Ok(())
    }

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
        let result = self.find_inner(keys, defaults, out, exists.as_deref_mut());
        match result {
            Err(e) if self.config.redis_lookup_defaults_on_error && e.is_transient() => {
                // Once per call would flood the log (and the Python bridge) while a server
                // is down: see `throttle.rs`.
                if let Some(held_back) = self.lookup_failures.admit() {
                    log::warn!(
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

    fn find_inner(
        &self,
        keys: Keys<'_>,
        defaults: Defaults<'_>,
        out: &mut [u8],
        mut exists: Option<&mut [bool]>,
    ) -> Result<()> {
        let backend = self.backend()?;
        self.by_window(
            keys,
            |batch, b, pos| self.fields_cmd(batch, "HMGET", b, keys, pos),
            |batch, window| {
                // Each reply's rows are copied while the server still answers the next ones.
                backend.run_each(batch, Role::Read, &mut |i, reply| {
                    let (b, pos) = &window[i];
                    self.copy_rows(*b, pos, reply, keys, defaults, out, exists.as_deref_mut())
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
    #[allow(clippy::too_many_arguments)]
    fn copy_rows(
        &self,
        b: usize,
        pos: &[u32],
        reply: backend::ReplyView<'_>,
        keys: Keys<'_>,
        defaults: Defaults<'_>,
        out: &mut [u8],
        mut exists: Option<&mut [bool]>,
    ) -> Result<()> {
        let rb = self.row_bytes;
        let wrong_count = || self.reply_error(b, "HMGET answered with the wrong count");
        let copied = reply.for_each_bulk(|k, item| {
            let i = *pos.get(k).ok_or_else(wrong_count)? as usize;
            let found = match item {
                Some(bytes) if bytes.len() == rb => {
                    out[i * rb..(i + 1) * rb].copy_from_slice(bytes);
                    true
                }
                Some(bytes) => return Err(self.row_len_error(b, &keys.label(i), bytes.len())),
                None => {
                    self.write_default(defaults, i, out);
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

    /// Adds `name bucket field...` for the keys at `pos` (HMGET, HDEL).
    fn fields_cmd(
        &self,
        batch: &mut Batch,
        name: &str,
        bucket: usize,
        keys: Keys<'_>,
        pos: &[u32],
    ) {
        batch.command(name, 1 + pos.len());
        batch.key(self.buckets[bucket].as_bytes());
        for &i in pos {
            batch.arg(keys.field(i as usize, self.spec.key_dtype).as_ref());
        }
    }

    /// Appends `field row` argument pairs for the keys at `pos`.
    fn push_pairs(&self, batch: &mut Batch, keys: Keys<'_>, rows: &[u8], pos: &[u32]) {
        let rb = self.row_bytes;
        for &i in pos {
            let i = i as usize;
            batch.arg(keys.field(i, self.spec.key_dtype).as_ref());
            batch.arg(&rows[i * rb..(i + 1) * rb]);
        }
    }

    fn reply_error(&self, bucket: usize, message: &str) -> Error {
        Error::Data {
            bucket: self.buckets[bucket].to_string(),
            message: message.to_string(),
        }
    }

    fn row_len_error(&self, bucket: usize, key: &str, len: usize) -> Error {
        Error::Data {
            bucket: self.buckets[bucket].to_string(),
            message: self.row_len_message(key, len),
        }
    }

    fn row_len_message(&self, key: &str, len: usize) -> String {
        format!(
            "key {key} holds {len} bytes, but rows of this table are {} bytes (dim {} x {}); \
             the stored data was written with another dim or dtype",
            self.row_bytes,
            self.spec.dim.get(),
            self.spec.value_dtype.numpy_name()
        )
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
                l.table.find_inner(l.keys, l.defaults, l.out, None)?;
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
                l.table
                    .copy_rows(*b, pos, reply, l.keys, l.defaults, l.out, None)
            })
        })
    }

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
        let keep = writes[0].0.config.redis_client_buffer_keep_bytes;
        with_batch(keep, |batch| {
            for (table, keys, rows) in writes {
                for (b, pos) in table.plan(*keys) {
                    table.rows_cmd(batch, false, b, *keys, rows, &pos);
                }
            }
            backend
                .run_batch(batch, Role::Write, Retry::Idempotent)
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

    /// The bucket (index into [`Table::buckets`]) where key `i` of `keys` lives in this
    /// layout.
    pub(crate) fn bucket_of_key(&self, keys: Keys<'_>, i: usize) -> usize {
        self.bucket_index(keys, i)
    }

    /// Up to `n` random ids stored in runtime bucket `bucket` (`HRANDFIELD`), cheap evidence of
    /// whether the bucket holds rows of another layout.
    pub(crate) fn sample_ids(&self, bucket: usize, n: usize) -> Result<KeyBuf> {
        let backend = self.backend()?;
        let cmd = redis::cmd("HRANDFIELD")
            .arg(self.buckets[bucket].as_bytes())
            .arg(n)
            .clone();
        let reply = backend
            .run_values(&[cmd], Role::Write, Retry::Idempotent)?
            .pop()
            .unwrap_or(Value::Nil);
        let mut ids = KeyBuf::new(self.spec.key_dtype);
        if let Value::Array(items) = reply {
            for item in items {
                if let Value::BulkString(f) = item {
                    // A field of another width is not one of this table's ids: skipped.
                    ids.push_field(self.spec.key_dtype, &f);
                }
            }
        }
        Ok(ids)
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

    /// Number of ids: the sum of `HLEN` over all runtime buckets.
    ///
    /// # Errors
    ///
    /// [`Error::Connection`] or [`Error::Timeout`] when Redis cannot be reached within the retry
    /// deadline, [`Error::Auth`] when the ACL user may not run the commands, [`Error::Command`]
    /// when Redis refuses one.
    pub fn size(&self) -> Result<u64> {
        let mut total = 0u64;
        // The master, even with replica reads on: sizes feed checkpoints and re-bucketing
        // checks, where a lagging replica's count would be wrong.
        for (b, r) in self
            .per_bucket("HLEN", Role::Write, &[])?
            .into_iter()
            .enumerate()
        {
            match r {
                Value::Int(n) => total += n as u64,
                _ => return Err(self.reply_error(b, "HLEN did not answer with an integer")),
            }
        }
        Ok(total)
    }

    /// Deletes every runtime bucket.
    ///
    /// # Errors
    ///
    /// [`Error::Connection`] or [`Error::Timeout`] when Redis cannot be reached within the retry
    /// deadline, [`Error::Auth`] when the ACL user may not run the commands, [`Error::Command`]
    /// when Redis refuses one.
    pub fn clear(&self) -> Result<()> {
        self.per_bucket("DEL", Role::Write, &[]).map(|_| ())
    }

    /// The bucket keys of the import layout (`model_tag_import`, `storage_slice_import`,
    /// `redis_hash_tags_import`), where restores and model-tag imports read from.
    ///
    /// # Errors
    ///
    /// In Cluster mode, the errors of reading the slot map ([`Error::Connection`],
    /// [`Error::Timeout`]); [`Error::ConfigField`] when the import hash tags do not fit
    /// `storage_slice_import`.
    pub fn import_buckets(&self) -> Result<Vec<BucketKey>> {
        let c = &self.config;
        let backend = self.backend()?;
        let tags = layout_tags(
            c,
            backend.as_ref(),
            c.storage_slice_import as usize,
            &c.redis_hash_tags_import,
            "redis_hash_tags_import",
        )?;
        let prefix = KeyPrefix::new(
            &c.model_tag_import,
            embedding_name(&self.spec.name),
            c.using_md5_prefix_name,
        );
        Ok(bucket_keys(&prefix, &tags))
    }

    /// The key prefix of the import layout.
    pub fn import_prefix(&self) -> KeyPrefix {
        KeyPrefix::new(
            &self.config.model_tag_import,
            embedding_name(&self.spec.name),
            self.config.using_md5_prefix_name,
        )
    }

    /// Runs one command per runtime bucket and returns the replies.
    pub(crate) fn per_bucket(&self, name: &str, role: Role, extra: &[&[u8]]) -> Result<Vec<Value>> {
        self.per_bucket_with(name, role, extra, Retry::Idempotent)
    }

    fn per_bucket_with(
        &self,
        name: &str,
        role: Role,
        extra: &[&[u8]],
        retry: Retry,
    ) -> Result<Vec<Value>> {
        let backend = self.backend()?;
        let cmds: Vec<Cmd> = self
            .buckets
            .iter()
            .map(|b| {
                let mut cmd = redis::cmd(name);
                cmd.arg(b.as_bytes());
                for a in extra {
                    cmd.arg(*a);
                }
                cmd
            })
            .collect();
        backend.run_values(&cmds, role, retry)
    }

    /// Clears any TTL on the table's buckets. TFRA does this when a table opens so that a model
    /// in use never expires.
    ///
    /// # Errors
    ///
    /// [`Error::Connection`] or [`Error::Timeout`] when Redis cannot be reached within the retry
    /// deadline, [`Error::Auth`] when the ACL user may not run the commands, [`Error::Command`]
    /// when Redis refuses one.
    pub fn persist(&self) -> Result<()> {
        self.per_bucket("PERSIST", Role::Write, &[]).map(|_| ())
    }

    /// Puts the configured TTL (`expire_model_tag_in_seconds`) on the table's buckets, as TFRA
    /// does when a table closes; nothing when the setting is negative. 0 deletes the buckets.
    /// One attempt only: a close must not hold a process at exit for a whole retry deadline
    /// when Redis is gone.
    ///
    /// # Errors
    ///
    /// [`Error::Connection`] or [`Error::Timeout`] when Redis cannot be reached within the retry
    /// deadline, [`Error::Auth`] when the ACL user may not run the commands, [`Error::Command`]
    /// when Redis refuses one.
    pub fn expire_per_config(&self) -> Result<()> {
        match self.config.expire_model_tag_in_seconds {
            Some(secs) => {
                let secs = secs.to_string();
                self.per_bucket_with("EXPIRE", Role::Write, &[secs.as_bytes()], Retry::Never)
                    .map(|_| ())
            }
            None => Ok(()),
        }
    }

    /// Puts a TTL of `secs` seconds on the table's buckets.
    ///
    /// # Errors
    ///
    /// [`Error::Connection`] or [`Error::Timeout`] when Redis cannot be reached within the retry
    /// deadline, [`Error::Auth`] when the ACL user may not run the commands, [`Error::Command`]
    /// when Redis refuses one.
    pub fn expire(&self, secs: u64) -> Result<()> {
        let secs = secs.to_string();
        self.per_bucket("EXPIRE", Role::Write, &[secs.as_bytes()])
            .map(|_| ())
    }

    /// Streams the pairs of any bucket hash (not necessarily one of this table's) in pages.
    pub(crate) fn scan_bucket(
        &self,
        bucket: &[u8],
        page: usize,
        mut sink: impl FnMut(Keys<'_>, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let backend = self.backend()?;
        let dtype = self.spec.key_dtype;
        let rb = self.row_bytes;
        let name = crate::layout::printable(bucket);
        let mut cursor = 0u64;
        loop {
            let cmd = redis::cmd("HSCAN")
                .arg(bucket)
                .arg(cursor)
                .arg("COUNT")
                .arg(page.clamp(1, SCAN_COUNT * 64))
                .clone();
            let mut replies = backend.run_values(&[cmd], Role::Write, Retry::Idempotent)?;
            let bad = |m: &str| Error::Data {
                bucket: name.clone(),
                message: m.to_string(),
            };
            let (next, items) = backend::parse_scan_reply(replies.remove(0))
                .map_err(|_| bad("HSCAN answered with an unexpected shape"))?;
            let mut keys = KeyBuf::new(dtype);
            let mut values = Vec::with_capacity(items.len() / 2 * rb);
            for pair in items.chunks(2) {
                let [field, value] = pair else {
                    return Err(bad("HSCAN answered with an odd item count"));
                };
                if !keys.push_field(dtype, field) {
                    return Err(bad(&format!(
                        "field {} is {} bytes, but {} keys are {} bytes",
                        crate::layout::printable(field),
                        field.len(),
                        dtype.name(),
                        dtype.width().unwrap_or(field.len())
                    )));
                }
                if value.len() != rb {
                    let key = keys.keys().label(keys.len() - 1);
                    return Err(Error::Data {
                        bucket: name.clone(),
                        message: self.row_len_message(&key, value.len()),
                    });
                }
                values.extend_from_slice(value);
            }
            if !keys.is_empty() {
                sink(keys.keys(), &values)?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Streams every (id, row) pair, bucket by bucket, in pages of about `page` pairs, so memory
    /// stays bounded whatever the table size. `HSCAN` may report a pair twice when the hash is
    /// rehashed meanwhile; importing the pages is an upsert, so that is harmless.
    ///
    /// # Errors
    ///
    /// [`Error::Connection`] or [`Error::Timeout`] when Redis cannot be reached within the retry
    /// deadline, [`Error::Auth`] when the ACL user may not run the commands, [`Error::Command`]
    /// when Redis refuses one; [`Error::Data`] when a stored field or row does not fit the table;
    /// any error `on_page` returns, which stops the export.
    pub fn export_pages(
        &self,
        page: usize,
        mut sink: impl FnMut(Keys<'_>, &[u8]) -> Result<()>,
    ) -> Result<()> {
        for bucket in &self.buckets {
            self.scan_bucket(bucket.as_bytes(), page, &mut sink)?;
        }
        Ok(())
    }

    /// Every pair at once, without duplicates. Only for tables that fit in memory; use
    /// [`Table::export_pages`] otherwise.
    ///
    /// # Errors
    ///
    /// As [`Table::export_pages`].
    pub fn export(&self) -> Result<(KeyBuf, Vec<u8>)> {
        let rb = self.row_bytes;
        let dtype = self.spec.key_dtype;
        let mut seen = std::collections::HashSet::new();
        let mut keys = KeyBuf::new(dtype);
        let mut values = Vec::new();
        self.export_pages(SCAN_COUNT, |k, v| {
            for i in 0..k.len() {
                if seen.insert(k.field(i, dtype).as_ref().to_vec()) {
                    keys.push_key(k, i);
                    values.extend_from_slice(&v[i * rb..(i + 1) * rb]);
                }
            }
            Ok(())
        })?;
        Ok((keys, values))
    }

    /// Refuses element type `T` unless it is the table's value dtype.
    fn check_element<T: Element>(&self) -> Result<()> {
        if T::DTYPE != self.spec.value_dtype {
            return Err(Error::invalid(
                crate::error::ArgumentKind::Dtype,
                format!(
                    "table {:?} holds {} values, but {} rows were given",
                    self.spec.name,
                    self.spec.value_dtype.numpy_name(),
                    T::DTYPE.numpy_name()
                ),
            ));
        }
        Ok(())
    }

    /// Checks that a typed buffer holds `rows` rows, counting elements (the byte check would
    /// give the same answer in less readable units).
    fn check_elements(&self, what: &str, got: usize, rows: usize) -> Result<()> {
        let dim = self.spec.dim.get();
        if got != rows * dim {
            return Err(Error::invalid(
                crate::error::ArgumentKind::Shape,
                format!(
                    "{what} has {got} {} values, expected {rows} rows x {dim} = {}",
                    self.spec.value_dtype.numpy_name(),
                    rows * dim
                ),
            ));
        }
        Ok(())
    }

    /// [`Table::find`] with typed rows: `out` receives `keys.len() × dim` elements of `T`,
    /// the table's element type (`f32` for a float32 table, [`f16`](struct@crate::f16) for a
    /// float16 one, ...). Defaults are typed too.
    ///
    /// ```no_run
    /// # fn demo(table: &tfra_redis::Table) -> tfra_redis::Result<()> {
    /// use tfra_redis::Defaults;
    /// // A float32 table of dim 2.
    /// let mut out = vec![0f32; 3 * 2];
    /// let mut found = [false; 3];
    /// table.find_rows(&[9, 7, 8], Defaults::Row(&[0.0, 0.0]), &mut out, Some(&mut found))?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] with [`ArgumentKind::Dtype`](crate::ArgumentKind::Dtype)
    /// when `T` is not the table's element type, and otherwise as [`Table::find`]
    /// ([`ArgumentKind::Shape`](crate::ArgumentKind::Shape) when `out`, the defaults or
    /// `exists` do not fit `keys`); nothing is sent then.
    pub fn find_rows<'k, T: Element>(
        &self,
        keys: impl Into<Keys<'k>>,
        defaults: Defaults<'_, T>,
        out: &mut [T],
        exists: Option<&mut [bool]>,
    ) -> Result<()> {
        let keys = keys.into();
        self.check_element::<T>()?;
        self.check_keys(keys)?;
        self.check_elements("out", out.len(), keys.len())?;
        let defaults_le;
        let defaults = match defaults {
            Defaults::Row(r) => {
                self.check_elements("the default row", r.len(), 1)?;
                defaults_le = elements_to_le(r);
                Defaults::Row(&defaults_le)
            }
            Defaults::PerKey(r) => {
                self.check_elements("the per-key defaults", r.len(), keys.len())?;
                defaults_le = elements_to_le(r);
                Defaults::PerKey(&defaults_le)
            }
        };
        let result = self.find(keys, defaults, elements_as_bytes_mut(out), exists);
        le_to_native_in_place(out);
        result
    }

    /// [`Table::insert`] with typed rows: `rows` holds `keys.len() × dim` elements of the
    /// table's element type, row-major.
    ///
    /// ```no_run
    /// # fn demo(table: &tfra_redis::Table) -> tfra_redis::Result<()> {
    /// // A float32 table of dim 2: rows for ids 7 and 9.
    /// table.insert_rows(&[7, 9], &[1.0f32, 2.0, 3.0, 4.0])?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] with [`ArgumentKind::Dtype`](crate::ArgumentKind::Dtype)
    /// when `T` is not the table's element type, and otherwise as [`Table::insert`].
    pub fn insert_rows<'k, T: Element>(&self, keys: impl Into<Keys<'k>>, rows: &[T]) -> Result<()> {
        let keys = keys.into();
        self.check_element::<T>()?;
        self.check_keys(keys)?;
        self.check_elements("rows", rows.len(), keys.len())?;
        self.insert(keys, &elements_to_le(rows))
    }

    /// [`Table::accum`] with typed deltas (`keys.len() × dim` elements of the table's
    /// element type).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] with [`ArgumentKind::Dtype`](crate::ArgumentKind::Dtype)
    /// when `T` is not the table's element type, and otherwise as [`Table::accum`].
    pub fn accum_rows<'k, T: Element>(
        &self,
        keys: impl Into<Keys<'k>>,
        deltas: &[T],
        exists: &[bool],
    ) -> Result<()> {
        let keys = keys.into();
        self.check_element::<T>()?;
        self.check_keys(keys)?;
        self.check_elements("deltas", deltas.len(), keys.len())?;
        self.accum(keys, &elements_to_le(deltas), exists)
    }

    /// [`Table::export`] with typed rows: every id and its row, `dim` elements of the table's
    /// element type per id, in the same order. Integer ids come back as `i64` (in
    /// [`KeyBuf::Ints`]) for int32 tables too.
    ///
    /// ```no_run
    /// # fn demo(table: &tfra_redis::Table) -> tfra_redis::Result<()> {
    /// let (ids, rows) = table.export_rows::<f32>()?;
    /// let dim = table.spec().dim.get();
    /// for (id, row) in ids.into_ints().unwrap_or_default().iter().zip(rows.chunks(dim)) {
    ///     println!("{id}: {row:?}");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] with [`ArgumentKind::Dtype`](crate::ArgumentKind::Dtype)
    /// when `T` is not the table's element type (checked before anything is read), and
    /// otherwise as [`Table::export`].
    pub fn export_rows<T: Element>(&self) -> Result<(KeyBuf, Vec<T>)> {
        self.check_element::<T>()?;
        let (keys, bytes) = self.export()?;
        let mut rows: Vec<T> = vec![T::zeroed(); bytes.len() / std::mem::size_of::<T>()];
        elements_as_bytes_mut(&mut rows).copy_from_slice(&bytes);
        le_to_native_in_place(&mut rows);
        Ok((keys, rows))
    }
}

/// Hash tags for a layout of `slices` buckets: explicit ones from the config, else the cluster's
/// topology (TFRA's default in cluster mode), else the fixed even spread.
pub(crate) fn layout_tags(
    config: &RedisConfig,
    backend: &dyn Backend,
    slices: usize,
    explicit: &[String],
    field: &str,
) -> Result<Vec<HashTag>> {
    if !explicit.is_empty() {
        return explicit.iter().map(|t| HashTag::parse(field, t)).collect();
    }
    if backend.mode() == ConnectionMode::Cluster && !config.redis_hash_tags_hypodispersion {
        let masters = backend.master_slot_ranges()?;
        if !masters.is_empty() {
            return Ok(topology_tags(&masters, slices));
        }
    }
    Ok(hypodispersion_tags(slices))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spare_capacity() -> usize {
        SPARE_BATCH.with(|s| s.borrow().capacity())
    }

    #[test]
    fn a_big_command_buffer_is_not_kept_past_the_bound() {
        let keep = 1 << 20;
        let row = vec![7u8; 4096];
        with_batch(keep, |batch| {
            batch.command("HSET", 1 + 2 * 1024);
            batch.key(b"bucket");
            for i in 0..1024u32 {
                batch.arg(&i.to_le_bytes());
                batch.arg(&row);
            }
            assert!(batch.capacity() > 4 << 20);
        });
        assert!(spare_capacity() <= keep as usize, "{}", spare_capacity());
        // A small one is kept for the next call.
        with_batch(keep, |batch| {
            batch.command("HMGET", 2);
            batch.key(b"bucket");
            batch.arg(b"f");
        });
        let small = spare_capacity();
        assert!(small > 0 && small <= keep as usize);
    }
}
