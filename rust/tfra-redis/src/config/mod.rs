//! The Redis backend config: TFRA's JSON file with its 31 keys and C++ defaults, a few keys of
//! our own, validation, and how the file is found.
//!
//! A TFRA config file opens here unchanged. Three things differ, all on purpose:
//!
//! * TFRA checks JSON types but no ranges, so `storage_slice: 0` crashed it later (division by
//!   zero) and a negative port wrapped around. We check ranges when the file is loaded and name
//!   the key at fault.
//! * TFRA silently ignored explicit hash tag lists of the wrong length. We reject them, because
//!   falling back to generated tags puts the data under different Redis keys than the user asked for.
//! * TFRA crashed on invalid JSON. We report the line and column.
//!
//! Type errors keep TFRA's exact wording, `<key> should be json <type>`, because TFRA's tests (and
//! probably users' scripts) match on it. Unknown keys are ignored as in TFRA, but reported as warnings.
//!
//! In the JSON, every key is spelled exactly like the [`RedisConfig`] field that holds it.
//!
//! In Rust code, start from a constructor for your mode: [`RedisConfig::standalone`],
//! [`RedisConfig::sentinel`] or [`RedisConfig::cluster`], then the `with_*` setters (timeouts
//! as [`std::time::Duration`]) or the public fields. [`RedisConfig::default`] exists for the
//! JSON reader and is rarely what a program wants (see its docs).
//!
//! ```
//! use tfra_redis::config::{ConnectionMode, RedisConfig};
//!
//! let (config, warnings) = RedisConfig::from_json_str(
//!     r#"{"redis_connection_mode": 2, "redis_host_port": [6380], "storage_slice": 4}"#,
//!     "<example>",
//! )
//! .unwrap();
//! assert_eq!(config.redis_connection_mode, ConnectionMode::Standalone);
//! assert_eq!(config.storage_slice_import, 4); // follows storage_slice unless given
//! assert!(warnings.is_empty());
//! ```
//!
//! The module is split by job: this file holds the fields and their defaults, `json` reads and
//! writes the JSON, `validate` checks the rules a config built in code could also break, and
//! `path` finds the file.

mod build;
mod json;
mod path;
#[cfg(test)]
mod tests;
mod validate;

use std::fmt;

use serde_json::Value;

use crate::error::Result;

pub use path::{resolve_config_path, resolve_config_path_with};
pub(crate) use validate::{feature_missing, tls_missing};

use json::coded_field;

/// The environment variable read when no other is named, and always as the second choice.
pub const DEFAULT_CONFIG_ENV: &str = "TFRA_REDIS_CONFIG_PATH";

/// The file looked for when a config location is a directory.
pub const CONFIG_FILE_NAME: &str = "redis_config.json";

/// The most buckets a table can have (`storage_slice`, `storage_slice_import`): one per
/// cluster slot. Bucket tags are picked from TFRA's per-slot table, which has no entry beyond.
pub const MAX_STORAGE_SLICE: u32 = crate::layout::SLOT_COUNT as u32;

/// How tfra-redis reaches Redis (`redis_connection_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ConnectionMode {
    /// Redis Cluster. The hosts are seed nodes; buckets spread over the masters by their hash tags.
    Cluster = 0,
    /// Redis Sentinel. The hosts are sentinels, which name the master of `redis_master_name`.
    /// TFRA's default when the key is absent.
    #[default]
    Sentinel = 1,
    /// One Redis server. Only the first host is used.
    Standalone = 2,
}

impl ConnectionMode {
    /// The mode for a `redis_connection_mode` code, or `None` if the code is not 0, 1 or 2.
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            0 => Some(Self::Cluster),
            1 => Some(Self::Sentinel),
            2 => Some(Self::Standalone),
            _ => None,
        }
    }

    /// The code written in the JSON config.
    pub fn code(self) -> i64 {
        self as i64
    }

    fn from_json(key: &str, value: &Value) -> Result<Self> {
        coded_field(
            key,
            value,
            Self::from_code,
            "redis_connection_mode (0 = Cluster, 1 = Sentinel, 2 = Standalone)",
        )
    }
}

