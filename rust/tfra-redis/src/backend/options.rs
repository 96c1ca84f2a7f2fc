//! The connection-relevant part of the config, in the types redis-rs wants.

use std::time::Duration;

use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
#[cfg(feature = "tls")]
use redis::{ClientTlsConfig, TlsCertificates};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

use crate::config::{ConnectionMode, RedisConfig};
use crate::error::{Error, Result};

/// Everything a backend needs to connect; built once from a [`RedisConfig`].
#[derive(Clone)]
pub struct ConnectOptions {
    pub(crate) mode: ConnectionMode,
    pub(crate) hosts: Vec<(String, u16)>,
    pub(crate) master_name: String,
    pub(crate) user: String,
    pub(crate) password: String,
    pub(crate) db: i64,
    pub(crate) read_from_replicas: bool,
    pub(crate) keep_alive: bool,
    pub(crate) connect_timeout: Duration,
    pub(crate) socket_timeout: Duration,
    pub(crate) pool_size: u32,
    pub(crate) pool_wait: Duration,
    pub(crate) lifetime: Option<Duration>,
    pub(crate) sentinel_password: String,
    pub(crate) sentinel_connect_timeout: Duration,
    pub(crate) sentinel_socket_timeout: Duration,
    pub(crate) retry_deadline: Duration,
    /// PEM bytes when TLS is on; `None` for plain TCP.
    pub(crate) tls: Option<TlsFiles>,
    pub(crate) durable_replicas: u32,
    pub(crate) durable_timeout: Duration,
    /// Read buffer bytes a connection keeps between pipelines (`redis_client_buffer_keep_bytes`).
    pub(crate) buffer_keep: usize,
    /// How long a pooled connection may sit idle before a checkout closes it; `None`: forever.
    pub(crate) idle_timeout: Option<Duration>,
}

/// The PEM files named by the config, read once when the backend is built.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    ca: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    fn read(c: &RedisConfig) -> Result<Option<TlsFiles>> {
        if !c.redis_tls {
            return Ok(None);
        }
        if !cfg!(feature = "tls") {
            return Err(crate::config::tls_missing());
        }
        let read = |field: &str, path: &str| -> Result<Option<Vec<u8>>> {
            if path.is_empty() {
                return Ok(None);
            }
            std::fs::read(path).map(Some).map_err(|e| {
                Error::field(field, format!("names {path:?}, which cannot be read: {e}"))
            })
        };
        let ca = read("redis_tls_ca_cert", &c.redis_tls_ca_cert)?;
        let cert = read("redis_tls_cert", &c.redis_tls_cert)?;
        let key = read("redis_tls_key", &c.redis_tls_key)?;
        Ok(Some(TlsFiles {
            ca,
            client: cert.zip(key),
        }))
    }

    /// Identifies the CA and client certificate contents. Part of the backend cache key: with
    /// only "TLS on" in the key, a config naming another CA (or no client certificate) reused
    /// the connections of an earlier config and skipped its own certificate checks.
    fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.ca.hash(&mut h);
        self.client.hash(&mut h);
        h.finish()
    }

    #[cfg(feature = "tls")]
    pub(crate) fn certificates(&self) -> TlsCertificates {
        TlsCertificates {
            client_tls: self.client.as_ref().map(|(cert, key)| ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
            root_cert: self.ca.clone(),
        }
    }
}

/// Makes sure rustls has a process-wide crypto provider before the first TLS connection.
///
/// redis-rs builds its rustls `ClientConfig` with `ClientConfig::builder()`, which uses the
/// process-default provider, and offers no way to pass one (`TlsConnParams` has no public
/// constructor taking a `ClientConfig` or a provider). Without a default, that builder panics
/// when the build links more than one provider (e.g. an application using aws-lc-rs). So a
/// provider must be installed; this one installs ring's only when none is installed yet, at
/// the first TLS connection, so an application that installs its own before opening a TLS
/// table keeps it.
#[cfg(feature = "tls")]
pub(crate) fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Err only means another thread installed one meanwhile, which serves as well.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    });
}

/// redis-rs and std sockets treat a zero timeout as an error; TFRA's 0 meant "no limit".
fn timeout(ms: u64) -> Duration {
    if ms == 0 {
        Duration::from_secs(365 * 24 * 3600)
    } else {
        Duration::from_millis(ms)
    }
}

impl ConnectOptions {
    /// Picks the connection settings out of a config, reading the TLS files it names.
    pub fn from_config(c: &RedisConfig) -> Result<Self> {
        Ok(ConnectOptions {
            mode: c.redis_connection_mode,
            hosts: c
                .redis_host_ip
                .iter()
                .cloned()
                .zip(c.redis_host_port.iter().copied())
                .collect(),
            master_name: c.redis_master_name.clone(),
            user: c.redis_user.clone(),
            password: c.redis_password.clone(),
            db: c.redis_db as i64,
            read_from_replicas: c.redis_read_access_slave,
            keep_alive: c.redis_connect_keep_alive,
            connect_timeout: timeout(c.redis_connect_timeout),
            socket_timeout: timeout(c.redis_socket_timeout),
            pool_size: c.redis_conn_pool_size.max(1),
            // At least 1 ms, as TFRA waits a moment for a busy pool; its default of 1e8 ms
            // means "wait forever" (only while every connection is busy, see pool.rs).
            pool_wait: Duration::from_millis(c.redis_wait_timeout.max(1)),
            lifetime: (c.redis_connection_lifetime > 0)
                .then(|| Duration::from_secs(60 * c.redis_connection_lifetime)),
            sentinel_password: c.redis_sentinel_password.clone(),
            sentinel_connect_timeout: timeout(c.redis_sentinel_connect_timeout),
            sentinel_socket_timeout: timeout(c.redis_sentinel_socket_timeout),
            retry_deadline: Duration::from_millis(c.redis_retry_deadline_ms),
            tls: TlsFiles::read(c)?,
            durable_replicas: c.redis_durable_write_replicas,
            durable_timeout: Duration::from_millis(c.redis_durable_write_timeout_ms),
            buffer_keep: usize::try_from(c.redis_client_buffer_keep_bytes).unwrap_or(usize::MAX),
            idle_timeout: (c.redis_conn_idle_timeout_ms > 0)
                .then(|| Duration::from_millis(c.redis_conn_idle_timeout_ms)),
        })
    }

