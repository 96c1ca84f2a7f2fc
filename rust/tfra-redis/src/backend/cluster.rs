//! Redis Cluster (TFRA's `redis_connection_mode` 0), on redis-rs's sync cluster connection.
//!
//! Each pooled item is a whole `ClusterConnection` (one socket per node). Its pipeline splits
//! commands per node, writes every node's pipeline before reading any reply (so the nodes work
//! in parallel), and re-sends MOVED/ASK commands after refreshing the slot map. Failures it does
//! not handle (a dead node during failover) drop the connection and the batch is retried on a
//! fresh one, which loads the new topology.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConnection, ClusterPipeline};
use redis::cluster_read_routing::RandomReplicaStrategy;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Value};

use super::options::{ConnectOptions, connect_node};
use super::{Backend, Retry, Role, classify, parse_scan_reply, with_retry};
use crate::config::ConnectionMode;
use crate::error::{Error, Result};

/// Each master's `(host, port)` and its slot ranges, sorted.
type MasterRanges = BTreeMap<(String, u16), Vec<(u16, u16)>>;

struct ClusterConn {
    inner: ClusterConnection,
    broken: bool,
}

struct Manager {
    client: ClusterClient,
    target: String,
}

#[derive(Debug)]
struct ManagerError(String);

impl std::fmt::Display for ManagerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ManagerError {}

impl r2d2::ManageConnection for Manager {
    type Connection = ClusterConn;
    type Error = ManagerError;

    fn connect(&self) -> std::result::Result<ClusterConn, ManagerError> {
        let inner = self
            .client
            .get_connection()
            .map_err(|e| ManagerError(classify(&e, &self.target, Duration::ZERO).to_string()))?;
        Ok(ClusterConn {
            inner,
            broken: false,
        })
    }

    fn is_valid(&self, _conn: &mut ClusterConn) -> std::result::Result<(), ManagerError> {
        Ok(())
    }

    fn has_broken(&self, conn: &mut ClusterConn) -> bool {
        conn.broken
    }
}

/// The cluster backend.
pub(crate) struct Cluster {
    pool: r2d2::Pool<Manager>,
    client: ClusterClient,
    opts: ConnectOptions,
    target: String,
}