/// What saving and restoring a table does (`table_store_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum StoreMode {
    /// Export and import go through TF tensors, so the checkpoint holds the table's data.
    Tensor = 0,
    /// Save DUMPs each bucket into a file under `model_lib_abs_dir`; restore RESTOREs them.
    /// The checkpoint holds no rows. TFRA's default.
    #[default]
    Files = 1,
    /// Nothing is saved or restored: the data lives only in Redis.
    Nothing = 2,
}

impl StoreMode {
    /// The mode for a `table_store_mode` code, or `None` if the code is not 0, 1 or 2.
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            0 => Some(Self::Tensor),
            1 => Some(Self::Files),
            2 => Some(Self::Nothing),
            _ => None,
        }
    }

    /// The code written in the JSON config.
    pub fn code(self) -> i64 {
        self as i64
    }

    fn from_json(key: &str, value: &Value) -> Result<Self> {
        coded_field(
            key,
            value,
            Self::from_code,
            "table_store_mode (0 = Tensor, 1 = Files, 2 = Nothing)",
        )
    }
}

/// The whole backend config. `Default` gives TFRA's C++ defaults (what applies when a key is
/// absent from the JSON), which differ in places from the examples in TFRA's docs.
///
/// Build one with [`RedisConfig::standalone`], [`RedisConfig::sentinel`] or
/// [`RedisConfig::cluster`], or read TFRA's JSON with [`RedisConfig::from_json_str`],
/// [`RedisConfig::from_path`] or [`RedisConfig::load`]. The struct is `#[non_exhaustive]`: new
/// settings may be added, so it cannot be written as a literal outside this crate; change the
/// public fields of a constructed value instead.
///
/// Field names are the JSON keys, and fields hold the JSON values in the JSON's units: TFRA's
/// timeouts are milliseconds, `redis_connection_lifetime` is minutes, keys ending in `_ms` or
/// `_in_seconds` say their unit. That way a config round-trips through TFRA's JSON unchanged and
/// each field is documented once. Rust code should not have to remember the units: every
/// timeout has an accessor returning a [`std::time::Duration`] ([`RedisConfig::socket_timeout`],
/// [`RedisConfig::connect_timeout`], [`RedisConfig::wait_timeout`],
/// [`RedisConfig::retry_deadline`], [`RedisConfig::connection_lifetime`], ...) and a `with_*`
/// setter taking one, which rounds a sub-millisecond remainder up so that a non-zero duration
/// never becomes 0 ("no limit" for the timeouts). `Debug` hides the passwords; there is no
/// `Display`.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Cluster, Sentinel or Standalone. Default: Sentinel.
    pub redis_connection_mode: ConnectionMode,
    /// Sentinel master group name. Default `"master"`.
    pub redis_master_name: String,
    /// Cluster seed nodes, sentinels, or (Standalone) the server as the first entry.
    /// Default `["127.0.0.1"]`.
    pub redis_host_ip: Vec<String>,
    /// One port per entry of `redis_host_ip`. Default `[6379]`.
    pub redis_host_port: Vec<u16>,
    /// ACL user. Default `"default"`.
    pub redis_user: String,
    /// Password for `redis_user`. Default empty (no AUTH).
    pub redis_password: String,
    /// Database number (`SELECT`); only 0 makes sense in Cluster mode. Default 0.
    pub redis_db: u32,
    /// Serve reads from replicas. Default false.
    pub redis_read_access_slave: bool,
    /// TCP keepalive on every connection. Default false.
    pub redis_connect_keep_alive: bool,
    /// Connect timeout, ms. Default 1000.
    pub redis_connect_timeout: u64,
    /// Read/write timeout of one command, ms. Default 1000.
    pub redis_socket_timeout: u64,
    /// Connections per pool; each table has a read and a write pool. Default 20.
    pub redis_conn_pool_size: u32,
    /// How long to wait for a free pooled connection, ms. Default 100000000, which TFRA
    /// means as "forever".
    pub redis_wait_timeout: u64,
    /// Pooled connections older than this are reopened, in **minutes**. 0 means never, as in
    /// redis-plus-plus. At most `u64::MAX / 60`, so converting to seconds cannot overflow.
    /// Default 100.
    pub redis_connection_lifetime: u64,
    /// User for the sentinels (TFRA parsed it but never used it). Default `"default"`.
    pub redis_sentinel_user: String,
    /// Password for the sentinels. Default empty.
    pub redis_sentinel_password: String,
    /// Connect timeout to a sentinel, ms. Default 1000.
    pub redis_sentinel_connect_timeout: u64,
    /// Command timeout to a sentinel, ms. Default 1000.
    pub redis_sentinel_socket_timeout: u64,
    /// Bucket count of the layout to import from, already resolved: a JSON value <= 0 (TFRA's
    /// default is -1) or an absent key means "same as `storage_slice`".
    pub storage_slice_import: u32,
    /// Number of buckets (Redis hashes) per table, 1 to [`MAX_STORAGE_SLICE`]; need not be a
    /// power of two. Default 1.
    pub storage_slice: u32,
    /// Cluster mode: choose an integer key's bucket by CRC-32C instead of the low 32 bits.
    /// Default false.
    pub using_hash_storage_slice: bool,
    /// Most keys sent in one command per bucket. Default 1024.
    pub keys_sending_size: usize,
    /// Key prefix is TFRA's 16-byte "MD5" of `model_tag:name` instead of the text. Default false.
    pub using_md5_prefix_name: bool,
    /// Cluster mode: compute bucket tags from the fixed even-spread formula instead of the live
    /// topology. Default false.
    pub redis_hash_tags_hypodispersion: bool,
    /// Model tag of the data to import from. Default `"test"`.
    pub model_tag_import: String,
    /// Explicit hash tags of the import buckets, digits only (braces stripped). Empty, or exactly
    /// `storage_slice_import` entries. Default empty (tags are generated).
    pub redis_hash_tags_import: Vec<String>,
    /// Model tag used for all reads and writes. Default `"test"`.
    pub model_tag_runtime: String,
    /// Explicit hash tags of the runtime buckets, digits only (braces stripped). Empty, or exactly
    /// `storage_slice` entries. Default empty (tags are generated).
    pub redis_hash_tags_runtime: Vec<String>,
    /// TTL in seconds put on the table's keys when the table is closed. `None` (a negative JSON
    /// value) means no TTL; `Some(0)` makes Redis delete the keys at close, as EXPIRE 0 does in
    /// TFRA. Default `Some(604800)` (7 days).
    pub expire_model_tag_in_seconds: Option<u64>,
    /// What save/restore does. Default Files.
    pub table_store_mode: StoreMode,
    /// Directory for the Files store mode, as written (not normalised here). Default `"/tmp/"`.
    pub model_lib_abs_dir: String,

    // Our additions. TFRA ignores them, so a file that uses them still opens in TFRA.
    /// Connect with TLS. Default false.
    pub redis_tls: bool,
    /// PEM file of the CA that signed the server certificates; empty: the system roots.
    pub redis_tls_ca_cert: String,
    /// PEM client certificate for mutual TLS; empty: none. Needs `redis_tls_key`.
    pub redis_tls_cert: String,
    /// PEM private key of `redis_tls_cert`; empty: none.
    pub redis_tls_key: String,
    /// How long transient failures (dropped connections, timeouts, failovers) are retried before
    /// the error is raised, in ms. 0: no retry. Default 30000.
    pub redis_retry_deadline_ms: u64,
    /// When true, a lookup that fails returns the default values, as TFRA did, instead of
    /// raising. Default false.
    pub redis_lookup_defaults_on_error: bool,
    /// After each write, WAIT until this many replicas have it. 0: off (default).
    pub redis_durable_write_replicas: u32,
    /// Timeout of that WAIT, in ms; must be >= 1 when replicas are awaited. Default 1000.
    pub redis_durable_write_timeout_ms: u64,
    /// Keep all optimizer slots of an embedding in one table (`<params>/<wrapper>/slots`, one
    /// row per id holding every slot) instead of one table per slot as TFRA does: an optimizer
    /// step then reads and writes two tables instead of one per slot. Default false (TFRA's
    /// layout); the embedding table itself is the same either way.
    pub redis_fused_slots: bool,
    /// Keep an id's optimizer slots in the same hash field as its row: the stored value is
    /// `row || slot1 || slot2 ...` (each `dim` elements of the value dtype), so an optimizer
    /// step reads and writes one field per id. Reads of such a table return the row prefix
    /// (a stored value may be any whole number of rows long), writes of rows alone keep the
    /// stored slots (a server-side script). TFRA cannot read these values. Default false;
    /// cannot be combined with `redis_fused_slots`.
    pub redis_fused_row: bool,
    /// Bytes of read buffer a pooled connection keeps for its next pipeline. A bigger read
    /// buffer (a 65,536-row lookup of dim 128 reads about 35 MB) is freed once its replies are
    /// dropped, so a burst of big lookups does not leave that much per connection behind;
    /// the thread's command buffer follows the same bound. Reusing a buffer saves a page
    /// fault per 4 KB of the next reply, so raise this when memory is plentiful and big
    /// batches come back to back. Default 4194304 (4 MiB).
    pub redis_client_buffer_keep_bytes: u64,
    /// Pooled connections idle longer than this are closed at the pool's next checkout (the
    /// pool runs no thread of its own), in ms. 0: never. Default 300000 (5 minutes).
    pub redis_conn_idle_timeout_ms: u64,
    /// Let an optimizer step's write ([`Table::insert_with_slots`](crate::Table::insert_with_slots),
    /// [`Table::insert_together`](crate::Table::insert_together)) wait in the client for the
    /// next command on its buckets (the next step's lookup), which carries it in the same
    /// pipeline: one round trip per step instead of two. Every command of this process sees
    /// the write (it carries it, or waits while another command does); other clients see it
    /// within this many ms, when a background thread sends what nobody carried. 0: off
    /// (default). Cannot be combined with `redis_durable_write_replicas`, which waits for
    /// every write.
    pub redis_write_behind_ms: u64,
}

