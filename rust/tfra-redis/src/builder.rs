//! [`TableBuilder`]: the one way to open a table.

use crate::codec::{Dim, KeyDtype, ValueDtype};
use crate::config::RedisConfig;
use crate::error::Result;
use crate::store::{OpenOptions, open_table_with};
use crate::table::{Table, TableSpec};

/// Opens a [`Table`]: names it, gives its key and value types and its row length, and chooses
/// what opening does besides connecting.
///
/// ```no_run
/// use tfra_redis::{KeyDtype, RedisConfig, TableBuilder, ValueDtype};
///
/// let config = RedisConfig::standalone("127.0.0.1", 6379).with_model_tag("ctr_v1");
/// let table = TableBuilder::new(&config)
///     .name("user_emb")
///     .dim(16)
///     .key_dtype(KeyDtype::I64)
///     .value_dtype(ValueDtype::F32)
///     .open()?;
/// # Ok::<(), tfra_redis::Error>(())
/// ```
///
/// Opening does what TFRA's table constructor does, minus its bugs:
///
/// 1. validates the config and connects (connections are pooled and shared by every table of
///    the process with the same connection settings);
/// 2. works out the bucket keys (in Cluster mode from the live topology, unless
///    `redis_hash_tags_hypodispersion` or explicit tags say otherwise);
/// 3. clears any TTL left on the table's buckets ([`TableBuilder::persist`], on by default);
/// 4. moves rows of this table left in another bucket layout (a changed `storage_slice`, hash
///    tags or cluster topology, or an interrupted earlier move) into the runtime one
///    ([`TableBuilder::rebucket`], on by default). Detecting that costs one `SCAN` over the
///    keyspace and a 32-field sample per bucket.
///
/// Steps 3 and 4 produce notes (rows moved, data found under another layout, a TTL that a
/// read-only user could not clear): [`TableBuilder::open`] logs them as warnings under the
/// `tfra_redis` target, [`TableBuilder::open_with_notes`] returns them.
#[derive(Clone, Debug)]
#[must_use = "a TableBuilder does nothing until `open` is called"]
pub struct TableBuilder<'c> {
    config: &'c RedisConfig,
    name: Option<String>,
    dim: Option<usize>,
    key_dtype: KeyDtype,
    value_dtype: ValueDtype,
    options: OpenOptions,
}

impl<'c> TableBuilder<'c> {
    /// A builder for a table on the servers of `config`. The name and the dim must be set;
    /// keys default to [`KeyDtype::I64`] and values to [`ValueDtype::F32`].
    pub fn new(config: &'c RedisConfig) -> Self {
        TableBuilder {
            config,
            name: None,
            dim: None,
            key_dtype: KeyDtype::I64,
            value_dtype: ValueDtype::F32,
            options: OpenOptions::default(),
        }
    }

    /// A builder for the table `spec` describes.
    pub fn from_spec(config: &'c RedisConfig, spec: TableSpec) -> Self {
        TableBuilder {
            name: Some(spec.name),
            dim: Some(spec.dim.get()),
            key_dtype: spec.key_dtype,
            value_dtype: spec.value_dtype,
            ..Self::new(config)
        }
    }

    /// The table name. Redis keys use the part before `_mht_` (TFRA's shard suffix, see
    /// [`crate::naming`]): `<model_tag>:<name>{<hash tag>}`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Elements per row, 1 to [`crate::codec::MAX_DIM`].
    pub fn dim(mut self, dim: usize) -> Self {
        self.dim = Some(dim);
        self
    }

    /// The id type (default int64). Integer ids may be passed as `&[i64]` or `&[i32]` to
    /// either integer type (see [`crate::Keys`]); an int32 table refuses ids outside the int32
    /// range.
    pub fn key_dtype(mut self, key_dtype: KeyDtype) -> Self {
        self.key_dtype = key_dtype;
        self
    }

    /// The element type of the rows (default float32).
    pub fn value_dtype(mut self, value_dtype: ValueDtype) -> Self {
        self.value_dtype = value_dtype;
        self
    }

    /// Whether opening clears the TTL of the table's buckets, as TFRA does (default true).
    /// Turn it off for read-only tools, which must not change a table's expiry by looking at
    /// it.
    pub fn persist(mut self, persist: bool) -> Self {
        self.options.persist = persist;
        self
    }

    /// Whether opening detects and moves rows left in another bucket layout (default true).
    /// Off, a table whose rows sit under another layout opens empty-looking; nothing is moved
    /// or deleted.
    pub fn rebucket(mut self, rebucket: bool) -> Self {
        self.options.rebucket = rebucket;
        self
    }

    /// The table's description, checking the name and the dim.
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidArgument`] of kind [`crate::ArgumentKind::Config`] when no
    /// name was given, of kind [`crate::ArgumentKind::Dim`] when no dim or one out of range
    /// was.
    pub fn spec(&self) -> Result<TableSpec> {
        use crate::error::{ArgumentKind, Error};
        let name = self.name.clone().ok_or_else(|| {
            Error::invalid(
                ArgumentKind::Config,
                "the table has no name: call .name(...)",
            )
        })?;
        let dim = self.dim.ok_or_else(|| {
            Error::invalid(
                ArgumentKind::Dim,
                format!("table {name:?} has no dim: call .dim(...)"),
            )
        })?;
        Ok(TableSpec::new(
            name,
            self.key_dtype,
            self.value_dtype,
            Dim::new(dim)?,
        ))
    }

    /// Opens the table, logging the notes of the lifecycle steps as warnings.
    ///
    /// # Errors
    ///
    /// * [`crate::Error::InvalidArgument`]: no name, or no dim or one out of range.
    /// * [`crate::Error::ConfigField`]: the config breaks a rule (a config built in code is
    ///   checked here, as the JSON reader checks a file), or names a mode this build of the
    ///   crate leaves out (Cargo features `sentinel`, `cluster`, `tls`).
    /// * [`crate::Error::Connection`], [`crate::Error::Timeout`]: the servers cannot be
    ///   reached (see [`crate::Error::is_transient`] for what was retried).
    /// * [`crate::Error::Auth`]: the servers refused the credentials.
    /// * [`crate::Error::ModeMismatch`]: the server is not in the configured mode.
    /// * [`crate::Error::Command`], [`crate::Error::Data`]: moving rows between layouts
    ///   failed; nothing was lost (each move copies and checks before deleting).
    pub fn open(self) -> Result<Table> {
        let (table, notes) = self.open_with_notes()?;
        for note in notes {
            log::warn!("{note}");
        }
        Ok(table)
    }

    /// Opens the table and returns the notes of the lifecycle steps instead of logging them.
    ///
    /// # Errors
    ///
    /// As [`TableBuilder::open`].
    pub fn open_with_notes(self) -> Result<(Table, Vec<String>)> {
        let spec = self.spec()?;
        open_table_with(self.config, spec, self.options)
    }
}
