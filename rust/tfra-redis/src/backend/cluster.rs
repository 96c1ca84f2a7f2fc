//! Redis Cluster (TFRA's `redis_connection_mode` 0).
//!
//! We keep our own slot map (from `CLUSTER SLOTS`) and one pool of plain connections per node,
//! and run a batch as one pipeline per node, all nodes at once. Replies are checked one by
//! one: MOVED/ASK/TRYAGAIN/CLUSTERDOWN/READONLY/LOADING send only those commands again (after a
//! slot map refresh), and a node that fails takes down only its own commands.
//!
//! This replaced redis-rs's sync `ClusterConnection` + `ClusterPipeline`, which the reliability
//! tests showed unfit here:
//! - after one node stopped answering it still read every reply of that node, one full socket
//!   timeout each (a 100k-key lookup with one paused master took ~9 s at a 500 ms timeout);
//! - its errors name the seed list, never the node or the bucket that failed;
//! - its connections have no write timeout, so a big pipeline to a paused node could block
//!   forever once the socket buffers filled;
//! - an error reply anywhere failed the whole pipeline and the whole batch was retried, so a
//!   MOVED for one bucket re-applied the accum deltas of every other bucket.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use redis::Value;

use super::batch::Batch;
use super::options::{ConnectOptions, connect_node};
use super::pool::Pool;
use super::reply::Reply;
use super::standalone::FixedNode;
use super::{Backend, Retry, Role, check_replies, classify, scan_connection, with_retry};
use crate::config::ConnectionMode;
use crate::error::{Error, Result};
use crate::layout::SLOT_COUNT;

/// `(host, port)` of a node, as `CLUSTER SLOTS` reports it.
type Addr = (String, u16);

/// One pool per node; `true` in the key for READONLY connections to replicas.
type NodePools = HashMap<(Addr, bool), Arc<Pool<FixedNode>>>;

/// Redirects and topology errors handled inside one attempt before the retry backoff starts:
/// a MOVED after a reshard is fixed by one refresh, and sleeping for it would only slow down.
const REDIRECT_ROUNDS: usize = 5;

/// Error codes meaning "this node cannot run the command now, but the cluster will settle":
/// the command was not executed and is sent again once the slot map is refreshed.
const TOPOLOGY_CODES: [&str; 7] = [
    "MOVED",
    "ASK",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "READONLY",
    "MASTERDOWN",
    "LOADING",
];

struct SlotRange {
    start: u16,
    end: u16,
    master: Addr,
    replicas: Vec<Addr>,
}

/// Slot ranges sorted by their first slot.
#[derive(Default)]
struct SlotMap {
    ranges: Vec<SlotRange>,
}

impl SlotMap {
    fn owner(&self, slot: u16) -> Option<&SlotRange> {
        let i = self.ranges.partition_point(|r| r.start <= slot);
        let range = self.ranges.get(i.checked_sub(1)?)?;
        (slot <= range.end).then_some(range)
    }

    /// Each master and its slot ranges, sorted.
    fn masters(&self) -> BTreeMap<Addr, Vec<(u16, u16)>> {
        let mut masters: BTreeMap<Addr, Vec<(u16, u16)>> = BTreeMap::new();
        for r in &self.ranges {
            masters
                .entry(r.master.clone())
                .or_default()
                .push((r.start, r.end));
        }
        for ranges in masters.values_mut() {
            ranges.sort();
        }
        masters
    }

    /// Every node, masters first.
    fn nodes(&self) -> Vec<Addr> {
        let mut seen = HashSet::new();
        let masters = self.ranges.iter().map(|r| &r.master);
        let replicas = self.ranges.iter().flat_map(|r| &r.replicas);
        masters
            .chain(replicas)
            .filter(|a| seen.insert(*a))
            .cloned()
            .collect()
    }
}

/// Where a streamed read hands its replies, shared by the node threads; keeps the first
/// error the handler returned.
type Sink<'s, 'f> = Mutex<(&'s mut super::OnReply<'f>, Option<Error>)>;

