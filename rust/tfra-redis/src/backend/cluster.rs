//! Redis Cluster (TFRA's `redis_connection_mode` 0).
//!
//! We keep our own slot map (from `CLUSTER SLOTS`, parsed and chosen in `slot_map.rs`) and one
//! pool of plain connections per node, and run a batch as one pipeline per node, all nodes at
//! once. Replies are checked one by one, and only the commands concerned are sent again:
//! - MOVED and ASK go to their target in the next round at once; a MOVED also patches the map
//!   for its slot, and the next call refreshes the whole map beside its own commands;
//! - TRYAGAIN/CLUSTERDOWN/READONLY/MASTERDOWN/LOADING, or a node that fails, mark the map
//!   stale: it is refreshed before the next attempt, after the retry backoff;
//! - a read that fails on a replica goes to the master in the next round, and reads leave
//!   that replica alone for a while.
//!
//! A refresh asks several nodes at once and trusts the view most of them hold; the pools of
//! nodes the new map no longer names are dropped. A node that failed alone takes down only its
//! own commands.
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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::Value;

use super::batch::{Batch, Commands};
use super::options::{ConnectOptions, connect_node};
use super::pool::Pool;
use super::reply::Reply;
use super::slot_map::{Addr, SlotMap, choose_view, parse_cluster_slots, parse_redirect};
use super::standalone::FixedNode;
use super::{
    Backend, Retry, Role, TOPOLOGY_CODES, check_replies, classify, scan_connection, with_retry,
};
use crate::config::ConnectionMode;
use crate::error::{Error, Result};

/// One pool per node; `true` in the key for READONLY connections to replicas.
type NodePools = HashMap<(Addr, bool), Arc<Pool<FixedNode>>>;

/// Redirects and topology errors handled inside one attempt before the retry backoff starts:
/// a MOVED after a reshard is fixed by one refresh, and sleeping for it would only slow down.
const REDIRECT_ROUNDS: usize = 5;

/// Where a streamed read hands its replies, shared by the node threads; keeps the first
/// error the handler returned.
type Sink<'s, 'f> = Mutex<(&'s mut super::OnReply<'f>, Option<Error>)>;

/// What the nodes of one round of an attempt share.
#[derive(Clone, Copy)]
struct Share<'r, 's, 'f> {
    batch: &'r dyn Commands,
    /// Commands to send with `ASKING` (to the node of an `ASK` redirect).
    asking: &'r HashSet<usize>,
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
    /// Set when the slot map is known to be wrong where it matters (a node failed, a slot has
    /// no master, the cluster is down or failing over): the next attempt refreshes it before
    /// sending anything.
    stale: AtomicBool,
    /// Set when a `MOVED` was followed. The map was patched for that slot, but a reshard
    /// moves many slots: the next call refreshes the map beside its own commands, without
    /// waiting for it.
    drifted: AtomicBool,
    /// Whether a call is refreshing the map beside its commands, so that concurrent calls do
    /// not all do it.
    refreshing: AtomicBool,
    pools: Mutex<NodePools>,
    next_replica: AtomicUsize,
    /// Nodes whose last command or slot query failed, and when. A refresh asks them last: a
    /// paused master listed first cost every call after its failure one more socket timeout
    /// (the slot query) before the call's own. Reads skip a suspect replica for
    /// [`REPLICA_REST`].
    suspects: Mutex<HashMap<Addr, Instant>>,
    /// Full slot map refreshes done (for logs and tests).
    refreshes: AtomicU64,
    /// Command buffers of node threads, kept between calls (see [`Cluster::spare_batch`]).
    spare_batches: Mutex<Vec<Batch>>,
}

/// How many node threads' command buffers are kept between calls: one per master of a
/// typical cluster, plus a few for concurrent calls. Each is at most
/// `redis_client_buffer_keep_bytes`.
const SPARE_BATCHES: usize = 8;

/// How long reads leave a replica alone after it failed, going to its master instead. Long
/// enough that a dead or paused replica does not cost every read a connect or socket timeout,
/// short enough that a restarted one takes its share of reads again soon.
const REPLICA_REST: Duration = Duration::from_secs(5);

