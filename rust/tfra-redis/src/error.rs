//! The one error type of the crate. Each variant says what the user can do about it:
//! fix the config, check the server, retry later, or look at the stored data.

use std::path::PathBuf;

/// Everything that can go wrong in tfra-redis.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The JSON config could not be parsed at all.
    #[error(
        "invalid JSON in redis config {source_name}: {message} at line {line}, column {column}"
    )]
    ConfigSyntax {
        /// Where the JSON came from (a path, or `<string>`).
        source_name: String,
        /// What the parser said.
        message: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
    },

    /// A config field has the wrong JSON type or an out-of-range value.
    /// The message always starts with the field name, as TFRA's does.
    #[error("{field} {message}")]
    ConfigField {
        /// The JSON key at fault.
        field: String,
        /// For example `should be json integer array`.
        message: String,
    },

    /// No config file could be found or read.
    #[error("redis config file not found: {message}")]
    ConfigPath {
        /// Which variables and paths were tried.
        message: String,
    },

    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What we were doing (`reading`, `writing`, ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// No connection to Redis could be made, or it broke.
    #[error("cannot reach Redis ({target}): {message}")]
    Connection {
        /// Host:port or sentinel group.
        target: String,
        /// What went wrong.
        message: String,
    },

    /// The server accepted the connection but refused our credentials or a command (ACL).
    #[error("Redis refused access ({target}): {message}")]
    Auth {
        /// Host:port.
        target: String,
        /// The server's words (never contains the password).
        message: String,
    },

    /// A server did not answer within the configured timeout. `waited_ms` is how long the
    /// whole call took until it gave up, which can exceed `timeout_ms`: a call may first wait
    /// for a pooled connection, connect, or refresh a cluster's slot map, each bounded by its
    /// own timeout (see the README, "Timeouts").
    #[error(
        "Redis timed out ({target}) after {waited_ms} ms (timeout {timeout_ms} ms per wait): \
         {message}"
    )]
    Timeout {
        /// Host:port.
        target: String,
        /// The configured timeout that expired (socket or connect timeout).
        timeout_ms: u64,
        /// How long the call had been running when it gave up.
        waited_ms: u64,
        /// Details.
        message: String,
    },

    /// The server's mode does not match `redis_connection_mode`.
    #[error("redis_connection_mode mismatch: {message}")]
    ModeMismatch {
        /// Which mode was configured and what the server is.
        message: String,
    },

    /// Redis answered with an error for a command on a bucket.
    #[error("Redis error on {command} {bucket}: {message}")]
    Command {
        /// The command name, e.g. `HMGET`.
        command: String,
        /// The bucket key (printable form).
        bucket: String,
        /// The server's or client's message.
        message: String,
    },

    /// Stored data does not fit the table (e.g. a row of the wrong length).
    #[error("bad data in bucket {bucket}: {message}")]
    Data {
        /// The bucket key (printable form).
        bucket: String,
        /// What is wrong, naming the key.
        message: String,
    },

    /// The caller passed arguments that do not fit the table (shapes, dtypes).
    #[error("{0}")]
    InvalidArgument(String),
}

impl Error {
    /// True when retrying the same call later may succeed (connection drops, timeouts,
    /// failovers), false when the caller has to change something first.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Connection { .. } | Error::Timeout { .. })
    }

    pub(crate) fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::ConfigField {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
