//! The embedding table: find, insert, remove, accum, size, clear, export and import over the
//! bucket hashes TFRA lays out. It knows embeddings and nothing about which Redis mode is used.

// This file holds the types and what every operation shares (opening, the bucket plan, the
// argument checks, command and error helpers); the operations live in one module per job:
// `lookup` (find), `write` (insert, remove, accum), `typed` (the `*_rows` methods), `scan`
// (export and bucket scans) and `buckets` (size, clear, TTLs). Each is an `impl Table` block,
// so the public paths stay `tfra_redis::table::{Table, ...}`.

mod buckets;
mod lookup;
mod scan;
mod typed;
mod write;

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use crate::backend::{self, Backend, Batch};
#[cfg(doc)]
use crate::codec::Element;
use crate::codec::{Dim, KeyDtype, Keys, ValueDtype};
use crate::config::{ConnectionMode, RedisConfig};
use crate::error::{Error, Result};
use crate::layout::{
    BucketFn, BucketKey, HashTag, KeyPrefix, bucket_keys, bucket_of, bucket_of_string,
    embedding_name, hypodispersion_tags, topology_tags,
};
use crate::throttle::Throttle;

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
        self.push_values(batch, keys, rows, self.row_bytes, pos);
    }

    /// Appends `field value` argument pairs for the keys at `pos`, values `width` bytes each.
    fn push_values(
        &self,
        batch: &mut Batch,
        keys: Keys<'_>,
        values: &[u8],
        width: usize,
        pos: &[u32],
    ) {
        for &i in pos {
            let i = i as usize;
            batch.arg(keys.field(i, self.spec.key_dtype).as_ref());
            batch.arg(&values[i * width..(i + 1) * width]);
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
        if self.config.redis_fused_row {
            return format!(
                "key {key} holds {len} bytes, which is not a whole number of rows of {} bytes \
                 (dim {} x {}; redis_fused_row keeps the optimizer slots after the row); the \
                 stored data was written with another dim or dtype",
                self.row_bytes,
                self.spec.dim.get(),
                self.spec.value_dtype.numpy_name()
            );
        }
        let mut message = format!(
            "key {key} holds {len} bytes, but rows of this table are {} bytes (dim {} x {}); \
             the stored data was written with another dim or dtype",
            self.row_bytes,
            self.spec.dim.get(),
            self.spec.value_dtype.numpy_name()
        );
        if len > self.row_bytes && len.is_multiple_of(self.row_bytes) {
            message += &format!(
                ", or it is a row followed by {} optimizer slot rows as redis_fused_row \
                 stores them: set redis_fused_row, or move the slots out of the rows with \
                 `tfra-redis convert-slots --from fused-row ...` first",
                len / self.row_bytes - 1
            );
        }
        message
    }

    fn slots_len_error(&self, bucket: usize, key: &str, len: usize) -> Error {
        Error::Data {
            bucket: self.buckets[bucket].to_string(),
            message: format!(
                "key {key} holds {} slot rows after its row ({len} bytes), but the optimizer \
                 keeps a different number; the rows were trained with another optimizer",
                len / self.row_bytes
            ),
        }
    }

    /// The bytes of one id's slots in a slots buffer of `len` bytes for `rows` ids: a whole
    /// number of rows per id. Only `redis_fused_row` tables keep slots in the row's field.
    fn slots_width(&self, len: usize, rows: usize) -> Result<usize> {
        if !self.config.redis_fused_row {
            return Err(Error::invalid(
                crate::error::ArgumentKind::TableSet,
                format!(
                    "table {:?} does not set redis_fused_row, so its values hold no optimizer \
                     slots",
                    self.spec.name
                ),
            ));
        }
        let rb = self.row_bytes;
        if rows == 0 {
            return if len == 0 {
                Ok(0)
            } else {
                Err(Error::invalid(
                    crate::error::ArgumentKind::Shape,
                    format!("slots has {len} bytes for 0 keys"),
                ))
            };
        }
        if !len.is_multiple_of(rows) || !(len / rows).is_multiple_of(rb) {
            return Err(Error::invalid(
                crate::error::ArgumentKind::Shape,
                format!(
                    "slots has {len} bytes, which is not {rows} keys x a whole number of rows \
                     of {rb} bytes"
                ),
            ));
        }
        Ok(len / rows)
    }

    /// The bucket (index into [`Table::buckets`]) where key `i` of `keys` lives in this
    /// layout.
    pub(crate) fn bucket_of_key(&self, keys: Keys<'_>, i: usize) -> usize {
        self.bucket_index(keys, i)
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
