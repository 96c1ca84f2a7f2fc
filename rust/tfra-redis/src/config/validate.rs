//! The rules a config must follow beyond each key's type: ranges, keys that depend on each
//! other. Parsing checks them, and so does every way to open a table, because a config built in
//! code never went through the parser.

use super::{MAX_STORAGE_SLICE, RedisConfig};
use crate::error::{Error, Result};

impl RedisConfig {
    /// Checks the rules that span several keys, and the ones a config built in code (rather than
    /// parsed) could break. Parsing already calls it.
    ///
    /// # Errors
    ///
    /// [`Error::ConfigField`] naming the first key that breaks a rule (a bucket count outside 1 to
    /// [`MAX_STORAGE_SLICE`], hash tag lists of the wrong length, hosts and ports that do not pair
    /// up, ...).
    pub fn validate(&self) -> Result<()> {
        for (key, n) in [
            ("storage_slice", self.storage_slice),
            ("storage_slice_import", self.storage_slice_import),
        ] {
            if !(1..=MAX_STORAGE_SLICE).contains(&n) {
                return Err(bucket_count_error(key, n.into()));
            }
        }
        for (key, n) in [
            ("keys_sending_size", self.keys_sending_size as u64),
            ("redis_conn_pool_size", u64::from(self.redis_conn_pool_size)),
        ] {
            if n == 0 {
                return Err(Error::field(key, "must be at least 1, got 0"));
            }
        }
        if self.redis_host_ip.is_empty() {
            return Err(Error::field("redis_host_ip", "must list at least one host"));
        }
        if let Some(i) = self.redis_host_ip.iter().position(String::is_empty) {
            return Err(Error::field("redis_host_ip", format!("entry {i} is empty")));
        }
        if self.redis_host_port.len() != self.redis_host_ip.len() {
            return Err(Error::field(
                "redis_host_port",
                format!(
                    "has {} entries but redis_host_ip has {}; give one port per host",
                    self.redis_host_port.len(),
                    self.redis_host_ip.len()
                ),
            ));
        }
        if let Some(i) = self.redis_host_port.iter().position(|&p| p == 0) {
            return Err(Error::field(
                "redis_host_port",
                format!("entry {i} must be between 1 and 65535, got 0"),
            ));
        }
        for (key, tag) in [
            ("model_tag_import", &self.model_tag_import),
            ("model_tag_runtime", &self.model_tag_runtime),
        ] {
            if tag.is_empty() {
                return Err(Error::field(key, "must not be empty"));
            }
        }
        check_hash_tags(
            "redis_hash_tags_import",
            &self.redis_hash_tags_import,
            "storage_slice_import",
            self.storage_slice_import,
        )?;
        check_hash_tags(
            "redis_hash_tags_runtime",
            &self.redis_hash_tags_runtime,
            "storage_slice",
            self.storage_slice,
        )?;
        if self.redis_tls_cert.is_empty() != self.redis_tls_key.is_empty() {
            return Err(Error::field(
                "redis_tls_cert",
                "and redis_tls_key must be given together (a client certificate needs its key)",
            ));
        }
        // WAIT with timeout 0 blocks until enough replicas answer, possibly forever.
        if self.redis_durable_write_replicas > 0 && self.redis_durable_write_timeout_ms == 0 {
            return Err(Error::field(
                "redis_durable_write_timeout_ms",
                "must be at least 1 when redis_durable_write_replicas > 0 \
                 (WAIT with timeout 0 can block forever)",
            ));
        }
        if self.redis_write_behind_ms > 0 && self.redis_durable_write_replicas > 0 {
            return Err(Error::field(
                "redis_write_behind_ms",
                "and redis_durable_write_replicas cannot both be set: a durable write waits \
                 for replicas before it returns, a write-behind returns before it is sent",
            ));
        }
        if self.redis_fused_slots && self.redis_fused_row {
            return Err(Error::field(
                "redis_fused_row",
                "and redis_fused_slots cannot both be set: slots live either in the row's own \
                 field (redis_fused_row) or in one slot table (redis_fused_slots)",
            ));
        }
        Ok(())
    }
}

/// The one message for a bucket count out of range, whether it was parsed or built in code.
pub(super) fn bucket_count_error(key: &str, n: i128) -> Error {
    Error::field(
        key,
        format!(
            "must be between 1 and {MAX_STORAGE_SLICE} (one bucket per cluster slot at most), \
             got {n}"
        ),
    )
}

/// Explicit tags must be all-digit, because TFRA finds buckets with a SCAN pattern that only
/// matches numeric tags, and one per bucket, because TFRA silently fell back to generated tags
/// otherwise, putting the data under keys the user did not ask for.
fn check_hash_tags(key: &str, tags: &[String], count_key: &str, count: u32) -> Result<()> {
    if !tags.is_empty() && tags.len() != count as usize {
        return Err(Error::field(
            key,
            format!(
                "has {} entries but {count_key} is {count}; give exactly {count} tags or none",
                tags.len()
            ),
        ));
    }
    if let Some((i, tag)) = tags
        .iter()
        .enumerate()
        .find(|(_, tag)| tag.is_empty() || !tag.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(Error::field(
            key,
            format!("entry {i} ({tag:?}) is not a hash tag: expected digits, like \"{{3560}}\""),
        ));
    }
    Ok(())
}

/// The error for a config asking for a connection mode this build of the crate leaves out
/// (Cargo features `sentinel` and `cluster`). Raised when a table opens, not when the config
/// is read, so tools can still read and print such a config.
#[cfg_attr(all(feature = "sentinel", feature = "cluster"), allow(dead_code))]
pub(crate) fn feature_missing(mode: super::ConnectionMode) -> Error {
    let (name, feature) = match mode {
        super::ConnectionMode::Cluster => ("Cluster", "cluster"),
        super::ConnectionMode::Sentinel => ("Sentinel", "sentinel"),
        super::ConnectionMode::Standalone => ("Standalone", "default"),
    };
    Error::field(
        "redis_connection_mode",
        format!(
            "is {} ({name}), but this build of tfra-redis was compiled without {name} support; \
             enable the Cargo feature `{feature}` of tfra-redis",
            mode.code()
        ),
    )
}

/// The error for `redis_tls` in a build without the Cargo feature `tls`.
#[cfg_attr(feature = "tls", allow(dead_code))]
pub(crate) fn tls_missing() -> Error {
    Error::field(
        "redis_tls",
        "is true, but this build of tfra-redis was compiled without TLS support; enable the \
         Cargo feature `tls` of tfra-redis",
    )
}
