//! Building a config in Rust: one constructor per connection mode, chainable setters, and the
//! timeouts as [`Duration`]s.
//!
//! The fields keep the JSON's units (milliseconds, minutes for the connection lifetime) so a
//! config round-trips through TFRA's JSON unchanged. Rust code should not have to remember
//! those units, so every timeout also has an accessor returning a [`Duration`] and a
//! `with_*` setter taking one. Setters round a sub-millisecond remainder up: a timeout of
//! 1 µs becomes 1 ms, never 0, which the JSON reads as "no limit".

use std::time::Duration;

use super::{ConnectionMode, RedisConfig};

/// A duration in whole milliseconds, rounded up so that a non-zero duration never becomes 0
/// ("no limit"); saturates at `u64::MAX`.
fn millis_ceil(d: Duration) -> u64 {
    let ms = d.as_millis() + u128::from(!d.subsec_nanos().is_multiple_of(1_000_000));
    u64::try_from(ms).unwrap_or(u64::MAX)
}

impl RedisConfig {
    /// A config for one Redis server at `host:port` (`redis_connection_mode` 2).
    ///
    /// Every other setting is TFRA's default (see [`RedisConfig::default`]), including the
    /// model tag `"test"`, which is part of every Redis key name; set yours with
    /// [`RedisConfig::with_model_tag`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use tfra_redis::RedisConfig;
    ///
    /// let config = RedisConfig::standalone("127.0.0.1", 6379)
    ///     .with_model_tag("ctr_v1")
    ///     .with_socket_timeout(Duration::from_millis(250));
    /// assert_eq!(config.socket_timeout(), Duration::from_millis(250));
    /// assert_eq!(config.redis_socket_timeout, 250); // the JSON field, in ms
    /// ```
    pub fn standalone(host: impl Into<String>, port: u16) -> Self {
        Self::with_hosts(ConnectionMode::Standalone, [(host, port)])
    }

    /// A config for a Sentinel-managed master: `master_name` is the group the sentinels
    /// monitor, `sentinels` their addresses (`redis_connection_mode` 1).
    ///
    /// Other settings are TFRA's defaults, as for [`RedisConfig::standalone`].
    ///
    /// ```
    /// use tfra_redis::RedisConfig;
    ///
    /// let config = RedisConfig::sentinel("mymaster", [("10.0.0.1", 26379), ("10.0.0.2", 26379)]);
    /// assert_eq!(config.redis_master_name, "mymaster");
    /// assert_eq!(config.redis_host_port, [26379, 26379]);
    /// ```
    pub fn sentinel<H: Into<String>>(
        master_name: impl Into<String>,
        sentinels: impl IntoIterator<Item = (H, u16)>,
    ) -> Self {
        Self {
            redis_master_name: master_name.into(),
            ..Self::with_hosts(ConnectionMode::Sentinel, sentinels)
        }
    }

    /// A config for a Redis Cluster reached through the given seed nodes (any nodes of the
    /// cluster; the rest are discovered) (`redis_connection_mode` 0).
    ///
    /// Other settings are TFRA's defaults, as for [`RedisConfig::standalone`]; in particular a
    /// table has one bucket (`storage_slice` 1), so all its rows live on one master. Spread a
    /// table over the cluster with [`RedisConfig::with_storage_slice`].
    ///
    /// ```
    /// use tfra_redis::RedisConfig;
    ///
    /// let config = RedisConfig::cluster([("10.0.0.1", 7000), ("10.0.0.2", 7000)])
    ///     .with_storage_slice(16);
    /// assert_eq!(config.storage_slice, 16);
    /// assert_eq!(config.storage_slice_import, 16);
    /// ```
    pub fn cluster<H: Into<String>>(seeds: impl IntoIterator<Item = (H, u16)>) -> Self {
        Self::with_hosts(ConnectionMode::Cluster, seeds)
    }

    fn with_hosts<H: Into<String>>(
        mode: ConnectionMode,
        hosts: impl IntoIterator<Item = (H, u16)>,
    ) -> Self {
        let (redis_host_ip, redis_host_port) =
            hosts.into_iter().map(|(h, p)| (h.into(), p)).unzip();
        Self {
            redis_connection_mode: mode,
            redis_host_ip,
            redis_host_port,
            ..Self::default()
        }
    }

    /// Sets the model tag used for reads, writes and imports (`model_tag_runtime` and
    /// `model_tag_import`). It is the first part of every Redis key of a table
    /// (`<model_tag>:<table name>{<hash tag>}`).
    #[must_use]
    pub fn with_model_tag(mut self, tag: impl Into<String>) -> Self {
        let tag = tag.into();
        self.model_tag_import.clone_from(&tag);
        self.model_tag_runtime = tag;
        self
    }

    /// Sets the ACL user and password for the Redis servers (`redis_user`,
    /// `redis_password`).
    #[must_use]
    pub fn with_credentials(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.redis_user = user.into();
        self.redis_password = password.into();
        self
    }

