//! Connections to Redis for the three modes, behind one small trait.
//!
//! A backend knows Redis and nothing about embeddings: it runs batches of single-key commands
//! (one pipeline per node), lists keys, and describes the topology. The table decides what the
//! commands are.
//!
//! The data path: the table encodes a [`Batch`] once (`batch.rs`); a backend sends it over
//! pooled connections (`link.rs`: our own socket for plain TCP, redis-rs's for TLS) and hands
//! back [`Reply`]s that are still the bytes the server sent (`reply.rs`), so rows are copied
//! once, from the read buffer into the caller's output. Lookups stream ([`Backend::run_each`]):
//! each reply is handled as soon as it is complete while later commands still run.
//!
//! # ACL rights
//!
//! Every command sent to a data node, by category (Redis 7 `ACL CAT`), so that a
//! least-privileged user works in every mode:
//! - `@read`: HMGET, HLEN, HSCAN, HRANDFIELD, SCAN, DUMP; `@write`: HSET, HDEL, DEL, EXPIRE,
//!   PERSIST; `@hash` (with them); `@scripting`: EVAL/EVALSHA (accum);
//! - `@connection`: AUTH, SELECT, PING, HELLO, READONLY and ASKING (cluster), WAIT (durable
//!   writes);
//! - cluster discovery: CLUSTER SLOTS, only in `@slow`, so `+cluster|slots`;
//! - `@dangerous`, each with a fallback: INFO (mode checks, plain server or sentinel) and ROLE
//!   (Sentinel's master check, also `@admin`) fall back to HELLO on NOPERM; without HELLO the
//!   cluster mode check is skipped.
//! - `@dangerous` without a fallback: RESTORE, only when restoring TFRA dump files.
//!
//! Sentinels are asked SENTINEL and INFO with their own credentials.

mod batch;
#[cfg(feature = "cluster")]
mod cluster;
mod link;
mod options;
mod pool;
mod reply;
#[cfg(feature = "sentinel")]
mod sentinel;
mod slot_map;
mod standalone;
mod write_behind;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use redis::{Cmd, Value};

use crate::config::{ConnectionMode, RedisConfig};
use crate::error::{Error, Result};

pub use batch::{Batch, Commands, advise_huge_pages};
pub use options::ConnectOptions;
pub use reply::{Reply, ReplyView, Unexpected};
pub use write_behind::{
    flush_all as flush_deferred_writes, flush_all_at_exit as flush_deferred_writes_at_exit,
};

/// Whether a batch only reads (and may go to replicas when the config allows it) or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// HMGET, HLEN, HSCAN, SCAN, DUMP: replicas allowed when `redis_read_access_slave` is set.
    Read,
    /// Everything that changes data: always the master.
    Write,
}

/// Whether a failed batch may simply be sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Sending the batch twice gives the same result (HMGET, HSET, HDEL, DEL): retry on any
    /// transient failure until the deadline.
    Idempotent,
    /// Applying a command twice would be wrong (accum deltas): after a failure, send again
    /// only the commands it proves did not run (connection refused, or a MOVED/ASK/TRYAGAIN/
    /// READONLY/MASTERDOWN/LOADING reply to that command); commands that ran keep their reply.
    AtMostOnce,
    /// One attempt only: for best-effort work such as setting a TTL when a table closes, which
    /// must not keep a process from exiting for a whole retry deadline.
    Never,
}

/// What [`Backend::run_each`] calls with each reply. `Send`: a cluster hands replies over
/// from the thread that read them, one at a time.
pub type OnReply<'a> = dyn FnMut(usize, ReplyView<'_>) -> Result<()> + Send + 'a;

/// One Redis deployment (a server, a Sentinel group or a cluster).
pub trait Backend: Send + Sync {
    /// Runs single-key commands, each routed by its first key, as one pipeline per node (all
    /// nodes at once) and returns one reply per command, in order. An error reply from the
    /// server for any command fails the whole call with that command's error.
    fn run_batch(&self, batch: &Batch, role: Role, retry: Retry) -> Result<Vec<Reply>>;

