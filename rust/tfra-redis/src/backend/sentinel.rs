//! Redis Sentinel (TFRA's `redis_connection_mode` 1).
//!
//! redis-rs's sentinel client asks sentinels without any timeout, and the config has
//! `redis_sentinel_connect_timeout` / `redis_sentinel_socket_timeout`, so the master and replica
//! lookups are done here on plain connections with those timeouts. Every new pooled connection
//! asks again, so connections replaced after a failover reach the new master.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use redis::Value;

use super::link::Link;
use super::options::{ConnectOptions, connect_node};
use super::pool::{Pool, Target};
use super::standalone::PlainBackend;
use super::{Backend, Role, classify};
use crate::config::ConnectionMode;
use crate::error::{Error, Result};

/// Connections to whatever node the sentinels name for `role`.
pub(crate) struct SentinelNode {
    opts: ConnectOptions,
    role: Role,
    next_replica: AtomicUsize,
}

impl SentinelNode {
    fn ask_sentinels<T>(
        &self,
        what: &str,
        mut ask: impl FnMut(&mut redis::Connection, &str) -> Result<T>,
    ) -> Result<T> {
        let mut failures = Vec::new();
        for (host, port) in &self.opts.hosts {
            let addr = format!("{host}:{port}");
            let conn = connect_node(
                self.opts.sentinel_info(host, *port),
                self.opts.tls.as_ref(),
                self.opts.sentinel_connect_timeout,
                self.opts.sentinel_socket_timeout,
            );
            match conn {
                Ok(mut c) => match ask(&mut c, &addr) {
                    Ok(v) => return Ok(v),
                    Err(e) => failures.push(format!("{addr}: {e}")),
                },
                Err(e) => failures.push(format!(
                    "{addr}: {}",
                    classify(&e, &addr, self.opts.sentinel_connect_timeout)
                )),
            }
        }
        Err(Error::Connection {
            source: None,
            target: format!("sentinel group '{}'", self.opts.master_name),
            message: format!("no sentinel could tell the {what}: {}", failures.join("; ")),
        })
    }

    fn master_addr(&self) -> Result<(String, u16)> {
        let name = self.opts.master_name.clone();
        let timeout = self.opts.sentinel_socket_timeout;
        self.ask_sentinels("master address", |c, addr| {
            let reply: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&name)
                .query(c)
                .map_err(|e| classify(&e, addr, timeout))?;
            reply.ok_or_else(|| Error::Connection {
                source: None,
                target: addr.to_string(),
                message: format!(
                    "sentinel does not monitor a master named '{name}' (redis_master_name)"
                ),
            })
        })
    }

    fn replica_addrs(&self) -> Result<Vec<(String, u16)>> {
        let name = self.opts.master_name.clone();
        let timeout = self.opts.sentinel_socket_timeout;
        self.ask_sentinels("replicas", |c, addr| {
            let reply: Vec<Vec<(String, String)>> = redis::cmd("SENTINEL")
                .arg("replicas")
                .arg(&name)
                .query(c)
                .map_err(|e| classify(&e, addr, timeout))?;
            let mut healthy = Vec::new();
            for fields in reply {
                let get = |k: &str| {
                    fields
                        .iter()
                        .find(|(key, _)| key == k)
                        .map(|(_, v)| v.as_str())
                };
                let flags = get("flags").unwrap_or("");
                if ["s_down", "o_down", "disconnected"]
                    .iter()
                    .any(|f| flags.contains(f))
                {
                    continue;
                }
                if let (Some(ip), Some(Ok(port))) = (get("ip"), get("port").map(str::parse)) {
                    healthy.push((ip.to_string(), port));
                }
            }
            Ok(healthy)
        })
    }
}

