//! Reading a config from JSON (TFRA's type messages, our range checks) and writing it back.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::validate::bucket_count_error;
use super::{ConnectionMode, MAX_STORAGE_SLICE, RedisConfig, StoreMode, resolve_config_path};
use crate::error::{Error, Result};

impl RedisConfig {
    /// Parses a config from JSON text. `source_name` (a path, or something like `<string>`) only
    /// appears in error messages. Returns the config and warnings (unknown keys, ignored settings)
    /// that the caller should log.
    ///
    /// Keys are checked in TFRA's order, so the first bad key is the one TFRA would report.
    /// A duplicate key counts once, with its last value, as in TFRA.
    ///
    /// # Errors
    ///
    /// [`Error::ConfigSyntax`] when the text is not a JSON object, with the line and column;
    /// [`Error::ConfigField`] naming the first key of the wrong JSON type or out of range, or a
    /// rule across keys that the config breaks.
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
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the file cannot be read, [`Error::ConfigPath`] when it is empty, and the
    /// errors of [`RedisConfig::from_json_str`].
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
    ///
    /// # Errors
    ///
    /// [`Error::ConfigPath`] when no file is found (naming what was tried), and the errors of
    /// [`RedisConfig::from_path`].
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
    pub fn to_json(&self) -> String {
        self.to_json_value().to_string()
    }

    /// [`RedisConfig::to_json`] as a `serde_json` value, for the crate's own tests and writers
    /// (kept out of the public API so that no `serde_json` type is part of it).
    pub(crate) fn to_json_value(&self) -> Value {
        Value::Object(
            FIELDS
                .iter()
                .map(|field| (field.key.to_owned(), (field.emit)(self)))
                .collect(),
        )
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

/// An integer field whose values name an enum variant. The message keeps TFRA's wording
/// ("<n> is illegal redis_connection_mode") so that messages users already search for match.
pub(super) fn coded_field<T>(
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

/// One JSON key: how to read it into its field and how to write it back.
pub(super) struct Field {
    pub(super) key: &'static str,
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
pub(super) const FIELDS: &[Field] = &[
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
    field!(redis_fused_row, boolean, json),
    field!(
        redis_client_buffer_keep_bytes,
        |k, v| integer(k, v, 0, i64::MAX.into()),
        json
    ),
    field!(redis_conn_idle_timeout_ms, millis, json),
    // Bounded so that adding it to an Instant cannot overflow; an hour is far past any use.
    field!(
        redis_write_behind_ms,
        |k, v| integer(k, v, 0, 3_600_000),
        json
    ),
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
/// The digits check itself is in `validate.rs`, shared with configs built in code.
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
