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

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The environment variable read when no other is named, and always as the second choice.
pub const DEFAULT_CONFIG_ENV: &str = "TFRA_REDIS_CONFIG_PATH";

/// The file looked for when a config location is a directory.
pub const CONFIG_FILE_NAME: &str = "redis_config.json";

/// The most buckets a table can have (`storage_slice`, `storage_slice_import`): one per
/// cluster slot. Bucket tags are picked from TFRA's per-slot table, which has no entry beyond.
pub const MAX_STORAGE_SLICE: u32 = crate::layout::SLOT_COUNT as u32;

/// How tfra-redis reaches Redis (`redis_connection_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
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

/// An integer field whose values name an enum variant. The message keeps TFRA's wording
/// ("<n> is illegal redis_connection_mode") so that messages users already search for match.
fn coded_field<T>(
    key: &str,
    value: &Value,
    from_code: fn(i64) -> Option<T>,
    what: &str,
) -> Result<T> {
    let code = json_integer(key, value)?;
    i64::try_from(code)
        .ok()
        .and_then(from_code)
        .ok_or_else(|| Error::field(key, format!("is {code}: {code} is illegal {what}")))
}

/// The whole backend config. `Default` gives TFRA's C++ defaults (what applies when a key is
/// absent from the JSON), which differ in places from the examples in TFRA's docs.
///
/// Field names are the JSON keys, and fields hold the JSON values in the JSON's units: TFRA's
/// timeouts are milliseconds, `redis_connection_lifetime` is minutes, keys ending in `_ms` or
/// `_in_seconds` say their unit. Consumers convert to `Duration` and decide what 0 means for their
/// library (the backend reads a 0 timeout as "no limit"). `Debug` hides the passwords; there is
/// no `Display`.
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
}

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
            redis_client_buffer_keep_bytes: 4 << 20,
            redis_conn_idle_timeout_ms: 300_000,
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
            redis_client_buffer_keep_bytes,
            redis_conn_idle_timeout_ms,
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
            .field(
                "redis_client_buffer_keep_bytes",
                redis_client_buffer_keep_bytes,
            )
            .field("redis_conn_idle_timeout_ms", redis_conn_idle_timeout_ms)
            .finish()
    }
}

impl RedisConfig {
    /// Parses a config from JSON text. `source_name` (a path, or something like `<string>`) only
    /// appears in error messages. Returns the config and warnings (unknown keys, ignored settings)
    /// that the caller should log.
    ///
    /// Keys are checked in TFRA's order, so the first bad key is the one TFRA would report.
    /// A duplicate key counts once, with its last value, as in TFRA.
    pub fn from_json_str(text: &str, source_name: &str) -> Result<(Self, Vec<String>)> {
        // Some editors start UTF-8 files with a BOM, which is not JSON.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let syntax_error = |message: String, (line, column): (usize, usize)| Error::ConfigSyntax {
            source_name: source_name.to_owned(),
            message,
            line,
            column,
        };
        if text.trim().is_empty() {
            return Err(syntax_error(
                "the config is empty; expected a JSON object".into(),
                (1, 1),
            ));
        }
        let value: Value = serde_json::from_str(text).map_err(|e| {
            // serde_json appends the position to its message; ours carries it separately.
            let message = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            let message = message.strip_suffix(&suffix).unwrap_or(&message).to_owned();
            syntax_error(message, (e.line(), e.column().max(1)))
        })?;
        match value {
            Value::Object(object) => Self::from_object(&object),
            other => Err(syntax_error(
                format!(
                    "the top level must be a JSON object, found {}",
                    json_type_name(&other)
                ),
                first_token_position(text),
            )),
        }
    }

    /// Reads and parses the config file at `path` (see [`RedisConfig::from_json_str`]).
    pub fn from_path(path: &Path) -> Result<(Self, Vec<String>)> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            action: "reading",
            path: path.to_path_buf(),
            source,
        })?;
        if text.trim().is_empty() {
            return Err(Error::ConfigPath {
                message: format!("{} is empty", path.display()),
            });
        }
        let (config, mut warnings) = Self::from_json_str(&text, &path.display().to_string())?;
        if let Some(w) = Self::readable_secret_warning(path, &config) {
            warnings.push(w);
        }
        Ok((config, warnings))
    }

    /// A password in a file that other users can read is a leak waiting to happen; say so (the file
    /// still loads: refusing would break deployments that rely on container isolation instead).
    fn readable_secret_warning(path: &Path, config: &RedisConfig) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        if config.redis_password.is_empty() && config.redis_sentinel_password.is_empty() {
            return None;
        }
        let mode = std::fs::metadata(path).ok()?.permissions().mode();
        (mode & 0o077 != 0).then(|| {
            format!(
                "{} holds a Redis password and is readable by other users (mode {:o}); \
             chmod 600 it",
                path.display(),
                mode & 0o777
            )
        })
    }

    /// Finds the config file (see [`resolve_config_path`]) and parses it. Returns the config, the
    /// path it came from, and warnings to log.
    pub fn load(
        env_var_name: Option<&str>,
        abs_dir: Option<&str>,
    ) -> Result<(Self, PathBuf, Vec<String>)> {
        let path = resolve_config_path(env_var_name, abs_dir)?;
        let (config, warnings) = Self::from_path(&path)?;
        Ok((config, path, warnings))
    }

    /// The config as a JSON object with every key, TFRA's and ours. Parsing it gives back an
    /// equal config. Hash tags are written in braces, as TFRA's docs show them.
    ///
    /// The passwords are included: this is the config itself, for writing it back to a file or
    /// passing it on, not a log message. Log the `Debug` form instead, which hides them.
    pub fn to_json(&self) -> Value {
        Value::Object(
            FIELDS
                .iter()
                .map(|field| (field.key.to_owned(), (field.emit)(self)))
                .collect(),
        )
    }

    /// Checks the rules that span several keys, and the ones a config built in code (rather than
    /// parsed) could break. Parsing already calls it.
    pub fn validate(&self) -> Result<()> {
        for (key, n) in [
            ("storage_slice", self.storage_slice),
            ("storage_slice_import", self.storage_slice_import),
        ] {
            if !(1..=MAX_STORAGE_SLICE).contains(&n) {
                return Err(bucket_count_error(key, n.into()));
            }
        }
        for (key, n) in [
            ("keys_sending_size", self.keys_sending_size as u64),
            ("redis_conn_pool_size", u64::from(self.redis_conn_pool_size)),
        ] {
            if n == 0 {
                return Err(Error::field(key, "must be at least 1, got 0"));
            }
        }
        if self.redis_host_ip.is_empty() {
            return Err(Error::field("redis_host_ip", "must list at least one host"));
        }
        if let Some(i) = self.redis_host_ip.iter().position(String::is_empty) {
            return Err(Error::field("redis_host_ip", format!("entry {i} is empty")));
        }
        if self.redis_host_port.len() != self.redis_host_ip.len() {
            return Err(Error::field(
                "redis_host_port",
                format!(
                    "has {} entries but redis_host_ip has {}; give one port per host",
                    self.redis_host_port.len(),
                    self.redis_host_ip.len()
                ),
            ));
        }
        if let Some(i) = self.redis_host_port.iter().position(|&p| p == 0) {
            return Err(Error::field(
                "redis_host_port",
                format!("entry {i} must be between 1 and 65535, got 0"),
            ));
        }
        for (key, tag) in [
            ("model_tag_import", &self.model_tag_import),
            ("model_tag_runtime", &self.model_tag_runtime),
        ] {
            if tag.is_empty() {
                return Err(Error::field(key, "must not be empty"));
            }
        }
        check_hash_tags(
            "redis_hash_tags_import",
            &self.redis_hash_tags_import,
            "storage_slice_import",
            self.storage_slice_import,
        )?;
        check_hash_tags(
            "redis_hash_tags_runtime",
            &self.redis_hash_tags_runtime,
            "storage_slice",
            self.storage_slice,
        )?;
        if self.redis_tls_cert.is_empty() != self.redis_tls_key.is_empty() {
            return Err(Error::field(
                "redis_tls_cert",
                "and redis_tls_key must be given together (a client certificate needs its key)",
            ));
        }
        // WAIT with timeout 0 blocks until enough replicas answer, possibly forever.
        if self.redis_durable_write_replicas > 0 && self.redis_durable_write_timeout_ms == 0 {
            return Err(Error::field(
                "redis_durable_write_timeout_ms",
                "must be at least 1 when redis_durable_write_replicas > 0 \
                 (WAIT with timeout 0 can block forever)",
            ));
        }
        Ok(())
    }

    fn from_object(object: &Map<String, Value>) -> Result<(Self, Vec<String>)> {
        let mut config = Self {
            // 0 stands for TFRA's -1, "same as storage_slice"; resolved below because
            // storage_slice is parsed after storage_slice_import.
            storage_slice_import: 0,
            ..Self::default()
        };
        for field in FIELDS {
            if let Some(value) = object.get(field.key) {
                (field.parse)(&mut config, value)?;
            }
        }
        if config.storage_slice_import == 0 {
            config.storage_slice_import = config.storage_slice;
        }
        config.validate()?;

        let mut warnings = Vec::new();
        let unknown: Vec<&str> = object
            .keys()
            .map(String::as_str)
            .filter(|key| !FIELDS.iter().any(|field| field.key == *key))
            .collect();
        if !unknown.is_empty() {
            warnings.push(format!(
                "unknown redis config field(s) ignored: {}",
                unknown.join(", ")
            ));
        }
        let given: Vec<&str> = [
            ("redis_tls_ca_cert", &config.redis_tls_ca_cert),
            ("redis_tls_cert", &config.redis_tls_cert),
            ("redis_tls_key", &config.redis_tls_key),
        ]
        .into_iter()
        .filter(|(_, file)| !file.is_empty())
        .map(|(key, _)| key)
        .collect();
        if !config.redis_tls && !given.is_empty() {
            warnings.push(format!(
                "{} ignored because redis_tls is false",
                given.join(", ")
            ));
        }
        Ok((config, warnings))
    }
}