/// What the nodes of one round of an attempt share.
#[derive(Clone, Copy)]
struct Share<'r, 's, 'f> {
    batch: &'r Batch,
    /// Commands to send with `ASKING` to the node of a redirect.
    asking: &'r HashMap<usize, Addr>,
    /// Whether a `WAIT` follows the writes.
    durable: bool,
    retry: Retry,
    sink: Option<&'r Sink<'s, 'f>>,
}

/// What one node did with its share of an attempt.
enum NodeOutcome {
    /// Every command got a reply (possibly an error reply), plus WAIT's count when asked.
    Replied {
        replies: Vec<Reply>,
        acked: Option<i64>,
    },
    /// No reply. `sent` is false when nothing reached the node (no connection could be made),
    /// so not even a non-idempotent command ran there.
    Failed { err: Error, sent: bool },
}

/// The cluster backend.
pub(crate) struct Cluster {
    opts: ConnectOptions,
    target: String,
    slots: RwLock<Arc<SlotMap>>,
    /// Set when a reply or a failure says the slot map may be out of date.
    stale: AtomicBool,
    pools: Mutex<NodePools>,
    next_replica: AtomicUsize,
    /// Nodes whose last command or slot query failed. A refresh asks them last: a paused
    /// master listed first cost every call after its failure one more socket timeout (the
    /// slot query) before the call's own.
    suspects: Mutex<HashSet<Addr>>,
}