    /// A string that is equal for two configs exactly when they can share connections.
    pub(crate) fn cache_key(&self) -> String {
        format!(
            "{:?}|{:?}|{}|{}|{}|{}|{}|{}|{:?}|{:?}|{}|{:?}|{:?}|{}|{:?}|{:?}|{:?}|{:?}|{}|{:?}|{}|{:?}",
            self.mode,
            self.hosts,
            self.master_name,
            self.user,
            self.password,
            self.db,
            self.read_from_replicas,
            self.keep_alive,
            self.connect_timeout,
            self.socket_timeout,
            self.pool_size,
            self.pool_wait,
            self.lifetime,
            self.sentinel_password,
            self.sentinel_connect_timeout,
            self.sentinel_socket_timeout,
            self.retry_deadline,
            self.tls.as_ref().map(TlsFiles::fingerprint),
            self.durable_replicas,
            self.durable_timeout,
            self.buffer_keep,
            self.idle_timeout,
        )
    }

    pub(crate) fn tcp_settings(&self) -> TcpSettings {
        let tcp = TcpSettings::default().set_nodelay(true);
        if self.keep_alive {
            tcp.set_keepalive(TcpKeepalive::new().with_time(Duration::from_secs(60)))
        } else {
            tcp
        }
    }

    /// The RESP handshake settings for data nodes. TFRA sends no AUTH for user `default` with
    /// an empty password, `AUTH pass` for `default`, and `AUTH user pass` otherwise.
    ///
    /// No `CLIENT SETINFO`: redis-rs sends two of them in the handshake and waits the full
    /// connect timeout for each reply, so a server that accepts TCP but does not answer (paused,
    /// overloaded) took twice `redis_connect_timeout` to be reported.
    pub(crate) fn redis_settings(&self, db: i64) -> RedisConnectionInfo {
        let mut r = RedisConnectionInfo::default()
            .set_db(db)
            .set_skip_set_lib_name();
        if !self.password.is_empty() {
            r = r.set_password(&self.password);
            if self.user != "default" && !self.user.is_empty() {
                r = r.set_username(&self.user);
            }
        }
        r
    }

    fn addr(&self, host: &str, port: u16) -> ConnectionAddr {
        if self.tls.is_some() {
            ConnectionAddr::TcpTls {
                host: host.to_string(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.to_string(), port)
        }
    }

    /// Connection info for one data node.
    pub(crate) fn node_info(&self, host: &str, port: u16) -> ConnectionInfo {
        self.addr(host, port)
            .into_connection_info()
            .expect("a TCP address is always a valid connection info")
            .set_redis_settings(self.redis_settings(self.db))
            .set_tcp_settings(self.tcp_settings())
    }

    /// Connection info for one sentinel (its own password, never a db).
    pub(crate) fn sentinel_info(&self, host: &str, port: u16) -> ConnectionInfo {
        let mut r = RedisConnectionInfo::default().set_skip_set_lib_name();
        if !self.sentinel_password.is_empty() {
            r = r.set_password(&self.sentinel_password);
        }
        self.addr(host, port)
            .into_connection_info()
            .expect("a TCP address is always a valid connection info")
            .set_redis_settings(r)
            .set_tcp_settings(self.tcp_settings())
    }

    /// `host:port` of the first configured host, for messages.
    pub(crate) fn first_target(&self) -> String {
        self.hosts
            .first()
            .map(|(h, p)| format!("{h}:{p}"))
            .unwrap_or_else(|| "<no host>".into())
    }
}

/// Connects one plain connection with the configured timeouts (TLS when `tls` is given).
pub(crate) fn connect_node(
    info: ConnectionInfo,
    tls: Option<&TlsFiles>,
    connect_timeout: Duration,
    socket_timeout: Duration,
) -> redis::RedisResult<redis::Connection> {
    let client = match tls {
        #[cfg(feature = "tls")]
        Some(files) => {
            install_crypto_provider();
            redis::Client::build_with_tls(info, files.certificates())?
        }
        // `TlsFiles::read` refuses TLS configs in a build without the `tls` feature.
        #[cfg(not(feature = "tls"))]
        Some(_) => unreachable!("TLS options without the tls feature"),
        None => redis::Client::open(info)?,
    };
    let conn = client.get_connection_with_timeout(connect_timeout)?;
    conn.set_read_timeout(Some(socket_timeout))?;
    conn.set_write_timeout(Some(socket_timeout))?;
    Ok(conn)
}
