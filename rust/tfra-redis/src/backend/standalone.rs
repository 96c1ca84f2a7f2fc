//! One Redis server (TFRA's `redis_connection_mode` 2). Sentinel mode reuses this backend with a
//! target that asks the sentinels where the master is.

use super::batch::Batch;
use super::link::{Link, StreamError};
use super::options::ConnectOptions;
use super::pool::{Pool, Target};
use super::reply::{Reply, ReplyView};
use super::{Backend, Retry, Role, classify, scan_connection, with_retry};
use crate::config::ConnectionMode;
use crate::error::{Error, Result};

/// A fixed `host:port`.
pub(crate) struct FixedNode {
    host: String,
    port: u16,
    opts: ConnectOptions,
    /// Send `READONLY` after connecting: a cluster replica serves reads only after it.
    readonly: bool,
}

impl FixedNode {
    /// A target for one node; `readonly` for reads from a cluster replica.
    pub(crate) fn new(host: &str, port: u16, opts: &ConnectOptions, readonly: bool) -> Self {
        FixedNode {
            host: host.to_string(),
            port,
            opts: opts.clone(),
            readonly,
        }
    }
}

impl Target for FixedNode {
    fn open(&self) -> Result<(Link, String)> {
        let addr = format!("{}:{}", self.host, self.port);
        let mut conn = Link::connect(&self.opts, &self.host, self.port)
            .map_err(|e| classify(&e, &addr, self.opts.connect_timeout))?;
        if self.readonly {
            redis::cmd("READONLY")
                .exec(&mut conn)
                .map_err(|e| classify(&e, &addr, self.opts.socket_timeout))?;
        }
        Ok((conn, addr))
    }