    /// [`Backend::run_batch`] for idempotent reads whose replies are consumed as they come:
    /// `on_reply(i, reply)` for command `i`, in order, possibly again from the start when the
    /// batch is retried. Error replies fail the call before reaching `on_reply`. Backends that
    /// can handle a reply while later commands still run on the server do so.
    fn run_each(&self, batch: &Batch, role: Role, on_reply: &mut OnReply<'_>) -> Result<()> {
        for (i, reply) in self
            .run_batch(batch, role, Retry::Idempotent)?
            .iter()
            .enumerate()
        {
            on_reply(i, reply.view())?;
        }
        Ok(())
    }

    /// [`Backend::run_batch`] for commands encoded on demand: `scratch` is a buffer the
    /// caller keeps between calls. A backend that sends to several nodes at once encodes each
    /// node's commands in that node's thread (see [`Commands`]); the others encode them all
    /// into `scratch` and run that. The bytes on the wire are the same either way.
    fn run_deferred(
        &self,
        cmds: &dyn Commands,
        scratch: &mut Batch,
        role: Role,
        retry: Retry,
    ) -> Result<Vec<Reply>> {
        scratch.clear();
        for i in 0..cmds.len() {
            cmds.encode(i, scratch);
        }
        self.run_batch(scratch, role, retry)
    }

    /// [`Backend::run_batch`] for commands built as `redis::Cmd`s.
    fn run(&self, cmds: &[Cmd], role: Role, retry: Retry) -> Result<Vec<Reply>> {
        self.run_batch(&Batch::from_cmds(cmds), role, retry)
    }

    /// [`Backend::run`] with every reply parsed into a redis-rs value, for callers that want
    /// the reply's structure rather than its rows.
    fn run_values(&self, cmds: &[Cmd], role: Role, retry: Retry) -> Result<Vec<Value>> {
        Ok(self
            .run(cmds, role, retry)?
            .into_iter()
            .map(Reply::into_value)
            .collect())
    }

    /// Queues a write of idempotent commands to be sent with the next command on its
    /// buckets, or after `max_delay` at the latest (see `write_behind.rs`). A backend without
    /// a queue sends it now.
    fn defer(&self, batch: Batch, max_delay: Duration) -> Result<()> {
        let _ = max_delay;
        self.run_batch(&batch, Role::Write, Retry::Idempotent)
            .map(|_| ())
    }

    /// Sends every write [`Backend::defer`] queued and waits for those already on their way.
    fn flush_deferred(&self) -> Result<()> {
        Ok(())
    }

    /// Every key matching a `SCAN MATCH` glob, over all masters.
    fn scan_match(&self, pattern: &[u8]) -> Result<Vec<Vec<u8>>>;

    /// The first slot range of each master, in the order `CLUSTER SLOTS` lists them.
    /// Empty outside cluster mode: TFRA then uses the fixed even-spread tags.
    fn master_slot_ranges(&self) -> Result<Vec<(u16, u16)>>;

    /// Which mode this is.
    fn mode(&self) -> ConnectionMode;

    /// A short human description for messages, e.g. `standalone 127.0.0.1:6379`.
    fn describe(&self) -> String;

    /// Closes this process's copies of the idle pooled connections, without a word to the
    /// server. [`connect`] calls it in a forked child on every backend of its parent.
    fn release_inherited(&self) {}
}

/// Opens (or reuses) the backend for a config. Tables with the same connection settings in the
/// same process share one backend and its pools: TFRA gave every table its own pools, which
/// multiplied connections by the number of tables. The process id is part of the cache key so
/// that a forked child never reuses sockets inherited from its parent.
pub fn connect(config: &RedisConfig) -> Result<Arc<dyn Backend>> {
    type Cache = Mutex<HashMap<(u32, String), Arc<dyn Backend>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let opts = ConnectOptions::from_config(config)?;
    let key = (std::process::id(), opts.cache_key());
    let cache = CACHE.get_or_init(Default::default);
    if let Some(found) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(found.clone());
    }
    let backend: Arc<dyn Backend> = Arc::new(write_behind::WriteBehind::new(open(opts)?));
    let mut guard = cache.lock().unwrap_or_else(|e| e.into_inner());
    // Entries of a parent process are unusable here. Closing a socket in the child closes its
    // copy only: the parent's connection stays open (only shutdown() would end it, and nothing
    // here calls it). The pools have no threads and no destructor that talks to a server, so
    // this is safe in a forked child. Forgetting the entries, as before, kept every inherited
    // socket open for the child's lifetime. Connections checked out by the parent's other
    // threads at the fork are out of reach and stay open.
    let pid = std::process::id();
    guard.retain(|k, inherited| {
        if k.0 != pid {
            // Tables of the parent may keep the backend alive; its sockets need not wait.
            inherited.release_inherited();
        }
        k.0 == pid
    });
    Ok(guard.entry(key).or_insert(backend).clone())
}