/// One JSON key: how to read it into its field and how to write it back.
struct Field {
    key: &'static str,
    parse: fn(&mut RedisConfig, &Value) -> Result<()>,
    emit: fn(&RedisConfig) -> Value,
}

/// A [`Field`] whose key is the field's name, so the two cannot drift apart.
/// `$parse(key, value) -> Result<T>` reads the JSON, `$emit(&T) -> Value` writes it.
macro_rules! field {
    ($name:ident, $parse:expr, $emit:expr) => {
        Field {
            key: stringify!($name),
            parse: |config, value| {
                config.$name = $parse(stringify!($name), value)?;
                Ok(())
            },
            emit: |config| $emit(&config.$name),
        }
    };
}

/// Every key, in TFRA's parse order, then ours.
const FIELDS: &[Field] = &[
    field!(
        redis_connection_mode,
        ConnectionMode::from_json,
        |mode: &ConnectionMode| Value::from(mode.code())
    ),
    field!(redis_master_name, string, json),
    field!(redis_host_ip, string_array, json),
    field!(redis_host_port, ports, json),
    field!(redis_user, string, json),
    field!(redis_password, string, json),
    field!(redis_db, |k, v| integer(k, v, 0, u32::MAX.into()), json),
    field!(redis_read_access_slave, boolean, json),
    field!(redis_connect_keep_alive, boolean, json),
    field!(redis_connect_timeout, millis, json),
    field!(redis_socket_timeout, millis, json),
    field!(
        redis_conn_pool_size,
        |k, v| integer(k, v, 1, u32::MAX.into()),
        json
    ),
    field!(redis_wait_timeout, millis, json),
    field!(redis_connection_lifetime, minutes, json),
    field!(redis_sentinel_user, string, json),
    field!(redis_sentinel_password, string, json),
    field!(redis_sentinel_connect_timeout, millis, json),
    field!(redis_sentinel_socket_timeout, millis, json),
    field!(storage_slice_import, slice_import, json),
    field!(storage_slice, bucket_count, json),
    field!(using_hash_storage_slice, boolean, json),
    field!(
        keys_sending_size,
        |k, v| integer(k, v, 1, usize::MAX as i128),
        json
    ),
    field!(using_md5_prefix_name, boolean, json),
    field!(redis_hash_tags_hypodispersion, boolean, json),
    field!(model_tag_import, string, json),
    field!(redis_hash_tags_import, hash_tags, emit_hash_tags),
    field!(model_tag_runtime, string, json),
    field!(redis_hash_tags_runtime, hash_tags, emit_hash_tags),
    field!(expire_model_tag_in_seconds, expiry, emit_expiry),
    field!(
        table_store_mode,
        StoreMode::from_json,
        |mode: &StoreMode| Value::from(mode.code())
    ),
    field!(model_lib_abs_dir, string, json),
    field!(redis_tls, boolean, json),
    field!(redis_tls_ca_cert, string, json),
    field!(redis_tls_cert, string, json),
    field!(redis_tls_key, string, json),
    field!(redis_retry_deadline_ms, millis, json),
    field!(redis_lookup_defaults_on_error, boolean, json),
    field!(
        redis_durable_write_replicas,
        |k, v| integer(k, v, 0, u32::MAX.into()),
        json
    ),
    field!(redis_durable_write_timeout_ms, millis, json),
    field!(redis_fused_slots, boolean, json),
    field!(
        redis_client_buffer_keep_bytes,
        |k, v| integer(k, v, 0, i64::MAX.into()),
        json
    ),
    field!(redis_conn_idle_timeout_ms, millis, json),
];

// ---- Readers: JSON value -> typed value, with TFRA's type messages and our range checks. ----

fn type_error(key: &str, type_word: &str) -> Error {
    Error::field(key, format!("should be json {type_word}"))
}

fn range_error(key: &str, n: i128, min: i128, max: i128) -> Error {
    Error::field(key, format!("must be between {min} and {max}, got {n}"))
}

