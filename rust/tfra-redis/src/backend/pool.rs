//! Pools of plain connections, sized and timed by the config.
//!
//! This used to be r2d2 with our own `ManageConnection`. We replaced it with this small pool
//! because of what the reliability tests found:
//! - **fork.** r2d2 runs background threads (3 per pool) that take `parking_lot` locks. A
//!   `fork()` while one of them held a lock left the lock taken forever in the child, and the
//!   child's first new pool then deadlocked on its first lock. The r2d2 threads of a pool whose
//!   server is down wake up all the time, because r2d2 retries the connect in the background
//!   forever, so this happened often. This pool has no threads, and it uses only `std` locks
//!   (futexes, no global state), so a child that builds new pools (the backend cache is keyed
//!   by pid) meets no lock held by a thread that does not exist.
//! - **waiting.** r2d2 waits the whole `connection_timeout` when connects fail.
//!   `redis_wait_timeout` defaults to TFRA's ~28 hours, so a thread that found every
//!   connection checked out while the server went away hung. Here only "every connection is
//!   busy" waits. A connect happens on the calling thread, and its error (kept as a `Timeout`
//!   when the server accepts TCP but does not answer) goes straight back to the caller.
//!
//! Like before, nothing is opened up front, a checkout never PINGs, and a connection is evicted
//! once a command on it failed. Connections idle longer than `redis_conn_idle_timeout_ms` are
//! closed by the next checkout: a burst from many threads opened up to `redis_conn_pool_size`
//! connections per node, and without a thread of our own nothing else would ever close them.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis::ConnectionLike;

use super::link::Link;
use super::options::ConnectOptions;
use crate::error::{Error, Result};

/// Where a pool's connections go. Sentinel pools ask the sentinels again for every new
/// connection, so a replaced connection follows a failover.
pub(crate) trait Target: Send + Sync + 'static {
    /// Opens a new connection and returns it with the `host:port` it reached.
    fn open(&self) -> Result<(Link, String)>;
    /// A description for error messages.
    fn describe(&self) -> String;
}

/// A pooled connection; `broken` is set by whoever saw it fail.
pub(crate) struct Conn {
    pub(crate) inner: Link,
    pub(crate) addr: String,
    pub(crate) broken: bool,
    /// When a batch last went through it; see [`Conn::probe`].
    pub(crate) last_used: Instant,
    created: Instant,
    /// When it last came back to the pool.
    idle_since: Instant,
}

impl Conn {
    /// Checks a connection before a batch that must not run twice (accum).
    ///
    /// A server restart closes every pooled connection, and we only notice when a batch fails
    /// on one. For an idempotent batch that is harmless (it is sent again), but a failed accum
    /// may or may not have run, so it cannot be retried: after a restart the first accum on
    /// each stale connection failed. A PING that fails proves nothing ran, so the caller may
    /// retry on a fresh connection. Every such batch pays the round trip: skipping it for
    /// recently used connections lost the race against a fast restart in CI.
    pub(crate) fn probe(&mut self, socket_timeout: Duration) -> std::result::Result<(), Error> {
        match redis::cmd("PING").query::<redis::Value>(&mut self.inner) {
            Ok(_) => Ok(()),
            // Any answer proves the socket is alive, even a refusal (an ACL user without
            // PING rights gets NOPERM); only a transport failure means the connection is dead.
            Err(e) if e.code().is_some() => Ok(()),
            Err(e) => {
                self.broken = true;
                Err(super::classify(&e, &self.addr, socket_timeout))
            }
        }
    }
}

struct Slots {
    idle: Vec<Conn>,
    /// Connections that exist or are being opened: idle + checked out + connecting.
    open: u32,
}

/// A pool plus what we need to explain its failures.
pub(crate) struct Pool<T: Target> {
    target: Arc<T>,
    slots: Mutex<Slots>,
    freed: Condvar,
    max_size: u32,
    wait: Duration,
    lifetime: Option<Duration>,
    idle_timeout: Option<Duration>,
}

/// A checked-out connection; goes back to the pool when dropped, unless it is broken.
pub(crate) struct Pooled<'a, T: Target> {
    pool: &'a Pool<T>,
    conn: Option<Conn>,
}

impl<T: Target> std::ops::Deref for Pooled<'_, T> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("present until drop")
    }
}

impl<T: Target> std::ops::DerefMut for Pooled<'_, T> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("present until drop")
    }
}

impl<T: Target> Drop for Pooled<'_, T> {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            // A panic (in a reply handler, say) may unwind out of a pipeline half read; the
            // next user of the connection would get its leftover replies as answers.
            if std::thread::panicking() {
                conn.broken = true;
            }
            self.pool.put_back(conn);
        }
    }
}