/// **TFRA's C++ defaults, meant for the JSON reader**: Sentinel mode (master group `master`)
/// on `127.0.0.1:6379`, model tag `test`, one bucket, the `Files` store mode under `/tmp/`.
///
/// These are what a key absent from a TFRA JSON file means, so the reader starts from them.
/// A Rust program should start from [`RedisConfig::standalone`], [`RedisConfig::sentinel`] or
/// [`RedisConfig::cluster`] instead, which name the mode and the servers explicitly. (Pointed
/// at a plain server, Sentinel mode falls back to a direct connection with a warning, as TFRA
/// does.)
impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            redis_connection_mode: ConnectionMode::Sentinel,
            redis_master_name: "master".into(),
            redis_host_ip: vec!["127.0.0.1".into()],
            redis_host_port: vec![6379],
            redis_user: "default".into(),
            redis_password: String::new(),
            redis_db: 0,
            redis_read_access_slave: false,
            redis_connect_keep_alive: false,
            redis_connect_timeout: 1000,
            redis_socket_timeout: 1000,
            redis_conn_pool_size: 20,
            redis_wait_timeout: 100_000_000,
            redis_connection_lifetime: 100,
            redis_sentinel_user: "default".into(),
            redis_sentinel_password: String::new(),
            redis_sentinel_connect_timeout: 1000,
            redis_sentinel_socket_timeout: 1000,
            storage_slice_import: 1,
            storage_slice: 1,
            using_hash_storage_slice: false,
            keys_sending_size: 1024,
            using_md5_prefix_name: false,
            redis_hash_tags_hypodispersion: false,
            model_tag_import: "test".into(),
            redis_hash_tags_import: Vec::new(),
            model_tag_runtime: "test".into(),
            redis_hash_tags_runtime: Vec::new(),
            expire_model_tag_in_seconds: Some(604_800),
            table_store_mode: StoreMode::Files,
            model_lib_abs_dir: "/tmp/".into(),
            redis_tls: false,
            redis_tls_ca_cert: String::new(),
            redis_tls_cert: String::new(),
            redis_tls_key: String::new(),
            redis_retry_deadline_ms: 30_000,
            redis_lookup_defaults_on_error: false,
            redis_durable_write_replicas: 0,
            redis_durable_write_timeout_ms: 1000,
            redis_fused_slots: false,
            redis_fused_row: false,
            redis_client_buffer_keep_bytes: 4 << 20,
            redis_conn_idle_timeout_ms: 300_000,
            redis_write_behind_ms: 0,
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured so that a new field cannot be forgotten here (the compiler insists).
        let Self {
            redis_connection_mode,
            redis_master_name,
            redis_host_ip,
            redis_host_port,
            redis_user,
            redis_password,
            redis_db,
            redis_read_access_slave,
            redis_connect_keep_alive,
            redis_connect_timeout,
            redis_socket_timeout,
            redis_conn_pool_size,
            redis_wait_timeout,
            redis_connection_lifetime,
            redis_sentinel_user,
            redis_sentinel_password,
            redis_sentinel_connect_timeout,
            redis_sentinel_socket_timeout,
            storage_slice_import,
            storage_slice,
            using_hash_storage_slice,
            keys_sending_size,
            using_md5_prefix_name,
            redis_hash_tags_hypodispersion,
            model_tag_import,
            redis_hash_tags_import,
            model_tag_runtime,
            redis_hash_tags_runtime,
            expire_model_tag_in_seconds,
            table_store_mode,
            model_lib_abs_dir,
            redis_tls,
            redis_tls_ca_cert,
            redis_tls_cert,
            redis_tls_key,
            redis_retry_deadline_ms,
            redis_lookup_defaults_on_error,
            redis_durable_write_replicas,
            redis_durable_write_timeout_ms,
            redis_fused_slots,
            redis_fused_row,
            redis_client_buffer_keep_bytes,
            redis_conn_idle_timeout_ms,
            redis_write_behind_ms,
        } = self;
        // Configs end up in logs and error reports; a password must never follow them there.
        let hide = |password: &str| if password.is_empty() { "" } else { "***" };
        f.debug_struct("RedisConfig")
            .field("redis_connection_mode", redis_connection_mode)
            .field("redis_master_name", redis_master_name)
            .field("redis_host_ip", redis_host_ip)
            .field("redis_host_port", redis_host_port)
            .field("redis_user", redis_user)
            .field("redis_password", &hide(redis_password))
            .field("redis_db", redis_db)
            .field("redis_read_access_slave", redis_read_access_slave)
            .field("redis_connect_keep_alive", redis_connect_keep_alive)
            .field("redis_connect_timeout", redis_connect_timeout)
            .field("redis_socket_timeout", redis_socket_timeout)
            .field("redis_conn_pool_size", redis_conn_pool_size)
            .field("redis_wait_timeout", redis_wait_timeout)
            .field("redis_connection_lifetime", redis_connection_lifetime)
            .field("redis_sentinel_user", redis_sentinel_user)
            .field("redis_sentinel_password", &hide(redis_sentinel_password))
            .field(
                "redis_sentinel_connect_timeout",
                redis_sentinel_connect_timeout,
            )
            .field(
                "redis_sentinel_socket_timeout",
                redis_sentinel_socket_timeout,
            )
            .field("storage_slice_import", storage_slice_import)
            .field("storage_slice", storage_slice)
            .field("using_hash_storage_slice", using_hash_storage_slice)
            .field("keys_sending_size", keys_sending_size)
            .field("using_md5_prefix_name", using_md5_prefix_name)
            .field(
                "redis_hash_tags_hypodispersion",
                redis_hash_tags_hypodispersion,
            )
            .field("model_tag_import", model_tag_import)
            .field("redis_hash_tags_import", redis_hash_tags_import)
            .field("model_tag_runtime", model_tag_runtime)
            .field("redis_hash_tags_runtime", redis_hash_tags_runtime)
            .field("expire_model_tag_in_seconds", expire_model_tag_in_seconds)
            .field("table_store_mode", table_store_mode)
            .field("model_lib_abs_dir", model_lib_abs_dir)
            .field("redis_tls", redis_tls)
            .field("redis_tls_ca_cert", redis_tls_ca_cert)
            .field("redis_tls_cert", redis_tls_cert)
            .field("redis_tls_key", redis_tls_key)
            .field("redis_retry_deadline_ms", redis_retry_deadline_ms)
            .field(
                "redis_lookup_defaults_on_error",
                redis_lookup_defaults_on_error,
            )
            .field("redis_durable_write_replicas", redis_durable_write_replicas)
            .field(
                "redis_durable_write_timeout_ms",
                redis_durable_write_timeout_ms,
            )
            .field("redis_fused_slots", redis_fused_slots)
            .field("redis_fused_row", redis_fused_row)
            .field(
                "redis_client_buffer_keep_bytes",
                redis_client_buffer_keep_bytes,
            )
            .field("redis_conn_idle_timeout_ms", redis_conn_idle_timeout_ms)
            .field("redis_write_behind_ms", redis_write_behind_ms)
            .finish()
    }
}