fn role_of(
    conn: &mut dyn redis::ConnectionLike,
    addr: &str,
    timeout: std::time::Duration,
) -> Result<String> {
    let reply: Value = match redis::cmd("ROLE").query(conn) {
        Ok(reply) => reply,
        // ROLE is `@admin @dangerous`: a least-privileged ACL user learns the role from HELLO
        // (`@connection`), which says `master` or `replica`.
        Err(e) if e.code() == Some("NOPERM") => {
            return match super::hello(conn) {
                Some(h) => Ok(h.role),
                None => Err(classify(&e, addr, timeout)),
            };
        }
        Err(e) => return Err(classify(&e, addr, timeout)),
    };
    match reply {
        Value::Array(items) => match items.into_iter().next() {
            Some(Value::BulkString(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Some(Value::SimpleString(s)) => Ok(s),
            _ => Ok(String::new()),
        },
        _ => Ok(String::new()),
    }
}

impl Target for SentinelNode {
    fn open(&self) -> Result<(Link, String)> {
        let candidates = match self.role {
            Role::Write => vec![self.master_addr()?],
            Role::Read => {
                let mut r = self.replica_addrs()?;
                if r.is_empty() {
                    // No healthy replica: reading from the master is better than failing.
                    r.push(self.master_addr()?);
                } else {
                    let k = self.next_replica.fetch_add(1, Ordering::Relaxed) % r.len();
                    r.rotate_left(k);
                }
                r
            }
        };
        let mut last = None;
        for (host, port) in candidates {
            let addr = format!("{host}:{port}");
            let conn = Link::connect(&self.opts, &host, port)
                .map_err(|e| classify(&e, &addr, self.opts.connect_timeout));
            let mut conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            // Sentinels may still name the old master for a moment after a failover; never
            // write to a node that says it is a replica.
            if self.role == Role::Write {
                let role = role_of(&mut conn, &addr, self.opts.socket_timeout)?;
                if role != "master" {
                    last = Some(Error::Connection {
                        source: None,
                        target: addr,
                        message: format!("sentinels name it master but it reports role '{role}'"),
                    });
                    continue;
                }
            }
            return Ok((conn, addr));
        }
        Err(last.unwrap_or_else(|| Error::Connection {
            source: None,
            target: self.describe(),
            message: "no node to connect to".into(),
        }))
    }

    fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .opts
            .hosts
            .iter()
            .map(|(h, p)| format!("{h}:{p}"))
            .collect();
        format!(
            "sentinels {} master '{}'",
            hosts.join(","),
            self.opts.master_name
        )
    }
}

/// True when the first reachable host is a sentinel; false when it is a plain data server.
fn first_host_is_sentinel(opts: &ConnectOptions) -> Result<bool> {
    let mut failures = Vec::new();
    for (host, port) in &opts.hosts {
        let addr = format!("{host}:{port}");
        let (err, connected) = match connect_node(
            opts.sentinel_info(host, *port),
            opts.tls.as_ref(),
            opts.sentinel_connect_timeout,
            opts.sentinel_socket_timeout,
        ) {
            Ok(mut c) => match redis::cmd("INFO").arg("server").query::<String>(&mut c) {
                Ok(info) => return Ok(says_sentinel(&info)),
                Err(e) => (classify(&e, &addr, opts.sentinel_socket_timeout), true),
            },
            Err(e) => (classify(&e, &addr, opts.sentinel_connect_timeout), false),
        };
        // A password-protected plain server refuses the sentinel credentials (NOAUTH or
        // WRONGPASS), so the fallback below never happened for TFRA's default mode pointed at
        // such a server. Ask again with the data credentials: a server that accepts them and
        // is no sentinel is a plain server (and a sentinel that shares the password is found
        // to be one).
        if matches!(err, Error::Auth { .. })
            && !opts.password.is_empty()
            && let Ok(mut c) = connect_node(
                opts.node_info(host, *port),
                opts.tls.as_ref(),
                opts.sentinel_connect_timeout,
                opts.sentinel_socket_timeout,
            )
        {
            match redis::cmd("INFO").arg("server").query::<String>(&mut c) {
                Ok(info) => return Ok(says_sentinel(&info)),
                // INFO is `@dangerous`: a least-privileged user asks HELLO instead.
                Err(e) if e.code() == Some("NOPERM") => {
                    if let Some(h) = super::hello(&mut c) {
                        return Ok(h.mode == "sentinel");
                    }
                }
                Err(_) => {}
            }
        }
        if connected {
            // The host answered, just not to INFO: no other host will tell us more.
            return Err(err);
        }
        failures.push(format!("{addr}: {err}"));
    }
    Err(Error::Connection {
        source: None,
        target: format!("sentinel group '{}'", opts.master_name),
        message: format!("no sentinel reachable: {}", failures.join("; ")),
    })
}

/// Whether an `INFO server` reply comes from a sentinel. Redis names the field `redis_mode`;
/// Valkey 8 names it `server_mode` (and has no `redis_mode`), so both count.
fn says_sentinel(info: &str) -> bool {
    info.lines()
        .any(|l| matches!(l.trim(), "redis_mode:sentinel" | "server_mode:sentinel"))
}

/// Opens Sentinel mode. TFRA's default mode is Sentinel, and its own tests (and the seed's
/// example config, which names no mode) point that default at a plain redis-server; TFRA then
/// falls back to a direct connection. We keep that fallback so those configs work, but only
/// when the host really is a plain data server, and we say so in a warning (`log`).
pub(crate) fn open(opts: ConnectOptions) -> Result<Arc<dyn Backend>> {
    if !first_host_is_sentinel(&opts)? {
        {
            // Once per backend (backends are cached per config), so no rate limit is needed.
            log::warn!(
                "redis_connection_mode is 1 (Sentinel, TFRA's default) but \
                 {} is a plain Redis server; connecting to it directly as standalone. Set \
                 \"redis_connection_mode\": 2 to silence this.",
                opts.first_target()
            );
            let mut direct = opts;
            direct.mode = ConnectionMode::Standalone;
            return Ok(Arc::new(super::standalone::Standalone::open(direct)?));
        }
    }
    let write = SentinelNode {
        opts: opts.clone(),
        role: Role::Write,
        next_replica: AtomicUsize::new(0),
    };
    // Check the master and the mode once, so a wrong master name fails at open.
    let (mut conn, addr) = write.open()?;
    super::check_cluster_enabled(&mut conn, false, &addr, opts.socket_timeout)?;
    drop(conn);
    let read = opts.read_from_replicas.then(|| {
        Pool::new(
            SentinelNode {
                opts: opts.clone(),
                role: Role::Read,
                next_replica: AtomicUsize::new(0),
            },
            &opts,
        )
    });
    let backend: PlainBackend<SentinelNode, SentinelNode> = PlainBackend {
        mode: ConnectionMode::Sentinel,
        write: Pool::new(write, &opts),
        read,
        opts,
    };
    Ok(Arc::new(backend))
}

#[cfg(test)]
mod tests {
    use super::says_sentinel;

    #[test]
    fn sentinel_mode_is_read_from_redis_and_valkey_info() {
        let redis = "# Server\r\nredis_version:7.0.15\r\nredis_mode:sentinel\r\n";
        let valkey = "# Server\r\nredis_version:7.2.4\r\nvalkey_version:8.1.8\r\n\
                      server_mode:sentinel\r\n";
        assert!(says_sentinel(redis));
        assert!(says_sentinel(valkey));
        assert!(!says_sentinel("redis_mode:standalone\r\n"));
        assert!(!says_sentinel("server_mode:cluster\r\n"));
    }
}