fn open(opts: ConnectOptions) -> Result<Arc<dyn Backend>> {
    match opts.mode {
        ConnectionMode::Standalone => Ok(Arc::new(standalone::Standalone::open(opts)?)),
        #[cfg(feature = "sentinel")]
        ConnectionMode::Sentinel => sentinel::open(opts),
        #[cfg(feature = "cluster")]
        ConnectionMode::Cluster => Ok(Arc::new(cluster::Cluster::open(opts)?)),
        #[allow(unreachable_patterns)] // Reachable only when a mode's feature is off.
        other => Err(crate::config::feature_missing(other)),
    }
}

// The Redis error codes the backends act on, classified once by what the caller should do.

/// Error codes meaning "this node cannot run the command now, but the topology will settle"
/// (a failover, a reshard, a replica still loading). The command surely did not run, so even
/// a non-idempotent one may be sent again; in cluster mode, after following the redirect or
/// refreshing the slot map. The one list every backend classifies by.
pub(crate) const TOPOLOGY_CODES: [&str; 7] = [
    "MOVED",
    "ASK",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "READONLY",
    "LOADING",
];

/// The part of [`TOPOLOGY_CODES`] a server outside cluster mode sends: a demoted master after
/// a failover, or a server still loading. The connection must be resolved again.
const FAILOVER_CODES: [&str; 3] = ["MASTERDOWN", "READONLY", "LOADING"];

/// Codes of a refused login or an ACL refusal: the user's to fix (credentials or rights), never
/// retried.
pub(crate) const ACCESS_CODES: [&str; 3] = ["NOAUTH", "WRONGPASS", "NOPERM"];

/// True for a code in [`ACCESS_CODES`].
pub(crate) fn is_access_code(code: &str) -> bool {
    ACCESS_CODES.contains(&code)
}

/// Maps a redis-rs error to ours, naming the server it came from.
pub(crate) fn classify(err: &redis::RedisError, target: &str, timeout: Duration) -> Error {
    use redis::ErrorKind;
    let message = scrub(&err.to_string());
    let source = || cause(err);
    if err.is_timeout() {
        return Error::Timeout {
            target: target.to_string(),
            timeout_ms: timeout.as_millis() as u64,
            // The call's own time when known: `with_retry` sets it.
            waited_ms: timeout.as_millis() as u64,
            message,
            source: source(),
        };
    }
    if err.is_io_error() || err.is_connection_refusal() || err.is_connection_dropped() {
        return Error::Connection {
            target: target.to_string(),
            message,
            source: source(),
        };
    }
    let code = err.code().unwrap_or("");
    if matches!(err.kind(), ErrorKind::AuthenticationFailed) || is_access_code(code) {
        return Error::Auth {
            target: target.to_string(),
            message,
            source: source(),
        };
    }
    if err.is_cluster_error()
        || TOPOLOGY_CODES.contains(&code)
        || matches!(
            err.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::MasterNameNotFoundBySentinel
                | ErrorKind::NoValidReplicasFoundBySentinel
        )
    {
        // The topology is changing under us (failover, resharding, a replica still loading):
        // the same command will work once it settles.
        return Error::Connection {
            target: target.to_string(),
            message,
            source: source(),
        };
    }
    Error::Command {
        command: String::new(),
        bucket: String::new(),
        message,
        source: source(),
    }
}

/// The client error as an error's cause. redis-rs errors are kept as they are (callers can
/// walk on to the I/O error under them) unless their text carried URL credentials, which
/// `scrub` removed from the message: then only the scrubbed text is kept.
fn cause(err: &redis::RedisError) -> Option<crate::error::Cause> {
    if let Some(io) = io_error_of(err) {
        return Some(Box::new(io));
    }
    let text = err.to_string();
    let scrubbed = scrub(&text);
    if text == scrubbed {
        Some(Box::new(err.clone()))
    } else {
        Some(scrubbed.into())
    }
}