impl Cluster {
    /// Checks that a seed is a cluster node, then loads the slot map.
    pub(crate) fn open(opts: ConnectOptions) -> Result<Self> {
        let target = format!(
            "cluster seeds {}",
            opts.hosts
                .iter()
                .map(|(h, p)| format!("{h}:{p}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        // A plain connection to the first reachable seed tells us whether it is a cluster at
        // all; a slot map query on a plain server fails much less clearly.
        let mut failures = Vec::new();
        let mut checked = false;
        for (host, port) in &opts.hosts {
            let addr = format!("{host}:{port}");
            match connect_node(
                opts.node_info(host, *port),
                opts.tls.as_ref(),
                opts.connect_timeout,
                opts.socket_timeout,
            ) {
                Ok(mut c) => {
                    super::check_cluster_enabled(&mut c, true, &addr, opts.socket_timeout)?;
                    checked = true;
                    break;
                }
                Err(e) => failures.push(classify(&e, &addr, opts.connect_timeout).to_string()),
            }
        }
        if !checked {
            return Err(Error::Connection {
                source: None,
                target,
                message: failures.join("; "),
            });
        }
        let cluster = Cluster {
            opts,
            target,
            slots: RwLock::new(Arc::new(SlotMap::default())),
            stale: AtomicBool::new(true),
            pools: Mutex::new(HashMap::new()),
            next_replica: AtomicUsize::new(0),
            suspects: Mutex::new(HashSet::new()),
        };
        // Fail at open, not at the first lookup, when the cluster cannot be used.
        with_retry(cluster.opts.retry_deadline, Retry::Idempotent, || {
            cluster.refresh().map_err(|e| (e, true))
        })?;
        Ok(cluster)
    }

    fn pool(&self, addr: &Addr, readonly: bool) -> Arc<Pool<FixedNode>> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools
            .entry((addr.clone(), readonly))
            .or_insert_with(|| {
                Arc::new(Pool::new(
                    FixedNode::new(&addr.0, addr.1, &self.opts, readonly),
                    &self.opts,
                ))
            })
            .clone()
    }

    fn suspect(&self, addr: &Addr, failed: bool) {
        let mut suspects = self.suspects.lock().unwrap_or_else(|e| e.into_inner());
        if failed {
            suspects.insert(addr.clone());
        } else {
            suspects.remove(addr);
        }
    }

    fn slot_map(&self) -> Arc<SlotMap> {
        self.slots.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reloads the slot map from the first node that answers `CLUSTER SLOTS`: the nodes we
    /// know, then the seeds (every node of the old map may be gone after a big failover).
    fn refresh(&self) -> Result<()> {
        let mut candidates = self.slot_map().nodes();
        for seed in &self.opts.hosts {
            if !candidates.contains(seed) {
                candidates.push(seed.clone());
            }
        }
        {
            let suspects = self.suspects.lock().unwrap_or_else(|e| e.into_inner());
            // Stable: otherwise masters first, as before.
            candidates.sort_by_key(|a| suspects.contains(a));
        }
        let mut failures = Vec::new();
        for addr in candidates {
            let pool = self.pool(&addr, false);
            let mut conn = match pool.get() {
                Ok(c) => c,
                Err(e) => {
                    self.suspect(&addr, true);
                    failures.push(e.to_string());
                    continue;
                }
            };
            let reply = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query::<Value>(&mut conn.inner);
            match reply.map_err(|e| {
                conn.broken = true;
                classify(&e, &conn.addr, self.opts.socket_timeout)
            }) {
                Err(e) => {
                    self.suspect(&addr, true);
                    failures.push(e.to_string());
                }
                Ok(reply) => match parse_cluster_slots(reply, &addr.0) {
                    Ok(map) if !map.ranges.is_empty() => {
                        self.suspect(&addr, false);
                        *self.slots.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
                        self.stale.store(false, Ordering::Relaxed);
                        return Ok(());
                    }
                    Ok(_) => failures.push(format!("{}: serves no slots", conn.addr)),
                    Err(e) => failures.push(format!("{}: {e}", conn.addr)),
                },
            }
        }
        Err(Error::Connection {
            source: None,
            target: self.target.clone(),
            message: format!("no node answered CLUSTER SLOTS: {}", failures.join("; ")),
        })
    }

    /// Sends the given commands of a batch to one node as one pipeline.
    fn run_node(
        &self,
        node: &(Addr, bool),
        idxs: &[usize],
        share: &Share<'_, '_, '_>,
    ) -> NodeOutcome {
        let Share {
            batch,
            asking,
            durable,
            retry,
            sink,
        } = *share;
        let pool = self.pool(&node.0, node.1);
        let mut conn = match pool.get() {
            Ok(c) => c,
            Err(err) => return NodeOutcome::Failed { err, sent: false },
        };
        if retry == Retry::AtMostOnce
            && let Err(err) = conn.probe(self.opts.socket_timeout)
        {
            return NodeOutcome::Failed { err, sent: false };
        }
        // The node's commands are sent from where they are in the batch, not copied together.
        let mut parts: Vec<&[u8]> = Vec::with_capacity(idxs.len() + 1);
        let mut expected = idxs.len();
        for &i in idxs {
            if asking.contains_key(&i) {
                // ASK: the target node serves the key only for a command flagged by ASKING.
                parts.push(b"*1\r\n$6\r\nASKING\r\n");
                expected += 1;
            }
            parts.push(batch.command_bytes(i));
        }
        // WAIT rides on the connection that carried the writes, so it covers exactly them.
        let wait = if durable {
            super::wait_command(&self.opts)
        } else {
            Vec::new()
        };
        if durable {
            parts.push(&wait);
            expected += 1;
        }
        let (result, read_timeout) = if durable {
            let wait = self.opts.durable_timeout;
            (
                conn.inner
                    .exchange_waiting(&parts, expected, self.opts.socket_timeout, wait),
                self.opts.socket_timeout + wait,
            )
        } else {
            (
                conn.inner.exchange(&parts, expected),
                self.opts.socket_timeout,
            )
        };
        conn.last_used = std::time::Instant::now();
        match result {
            Ok(all) => {
                let mut all = all.into_iter();
                let mut replies = Vec::with_capacity(idxs.len());
                for &i in idxs {
                    if asking.contains_key(&i) {
                        all.next(); // ASKING's +OK
                    }
                    replies.push(all.next().unwrap_or(Reply::Parsed(Value::Nil)));
                }
                let acked = durable.then(|| all.next().and_then(|r| r.as_int()).unwrap_or(0));
                if let Some(sink) = sink {
                    // Rows are copied out by this node's thread, while the reply is still
                    // warm in cache and other nodes are still answering. Error replies are
                    // left to `attempt` (redirects are retried, others fail the call).
                    for (&i, reply) in idxs.iter().zip(&replies) {
                        if reply.server_error().is_some() {
                            continue;
                        }
                        let mut sink = sink.lock().unwrap_or_else(|e| e.into_inner());
                        if sink.1.is_none()
                            && let Err(e) = (sink.0)(i, reply.view())
                        {
                            sink.1 = Some(e);
                        }
                    }
                }
                NodeOutcome::Replied { replies, acked }
            }
            Err(e) => {
                conn.broken = true;
                NodeOutcome::Failed {
                    err: classify(&e, &conn.addr, read_timeout),
                    sent: true,
                }
            }
        }
    }

    /// Names the node and the buckets in a transport error, so that the caller sees which
    /// part of a multi-node batch failed.
    fn node_error(&self, err: Error, node: &(Addr, bool), batch: &Batch, idxs: &[usize]) -> Error {
        let mut buckets: Vec<String> = idxs
            .iter()
            .map(|&i| crate::layout::printable(batch.key_of(i)))
            .collect();
        buckets.dedup();
        let shown = buckets.len().min(4);
        let mut list = buckets[..shown].join(", ");
        if buckets.len() > shown {
            list.push_str(&format!(" and {} more", buckets.len() - shown));
        }
        let role = if node.1 { "replica" } else { "master" };
        let context = format!(
            "{}:{} ({role} of {} {list})",
            node.0.0,
            node.0.1,
            batch.name_of(idxs[0])
        );
        match err {
            Error::Timeout {
                timeout_ms,
                waited_ms,
                message,
                source,
                ..
            } => Error::Timeout {
                target: context,
                timeout_ms,
                waited_ms,
                message,
                source,
            },
            Error::Connection {
                message, source, ..
            } => Error::Connection {
                target: context,
                message,
                source,
            },
            Error::Auth {
                message, source, ..
            } => Error::Auth {
                target: context,
                message,
                source,
            },
            other => other,
        }
    }

    /// One attempt: sends every command that has no result yet, following redirects for a few
    /// rounds. Returns the error to report and whether it proves the failed commands did not
    /// run; commands that succeeded keep their results for the next attempt.
    fn attempt(
        &self,
        batch: &Batch,
        slots: &[u16],
        role: Role,
        retry: Retry,
        results: &mut [Option<Reply>],
        sink: Option<&Sink<'_, '_>>,
    ) -> std::result::Result<(), (Error, bool)> {
        let durable = super::needs_wait(batch, role, &self.opts);
        let mut asking: HashMap<usize, Addr> = HashMap::new();
        for round in 0.. {
            if self.stale.load(Ordering::Relaxed) {
                self.refresh().map_err(|e| (e, true))?;
            }
            let map = self.slot_map();
            let mut groups: BTreeMap<(Addr, bool), Vec<usize>> = BTreeMap::new();
            for (i, _) in results.iter().enumerate().filter(|(_, r)| r.is_none()) {
                let node = match asking.get(&i) {
                    Some(addr) => (addr.clone(), false),
                    None => {
                        let Some(range) = map.owner(slots[i]) else {
                            self.stale.store(true, Ordering::Relaxed);
                            return Err((
                                Error::Connection {
                                    source: None,
                                    target: self.target.clone(),
                                    message: format!(
                                        "no master serves slot {} of bucket {} (the cluster is \
                                         failing over or resharding)",
                                        slots[i],
                                        crate::layout::printable(batch.key_of(i))
                                    ),
                                },
                                true,
                            ));
                        };
                        if role == Role::Read
                            && self.opts.read_from_replicas
                            && !range.replicas.is_empty()
                        {
                            let k = self.next_replica.fetch_add(1, Ordering::Relaxed);
                            (range.replicas[k % range.replicas.len()].clone(), true)
                        } else {
                            (range.master.clone(), false)
                        }
                    }
                };
                groups.entry(node).or_default().push(i);
            }
            let groups: Vec<_> = groups.into_iter().collect();
            let share = Share {
                batch,
                asking: &asking,
                durable,
                retry,
                sink,
            };
            let outcomes: Vec<NodeOutcome> = if groups.len() == 1 {
                let (node, idxs) = &groups[0];
                vec![self.run_node(node, idxs, &share)]
            } else {
                // All nodes at once: the batch takes as long as the slowest node, not the sum.
                // The calling thread serves the first node itself: one thread fewer to start.
                std::thread::scope(|s| {
                    let share = &share;
                    let handles: Vec<_> = groups[1..]
                        .iter()
                        .map(|(node, idxs)| s.spawn(move || self.run_node(node, idxs, share)))
                        .collect();
                    let (node, idxs) = &groups[0];
                    let first = self.run_node(node, idxs, share);
                    std::iter::once(first)
                        .chain(
                            handles
                                .into_iter()
                                .map(|h| h.join().expect("a cluster node worker panicked")),
                        )
                        .collect()
                })
            };
            asking.clear();
            // The first error of each kind: a final one (not worth retrying) wins over one that
            // may have run (a non-idempotent batch must stop), which wins over a retryable one.
            let mut final_err: Option<Error> = None;
            let mut unsure_err: Option<Error> = None;
            let mut retry_err: Option<Error> = None;
            let mut redirected = false;
            for ((node, idxs), outcome) in groups.iter().zip(outcomes) {
                match outcome {
                    NodeOutcome::Failed { err, sent } => {
                        self.suspect(&node.0, true);
                        let err = self.node_error(err, node, batch, idxs);
                        // The node may be gone for good (failover): look again next time.
                        self.stale.store(true, Ordering::Relaxed);
                        if !err.is_transient() || matches!(err, Error::Timeout { .. }) {
                            final_err.get_or_insert(err);
                        } else if sent {
                            unsure_err.get_or_insert(err);
                        } else {
                            retry_err.get_or_insert(err);
                        }
                    }
                    NodeOutcome::Replied { replies, acked } => {
                        self.suspect(&node.0, false);
                        for (&i, reply) in idxs.iter().zip(replies) {
                            if let Some(e) = reply.server_error()
                                && TOPOLOGY_CODES.contains(&e.code())
                            {
                                match (e.code(), e.details().and_then(parse_redirect)) {
                                    ("ASK", Some(target)) => {
                                        asking.insert(i, target);
                                    }
                                    _ => self.stale.store(true, Ordering::Relaxed),
                                }
                                // MOVED/ASK are answered at once; a cluster that is down or
                                // loading needs the backoff.
                                redirected |= matches!(e.code(), "MOVED" | "ASK");
                                retry_err.get_or_insert_with(|| Error::Connection {
                                    source: None,
                                    target: format!("{}:{}", node.0.0, node.0.1),
                                    message: format!(
                                        "{} {} (the cluster is failing over or resharding)",
                                        e.code(),
                                        e.details().unwrap_or("")
                                    ),
                                });
                                continue;
                            }
                            if let Err(err) =
                                check_replies(batch, &[i], std::slice::from_ref(&reply))
                            {
                                final_err.get_or_insert(with_node(err, node));
                                continue;
                            }
                            results[i] = Some(reply);
                        }
                        if let Some(acked) = acked
                            && let Err(err) = super::check_durable(
                                acked,
                                &self.opts,
                                &format!("{}:{}", node.0.0, node.0.1),
                            )
                        {
                            // The writes are on the master but not yet on enough replicas.
                            // Sending them again is harmless for idempotent batches and makes
                            // WAIT look again; a non-idempotent batch must stop here.
                            for &i in idxs {
                                results[i] = None;
                            }
                            unsure_err.get_or_insert(err);
                        }
                    }
                }
            }
            if let Some(err) = final_err {
                return Err((err, false));
            }
            if let Some(err) = unsure_err {
                return Err((err, false));
            }
            match retry_err {
                None => return Ok(()),
                // Only redirects: follow them at once, without the retry backoff.
                Some(_) if redirected && round + 1 < REDIRECT_ROUNDS => {}
                Some(err) => return Err((err, true)),
            }
        }
        unreachable!("the redirect loop always returns")
    }
}

/// `MOVED`/`ASK` details: `3999 127.0.0.1:6381`.
fn parse_redirect(details: &str) -> Option<Addr> {
    let target = details.split_ascii_whitespace().nth(1)?;
    let (host, port) = target.rsplit_once(':')?;
    Some((host.to_string(), port.parse().ok()?))
}

/// Adds the node to an error reply's message.
fn with_node(err: Error, node: &(Addr, bool)) -> Error {
    match err {
        Error::Command {
            command,
            bucket,
            message,
            source,
        } => Error::Command {
            command,
            bucket,
            message: format!("{message} (node {}:{})", node.0.0, node.0.1),
            source,
        },
        other => other,
    }
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// `CLUSTER SLOTS`: `[[start, end, [ip, port, id, ...], replicas...], ...]`. An empty ip means
/// "the node you asked" (`asked_host`).
fn parse_cluster_slots(reply: Value, asked_host: &str) -> Result<SlotMap> {
    let bad = |why: &str| Error::Command {
        source: None,
        command: "CLUSTER SLOTS".into(),
        bucket: String::new(),
        message: format!("unexpected reply: {why}"),
    };
    let Value::Array(entries) = reply else {
        return Err(bad("not an array"));
    };
    let node = |v: &Value| -> Result<Addr> {
        let Value::Array(parts) = v else {
            return Err(bad("node entry"));
        };
        let (Some(ip), Some(port)) = (
            parts.first().and_then(as_string),
            parts.get(1).and_then(as_int),
        ) else {
            return Err(bad("node address"));
        };
        let ip = if ip.is_empty() || ip == "?" {
            asked_host.to_string()
        } else {
            ip
        };
        let port = u16::try_from(port).map_err(|_| bad("port"))?;
        Ok((ip, port))
    };
    let mut ranges = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else {
            return Err(bad("range is not an array"));
        };
        let (Some(start), Some(end)) = (
            parts.first().and_then(as_int),
            parts.get(1).and_then(as_int),
        ) else {
            return Err(bad("range bounds"));
        };
        // Slots index TFRA's slot table when bucket tags are picked from the topology, so a
        // slot past the slot space must stop here rather than panic there.
        let slot = |n: i64| {
            u16::try_from(n)
                .ok()
                .filter(|&s| usize::from(s) < SLOT_COUNT)
        };
        let (Some(start), Some(end)) = (slot(start), slot(end)) else {
            return Err(bad(&format!(
                "slot range {start}-{end} outside 0-{}",
                SLOT_COUNT - 1
            )));
        };
        if start > end {
            return Err(bad(&format!(
                "slot range {start}-{end} ends before it starts"
            )));
        }
        let master = node(parts.get(2).ok_or_else(|| bad("master entry"))?)?;
        let replicas = parts[3..].iter().map(node).collect::<Result<Vec<_>>>()?;
        ranges.push(SlotRange {
            start,
            end,
            master,
            replicas,
        });
    }
    ranges.sort_by_key(|r| r.start);
    Ok(SlotMap { ranges })
}

impl Cluster {
    /// Runs a batch to the end (retries and redirects included); with a sink, every good
    /// reply is also handed to it as soon as its node's pipeline is read. Commands answered
    /// in an earlier attempt are not sent again, so the sink sees each command once.
    fn run_all(
        &self,
        batch: &Batch,
        role: Role,
        retry: Retry,
        sink: Option<&Sink<'_, '_>>,
    ) -> Result<Vec<Reply>> {
        let slots: Vec<u16> = (0..batch.len())
            .map(|i| crate::layout::key_slot(batch.key_of(i)))
            .collect();
        let mut results: Vec<Option<Reply>> = vec![None; batch.len()];
        with_retry(self.opts.retry_deadline, retry, || {
            self.attempt(batch, &slots, role, retry, &mut results, sink)
        })?;
        Ok(results
            .into_iter()
            .map(|r| r.expect("every command has a reply after a successful attempt"))
            .collect())
    }
}

impl Backend for Cluster {
    fn run_batch(&self, batch: &Batch, role: Role, retry: Retry) -> Result<Vec<Reply>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.run_all(batch, role, retry, None)
    }

    fn run_each(&self, batch: &Batch, role: Role, on_reply: &mut super::OnReply<'_>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let sink: Sink<'_, '_> = Mutex::new((on_reply, None));
        self.run_all(batch, role, Retry::Idempotent, Some(&sink))?;
        match sink.into_inner().unwrap_or_else(|e| e.into_inner()).1 {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    fn scan_match(&self, pattern: &[u8]) -> Result<Vec<Vec<u8>>> {
        // Each try starts from a fresh slot map, so a master that failed over is replaced by
        // its successor; SCAN is read-only, so repeating it is harmless.
        let mut out = with_retry(self.opts.retry_deadline, Retry::Idempotent, || {
            self.refresh().map_err(|e| (e, true))?;
            let mut out = Vec::new();
            for (host, port) in self.slot_map().masters().keys() {
                let pool = self.pool(&(host.clone(), *port), false);
                let mut conn = pool.get().map_err(|e| (e, true))?;
                let addr = conn.addr.clone();
                let keys =
                    scan_connection(&mut conn.inner, pattern, &addr, self.opts.socket_timeout)
                        .map_err(|e| {
                            conn.broken = true;
                            (e, false)
                        })?;
                out.extend(keys);
            }
            Ok(out)
        })?;
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn master_slot_ranges(&self) -> Result<Vec<(u16, u16)>> {
        with_retry(self.opts.retry_deadline, Retry::Idempotent, || {
            self.refresh().map_err(|e| (e, true))
        })?;
        let mut firsts: Vec<(u16, u16)> = self
            .slot_map()
            .masters()
            .into_values()
            .filter_map(|r| r.first().copied())
            .collect();
        firsts.sort();
        Ok(firsts)
    }

    fn mode(&self) -> ConnectionMode {
        ConnectionMode::Cluster
    }

    fn release_inherited(&self) {
        let pools = match self.pools.try_lock() {
            Ok(pools) => pools,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        for pool in pools.values() {
            pool.close_idle();
        }
    }

    fn describe(&self) -> String {
        self.target.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ip: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(ip.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    #[test]
    fn slot_map_finds_owners_and_gaps() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node("127.0.0.1", 7001),
                node("", 7004),
            ]),
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000),
            ]),
            Value::Array(vec![
                Value::Int(12000),
                Value::Int(16383),
                node("127.0.0.1", 7002),
            ]),
        ]);
        let map = parse_cluster_slots(reply, "10.0.0.1").unwrap();
        assert_eq!(map.owner(0).unwrap().master.1, 7000);
        assert_eq!(map.owner(5460).unwrap().master.1, 7000);
        assert_eq!(map.owner(5461).unwrap().master.1, 7001);
        assert_eq!(
            map.owner(6000).unwrap().replicas,
            vec![("10.0.0.1".to_string(), 7004)]
        );
        assert!(
            map.owner(11000).is_none(),
            "slots 10923-11999 are unassigned"
        );
        assert_eq!(map.owner(16383).unwrap().master.1, 7002);
        assert_eq!(map.nodes().len(), 4);
        let firsts: Vec<_> = map.masters().into_values().map(|r| r[0]).collect();
        assert_eq!(firsts, vec![(0, 5460), (5461, 10922), (12000, 16383)]);
    }

    #[test]
    fn slot_numbers_outside_the_slot_space_are_a_named_error() {
        // A server (or a proxy posing as one) can answer anything; slots past 16383 used to
        // index past the slot table when the bucket tags were picked from the topology.
        for (start, end) in [(0, 16384), (16384, 16384), (20000, 30000), (10, 5), (-1, 5)] {
            let reply = Value::Array(vec![Value::Array(vec![
                Value::Int(start),
                Value::Int(end),
                node("127.0.0.1", 7000),
            ])]);
            match parse_cluster_slots(reply, "10.0.0.1") {
                Err(Error::Command {
                    command, message, ..
                }) => {
                    assert_eq!(command, "CLUSTER SLOTS");
                    assert!(message.contains("slot range"), "{message}");
                }
                Err(other) => panic!("{start}-{end}: {other:?}"),
                Ok(map) => panic!("{start}-{end} accepted: {:?}", map.masters()),
            }
        }
    }

    #[test]
    fn redirect_target() {
        assert_eq!(
            parse_redirect("3999 127.0.0.1:6381"),
            Some(("127.0.0.1".to_string(), 6381))
        );
        assert_eq!(parse_redirect("3999"), None);
    }
}