impl Cluster {
    /// Checks that the seed nodes are cluster nodes, then builds the pool.
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
        // all; redis-rs's own error for a non-cluster server is much less clear.
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
                target,
                message: failures.join("; "),
            });
        }
        let seeds: Vec<_> = opts
            .hosts
            .iter()
            .map(|(h, p)| opts.node_info(h, *p))
            .collect();
        let mut builder = ClusterClientBuilder::new(seeds)
            .connection_timeout(opts.connect_timeout)
            .response_timeout(opts.socket_timeout)
            .tcp_settings(opts.tcp_settings())
            // Our own retry loop (with the configured deadline) sits above this one.
            .retries(3);
        if !opts.password.is_empty() {
            builder = builder.password(&opts.password);
            if opts.user != "default" && !opts.user.is_empty() {
                builder = builder.username(&opts.user);
            }
        }
        if let Some(files) = &opts.tls {
            super::options::install_crypto_provider();
            builder = builder
                .tls(redis::TlsMode::Secure)
                .certs(files.certificates());
        }
        if opts.read_from_replicas {
            builder = builder.read_routing_strategy(RandomReplicaStrategy);
        }
        let client = builder.build().map_err(|e| Error::Connection {
            target: target.clone(),
            message: e.to_string(),
        })?;
        let pool = r2d2::Pool::builder()
            .max_size(opts.pool_size)
            .min_idle(Some(0))
            .connection_timeout(opts.pool_wait)
            .max_lifetime(opts.lifetime)
            .idle_timeout(None)
            .test_on_check_out(false)
            .build_unchecked(Manager {
                client: client.clone(),
                target: target.clone(),
            });
        let cluster = Cluster {
            pool,
            client,
            opts,
            target,
        };
        // Fail at open, not at the first lookup, when the cluster cannot be used.
        cluster.master_slot_ranges()?;
        Ok(cluster)
    }

    fn get(&self) -> std::result::Result<r2d2::PooledConnection<Manager>, (Error, bool)> {
        if self.pool.state().connections == 0 {
            // r2d2 would keep retrying for the whole redis_wait_timeout; connect directly once
            // so an unreachable cluster is reported at once.
            let c = r2d2::ManageConnection::connect(&Manager {
                client: self.client.clone(),
                target: self.target.clone(),
            })
            .map_err(|e| {
                (
                    Error::Connection {
                        target: self.target.clone(),
                        message: e.0,
                    },
                    true,
                )
            })?;
            drop(c);
        }
        self.pool.get().map_err(|e| {
            (
                Error::Connection {
                    target: self.target.clone(),
                    message: format!("no pooled connection within redis_wait_timeout: {e}"),
                },
                true,
            )
        })
    }

    /// Each master's address and its slot ranges, from `CLUSTER SLOTS`.
    fn masters(&self) -> Result<MasterRanges> {
        with_retry(self.opts.retry_deadline, Retry::Idempotent, || {
            let mut conn = self.get()?;
            let reply = conn
                .inner
                .route_command(
                    &redis::cmd("CLUSTER").arg("SLOTS").clone(),
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                )
                .map_err(|e| {
                    conn.broken = true;
                    (classify(&e, &self.target, self.opts.socket_timeout), true)
                })?;
            parse_cluster_slots(reply).map_err(|e| (e, false))
        })
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

/// `CLUSTER SLOTS`: `[[start, end, [ip, port, id, ...], replicas...], ...]`.
fn parse_cluster_slots(reply: Value) -> Result<MasterRanges> {
    let bad = |why: &str| Error::Command {
        command: "CLUSTER SLOTS".into(),
        bucket: String::new(),
        message: format!("unexpected reply: {why}"),
    };
    let Value::Array(ranges) = reply else {
        return Err(bad("not an array"));
    };
    let mut masters = MasterRanges::new();
    for r in ranges {
        let Value::Array(parts) = r else {
            return Err(bad("range is not an array"));
        };
        let (Some(start), Some(end)) = (
            parts.first().and_then(as_int),
            parts.get(1).and_then(as_int),
        ) else {
            return Err(bad("range bounds"));
        };
        let Some(Value::Array(node)) = parts.get(2) else {
            return Err(bad("master entry"));
        };
        let (Some(ip), Some(port)) = (
            node.first().and_then(as_string),
            node.get(1).and_then(as_int),
        ) else {
            return Err(bad("master address"));
        };
        masters
            .entry((ip, port as u16))
            .or_default()
            .push((start as u16, end as u16));
    }
    for ranges in masters.values_mut() {
        ranges.sort();
    }
    Ok(masters)
}

impl Backend for Cluster {
    fn run(&self, cmds: &[Cmd], role: Role, retry: Retry) -> Result<Vec<Value>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = ClusterPipeline::with_capacity(cmds.len());
        for c in cmds {
            pipe.add_command(c.clone());
        }
        with_retry(self.opts.retry_deadline, retry, || {
            let mut conn = self.get()?;
            match pipe.query::<Vec<Value>>(&mut conn.inner) {
                Ok(replies) if role == Role::Write && self.opts.durable_replicas > 0 => {
                    // WAIT goes to every master on the connections that carried the writes and
                    // answers the smallest replica count among them.
                    let acked: Result<i64, _> = redis::cmd("WAIT")
                        .arg(self.opts.durable_replicas)
                        .arg(self.opts.durable_timeout.as_millis() as u64)
                        .query(&mut conn.inner);
                    match acked {
                        Ok(n) => super::check_durable(n, &self.opts, &self.target)
                            .map(|()| replies)
                            .map_err(|e| (e, false)),
                        Err(e) => {
                            conn.broken = true;
                            Err((classify(&e, &self.target, self.opts.socket_timeout), false))
                        }
                    }
                }
                Ok(replies) => Ok(replies),
                Err(e) => {
                    let not_executed = super::surely_not_executed(&e);
                    let err = classify(&e, &self.target, self.opts.socket_timeout);
                    if err.is_transient() {
                        conn.broken = true;
                    }
                    let err = match err {
                        // The cluster pipeline does not say which command failed.
                        Error::Command { message, .. } => Error::Command {
                            command: super::command_name(&cmds[0]),
                            bucket: format!("one of {} buckets", cmds.len()),
                            message,
                        },
                        other => other,
                    };
                    Err((err, not_executed))
                }
            }
        })
    }

    fn scan_match(&self, pattern: &[u8]) -> Result<Vec<Vec<u8>>> {
        let masters = self.masters()?;
        let mut out = Vec::new();
        for (host, port) in masters.keys() {
            let addr = format!("{host}:{port}");
            let keys = with_retry(self.opts.retry_deadline, Retry::Idempotent, || {
                let mut conn = self.get()?;
                let mut keys = Vec::new();
                let mut cursor = 0u64;
                loop {
                    let reply = conn
                        .inner
                        .route_command(
                            redis::cmd("SCAN")
                                .arg(cursor)
                                .arg("MATCH")
                                .arg(pattern)
                                .arg("COUNT")
                                .arg(1000),
                            RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                                host: host.clone(),
                                port: *port,
                            }),
                        )
                        .map_err(|e| {
                            conn.broken = true;
                            (classify(&e, &addr, self.opts.socket_timeout), true)
                        })?;
                    let (next, found) = parse_scan_reply(reply).map_err(|e| (e, false))?;
                    keys.extend(found);
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
                Ok(keys)
            })?;
            out.extend(keys);
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn master_slot_ranges(&self) -> Result<Vec<(u16, u16)>> {
        let mut firsts: Vec<(u16, u16)> = self
            .masters()?
            .into_values()
            .filter_map(|r| r.first().copied())
            .collect();
        firsts.sort();
        Ok(firsts)
    }

    fn mode(&self) -> ConnectionMode {
        ConnectionMode::Cluster
    }

    fn describe(&self) -> String {
        self.target.clone()
    }
}