impl<T: Target> Pool<T> {
    /// Builds the pool; no connection is opened until the first checkout, so opening a table
    /// does not pay for `redis_conn_pool_size` connections up front.
    pub(crate) fn new(target: T, opts: &ConnectOptions) -> Self {
        Pool {
            target: Arc::new(target),
            slots: Mutex::new(Slots {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
            max_size: opts.pool_size.max(1),
            wait: opts.pool_wait,
            lifetime: opts.lifetime,
            idle_timeout: opts.idle_timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn usable(&self, conn: &Conn) -> bool {
        !conn.broken
            && conn.inner.is_open()
            && self.lifetime.is_none_or(|l| conn.created.elapsed() < l)
    }

    fn put_back(&self, mut conn: Conn) {
        conn.idle_since = Instant::now();
        let mut slots = self.lock();
        if self.usable(&conn) {
            slots.idle.push(conn);
        } else {
            slots.open -= 1;
            drop(slots);
            drop(conn); // closes the socket, outside the lock
        }
        self.freed.notify_one();
    }

    /// Checks a connection out: the most recently used idle one, else a new one (connected on
    /// this thread, its error returned as is), else waits up to `redis_wait_timeout` for one
    /// to come back.
    pub(crate) fn get(&self) -> Result<Pooled<'_, T>> {
        self.close_expired();
        let deadline = Instant::now() + self.wait;
        let mut slots = self.lock();
        loop {
            while let Some(conn) = slots.idle.pop() {
                if self.usable(&conn) {
                    return Ok(Pooled {
                        pool: self,
                        conn: Some(conn),
                    });
                }
                slots.open -= 1;
            }
            if slots.open < self.max_size {
                slots.open += 1;
                drop(slots);
                return match self.target.open() {
                    Ok((inner, addr)) => {
                        let now = Instant::now();
                        Ok(Pooled {
                            pool: self,
                            conn: Some(Conn {
                                inner,
                                addr,
                                broken: false,
                                last_used: now,
                                created: now,
                                idle_since: now,
                            }),
                        })
                    }
                    Err(e) => {
                        self.lock().open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Connection {
                    source: None,
                    target: self.target.describe(),
                    message: format!(
                        "all {} pooled connections stayed busy for redis_wait_timeout ({} ms); \
                         raise redis_conn_pool_size or redis_wait_timeout",
                        self.max_size,
                        self.wait.as_millis()
                    ),
                });
            }
            slots = self
                .freed
                .wait_timeout(slots, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Closes the connections idle longer than `redis_conn_idle_timeout_ms`. Connections go
    /// back to the end of the idle list, so the expired ones are a prefix of it.
    fn close_expired(&self) {
        let Some(limit) = self.idle_timeout else {
            return;
        };
        let mut slots = self.lock();
        let expired = slots
            .idle
            .iter()
            .take_while(|c| c.idle_since.elapsed() >= limit)
            .count();
        if expired == 0 {
            return;
        }
        let closed: Vec<Conn> = slots.idle.drain(..expired).collect();
        slots.open -= expired as u32;
        drop(slots);
        drop(closed); // closes the sockets, outside the lock
        self.freed.notify_all();
    }

    /// Closes the idle connections (see `Backend::release_inherited`). Only tries the lock: in
    /// a forked child, a lock a parent thread held at the fork is never released.
    pub(crate) fn close_idle(&self) {
        let mut slots = match self.slots.try_lock() {
            Ok(slots) => slots,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        let idle = std::mem::take(&mut slots.idle);
        slots.open -= idle.len() as u32;
        drop(slots);
        drop(idle);
    }

    pub(crate) fn target(&self) -> &T {
        &self.target
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A target whose connects always fail, counting the attempts.
    struct Unreachable(AtomicU32);

    impl Target for Unreachable {
        fn open(&self) -> Result<(Link, String)> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Err(Error::Timeout {
                target: "nowhere:1".into(),
                timeout_ms: 5,
                waited_ms: 5,
                message: "handshake".into(),
                source: None,
            })
        }
        fn describe(&self) -> String {
            "nowhere:1".into()
        }
    }

    fn opts(pool_size: u32, wait_ms: u64) -> ConnectOptions {
        let c = crate::config::RedisConfig {
            redis_conn_pool_size: pool_size,
            redis_wait_timeout: wait_ms,
            ..Default::default()
        };
        ConnectOptions::from_config(&c).unwrap()
    }

    #[test]
    fn connect_errors_come_back_as_they_are_and_free_the_slot() {
        let pool = Pool::new(Unreachable(AtomicU32::new(0)), &opts(1, 100_000_000));
        for _ in 0..3 {
            // With a 28-hour wait, a failed connect must neither wait nor leak its slot.
            let started = Instant::now();
            let err = pool.get().err().expect("cannot connect");
            assert!(matches!(err, Error::Timeout { .. }), "{err}");
            assert!(started.elapsed() < Duration::from_secs(1));
        }
        assert_eq!(pool.target().0.load(Ordering::Relaxed), 3);
        assert_eq!(pool.lock().open, 0);
    }

    #[test]
    fn connections_idle_past_the_limit_are_closed_at_the_next_checkout() {
        use crate::backend::standalone::FixedNode;
        use crate::test_servers::{Standalone, redis_cli, wait_until};

        let server = Standalone::start();
        let port = server.port();
        let config = crate::config::RedisConfig {
            redis_connection_mode: crate::config::ConnectionMode::Standalone,
            redis_host_port: vec![port],
            redis_conn_idle_timeout_ms: 1000,
            ..Default::default()
        };
        let opts = ConnectOptions::from_config(&config).unwrap();
        let pool = Pool::new(FixedNode::new("127.0.0.1", port, &opts, false), &opts);
        // Connections the server counts, less redis-cli's own.
        let clients = || redis_cli(port, &["CLIENT", "LIST"]).lines().count() - 1;

        // A burst that needed three connections at once.
        let burst: Vec<_> = (0..3).map(|_| pool.get().unwrap()).collect();
        drop(burst);
        assert_eq!(clients(), 3);
        // Within the limit, a checkout reuses an idle connection and closes none.
        drop(pool.get().unwrap());
        assert_eq!((clients(), pool.lock().open), (3, 3));

        std::thread::sleep(Duration::from_millis(1300));
        let mut conn = pool.get().unwrap();
        // All three had been idle too long: closed, and one new connection serves.
        assert_eq!(pool.lock().open, 1);
        wait_until(Duration::from_secs(5), "the server sees one client", || {
            clients() == 1
        });
        assert!(conn.probe(opts.socket_timeout).is_ok());
    }
}