/// The I/O error under a redis-rs error, as a fresh `std::io::Error` of the same kind (and OS
/// error code): redis-rs keeps it behind an `Arc<dyn Error>`, where a caller's
/// `downcast_ref::<std::io::Error>()` cannot see it.
fn io_error_of(err: &redis::RedisError) -> Option<std::io::Error> {
    use std::error::Error as _;
    let mut cause = err.source();
    while let Some(c) = cause {
        let io = c.downcast_ref::<std::io::Error>().or_else(|| {
            c.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>()
                .and_then(|inner| inner.downcast_ref::<std::io::Error>())
        });
        if let Some(io) = io {
            return Some(match io.raw_os_error() {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::new(io.kind(), io.to_string()),
            });
        }
        cause = c.source();
    }
    None
}

/// True when the error proves the command never ran, so even a non-idempotent batch may be
/// sent again.
pub(crate) fn surely_not_executed(err: &redis::RedisError) -> bool {
    err.is_connection_refusal() || err.code().is_some_and(|c| TOPOLOGY_CODES.contains(&c))
}

/// Redis error texts never carry our password, but URLs built by redis-rs might; keep any
/// `user:secret@` credentials out of messages.
fn scrub(message: &str) -> String {
    match (message.find("://"), message.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &message[..scheme], &message[at..])
        }
        _ => message.to_string(),
    }
}

/// Runs `attempt` until it succeeds, fails with a non-transient error, or the deadline passes.
/// The backoff doubles from 20 ms up to 500 ms: short enough to notice a promoted replica
/// quickly, long enough not to hammer a restarting server.
pub(crate) fn with_retry<T>(
    deadline: Duration,
    retry: Retry,
    mut attempt: impl FnMut() -> std::result::Result<T, (Error, bool)>,
) -> Result<T> {
    let start = Instant::now();
    let mut wait = Duration::from_millis(20);
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err((err, not_executed)) => {
                let may_retry = retry != Retry::Never
                    && err.is_transient()
                    && !matches!(err, Error::Timeout { .. })
                    && (retry == Retry::Idempotent || not_executed);
                if !may_retry || start.elapsed() + wait > deadline {
                    return Err(with_waited(err, start));
                }
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_millis(500));
            }
        }
    }
}

/// Puts the real time of the call into a timeout error: a call can wait for more than one
/// timeout (a busy pool, then its own command; a slot map refresh, then the command), and a
/// message that only named the configured timeout hid where the time went.
fn with_waited(err: Error, start: Instant) -> Error {
    match err {
        Error::Timeout {
            target,
            timeout_ms,
            message,
            source,
            ..
        } => Error::Timeout {
            target,
            timeout_ms,
            waited_ms: start.elapsed().as_millis() as u64,
            message,
            source,
        },
        other => other,
    }
}

/// Fails with a clear error when the server's mode does not match the configured one: TFRA
/// users who pointed a standalone config at a cluster node got wrong commands and crashes.
pub(crate) fn check_cluster_enabled(
    conn: &mut dyn redis::ConnectionLike,
    expect_cluster: bool,
    target: &str,
    timeout: Duration,
) -> Result<()> {
    let enabled = match redis::cmd("INFO").arg("cluster").query::<String>(conn) {
        // Redis-compatible stores such as Pika answer INFO cluster with nothing: treat as plain.
        Ok(info) => info.lines().any(|l| l.trim() == "cluster_enabled:1"),
        // INFO is `@dangerous`, so a least-privileged ACL user may not run it; HELLO
        // (`@connection`) names the mode too. A user without either can still use its tables:
        // the check is a courtesy.
        Err(e) if e.code() == Some("NOPERM") => match hello(conn) {
            Some(h) => h.mode == "cluster",
            None => return Ok(()),
        },
        Err(e) => return Err(classify(&e, target, timeout)),
    };
    if enabled && !expect_cluster {
        return Err(Error::ModeMismatch {
            message: format!(
                "{target} is a Redis Cluster node, but the config does not use cluster mode; \
                 set \"redis_connection_mode\": 0"
            ),
        });
    }
    if !enabled && expect_cluster {
        return Err(Error::ModeMismatch {
            message: format!(
                "{target} is not a Redis Cluster node, but the config says \
                 \"redis_connection_mode\": 0 (cluster); use 2 for a single server or 1 for Sentinel"
            ),
        });
    }
    Ok(())
}