/// How many nodes a refresh asks at once (see [`super::slot_map::choose_view`]). Three give a
/// majority against one outdated node and cost one round trip, as the nodes are asked in
/// parallel.
const REFRESH_FANOUT: usize = 3;

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
            drifted: AtomicBool::new(false),
            refreshing: AtomicBool::new(false),
            pools: Mutex::new(HashMap::new()),
            next_replica: AtomicUsize::new(0),
            suspects: Mutex::new(HashMap::new()),
            refreshes: AtomicU64::new(0),
            spare_batches: Mutex::new(Vec::new()),
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
            suspects.insert(addr.clone(), Instant::now());
        } else {
            suspects.remove(addr);
        }
    }

    fn slot_map(&self) -> Arc<SlotMap> {
        self.slots.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Asks one node for its view of the slot map.
    fn ask_slots(&self, addr: &Addr) -> Result<SlotMap> {
        let pool = self.pool(addr, false);
        let mut conn = pool.get()?;
        let reply = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query::<Value>(&mut conn.inner)
            .map_err(|e| {
                conn.broken = true;
                classify(&e, &conn.addr, self.opts.socket_timeout)
            })?;
        let map = parse_cluster_slots(reply, &addr.0)?;
        if map.ranges.is_empty() {
            return Err(Error::Connection {
                source: None,
                target: conn.addr.clone(),
                message: "serves no slots (not part of a cluster yet?)".into(),
            });
        }
        Ok(map)
    }

    /// Reloads the slot map. Nodes are asked [`REFRESH_FANOUT`] at a time, in parallel: the
    /// nodes we know (masters first, nodes that just failed last), then the seeds (every node
    /// of the old map may be gone after a big failover). The first group with any answer
    /// decides, by [`choose_view`], so one node with an outdated view does not. Pools of nodes
    /// the new map no longer names (removed, or replaced in a failover) are dropped, closing
    /// their idle connections.
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
            candidates.sort_by_key(|a| suspects.contains_key(a));
        }
        let mut failures = Vec::new();
        // Whether every node refused the query (ACL): a retry cannot help then.
        let mut all_refused = true;
        for group in candidates.chunks(REFRESH_FANOUT) {
            let answers: Vec<Result<SlotMap>> = std::thread::scope(|s| {
                let handles: Vec<_> = group[1..]
                    .iter()
                    .map(|addr| s.spawn(move || self.ask_slots(addr)))
                    .collect();
                let first = self.ask_slots(&group[0]);
                std::iter::once(first)
                    .chain(handles.into_iter().map(|h| {
                        h.join()
                            .expect("a slot map query panicked, which it never should")
                    }))
                    .collect()
            });
            let mut views = Vec::new();
            for (addr, answer) in group.iter().zip(answers) {
                match answer {
                    Ok(map) => {
                        self.suspect(addr, false);
                        views.push(map);
                    }
                    Err(e) => {
                        let refused = matches!(e, Error::Auth { .. });
                        all_refused &= refused;
                        if !refused {
                            self.suspect(addr, true);
                        }
                        failures.push(format!("{}:{}: {e}", addr.0, addr.1));
                    }
                }
            }
            if let Some(map) = choose_view(views) {
                self.install(map);
                return Ok(());
            }
        }
        if all_refused && !failures.is_empty() {
            return Err(Error::Auth {
                source: None,
                target: self.target.clone(),
                message: format!(
                    "cluster mode needs CLUSTER SLOTS to find the slot owners; grant the user \
                     +cluster|slots (in @slow, neither @admin nor @dangerous): {}",
                    failures.join("; ")
                ),
            });
        }
        Err(Error::Connection {
            source: None,
            target: self.target.clone(),
            message: format!("no node answered CLUSTER SLOTS: {}", failures.join("; ")),
        })
    }

    /// Makes `map` the slot map and drops the pools of nodes it does not name.
    fn install(&self, map: SlotMap) {
        let nodes: HashSet<Addr> = map.nodes().into_iter().collect();
        *self.slots.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
        self.stale.store(false, Ordering::Relaxed);
        let n = self.refreshes.fetch_add(1, Ordering::Relaxed) + 1;
        log::debug!("{}: slot map refresh #{n} installed", self.target);
        let gone: Vec<Arc<Pool<FixedNode>>> = {
            let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
            let keys: Vec<(Addr, bool)> = pools
                .keys()
                .filter(|(addr, _)| !nodes.contains(addr))
                .cloned()
                .collect();
            keys.iter().filter_map(|k| pools.remove(k)).collect()
        };
        if !gone.is_empty() {
            log::debug!(
                "{}: dropped the pools of {} node(s) no longer in the slot map",
                self.target,
                gone.len()
            );
        }
        // Dropped outside the lock: closing sockets may take a moment. A call still using one
        // of these pools keeps it alive until its connection comes back.
        drop(gone);
    }

    /// A command buffer for a node thread: node threads live for one call, so a thread-local
    /// buffer would be new (and page-faulted in) every call.
    fn spare_batch(&self) -> Batch {
        let mut spares = self.spare_batches.lock().unwrap_or_else(|e| e.into_inner());
        spares.pop().unwrap_or_default()
    }

    /// Keeps a node thread's command buffer for the next call, unless it grew past
    /// `redis_client_buffer_keep_bytes`.
    fn keep_batch(&self, mut batch: Batch) {
        batch.clear();
        if batch.capacity() == 0 || batch.capacity() > self.opts.buffer_keep {
            return;
        }
        let mut spares = self.spare_batches.lock().unwrap_or_else(|e| e.into_inner());
        if spares.len() < SPARE_BATCHES {
            spares.push(batch);
        }
    }

    /// [`Cluster::run_node`] from a node thread, with a kept buffer when it has to encode.
    fn run_node_spare(
        &self,
        node: &(Addr, bool),
        idxs: &[usize],
        share: &Share<'_, '_, '_>,
    ) -> NodeOutcome {
        if idxs.iter().all(|&i| share.batch.encoded(i).is_some()) {
            return self.run_node(node, idxs, share, &mut Batch::new());
        }
        let mut buf = self.spare_batch();
        let outcome = self.run_node(node, idxs, share, &mut buf);
        self.keep_batch(buf);
        outcome
    }

    /// Sends the given commands of a batch to one node as one pipeline. Commands not
    /// encoded yet are encoded into `buf` here, in the node's own thread.
    fn run_node(
        &self,
        node: &(Addr, bool),
        idxs: &[usize],
        share: &Share<'_, '_, '_>,
        buf: &mut Batch,
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
        let mut parts: Vec<&[u8]> = Vec::with_capacity(idxs.len() + 1);
        let mut expected = idxs.len();
        if idxs.iter().all(|&i| batch.encoded(i).is_some()) {
            // The node's commands are sent from where they are in the batch, not copied
            // together.
            for &i in idxs {
                if asking.contains(&i) {
                    // ASK: the target node serves the key only for a command flagged by
                    // ASKING.
                    parts.push(ASKING);
                    expected += 1;
                }
                parts.extend(batch.encoded(i));
            }
        } else {
            // Encoded here, while the other nodes encode theirs or already run them; the
            // same commands, in the same order, as from an encoded batch.
            buf.clear();
            for &i in idxs {
                if asking.contains(&i) {
                    buf.command("ASKING", 0);
                    expected += 1;
                }
                batch.encode(i, buf);
            }
            parts.push(buf.bytes());
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
                    if asking.contains(&i) {
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
    fn node_error(
        &self,
        err: Error,
        node: &(Addr, bool),
        batch: &dyn Commands,
        idxs: &[usize],
    ) -> Error {
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

    /// Where a command for `slot` goes when no redirect applies: the slot's master, or for
    /// reads when the config allows one of its replicas (not one that failed lately, and none
    /// at all with `avoid_replicas`, set for commands whose replica failed in this attempt).
    fn route(
        &self,
        map: &SlotMap,
        slot: u16,
        role: Role,
        avoid_replicas: bool,
    ) -> Option<(Addr, bool)> {
        let range = map.owner(slot)?;
        if role == Role::Read && self.opts.read_from_replicas && !avoid_replicas {
            let suspects = self.suspects.lock().unwrap_or_else(|e| e.into_inner());
            let healthy: Vec<&Addr> = range
                .replicas
                .iter()
                .filter(|r| suspects.get(*r).is_none_or(|t| t.elapsed() >= REPLICA_REST))
                .collect();
            if !healthy.is_empty() {
                let k = self.next_replica.fetch_add(1, Ordering::Relaxed);
                return Some((healthy[k % healthy.len()].clone(), true));
            }
        }
        Some((range.master.clone(), false))
    }

    /// Patches the slot map after a `MOVED`, so later calls go straight to the new master; a
    /// full refresh follows beside the next call (see `drifted`).
    fn moved(&self, slot: u16, to: &Addr) {
        let mut slots = self.slots.write().unwrap_or_else(|e| e.into_inner());
        if slots.owner(slot).is_none_or(|r| &r.master != to) {
            *slots = Arc::new(slots.with_slot_moved(slot, to.clone()));
        }
        self.drifted.store(true, Ordering::Relaxed);
    }

    /// One attempt: sends every command that has no result yet, following redirects (and
    /// falling back from failed replicas to masters) for a few rounds. Returns the error to
    /// report and whether it proves the failed commands did not run; commands that succeeded
    /// keep their results for the next attempt.
    #[allow(clippy::too_many_arguments)]
    fn attempt(
        &self,
        batch: &dyn Commands,
        slots: &[u16],
        role: Role,
        retry: Retry,
        results: &mut [Option<Reply>],
        sink: Option<&Sink<'_, '_>>,
        scratch: &mut Batch,
    ) -> std::result::Result<(), (Error, bool)> {
        let durable = super::needs_wait(batch, role, &self.opts);
        // MOVED and ASK targets of the commands they answered, used at once: a MOVED used to
        // wait for a full slot map refresh first.
        let mut redirects: HashMap<usize, Addr> = HashMap::new();
        let mut asking: HashSet<usize> = HashSet::new();
        // Reads whose replica failed in this attempt: they go to the master.
        let mut to_master: HashSet<usize> = HashSet::new();
        for round in 0.. {
            if self.stale.load(Ordering::Relaxed) {
                self.refresh().map_err(|e| (e, true))?;
            }
            let map = self.slot_map();
            let mut groups: BTreeMap<(Addr, bool), Vec<usize>> = BTreeMap::new();
            for (i, _) in results.iter().enumerate().filter(|(_, r)| r.is_none()) {
                let node = match redirects.get(&i) {
                    Some(addr) => Some((addr.clone(), false)),
                    None => self.route(&map, slots[i], role, to_master.contains(&i)),
                };
                let Some(node) = node else {
                    self.stale.store(true, Ordering::Relaxed);
                    return Err((
                        Error::Connection {
                            source: None,
                            target: self.target.clone(),
                            message: format!(
                                "no master serves slot {} of bucket {} (the cluster is failing \
                                 over or resharding)",
                                slots[i],
                                crate::layout::printable(batch.key_of(i))
                            ),
                        },
                        true,
                    ));
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
                vec![self.run_node(node, idxs, &share, scratch)]
            } else {
                // All nodes at once: the batch takes as long as the slowest node, not the sum.
                // The calling thread serves the first node itself: one thread fewer to start.
                std::thread::scope(|s| {
                    let share = &share;
                    let handles: Vec<_> = groups[1..]
                        .iter()
                        .map(|(node, idxs)| s.spawn(move || self.run_node_spare(node, idxs, share)))
                        .collect();
                    let (node, idxs) = &groups[0];
                    let first = self.run_node(node, idxs, share, scratch);
                    std::iter::once(first)
                        .chain(
                            handles
                                .into_iter()
                                .map(|h| h.join().expect("a cluster node worker panicked")),
                        )
                        .collect()
                })
            };
            redirects.clear();
            asking.clear();
            // The first error of each kind: a final one (not worth retrying) wins over one that
            // may have run (a non-idempotent batch must stop), which wins over a retryable one.
            let mut final_err: Option<Error> = None;
            let mut unsure_err: Option<Error> = None;
            let mut retry_err: Option<Error> = None;
            // Whether another round may follow at once, without the retry backoff: redirects
            // and reads moved off a failed replica.
            let mut resend_now = false;
            for ((node, idxs), outcome) in groups.iter().zip(outcomes) {
                let (addr, replica) = node;
                match outcome {
                    NodeOutcome::Failed { err, .. } if *replica && role == Role::Read => {
                        // Reads are idempotent and the master has the rows: use it now
                        // rather than fail (a paused replica) or wait for the cluster to
                        // notice (a dead one).
                        self.suspect(addr, true);
                        log::debug!(
                            "replica {}:{} failed a read ({err}); reading from its master",
                            addr.0,
                            addr.1
                        );
                        to_master.extend(idxs.iter().copied());
                        resend_now = true;
                        retry_err.get_or_insert(self.node_error(err, node, batch, idxs));
                    }
                    NodeOutcome::Failed { err, sent } => {
                        self.suspect(addr, true);
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
                        self.suspect(addr, false);
                        for (&i, reply) in idxs.iter().zip(replies) {
                            if let Some(e) = reply.server_error()
                                && TOPOLOGY_CODES.contains(&e.code())
                            {
                                let target = e.details().and_then(|d| parse_redirect(d, &addr.0));
                                match (e.code(), target) {
                                    ("MOVED", Some(target)) => {
                                        self.moved(slots[i], &target);
                                        redirects.insert(i, target);
                                        resend_now = true;
                                    }
                                    ("ASK", Some(target)) => {
                                        redirects.insert(i, target);
                                        asking.insert(i);
                                        resend_now = true;
                                    }
                                    // A replica still loading or cut off from its master:
                                    // the master can answer the read now.
                                    _ if *replica && role == Role::Read => {
                                        self.suspect(addr, true);
                                        to_master.insert(i);
                                        resend_now = true;
                                    }
                                    // Down, failing over, or a redirect to an endpoint we
                                    // cannot reach (`?`): ask the cluster again first.
                                    _ => self.stale.store(true, Ordering::Relaxed),
                                }
                                retry_err.get_or_insert_with(|| Error::Connection {
                                    source: None,
                                    target: format!("{}:{}", addr.0, addr.1),
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
                                &format!("{}:{}", addr.0, addr.1),
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
                // Only redirects and replica fallbacks: the next round can go at once.
                Some(_) if resend_now && round + 1 < REDIRECT_ROUNDS => {}
                Some(err) => return Err((err, true)),
            }
        }
        unreachable!("the redirect loop always returns")
    }
}

/// `ASKING`: after an `ASK` redirect the target node serves the key only for a command
/// flagged by it.
const ASKING: &[u8] = b"*1\r\n$6\r\nASKING\r\n";

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

impl Cluster {
    /// Runs a batch to the end (retries and redirects included); with a sink, every good
    /// reply is also handed to it as soon as its node's pipeline is read. Commands answered
    /// in an earlier attempt are not sent again, so the sink sees each command once.
    fn run_all(
        &self,
        batch: &dyn Commands,
        role: Role,
        retry: Retry,
        sink: Option<&Sink<'_, '_>>,
        scratch: &mut Batch,
    ) -> Result<Vec<Reply>> {
        let slots: Vec<u16> = (0..batch.len())
            .map(|i| crate::layout::key_slot(batch.key_of(i)))
            .collect();
        let mut results: Vec<Option<Reply>> = vec![None; batch.len()];
        std::thread::scope(|s| {
            // After a MOVED, refresh the whole map beside this call's commands: they go by
            // the patched map meanwhile (and follow any further MOVED at once). The call
            // takes as long as the slower of the two, not their sum; a scoped thread, so no
            // thread outlives the call (see `pool.rs` on fork).
            if self.drifted.load(Ordering::Relaxed)
                && !self.stale.load(Ordering::Relaxed)
                && self
                    .refreshing
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                s.spawn(|| {
                    self.drifted.store(false, Ordering::Relaxed);
                    if let Err(e) = self.refresh() {
                        // The next call tries again; this one does not depend on it.
                        log::debug!("{}: slot map refresh after MOVED failed: {e}", self.target);
                        self.drifted.store(true, Ordering::Relaxed);
                    }
                    self.refreshing.store(false, Ordering::Release);
                });
            }
            with_retry(self.opts.retry_deadline, retry, || {
                self.attempt(batch, &slots, role, retry, &mut results, sink, scratch)
            })
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
        self.run_all(batch, role, retry, None, &mut Batch::new())
    }

    fn run_deferred(
        &self,
        cmds: &dyn Commands,
        scratch: &mut Batch,
        role: Role,
        retry: Retry,
    ) -> Result<Vec<Reply>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        // The calling thread encodes the first node's share into `scratch`; node threads use
        // kept buffers.
        self.run_all(cmds, role, retry, None, scratch)
    }

    fn run_each(&self, batch: &Batch, role: Role, on_reply: &mut super::OnReply<'_>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let sink: Sink<'_, '_> = Mutex::new((on_reply, None));
        self.run_all(
            batch,
            role,
            Retry::Idempotent,
            Some(&sink),
            &mut Batch::new(),
        )?;
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