/// A JSON integer, widened so that every i64 and u64 fits. Numbers with a fraction or an
/// exponent are not integers, as in TFRA.
fn json_integer(key: &str, value: &Value) -> Result<i128> {
    value
        .as_i64()
        .map(i128::from)
        .or_else(|| value.as_u64().map(i128::from))
        .ok_or_else(|| type_error(key, "integer"))
}

fn integer<T: TryFrom<i128>>(key: &str, value: &Value, min: i128, max: i128) -> Result<T> {
    let n = json_integer(key, value)?;
    if !(min..=max).contains(&n) {
        return Err(range_error(key, n, min, max));
    }
    T::try_from(n).map_err(|_| range_error(key, n, min, max))
}

fn boolean(key: &str, value: &Value) -> Result<bool> {
    value.as_bool().ok_or_else(|| type_error(key, "boolean"))
}

fn string(key: &str, value: &Value) -> Result<String> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| type_error(key, "string"))
}

fn string_array(key: &str, value: &Value) -> Result<Vec<String>> {
    let strings = value.as_array().and_then(|items| {
        items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect()
    });
    strings.ok_or_else(|| type_error(key, "string array"))
}

fn ports(key: &str, value: &Value) -> Result<Vec<u16>> {
    let numbers: Option<Vec<i128>> = value
        .as_array()
        .and_then(|items| items.iter().map(|v| json_integer(key, v).ok()).collect());
    let numbers = numbers.ok_or_else(|| type_error(key, "integer array"))?;
    numbers
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            u16::try_from(n)
                .ok()
                .filter(|&port| port != 0)
                .ok_or_else(|| {
                    Error::field(
                        key,
                        format!("entry {i} must be between 1 and 65535, got {n}"),
                    )
                })
        })
        .collect()
}

/// A time span in ms. Negative spans make no sense (TFRA wrapped them around).
fn millis(key: &str, value: &Value) -> Result<u64> {
    integer(key, value, 0, u64::MAX.into())
}

/// A time span in minutes, bounded so that consumers can multiply by 60 without overflow.
fn minutes(key: &str, value: &Value) -> Result<u64> {
    integer(key, value, 0, (u64::MAX / 60).into())
}

/// The one message for a bucket count out of range, whether it was parsed or built in code.
fn bucket_count_error(key: &str, n: i128) -> Error {
    Error::field(
        key,
        format!(
            "must be between 1 and {MAX_STORAGE_SLICE} (one bucket per cluster slot at most), \
             got {n}"
        ),
    )
}

fn bucket_count(key: &str, value: &Value) -> Result<u32> {
    let n = json_integer(key, value)?;
    u32::try_from(n)
        .ok()
        .filter(|n| (1..=MAX_STORAGE_SLICE).contains(n))
        .ok_or_else(|| bucket_count_error(key, n))
}

/// TFRA: a value <= 0 means "same as storage_slice", marked 0 until that is known.
fn slice_import(key: &str, value: &Value) -> Result<u32> {
    let n = json_integer(key, value)?;
    if n <= 0 {
        return Ok(0);
    }
    bucket_count(key, value)
}

/// A negative TTL disables expiry (TFRA's rule); 0 is kept, it deletes at close.
fn expiry(key: &str, value: &Value) -> Result<Option<u64>> {
    let n: i64 = integer(key, value, i64::MIN.into(), i64::MAX.into())?;
    Ok(u64::try_from(n).ok())
}

/// Tags are stored as bare digits; TFRA's docs write them in braces and its code accepts both.
/// The digits check itself is in [`check_hash_tags`], shared with configs built in code.
fn hash_tags(key: &str, value: &Value) -> Result<Vec<String>> {
    let tags = string_array(key, value)?;
    Ok(tags
        .into_iter()
        .map(
            |tag| match tag.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                Some(inner) => inner.to_owned(),
                None => tag,
            },
        )
        .collect())
}

/// Explicit tags must be all-digit, because TFRA finds buckets with a SCAN pattern that only
/// matches numeric tags, and one per bucket, because TFRA silently fell back to generated tags
/// otherwise, putting the data under keys the user did not ask for.
fn check_hash_tags(key: &str, tags: &[String], count_key: &str, count: u32) -> Result<()> {
    if !tags.is_empty() && tags.len() != count as usize {
        return Err(Error::field(
            key,
            format!(
                "has {} entries but {count_key} is {count}; give exactly {count} tags or none",
                tags.len()
            ),
        ));
    }
    if let Some((i, tag)) = tags
        .iter()
        .enumerate()
        .find(|(_, tag)| tag.is_empty() || !tag.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(Error::field(
            key,
            format!("entry {i} ({tag:?}) is not a hash tag: expected digits, like \"{{3560}}\""),
        ));
    }
    Ok(())
}

// ---- Writers: typed value -> JSON value, the inverse of the readers. ----

fn json<T: Clone + Into<Value>>(value: &T) -> Value {
    value.clone().into()
}

fn emit_expiry(ttl: &Option<u64>) -> Value {
    match ttl {
        Some(seconds) => Value::from(*seconds),
        None => Value::from(-1),
    }
}

fn emit_hash_tags(tags: &[String]) -> Value {
    tags.iter()
        .map(|tag| format!("{{{tag}}}"))
        .collect::<Vec<_>>()
        .into()
}

fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// 1-based line and column of the first non-blank character, where a non-object top level starts.
fn first_token_position(text: &str) -> (usize, usize) {
    let mut line = 1;
    let mut column = 1;
    for c in text.chars() {
        match c {
            '\n' => {
                line += 1;
                column = 1;
            }
            c if c.is_whitespace() => column += 1,
            _ => break,
        }
    }
    (line, column)
}

// ---- Finding the file. ----

/// Finds the config file, in the order TFRA's design note asks for:
///
/// 1. the environment variable named `env_var_name` (`TFRA_REDIS_CONFIG_PATH` when `None` or empty),
/// 2. `TFRA_REDIS_CONFIG_PATH`,
/// 3. `abs_dir`, TFRA's `redis_config_abs_dir`.
///
/// Each location may be a file, used as is, or a directory, meaning `<dir>/redis_config.json`
/// (TFRA's docs show both forms for `redis_config_abs_dir`). A location is skipped when the
/// variable is unset or the file is missing or empty; the next one is tried. This is the design
/// note's rule; TFRA's code failed instead when a set variable named a missing file.
///
/// If nothing fits, the [`Error::ConfigPath`] lists every variable (with its value) and path tried,
/// and why each was skipped.
pub fn resolve_config_path(env_var_name: Option<&str>, abs_dir: Option<&str>) -> Result<PathBuf> {
    resolve_config_path_with(
        |name| std::env::var_os(name).map(|value| value.to_string_lossy().into_owned()),
        env_var_name,
        abs_dir,
    )
}