/// What `HELLO` says about a server (Redis 6 and later).
pub(crate) struct Hello {
    /// `standalone`, `sentinel` or `cluster`.
    pub(crate) mode: String,
    /// `master` or `replica`.
    pub(crate) role: String,
}

/// Asks `HELLO 2` (stays on RESP2, changes nothing else on the connection). It is the way a
/// least-privileged ACL user learns a server's mode and role: `HELLO` is in `@connection`,
/// while `INFO` and `ROLE` are `@dangerous` (and `ROLE` `@admin`). `None` when the server
/// cannot tell (no `HELLO` before Redis 6, or no right to run it).
pub(crate) fn hello(conn: &mut dyn redis::ConnectionLike) -> Option<Hello> {
    let reply: Value = redis::cmd("HELLO").arg(2).query(conn).ok()?;
    let pairs: Vec<(Value, Value)> = match reply {
        Value::Array(items) => {
            let mut items = items.into_iter();
            std::iter::from_fn(|| Some((items.next()?, items.next()?))).collect()
        }
        Value::Map(pairs) => pairs,
        _ => return None,
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let field = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| text(k).as_deref() == Some(name))
            .and_then(|(_, v)| text(v))
    };
    Some(Hello {
        mode: field("mode")?,
        role: field("role")?,
    })
}

/// True for commands that never change data. Reads that must see the latest writes go to the
/// master as `Role::Write` batches (HLEN, HSCAN); they need no durable-write `WAIT`. Without
/// this check, a table could not even be opened with `redis_durable_write_replicas` set while
/// no replica was connected, because opening scans the buckets.
pub(crate) fn is_read_only(name: &str) -> bool {
    const READS: [&str; 19] = [
        "HMGET",
        "HGET",
        "HLEN",
        "HSCAN",
        "HRANDFIELD",
        "HEXISTS",
        "HSTRLEN",
        "HKEYS",
        "HVALS",
        "HGETALL",
        "SCAN",
        "DUMP",
        "EXISTS",
        "TTL",
        "PTTL",
        "TYPE",
        "DBSIZE",
        "INFO",
        "PING",
    ];
    READS.iter().any(|r| name.eq_ignore_ascii_case(r))
}

/// True when a batch needs the durable-write `WAIT`: a write batch that changes data.
pub(crate) fn needs_wait(
    batch: &(impl Commands + ?Sized),
    role: Role,
    opts: &ConnectOptions,
) -> bool {
    role == Role::Write
        && opts.durable_replicas > 0
        && !(0..batch.len()).all(|i| is_read_only(batch.name_of(i)))
}

/// The `WAIT` that follows a durable write batch on the same connection.
pub(crate) fn wait_command(opts: &ConnectOptions) -> Vec<u8> {
    redis::cmd("WAIT")
        .arg(opts.durable_replicas)
        .arg(opts.durable_timeout.as_millis() as u64)
        .get_packed_command()
}

/// Fails a write whose `WAIT` saw fewer replicas than `redis_durable_write_replicas`. The rows
/// did reach the master, but a failover could still lose them, so the caller must not treat
/// them as safe; the error is transient, and an idempotent write is sent again.
pub(crate) fn check_durable(acked: i64, opts: &ConnectOptions, target: &str) -> Result<()> {
    if acked >= i64::from(opts.durable_replicas) {
        return Ok(());
    }
    Err(Error::Connection {
        source: None,
        target: target.to_string(),
        message: format!(
            "durable write not confirmed: {acked} of {} replicas (redis_durable_write_replicas) \
             acknowledged within {} ms (redis_durable_write_timeout_ms)",
            opts.durable_replicas,
            opts.durable_timeout.as_millis()
        ),
    })
}

/// Parses the reply of `SCAN`: `[cursor, [keys...]]`.
pub(crate) fn parse_scan_reply(reply: Value) -> Result<(u64, Vec<Vec<u8>>)> {
    let bad = || Error::Command {
        source: None,
        command: "SCAN".into(),
        bucket: String::new(),
        message: "unexpected reply shape".into(),
    };
    let Value::Array(mut parts) = reply else {
        return Err(bad());
    };
    if parts.len() != 2 {
        return Err(bad());
    }
    let keys = parts.pop().ok_or_else(bad)?;
    let cursor = parts.pop().ok_or_else(bad)?;
    let cursor: u64 = match cursor {
        Value::BulkString(b) => std::str::from_utf8(&b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?,
        Value::Int(i) => i as u64,
        _ => return Err(bad()),
    };
    let Value::Array(items) = keys else {
        return Err(bad());
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::BulkString(b) => out.push(b),
            _ => return Err(bad()),
        }
    }
    Ok((cursor, out))
}