    /// Sets the number of buckets per table for the runtime and import layouts
    /// (`storage_slice`, `storage_slice_import`). Checked when a table opens: 1 to
    /// [`super::MAX_STORAGE_SLICE`].
    #[must_use]
    pub fn with_storage_slice(mut self, buckets: u32) -> Self {
        self.storage_slice = buckets;
        self.storage_slice_import = buckets;
        self
    }

    /// The connect timeout (`redis_connect_timeout`); zero means no limit.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_connect_timeout)
    }

    /// Sets the connect timeout (see the module docs for rounding); zero means no limit.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.redis_connect_timeout = millis_ceil(timeout);
        self
    }

    /// The read/write timeout of one command (`redis_socket_timeout`); zero means no limit.
    pub fn socket_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_socket_timeout)
    }

    /// Sets the command timeout (see the module docs for rounding); zero means no limit.
    #[must_use]
    pub fn with_socket_timeout(mut self, timeout: Duration) -> Self {
        self.redis_socket_timeout = millis_ceil(timeout);
        self
    }

    /// How long a call waits for a free pooled connection (`redis_wait_timeout`).
    pub fn wait_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_wait_timeout)
    }

    /// Sets how long a call waits for a free pooled connection.
    #[must_use]
    pub fn with_wait_timeout(mut self, timeout: Duration) -> Self {
        self.redis_wait_timeout = millis_ceil(timeout);
        self
    }

    /// How long transient failures are retried before an error is returned
    /// (`redis_retry_deadline_ms`); zero means no retry. See [`crate::Error::is_transient`].
    pub fn retry_deadline(&self) -> Duration {
        Duration::from_millis(self.redis_retry_deadline_ms)
    }

    /// Sets the retry deadline; zero turns retries off.
    #[must_use]
    pub fn with_retry_deadline(mut self, deadline: Duration) -> Self {
        self.redis_retry_deadline_ms = millis_ceil(deadline);
        self
    }

    /// The age after which a pooled connection is reopened (`redis_connection_lifetime`, kept
    /// in minutes as TFRA's JSON has it); `None` when connections are never reopened (0).
    pub fn connection_lifetime(&self) -> Option<Duration> {
        (self.redis_connection_lifetime > 0)
            .then(|| Duration::from_secs(self.redis_connection_lifetime.saturating_mul(60)))
    }

    /// The connect timeout to a sentinel (`redis_sentinel_connect_timeout`).
    pub fn sentinel_connect_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_sentinel_connect_timeout)
    }

    /// The command timeout to a sentinel (`redis_sentinel_socket_timeout`).
    pub fn sentinel_socket_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_sentinel_socket_timeout)
    }

    /// The TTL put on a table's keys when it is closed (`expire_model_tag_in_seconds`);
    /// `None` for no TTL.
    pub fn expire_after(&self) -> Option<Duration> {
        self.expire_model_tag_in_seconds.map(Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_set_mode_and_hosts_and_keep_tfra_defaults() {
        let s = RedisConfig::standalone("h", 1);
        assert_eq!(s.redis_connection_mode, ConnectionMode::Standalone);
        assert_eq!(
            (s.redis_host_ip.as_slice(), s.redis_host_port.as_slice()),
            (&["h".to_string()][..], &[1u16][..])
        );
        assert_eq!(s.model_tag_runtime, "test");
        let t = RedisConfig::sentinel("m", [("a", 2), ("b", 3)]);
        assert_eq!(t.redis_connection_mode, ConnectionMode::Sentinel);
        assert_eq!(t.redis_master_name, "m");
        assert_eq!(t.redis_host_ip, ["a", "b"]);
        let c = RedisConfig::cluster(vec![("x".to_string(), 7000)]);
        assert_eq!(c.redis_connection_mode, ConnectionMode::Cluster);
        for config in [s, t, c] {
            config.validate().unwrap();
        }
    }

    #[test]
    fn duration_setters_round_up_and_round_trip() {
        let c = RedisConfig::standalone("h", 1)
            .with_socket_timeout(Duration::from_micros(1))
            .with_connect_timeout(Duration::from_micros(1500))
            .with_retry_deadline(Duration::ZERO)
            .with_wait_timeout(Duration::MAX);
        assert_eq!(
            c.redis_socket_timeout, 1,
            "1 µs must not become 0 (no limit)"
        );
        assert_eq!(c.connect_timeout(), Duration::from_millis(2));
        assert_eq!(c.retry_deadline(), Duration::ZERO);
        assert_eq!(c.redis_wait_timeout, u64::MAX);
        assert_eq!(
            RedisConfig::default().connection_lifetime(),
            Some(Duration::from_secs(6000))
        );
        let never = RedisConfig {
            redis_connection_lifetime: 0,
            ..RedisConfig::default()
        };
        assert_eq!(never.connection_lifetime(), None);
    }
}