/// [`resolve_config_path`] with the environment read through `env` (name -> value), so that
/// callers and tests can supply their own.
pub fn resolve_config_path_with(
    env: impl Fn(&str) -> Option<String>,
    env_var_name: Option<&str>,
    abs_dir: Option<&str>,
) -> Result<PathBuf> {
    let first = env_var_name
        .filter(|name| !name.is_empty())
        .unwrap_or(DEFAULT_CONFIG_ENV);
    let mut names = vec![first];
    if first != DEFAULT_CONFIG_ENV {
        names.push(DEFAULT_CONFIG_ENV);
    }

    let mut tried = Vec::new();
    for name in names {
        match env(name) {
            None => tried.push(format!("${name} is unset")),
            Some(value) => match config_file_at(Path::new(&value)) {
                Ok(path) => return Ok(path),
                Err(why) => tried.push(format!("${name}={value:?}: {why}")),
            },
        }
    }
    match abs_dir.filter(|dir| !dir.is_empty()) {
        None => tried.push("redis_config_abs_dir is not given".to_owned()),
        Some(dir) => match config_file_at(Path::new(dir)) {
            Ok(path) => return Ok(path),
            Err(why) => tried.push(format!("redis_config_abs_dir {dir:?}: {why}")),
        },
    }
    Err(Error::ConfigPath {
        message: format!(
            "tried {}; point one of them to a non-empty JSON config file",
            tried.join("; ")
        ),
    })
}

