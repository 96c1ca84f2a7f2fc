//! The one error type of the crate. Each variant says what the user can do about it:
//! fix the config, check the server, retry later, or look at the stored data.
//!
//! A program acts on the variant (`match`), on [`Error::is_transient`] (retry later), and for
//! invalid arguments on their [`ArgumentKind`]. [`std::error::Error::source`] leads to the
//! cause when there is one: a [`std::io::Error`] for I/O failures (connection refused, reset,
//! timed out: downcast it to read its kind), otherwise the Redis client's error (a server's error
//! reply, a protocol error). Only `std::io::Error` is promised as a concrete type; the client's
//! error is boxed as `dyn Error` so that no type of a dependency is part of the API.

use std::path::PathBuf;

/// The cause of an error: the I/O or Redis client error underneath, behind a trait object so
/// that no type of a dependency appears in this crate's API.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What kind of argument [`Error::InvalidArgument`] refused, so a program can react without
/// parsing the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ArgumentKind {
    /// A buffer's length does not match the number of keys times the row size (rows, defaults,
    /// deltas, the `exists` flags, gradients).
    Shape,
    /// An unknown or unsupported element type, or one that differs between tables used
    /// together.
    Dtype,
    /// An embedding dimension out of range, or different from the one a table has.
    Dim,
    /// An id the table's key type cannot hold (an int64 id in an int32 table).
    KeyOutOfRange,
    /// The same id more than once where each must appear once (an optimizer step).
    DuplicateKey,
    /// An unknown optimizer or hyper-parameter, a value out of its range, or step 0.
    Optimizer,
    /// Tables passed together do not fit each other (the slot tables of an optimizer, the
    /// status table of a restriction).
    TableSet,
    /// A configuration built in code that names nothing to connect to.
    Config,
    /// The caller stopped an operation from its callback (e.g. an export consumer went away).
    Cancelled,
}

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
        /// The client or I/O error underneath, when there is one.
        #[source]
        source: Option<Cause>,
    },

    /// The server accepted the connection but refused our credentials or a command (ACL).
    #[error("Redis refused access ({target}): {message}")]
    Auth {
        /// Host:port.
        target: String,
        /// The server's words (never contains the password).
        message: String,
        /// The client error underneath, when there is one.
        #[source]
        source: Option<Cause>,
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
        /// The client or I/O error underneath, when there is one.
        #[source]
        source: Option<Cause>,
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
        /// The client error underneath, when there is one.
        #[source]
        source: Option<Cause>,
    },

    /// Stored data does not fit the table (e.g. a row of the wrong length).
    #[error("bad data in bucket {bucket}: {message}")]
    Data {
        /// The bucket key (printable form).
        bucket: String,
        /// What is wrong, naming the key.
        message: String,
    },

    /// The caller passed arguments that do not fit the table (shapes, dtypes, ids) or each
    /// other. Nothing was sent to Redis; the call fails the same way until the arguments change.
    #[error("{message}")]
    InvalidArgument {
        /// Which rule the arguments broke.
        kind: ArgumentKind,
        /// What was expected and what was given.
        message: String,
    },
}

impl Error {
    /// True when retrying the same call later may succeed (connection drops, timeouts,
    /// failovers), false when the caller has to change something first.
    ///
    /// A transient error returned by an operation on an open table has already been retried:
    /// connection failures (drops, refusals, failovers, cluster redirections) are retried with
    /// backoff (20 ms doubling to 500 ms) until `redis_retry_deadline_ms` (default 30 s; 0
    /// disables retries) has passed since the call began. Timeouts are returned at once, since
    /// the command may still be running on the server. Writes that may have reached the server
    /// are repeated only when that is harmless: every table write is, except `accum`, which is
    /// resent only when the command surely did not run.
    ///
    /// Opening a table differs by mode: in Cluster mode reading the slot map is retried within
    /// the same deadline; in Standalone and Sentinel mode the first connection is tried once,
    /// so an open can fail with a transient error at once (retry it yourself when the server
    /// may still be starting).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Connection { .. } | Error::Timeout { .. })
    }

    /// The kind of argument refused, for [`Error::InvalidArgument`]; `None` for other errors.
    pub fn argument_kind(&self) -> Option<ArgumentKind> {
        match self {
            Error::InvalidArgument { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// An [`Error::InvalidArgument`] of the given kind.
    pub fn invalid(kind: ArgumentKind, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            kind,
            message: message.into(),
        }
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