    fn describe(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// A backend over pools of plain connections: one pool for writes and, when replica reads
/// are on (Sentinel), one for reads.
pub(crate) struct PlainBackend<W: Target, R: Target> {
    pub(crate) mode: ConnectionMode,
    pub(crate) write: Pool<W>,
    pub(crate) read: Option<Pool<R>>,
    pub(crate) opts: ConnectOptions,
}

/// The standalone backend.
pub(crate) type Standalone = PlainBackend<FixedNode, FixedNode>;

impl Standalone {
    /// Connects once to check the server and the mode, then builds the pool.
    pub(crate) fn open(opts: ConnectOptions) -> Result<Self> {
        let (host, port) = opts.hosts.first().cloned().ok_or_else(|| {
            Error::invalid(
                crate::error::ArgumentKind::Config,
                "redis_host_ip is empty: no server to connect to",
            )
        })?;
        let node = FixedNode::new(&host, port, &opts, false);
        let (mut conn, addr) = node.open()?;
        super::check_cluster_enabled(&mut conn, false, &addr, opts.socket_timeout)?;
        Ok(PlainBackend {
            mode: ConnectionMode::Standalone,
            write: Pool::new(node, &opts),
            read: None,
            opts,
        })
    }
}

/// Runs one pipeline on a pooled connection, marking the connection broken on any transport
/// failure so the pool replaces it.
///
/// Commands are tracked one by one, as in cluster mode: a server demoted in the middle of a
/// pipeline (failover) runs its first commands and answers the rest READONLY / MASTERDOWN /
/// LOADING. Only the refused ones surely did not run, so only they are sent again; resending
/// the whole pipeline applied the first accum deltas twice.
pub(crate) fn run_on_pool<T: Target>(
    pool: &Pool<T>,
    batch: &Batch,
    opts: &ConnectOptions,
    role: Role,
    retry: Retry,
) -> Result<Vec<Reply>> {
    // Durable writes: WAIT rides in the same pipeline, on the same connection, so it covers
    // exactly these writes.
    let durable = super::needs_wait(batch, role, opts);
    let wait = if durable {
        super::wait_command(opts)
    } else {
        Vec::new()
    };
    let mut results: Vec<Option<Reply>> = vec![None; batch.len()];
    with_retry(opts.retry_deadline, retry, || {
        let pending: Vec<usize> = (0..batch.len()).filter(|&i| results[i].is_none()).collect();
        let mut conn = pool.get().map_err(|e| (e, true))?;
        if retry == Retry::AtMostOnce {
            conn.probe(opts.socket_timeout).map_err(|e| (e, true))?;
        }
        // The first attempt sends the batch as encoded, in one piece.
        let mut parts: Vec<&[u8]> = if pending.len() == batch.len() {
            vec![batch.bytes()]
        } else {
            pending.iter().map(|&i| batch.command_bytes(i)).collect()
        };
        parts.push(&wait);
        let expected = pending.len() + usize::from(durable);
        let (result, read_timeout) = if durable {
            let wait = opts.durable_timeout;
            (
                conn.inner
                    .exchange_waiting(&parts, expected, opts.socket_timeout, wait),
                opts.socket_timeout + wait,
            )
        } else {
            (conn.inner.exchange(&parts, expected), opts.socket_timeout)
        };
        conn.last_used = std::time::Instant::now();
        let mut replies = match result {
            Ok(replies) => replies,
            Err(e) => {
                conn.broken = true;
                let not_executed = super::surely_not_executed(&e);
                return Err((classify(&e, &conn.addr, read_timeout), not_executed));
            }
        };
        let acked = durable.then(|| replies.pop().and_then(|r| r.as_int()).unwrap_or(0));
        let mut refused = false;
        let mut ran = Vec::with_capacity(pending.len());
        for (&i, reply) in pending.iter().zip(replies) {
            match reply.server_error() {
                // A demoted master or one still loading: this command did not run.
                Some(e) if super::is_failover_reply(&e) => refused = true,
                Some(e) => return Err((super::error_reply(batch, i, &e), false)),
                None => {
                    results[i] = Some(reply);
                    ran.push(i);
                }
            }
        }
        if let Some(acked) = acked
            && !ran.is_empty()
            && let Err(e) = super::check_durable(acked, opts, &conn.addr)
        {
            // The writes reached the master but not enough replicas. Sending them again is
            // harmless for an idempotent batch and makes WAIT look again; a batch that must
            // not run twice stops here (the error says the write is not confirmed).
            for i in ran {
                results[i] = None;
            }
            return Err((e, false));
        }
        if refused {
            // Drop the connection so the next one is resolved again (Sentinel asks for the
            // new master).
            conn.broken = true;
            return Err((failover_error(&conn.addr), true));
        }
        Ok(())
    })?;
    Ok(results
        .into_iter()
        .map(|r| r.expect("every command has a reply after a successful attempt"))
        .collect())
}

fn failover_error(addr: &str) -> Error {
    Error::Connection {
        source: None,
        target: addr.to_string(),
        message: "server is read-only or loading (failover in progress)".into(),
    }
}

/// Streams an idempotent read batch on a pooled connection (see [`Backend::run_each`]).
fn stream_on_pool<T: Target>(
    pool: &Pool<T>,
    batch: &Batch,
    opts: &ConnectOptions,
    on_reply: &mut super::OnReply<'_>,
) -> Result<()> {
    let cmds: Vec<&[u8]> = (0..batch.len()).map(|i| batch.command_bytes(i)).collect();
    with_retry(opts.retry_deadline, Retry::Idempotent, || {
        let mut conn = pool.get().map_err(|e| (e, true))?;
        let addr = conn.addr.clone();
        let mut checked = |i: usize, reply: ReplyView<'_>| match reply.server_error() {
            Some(e) if super::is_failover_reply(&e) => Err(failover_error(&addr)),
            Some(e) => Err(super::error_reply(batch, i, &e)),
            None => on_reply(i, reply),
        };
        let result = conn.inner.stream(&cmds, &mut checked);
        conn.last_used = std::time::Instant::now();
        result.map_err(|e| {
            // Unread replies are left on the connection: it cannot be used again.
            conn.broken = true;
            match e {
                StreamError::Transport(e) => (
                    classify(&e, &conn.addr, opts.socket_timeout),
                    super::surely_not_executed(&e),
                ),
                StreamError::Handler(e) => (e, false),
            }
        })
    })
}

impl<W: Target, R: Target> Backend for PlainBackend<W, R> {
    fn run_each(&self, batch: &Batch, role: Role, on_reply: &mut super::OnReply<'_>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        match (&self.read, role) {
            (Some(read), Role::Read) => stream_on_pool(read, batch, &self.opts, on_reply),
            _ => stream_on_pool(&self.write, batch, &self.opts, on_reply),
        }
    }

    fn run_batch(&self, batch: &Batch, role: Role, retry: Retry) -> Result<Vec<Reply>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        match (&self.read, role) {
            (Some(read), Role::Read) => run_on_pool(read, batch, &self.opts, role, retry),
            _ => run_on_pool(&self.write, batch, &self.opts, role, retry),
        }
    }

    fn scan_match(&self, pattern: &[u8]) -> Result<Vec<Vec<u8>>> {
        // Always the master: a replica may lag behind and miss fresh buckets.
        with_retry(self.opts.retry_deadline, Retry::Idempotent, || {
            let mut conn = self.write.get().map_err(|e| (e, true))?;
            let addr = conn.addr.clone();
            scan_connection(&mut conn.inner, pattern, &addr, self.opts.socket_timeout).map_err(
                |e| {
                    conn.broken = true;
                    (e, false)
                },
            )
        })
    }

    fn master_slot_ranges(&self) -> Result<Vec<(u16, u16)>> {
        Ok(Vec::new())
    }

    fn release_inherited(&self) {
        self.write.close_idle();
        if let Some(read) = &self.read {
            read.close_idle();
        }
    }

    fn mode(&self) -> ConnectionMode {
        self.mode
    }

    fn describe(&self) -> String {
        let name = match self.mode {
            ConnectionMode::Standalone => "standalone",
            ConnectionMode::Sentinel => "sentinel",
            ConnectionMode::Cluster => "cluster",
        };
        format!("{name} {}", self.write.target().describe())
    }
}