/// The usable config file at `location` (the file itself, or `redis_config.json` in a
/// directory), or why there is none.
fn config_file_at(location: &Path) -> std::result::Result<PathBuf, String> {
    let is_dir = location.is_dir();
    let path = if is_dir {
        location.join(CONFIG_FILE_NAME)
    } else {
        location.to_path_buf()
    };
    match std::fs::metadata(&path) {
        // TFRA also rejected 0-byte files here, before parsing.
        Ok(meta) if meta.is_file() && meta.len() > 0 => Ok(path),
        Ok(meta) if meta.is_file() => Err(format!("{} is empty", path.display())),
        Ok(_) => Err(format!("{} is not a regular file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && is_dir => {
            Err(format!("the directory has no {CONFIG_FILE_NAME}"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("no such file".to_owned()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The config TFRA 0.8.1 used to write tests/fixtures/tfra-0.8.1-standalone
    /// (`tfra_config_used` in its manifest.json), copied so the test runs anywhere.
    const FIXTURE_CONFIG: &str = r#"{
      "redis_connection_mode": 2, "redis_master_name": "master",
      "redis_host_ip": ["127.0.0.1"], "redis_host_port": [6379],
      "redis_user": "default", "redis_password": "", "redis_db": 0,
      "redis_read_access_slave": false, "redis_connect_keep_alive": false,
      "redis_connect_timeout": 1000, "redis_socket_timeout": 1000,
      "redis_conn_pool_size": 20, "redis_wait_timeout": 100000000,
      "redis_connection_lifetime": 100, "storage_slice_import": 2, "storage_slice": 2,
      "using_hash_storage_slice": false, "keys_sending_size": 1024,
      "using_md5_prefix_name": false, "redis_hash_tags_hypodispersion": false,
      "model_tag_import": "fixture", "redis_hash_tags_import": [],
      "model_tag_runtime": "fixture", "redis_hash_tags_runtime": [],
      "expire_model_tag_in_seconds": 604800, "table_store_mode": 1,
      "model_lib_abs_dir": "model_lib/"
    }"#;

    /// TFRA's 31 keys, in the order its C++ parser reads them.
    const TFRA_KEYS: [&str; 31] = [
        "redis_connection_mode",
        "redis_master_name",
        "redis_host_ip",
        "redis_host_port",
        "redis_user",
        "redis_password",
        "redis_db",
        "redis_read_access_slave",
        "redis_connect_keep_alive",
        "redis_connect_timeout",
        "redis_socket_timeout",
        "redis_conn_pool_size",
        "redis_wait_timeout",
        "redis_connection_lifetime",
        "redis_sentinel_user",
        "redis_sentinel_password",
        "redis_sentinel_connect_timeout",
        "redis_sentinel_socket_timeout",
        "storage_slice_import",
        "storage_slice",
        "using_hash_storage_slice",
        "keys_sending_size",
        "using_md5_prefix_name",
        "redis_hash_tags_hypodispersion",
        "model_tag_import",
        "redis_hash_tags_import",
        "model_tag_runtime",
        "redis_hash_tags_runtime",
        "expire_model_tag_in_seconds",
        "table_store_mode",
        "model_lib_abs_dir",
    ];

    fn parse(text: &str) -> Result<(RedisConfig, Vec<String>)> {
        RedisConfig::from_json_str(text, "<test>")
    }

    fn parse_ok(text: &str) -> RedisConfig {
        parse(text).unwrap().0
    }

    fn parse_err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    /// A one-key config with the given JSON value.
    fn one(key: &str, value: Value) -> String {
        serde_json::json!({ key: value }).to_string()
    }

    fn field_error(err: Error) -> (String, String) {
        match err {
            Error::ConfigField { field, message } => (field, message),
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    // ---- defaults ----

    #[test]
    fn defaults_match_tfra_cpp() {
        let c = RedisConfig::default();
        assert_eq!(c.redis_connection_mode, ConnectionMode::Sentinel);
        assert_eq!(c.redis_master_name, "master");
        assert_eq!(c.redis_host_ip, ["127.0.0.1"]);
        assert_eq!(c.redis_host_port, [6379]);
        assert_eq!(c.redis_user, "default");
        assert_eq!(c.redis_password, "");
        assert_eq!(c.redis_db, 0);
        assert!(!c.redis_read_access_slave);
        assert!(!c.redis_connect_keep_alive);
        assert_eq!(c.redis_connect_timeout, 1000);
        assert_eq!(c.redis_socket_timeout, 1000);
        assert_eq!(c.redis_conn_pool_size, 20);
        assert_eq!(c.redis_wait_timeout, 100_000_000);
        assert_eq!(c.redis_connection_lifetime, 100);
        assert_eq!(c.redis_sentinel_user, "default");
        assert_eq!(c.redis_sentinel_password, "");
        assert_eq!(c.redis_sentinel_connect_timeout, 1000);
        assert_eq!(c.redis_sentinel_socket_timeout, 1000);
        assert_eq!(c.storage_slice_import, 1);
        assert_eq!(c.storage_slice, 1);
        assert!(!c.using_hash_storage_slice);
        assert_eq!(c.keys_sending_size, 1024);
        assert!(!c.using_md5_prefix_name);
        assert!(!c.redis_hash_tags_hypodispersion);
        assert_eq!(c.model_tag_import, "test");
        assert!(c.redis_hash_tags_import.is_empty());
        assert_eq!(c.model_tag_runtime, "test");
        assert!(c.redis_hash_tags_runtime.is_empty());
        assert_eq!(c.expire_model_tag_in_seconds, Some(604_800));
        assert_eq!(c.table_store_mode, StoreMode::Files);
        assert_eq!(c.model_lib_abs_dir, "/tmp/");
    }

    #[test]
    fn defaults_of_our_fields() {
        let c = RedisConfig::default();
        assert!(!c.redis_tls);
        assert_eq!(c.redis_tls_ca_cert, "");
        assert_eq!(c.redis_tls_cert, "");
        assert_eq!(c.redis_tls_key, "");
        assert_eq!(c.redis_retry_deadline_ms, 30_000);
        assert!(!c.redis_lookup_defaults_on_error);
        assert_eq!(c.redis_durable_write_replicas, 0);
        assert_eq!(c.redis_durable_write_timeout_ms, 1000);
        assert_eq!(c.redis_client_buffer_keep_bytes, 4 << 20);
        assert_eq!(c.redis_conn_idle_timeout_ms, 300_000);
    }

    #[test]
    fn default_is_valid() {
        RedisConfig::default().validate().unwrap();
    }

    #[test]
    fn empty_object_gives_defaults() {
        let (config, warnings) = parse("{}").unwrap();
        assert_eq!(config, RedisConfig::default());
        assert!(warnings.is_empty());
    }

    #[test]
    fn mode_codes_round_trip() {
        for mode in [
            ConnectionMode::Cluster,
            ConnectionMode::Sentinel,
            ConnectionMode::Standalone,
        ] {
            assert_eq!(ConnectionMode::from_code(mode.code()), Some(mode));
        }
        for mode in [StoreMode::Tensor, StoreMode::Files, StoreMode::Nothing] {
            assert_eq!(StoreMode::from_code(mode.code()), Some(mode));
        }
        assert_eq!(ConnectionMode::from_code(3), None);
        assert_eq!(StoreMode::from_code(-1), None);
    }

    // ---- real configs ----

    #[test]
    fn fixture_config_parses() {
        let (c, warnings) = parse(FIXTURE_CONFIG).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(c.redis_connection_mode, ConnectionMode::Standalone);
        assert_eq!(c.storage_slice, 2);
        assert_eq!(c.storage_slice_import, 2);
        assert_eq!(c.model_tag_runtime, "fixture");
        assert_eq!(c.model_tag_import, "fixture");
        assert_eq!(c.table_store_mode, StoreMode::Files);
        assert_eq!(c.model_lib_abs_dir, "model_lib/");
    }

    #[test]
    fn fixture_manifest_config_matches_the_copy() {
        // The vendored fixture (tests/fixtures/README.md at the repository's root).
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tfra-0.8.1-standalone/manifest.json");
        let text = std::fs::read_to_string(&manifest)
            .unwrap_or_else(|e| panic!("TFRA fixture {}: {e}", manifest.display()));
        let manifest: Value = serde_json::from_str(&text).unwrap();
        let used = manifest["tfra_config_used"].to_string();
        let (config, warnings) = parse(&used).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(config, parse_ok(FIXTURE_CONFIG));
    }

    #[test]
    fn seed_example_warns_about_unknown_field() {
        // The second example of the design note, as Python's json.dumps writes it.
        let text = r#"{"redis_host_ip": ["127.0.0.1"], "redis_host_port": [6379], "using_model_lib": false}"#;
        let (config, warnings) = parse(text).unwrap();
        assert_eq!(config, RedisConfig::default());
        assert_eq!(
            warnings,
            ["unknown redis config field(s) ignored: using_model_lib"]
        );
    }

    #[test]
    fn several_unknown_fields_are_listed_in_one_warning() {
        let (_, warnings) = parse(r#"{"b_unknown": 1, "a_unknown": 2}"#).unwrap();
        assert_eq!(
            warnings,
            ["unknown redis config field(s) ignored: a_unknown, b_unknown"]
        );
    }

    #[test]
    fn duplicate_key_last_wins_as_in_tfra() {
        assert_eq!(
            parse_ok(r#"{"storage_slice": 2, "storage_slice": 3}"#).storage_slice,
            3
        );
    }

    #[test]
    fn utf8_bom_is_skipped() {
        assert_eq!(parse_ok("\u{feff}{\"storage_slice\": 2}").storage_slice, 2);
    }

    // ---- types ----

    /// What Python's `str(value)` gives, as TFRA's test builds its corrupted values.
    fn python_str(value: &Value) -> String {
        match value {
            Value::Bool(true) => "True".into(),
            Value::Bool(false) => "False".into(),
            Value::String(s) => format!("'{s}'"),
            Value::Array(items) => {
                let items: Vec<String> = items.iter().map(python_str).collect();
                format!("[{}]", items.join(", "))
            }
            other => other.to_string(),
        }
    }

    fn type_word(key: &str, value: &Value) -> &'static str {
        match value {
            Value::Bool(_) => "boolean",
            Value::Number(_) => "integer",
            Value::String(_) => "string",
            Value::Array(_) if key == "redis_host_port" => "integer array",
            Value::Array(_) => "string array",
            _ => unreachable!(),
        }
    }

    #[test]
    fn every_field_with_a_wrong_type_is_named() {
        // TFRA's test_json_config_file_with_wrong_type: one field corrupted at a time,
        // non-strings become str(value), strings become 0.
        let mut base = RedisConfig {
            redis_connection_mode: ConnectionMode::Standalone,
            storage_slice: 4,
            storage_slice_import: 4,
            ..RedisConfig::default()
        };
        base.redis_hash_tags_runtime = vec!["1".into(), "2".into(), "3".into(), "4".into()];
        let Value::Object(base) = base.to_json() else {
            unreachable!()
        };
        assert_eq!(base.len(), FIELDS.len());
        for (key, value) in &base {
            let corrupted = match value {
                Value::String(_) => Value::from(0),
                other => Value::from(python_str(other)),
            };
            let mut config = base.clone();
            config.insert(key.clone(), corrupted.clone());
            let err = parse(&Value::Object(config).to_string()).unwrap_err();
            let expected = format!("{key} should be json {}", type_word(key, value));
            assert_eq!(err.to_string(), expected, "{key} = {corrupted}");
        }
    }

    #[test]
    fn python_style_corruptions_look_like_tfra_tests() {
        assert_eq!(
            python_str(&serde_json::json!(["127.0.0.1"])),
            "['127.0.0.1']"
        );
        assert_eq!(python_str(&serde_json::json!(false)), "False");
        assert_eq!(python_str(&serde_json::json!([])), "[]");
    }

    #[test]
    fn wrong_array_element_types() {
        assert_eq!(
            parse_err(r#"{"redis_host_ip": [1]}"#),
            "redis_host_ip should be json string array"
        );
        assert_eq!(
            parse_err(r#"{"redis_host_port": ["6379"]}"#),
            "redis_host_port should be json integer array"
        );
        // The RedisTableConfig docstring's scalar port, which TFRA rejects too.
        assert_eq!(
            parse_err(r#"{"redis_host_port": 6379}"#),
            "redis_host_port should be json integer array"
        );
        assert_eq!(
            parse_err(r#"{"redis_hash_tags_runtime": [3560]}"#),
            "redis_hash_tags_runtime should be json string array"
        );
    }

    #[test]
    fn numbers_with_fraction_or_exponent_are_not_integers() {
        for text in ["2.0", "2.5", "1e3"] {
            let err = parse_err(&format!(r#"{{"storage_slice": {text}}}"#));
            assert_eq!(err, "storage_slice should be json integer");
        }
    }

    #[test]
    fn null_is_a_type_error() {
        assert_eq!(
            parse_err(r#"{"redis_password": null}"#),
            "redis_password should be json string"
        );
    }

    #[test]
    fn first_bad_field_in_tfra_order_is_reported() {
        let (field, _) =
            field_error(parse(r#"{"model_lib_abs_dir": 1, "redis_master_name": 1}"#).unwrap_err());
        assert_eq!(field, "redis_master_name");
    }

    // ---- syntax ----

    #[test]
    fn invalid_json_gives_line_and_column() {
        let err = parse("{\n  \"storage_slice\": 2,\n  oops\n}").unwrap_err();
        let Error::ConfigSyntax {
            source_name,
            line,
            column,
            ..
        } = &err
        else {
            panic!("expected a syntax error, got {err:?}");
        };
        assert_eq!(source_name, "<test>");
        assert_eq!((*line, *column), (3, 3));
        let text = err.to_string();
        assert!(text.contains("line 3, column 3"), "{text}");
        assert!(!text.contains("line 3 column 3"), "position twice: {text}");
    }

    #[test]
    fn readme_style_python_booleans_and_comments_are_syntax_errors() {
        for text in [
            "{\"redis_read_access_slave\": False}",
            "{\"storage_slice\": 2 // buckets\n}",
            "{\"storage_slice\": 2,}",
        ] {
            assert!(
                matches!(parse(text), Err(Error::ConfigSyntax { line: 1, .. })),
                "{text}"
            );
        }
    }

    #[test]
    fn top_level_must_be_an_object() {
        let err = parse("\n  [1, 2]").unwrap_err();
        let Error::ConfigSyntax {
            message,
            line,
            column,
            ..
        } = &err
        else {
            panic!("expected a syntax error, got {err:?}");
        };
        assert_eq!(
            message,
            "the top level must be a JSON object, found an array"
        );
        assert_eq!((*line, *column), (2, 3));
    }

    #[test]
    fn empty_text_is_an_error() {
        for text in ["", "  \n "] {
            assert!(parse_err(text).contains("empty"), "{text:?}");
        }
    }

    // ---- ranges ----

    #[test]
    fn storage_slice_must_be_positive_and_at_most_the_slot_count() {
        for n in [0i64, -1, 16385, 1 << 32] {
            let (field, message) = field_error(parse(&one("storage_slice", n.into())).unwrap_err());
            assert_eq!(field, "storage_slice");
            assert_eq!(
                message,
                format!(
                    "must be between 1 and 16384 (one bucket per cluster slot at most), got {n}"
                )
            );
        }
        assert_eq!(parse_ok(&one("storage_slice", 16.into())).storage_slice, 16);
        assert_eq!(
            parse_ok(&one("storage_slice", 16384.into())).storage_slice,
            16384
        );
    }

    #[test]
    fn storage_slice_import_follows_storage_slice_when_not_positive() {
        for import in [None, Some(-1), Some(0)] {
            let mut object = serde_json::json!({ "storage_slice": 4 });
            if let Some(n) = import {
                object["storage_slice_import"] = n.into();
            }
            let config = parse_ok(&object.to_string());
            assert_eq!(config.storage_slice_import, 4, "{import:?}");
        }
        let config = parse_ok(r#"{"storage_slice": 4, "storage_slice_import": 2}"#);
        assert_eq!(config.storage_slice_import, 2);
        for n in [16385i64, 1 << 32] {
            let (field, message) =
                field_error(parse(&one("storage_slice_import", n.into())).unwrap_err());
            assert_eq!(field, "storage_slice_import");
            assert!(
                message.starts_with("must be between 1 and 16384"),
                "{message}"
            );
        }
    }

    #[test]
    fn keys_sending_size_must_be_positive() {
        let (field, message) = field_error(parse(&one("keys_sending_size", 0.into())).unwrap_err());
        assert_eq!(field, "keys_sending_size");
        assert!(message.contains("got 0"), "{message}");
    }

    #[test]
    fn pool_size_must_be_positive() {
        let (field, _) = field_error(parse(&one("redis_conn_pool_size", 0.into())).unwrap_err());
        assert_eq!(field, "redis_conn_pool_size");
    }

    #[test]
    fn redis_db_must_not_be_negative() {
        let (field, _) = field_error(parse(&one("redis_db", (-1).into())).unwrap_err());
        assert_eq!(field, "redis_db");
        assert_eq!(parse_ok(&one("redis_db", 3.into())).redis_db, 3);
    }

    #[test]
    fn ports_must_be_in_range() {
        for port in [0, -1, 65536] {
            let (field, message) =
                field_error(parse(&one("redis_host_port", serde_json::json!([port]))).unwrap_err());
            assert_eq!(field, "redis_host_port");
            assert_eq!(
                message,
                format!("entry 0 must be between 1 and 65535, got {port}")
            );
        }
        assert_eq!(
            parse_ok(&one("redis_host_port", serde_json::json!([65535]))).redis_host_port,
            [65535]
        );
    }

    #[test]
    fn hosts_must_not_be_empty() {
        let text = r#"{"redis_host_ip": [], "redis_host_port": []}"#;
        assert!(parse_err(text).starts_with("redis_host_ip "));
        let text = r#"{"redis_host_ip": [""], "redis_host_port": [6379]}"#;
        assert!(parse_err(text).starts_with("redis_host_ip "));
    }

    #[test]
    fn one_port_per_host() {
        let text = r#"{"redis_host_ip": ["a", "b"], "redis_host_port": [6379]}"#;
        let err = parse_err(text);
        assert!(err.contains("redis_host_port"), "{err}");
        assert!(err.contains("redis_host_ip"), "{err}");
        let config = parse_ok(r#"{"redis_host_ip": ["a", "b"], "redis_host_port": [1, 2]}"#);
        assert_eq!(config.redis_host_port, [1, 2]);
    }

    #[test]
    fn illegal_connection_mode_uses_tfra_words() {
        for n in [3, -1] {
            let err = parse_err(&one("redis_connection_mode", n.into()));
            assert!(err.starts_with("redis_connection_mode "), "{err}");
            assert!(
                err.contains(&format!("{n} is illegal redis_connection_mode")),
                "{err}"
            );
        }
        assert_eq!(
            parse_ok(&one("redis_connection_mode", 0.into())).redis_connection_mode,
            ConnectionMode::Cluster
        );
    }

    #[test]
    fn illegal_table_store_mode() {
        let err = parse_err(&one("table_store_mode", 3.into()));
        assert!(err.starts_with("table_store_mode "), "{err}");
        assert!(err.contains("3 is illegal table_store_mode"), "{err}");
        assert_eq!(
            parse_ok(&one("table_store_mode", 2.into())).table_store_mode,
            StoreMode::Nothing
        );
    }

    #[test]
    fn timeouts_must_not_be_negative() {
        for key in [
            "redis_connect_timeout",
            "redis_socket_timeout",
            "redis_wait_timeout",
            "redis_connection_lifetime",
            "redis_sentinel_connect_timeout",
            "redis_sentinel_socket_timeout",
            "redis_retry_deadline_ms",
            "redis_durable_write_timeout_ms",
            "redis_conn_idle_timeout_ms",
            "redis_client_buffer_keep_bytes",
        ] {
            let (field, message) = field_error(parse(&one(key, (-1).into())).unwrap_err());
            assert_eq!(field, key);
            assert!(message.starts_with("must be between 0 and "), "{message}");
        }
    }

    #[test]
    fn timeouts_keep_json_units() {
        let c = parse_ok(r#"{"redis_socket_timeout": 250, "redis_connection_lifetime": 2}"#);
        assert_eq!(c.redis_socket_timeout, 250);
        assert_eq!(c.redis_connection_lifetime, 2);
        let c = parse_ok(r#"{"redis_connection_lifetime": 0}"#);
        assert_eq!(c.redis_connection_lifetime, 0);
    }

    #[test]
    fn lifetime_that_overflows_is_a_range_error() {
        let (field, _) =
            field_error(parse(&one("redis_connection_lifetime", u64::MAX.into())).unwrap_err());
        assert_eq!(field, "redis_connection_lifetime");
    }

    #[test]
    fn expiry_negative_means_none_and_zero_is_kept() {
        let c = parse_ok(&one("expire_model_tag_in_seconds", (-1).into()));
        assert_eq!(c.expire_model_tag_in_seconds, None);
        let c = parse_ok(&one("expire_model_tag_in_seconds", 0.into()));
        assert_eq!(c.expire_model_tag_in_seconds, Some(0));
    }

    #[test]
    fn model_tags_must_not_be_empty() {
        for key in ["model_tag_import", "model_tag_runtime"] {
            let (field, _) = field_error(parse(&one(key, "".into())).unwrap_err());
            assert_eq!(field, key);
        }
    }

    #[test]
    fn hash_tags_with_or_without_braces() {
        let c = parse_ok(
            r#"{"storage_slice": 2, "redis_hash_tags_runtime": ["{3560}", "120"],
                "storage_slice_import": 1, "redis_hash_tags_import": ["{6379}"]}"#,
        );
        assert_eq!(c.redis_hash_tags_runtime, ["3560", "120"]);
        assert_eq!(c.redis_hash_tags_import, ["6379"]);
    }

    #[test]
    fn hash_tags_must_be_digits() {
        for tag in ["{ab}", "{12", "12}", "", "{}", "{1 2}"] {
            let text = one("redis_hash_tags_runtime", serde_json::json!([tag]));
            let (field, message) = field_error(parse(&text).unwrap_err());
            assert_eq!(field, "redis_hash_tags_runtime", "{tag:?}");
            assert!(message.contains("not a hash tag"), "{message}");
        }
    }

    #[test]
    fn hash_tag_count_must_match_slices() {
        // The design note's example: two tags each, with the default storage_slice of 1.
        let text = r#"{"redis_hash_tags_runtime": ["{3560}", "{120}"]}"#;
        let (field, message) = field_error(parse(text).unwrap_err());
        assert_eq!(field, "redis_hash_tags_runtime");
        assert_eq!(
            message,
            "has 2 entries but storage_slice is 1; give exactly 1 tags or none"
        );

        let text = r#"{"storage_slice": 2, "storage_slice_import": 3,
                       "redis_hash_tags_import": ["{6379}", "{26379}"]}"#;
        let (field, message) = field_error(parse(text).unwrap_err());
        assert_eq!(field, "redis_hash_tags_import");
        assert!(message.contains("storage_slice_import is 3"), "{message}");

        // With the import count following storage_slice, the seed's arrays fit.
        let text = r#"{"storage_slice": 2,
                       "redis_hash_tags_import": ["{6379}", "{26379}"],
                       "redis_hash_tags_runtime": ["{3560}", "{120}"]}"#;
        parse(text).unwrap();
    }

    #[test]
    fn durable_writes_need_a_timeout() {
        let text = r#"{"redis_durable_write_replicas": 1, "redis_durable_write_timeout_ms": 0}"#;
        let (field, _) = field_error(parse(text).unwrap_err());
        assert_eq!(field, "redis_durable_write_timeout_ms");
        let c = parse_ok(r#"{"redis_durable_write_replicas": 1}"#);
        assert_eq!(c.redis_durable_write_replicas, 1);
    }

    #[test]
    fn tls_cert_needs_key() {
        let text = r#"{"redis_tls": true, "redis_tls_cert": "client.pem"}"#;
        let (field, _) = field_error(parse(text).unwrap_err());
        assert_eq!(field, "redis_tls_cert");
    }

    #[test]
    fn tls_files_without_tls_are_warned_about() {
        let (_, warnings) = parse(r#"{"redis_tls_ca_cert": "ca.pem"}"#).unwrap();
        assert_eq!(
            warnings,
            ["redis_tls_ca_cert ignored because redis_tls is false"]
        );
        let (c, warnings) = parse(r#"{"redis_tls": true, "redis_tls_ca_cert": "ca.pem"}"#).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(c.redis_tls_ca_cert, "ca.pem");
    }

    #[test]
    fn validate_catches_configs_built_in_code() {
        let config = RedisConfig {
            storage_slice: 0,
            ..RedisConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "storage_slice must be between 1 and 16384 (one bucket per cluster slot at most), \
             got 0"
        );
        for (slices, import) in [(16385, 1), (1, 16385), (u32::MAX, 1)] {
            let config = RedisConfig {
                storage_slice: slices,
                storage_slice_import: import,
                ..RedisConfig::default()
            };
            let message = config.validate().unwrap_err().to_string();
            assert!(message.contains("must be between 1 and 16384"), "{message}");
        }
        let config = RedisConfig {
            redis_hash_tags_runtime: vec!["{1}".into()],
            ..RedisConfig::default()
        };
        assert!(config.validate().is_err());
    }

    // ---- writing back ----

    #[test]
    fn to_json_has_every_key() {
        let Value::Object(object) = RedisConfig::default().to_json() else {
            panic!("not an object");
        };
        for key in TFRA_KEYS {
            assert!(object.contains_key(key), "{key}");
        }
        assert_eq!(object.len(), TFRA_KEYS.len() + 11);
        assert_eq!(
            FIELDS[..TFRA_KEYS.len()]
                .iter()
                .map(|f| f.key)
                .collect::<Vec<_>>(),
            TFRA_KEYS
        );
        assert_eq!(object["redis_connection_lifetime"], 100);
        assert_eq!(object["redis_wait_timeout"], 100_000_000);
        assert_eq!(object["storage_slice_import"], 1);
    }

    #[test]
    fn to_json_round_trips() {
        let config = RedisConfig {
            redis_connection_mode: ConnectionMode::Cluster,
            redis_host_ip: vec!["10.0.0.1".into(), "10.0.0.2".into()],
            redis_host_port: vec![7000, 7001],
            redis_password: "hunter2".into(),
            redis_connection_lifetime: 5,
            storage_slice: 2,
            storage_slice_import: 3,
            redis_hash_tags_runtime: vec!["3560".into(), "8209".into()],
            expire_model_tag_in_seconds: None,
            table_store_mode: StoreMode::Tensor,
            redis_tls: true,
            redis_retry_deadline_ms: 5,
            ..RedisConfig::default()
        };
        let json = config.to_json();
        assert_eq!(json["redis_password"], "hunter2");
        assert_eq!(
            json["redis_hash_tags_runtime"],
            serde_json::json!(["{3560}", "{8209}"])
        );
        assert_eq!(json["expire_model_tag_in_seconds"], -1);
        let (back, warnings) = parse(&json.to_string()).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(back, config);
    }

    #[test]
    fn debug_hides_passwords() {
        let config = RedisConfig {
            redis_password: "hunter2".into(),
            redis_sentinel_password: "s3ntinel".into(),
            ..RedisConfig::default()
        };
        let text = format!("{config:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("s3ntinel"), "{text}");
        assert!(text.contains(r#"redis_password: "***""#), "{text}");
        assert!(text.contains(r#"redis_sentinel_password: "***""#), "{text}");
        assert!(format!("{config:#?}").contains("storage_slice"));
        let text = format!("{:?}", RedisConfig::default());
        assert!(text.contains(r#"redis_password: """#), "{text}");
    }

    #[test]
    fn errors_never_echo_the_password() {
        let text = r#"{"redis_password": "hunter2", "storage_slice": 0}"#;
        let err = parse(text).unwrap_err();
        assert!(!format!("{err} {err:?}").contains("hunter2"));
    }

    // ---- finding the file ----

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "tfra-redis-config-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        fn file(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            path
        }

        fn path(&self, name: &str) -> String {
            self.0.join(name).display().to_string()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn fake_env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    const MODEL_ENV: &str = "model1_tfra_redis_config_path";

    #[test]
    fn named_variable_comes_first() {
        let dir = TempDir::new();
        let mine = dir.file("mine.json", "{}");
        let shared = dir.file("shared.json", "{}");
        let abs = dir.file("abs.json", "{}");
        let env = fake_env(&[
            (MODEL_ENV, mine.to_str().unwrap()),
            (DEFAULT_CONFIG_ENV, shared.to_str().unwrap()),
        ]);
        let found =
            resolve_config_path_with(env, Some(MODEL_ENV), Some(abs.to_str().unwrap())).unwrap();
        assert_eq!(found, mine);
    }

    #[test]
    fn unset_variable_falls_through_to_default_variable() {
        let dir = TempDir::new();
        let shared = dir.file("shared.json", "{}");
        let abs = dir.file("abs.json", "{}");
        let env = fake_env(&[(DEFAULT_CONFIG_ENV, shared.to_str().unwrap())]);
        let found =
            resolve_config_path_with(env, Some(MODEL_ENV), Some(abs.to_str().unwrap())).unwrap();
        assert_eq!(found, shared);
    }

    #[test]
    fn missing_or_empty_files_fall_through_to_abs_dir() {
        let dir = TempDir::new();
        let empty = dir.file("empty.json", "");
        let abs = dir.file("abs.json", "{}");
        let env = fake_env(&[
            (MODEL_ENV, &dir.path("missing.json")),
            (DEFAULT_CONFIG_ENV, empty.to_str().unwrap()),
        ]);
        let found =
            resolve_config_path_with(env, Some(MODEL_ENV), Some(abs.to_str().unwrap())).unwrap();
        assert_eq!(found, abs);
    }

    #[test]
    fn abs_dir_may_be_a_directory() {
        let dir = TempDir::new();
        let file = dir.file(CONFIG_FILE_NAME, "{}");
        // The design note writes it with a trailing slash: "/tmp/test/".
        let with_slash = format!("{}/", dir.0.display());
        let found = resolve_config_path_with(fake_env(&[]), None, Some(&with_slash)).unwrap();
        assert_eq!(found.canonicalize().unwrap(), file.canonicalize().unwrap());
    }

    #[test]
    fn variables_may_name_a_directory_too() {
        let dir = TempDir::new();
        let file = dir.file(CONFIG_FILE_NAME, "{}");
        let env = fake_env(&[(DEFAULT_CONFIG_ENV, dir.0.to_str().unwrap())]);
        assert_eq!(resolve_config_path_with(env, None, None).unwrap(), file);
    }

    #[test]
    fn empty_variable_name_means_the_default() {
        let dir = TempDir::new();
        let shared = dir.file("shared.json", "{}");
        let env = fake_env(&[(DEFAULT_CONFIG_ENV, shared.to_str().unwrap())]);
        assert_eq!(
            resolve_config_path_with(env, Some(""), None).unwrap(),
            shared
        );
    }

    #[test]
    fn nothing_found_lists_everything_tried() {
        let dir = TempDir::new();
        let missing = dir.path("missing.json");
        let env = fake_env(&[(MODEL_ENV, &missing)]);
        let err = resolve_config_path_with(env, Some(MODEL_ENV), Some(dir.0.to_str().unwrap()))
            .unwrap_err();
        assert!(matches!(err, Error::ConfigPath { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("${MODEL_ENV}={missing:?}: no such file")),
            "{text}"
        );
        assert!(text.contains("$TFRA_REDIS_CONFIG_PATH is unset"), "{text}");
        assert!(text.contains("redis_config_abs_dir"), "{text}");
        assert!(text.contains("has no redis_config.json"), "{text}");
    }

    #[test]
    fn default_variable_is_tried_once() {
        let err = resolve_config_path_with(fake_env(&[]), None, None).unwrap_err();
        let text = err.to_string();
        assert_eq!(text.matches("TFRA_REDIS_CONFIG_PATH").count(), 1, "{text}");
        assert!(text.contains("redis_config_abs_dir is not given"), "{text}");
    }

    #[test]
    fn from_path_reads_the_file() {
        let dir = TempDir::new();
        let path = dir.file("c.json", FIXTURE_CONFIG);
        let (config, _) = RedisConfig::from_path(&path).unwrap();
        assert_eq!(config, parse_ok(FIXTURE_CONFIG));

        let path = dir.file("bad.json", "{\n\"storage_slice\": }");
        match RedisConfig::from_path(&path).unwrap_err() {
            Error::ConfigSyntax {
                source_name, line, ..
            } => {
                assert_eq!(source_name, path.display().to_string());
                assert_eq!(line, 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn from_path_rejects_empty_and_missing_files() {
        let dir = TempDir::new();
        let empty = dir.file("empty.json", " \n");
        let err = RedisConfig::from_path(&empty).unwrap_err();
        assert!(matches!(err, Error::ConfigPath { .. }), "{err:?}");
        assert!(err.to_string().contains("is empty"));
        let err = RedisConfig::from_path(&dir.0.join("missing.json")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
    }
}