/// Scans one plain connection to the end.
pub(crate) fn scan_connection(
    conn: &mut dyn redis::ConnectionLike,
    pattern: &[u8],
    target: &str,
    timeout: Duration,
) -> Result<Vec<Vec<u8>>> {
    let mut cursor = 0u64;
    let mut out = Vec::new();
    loop {
        let reply: Value = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query(conn)
            .map_err(|e| classify(&e, target, timeout))?;
        let (next, keys) = parse_scan_reply(reply)?;
        out.extend(keys);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Builds the error for a command that Redis answered with an error, naming the command and
/// its key (the bucket).
pub(crate) fn command_error(batch: &(impl Commands + ?Sized), i: usize, message: String) -> Error {
    Error::Command {
        source: None,
        command: batch.name_of(i).to_string(),
        bucket: crate::layout::printable(batch.key_of(i)),
        message: scrub(&message),
    }
}

/// Checks a pipeline's replies (run with `ignore_errors`) for error replies.
pub(crate) fn check_replies(
    batch: &(impl Commands + ?Sized),
    idxs: &[usize],
    replies: &[Reply],
) -> Result<()> {
    for (&i, reply) in idxs.iter().zip(replies) {
        if let Some(e) = reply.server_error() {
            return Err(error_reply(batch, i, &e));
        }
    }
    Ok(())
}

/// The error for command `i` of `batch` answered with `e`.
pub(crate) fn error_reply(
    batch: &(impl Commands + ?Sized),
    i: usize,
    e: &redis::ServerError,
) -> Error {
    let message = match e.details() {
        Some(d) => format!("{} {d}", e.code()),
        None => e.code().to_string(),
    };
    let mut err = command_error(batch, i, message);
    if let Error::Command { source, .. } = &mut err {
        *source = Some(Box::new(e.clone()));
    }
    match err {
        // ACL refusals are the user's to fix, not a server fault: say so.
        Error::Command {
            command,
            bucket,
            message,
            source,
        } if is_access_code(e.code()) => Error::Auth {
            target: format!("{command} {bucket}"),
            message,
            source,
        },
        other => other,
    }
}

/// True for the error replies of a node that cannot serve writes right now ([`FAILOVER_CODES`]):
/// the connection must be resolved again.
pub(crate) fn is_failover_reply(e: &redis::ServerError) -> bool {
    FAILOVER_CODES.contains(&e.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_skip_the_durable_wait() {
        assert!(is_read_only("hmget"));
        assert!(is_read_only("HSCAN"));
        assert!(is_read_only("HRANDFIELD"));
        assert!(!is_read_only("HSET"));
        assert!(!is_read_only("EVAL"));
        assert!(!is_read_only("PERSIST"));
    }

    /// The error redis-rs makes of the reply `-<code> details`.
    fn reply_error(code: &str) -> redis::RedisError {
        match redis::parse_redis_value(format!("-{code} details\r\n").as_bytes()) {
            Ok(Value::ServerError(e)) => e.into(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_code_has_one_class() {
        for code in FAILOVER_CODES {
            assert!(TOPOLOGY_CODES.contains(&code), "{code}");
        }
        for code in ACCESS_CODES {
            assert!(!TOPOLOGY_CODES.contains(&code), "{code}");
            let err = classify(&reply_error(code), "n:1", Duration::from_millis(5));
            assert!(matches!(err, Error::Auth { .. }), "{code}: {err:?}");
            assert!(!surely_not_executed(&reply_error(code)));
        }
        for code in TOPOLOGY_CODES {
            let err = classify(&reply_error(code), "n:1", Duration::from_millis(5));
            assert!(err.is_transient(), "{code}: {err:?}");
            assert!(surely_not_executed(&reply_error(code)), "{code}");
        }
        let err = classify(&reply_error("WRONGTYPE"), "n:1", Duration::from_millis(5));
        assert!(matches!(err, Error::Command { .. }), "{err:?}");
    }
}
