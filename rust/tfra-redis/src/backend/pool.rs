//! r2d2 pools of plain connections, sized and timed by the config.
//!
//! We write our own `ManageConnection` instead of redis-rs's built-in one because that one
//! connects without a timeout and PINGs on every checkout; ours connects with the configured
//! timeouts, never PINGs, and evicts a connection once any command on it failed.

use std::sync::Arc;

use redis::ConnectionLike;
use std::time::Duration;

use super::options::ConnectOptions;
use crate::error::{Error, Result};

/// Where a pool's connections go. Sentinel pools ask the sentinels again for every new
/// connection, so a replaced connection follows a failover.
pub(crate) trait Target: Send + Sync + 'static {
    /// Opens a new connection and returns it with the `host:port` it reached.
    fn open(&self) -> Result<(redis::Connection, String)>;
    /// A description for error messages.
    fn describe(&self) -> String;
}

/// A pooled connection; `broken` is set by whoever saw it fail.
pub(crate) struct Conn {
    pub(crate) inner: redis::Connection,
    pub(crate) addr: String,
    pub(crate) broken: bool,
}

pub(crate) struct Manager<T: Target> {
    target: Arc<T>,
}

#[derive(Debug)]
pub(crate) struct ManagerError(pub(crate) String);

impl std::fmt::Display for ManagerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ManagerError {}

impl<T: Target> r2d2::ManageConnection for Manager<T> {
    type Connection = Conn;
    type Error = ManagerError;

    fn connect(&self) -> std::result::Result<Conn, ManagerError> {
        let (inner, addr) = self
            .target
            .open()
            .map_err(|e| ManagerError(e.to_string()))?;
        Ok(Conn {
            inner,
            addr,
            broken: false,
        })
    }

    fn is_valid(&self, _conn: &mut Conn) -> std::result::Result<(), ManagerError> {
        Ok(())
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken || !conn.inner.is_open()
    }
}

/// A pool plus what we need to explain its failures.
pub(crate) struct Pool<T: Target> {
    pool: r2d2::Pool<Manager<T>>,
    target: Arc<T>,
    wait: Duration,
}

impl<T: Target> Pool<T> {
    /// Builds the pool lazily: no connection is opened until the first checkout, so opening a
    /// table does not pay for `redis_conn_pool_size` connections up front.
    pub(crate) fn new(target: T, opts: &ConnectOptions) -> Self {
        let target = Arc::new(target);
        let pool = r2d2::Pool::builder()
            .max_size(opts.pool_size)
            .min_idle(Some(0))
            .connection_timeout(opts.pool_wait)
            .max_lifetime(opts.lifetime)
            .idle_timeout(None)
            .test_on_check_out(false)
            .build_unchecked(Manager {
                target: target.clone(),
            });
        Pool {
            pool,
            target,
            wait: opts.pool_wait,
        }
    }

    /// Checks a connection out. When no connection can be made, the error is the one the last
    /// connect attempt gave (r2d2 keeps it), not just "timed out".
    pub(crate) fn get(&self) -> Result<r2d2::PooledConnection<Manager<T>>> {
        // r2d2 waits the whole `connection_timeout` when connects fail; try one direct connect
        // first when the pool is empty so an unreachable server is reported at once.
        let state = self.pool.state();
        if state.connections == 0 {
            let conn = Manager {
                target: self.target.clone(),
            };
            let c = r2d2::ManageConnection::connect(&conn).map_err(|e| Error::Connection {
                target: self.target.describe(),
                message: e.0,
            })?;
            drop(c);
        }
        self.pool.get().map_err(|e| Error::Connection {
            target: self.target.describe(),
            message: format!(
                "no pooled connection within redis_wait_timeout ({} ms): {e}",
                self.wait.as_millis()
            ),
        })
    }

    pub(crate) fn target(&self) -> &T {
        &self.target
    }
}
