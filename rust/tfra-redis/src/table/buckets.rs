//! One command per runtime bucket: `size`, `clear`, `persist` and the TTLs.

use redis::{Cmd, Value};

use super::Table;
use crate::backend::{Retry, Role};
#[cfg(doc)]
use crate::error::Error;
use crate::error::Result;

impl Table {
    /// Number of ids: the sum of `HLEN` over all runtime buckets.
    ///
    /// # Errors
    ///
    /// [`Error::Connection`] or [`Error::Timeout`] when Redis cannot be reached within the retry
    /// deadline, [`Error::Auth`] when the ACL user may not run the commands, [`Error::Command`]
    /// when Redis refuses one.
    pub fn size(&self) -> Result<u64> {
        let mut total = 0u64;
        // The master, even with replica reads on: sizes feed checkpoints and re-bucketing
        // checks, where a lagging replica's count would be wrong.
        for (b, r) in self
            .per_bucket("HLEN", Role::Write, &[])?
            .into_iter()
            .enumerate()
        {
            match r {
                Value::Int(n) => total += n as u64,
                _ => return Err(self.reply_error(b, "HLEN did not answer with an integer")),
            }
        }
        Ok(total)
    }

    /// Deletes every runtime bucket.
    ///
    /// # Errors
    ///
    /// [`Error::Connection`] or [`Error::Timeout`] when Redis cannot be reached within the retry
    /// deadline, [`Error::Auth`] when the ACL user may not run the commands, [`Error::Command`]
    /// when Redis refuses one.
    pub fn clear(&self) -> Result<()> {
        self.per_bucket("DEL", Role::Write, &[]).map(|_| ())
    }

    /// Runs one command per runtime bucket and returns the replies.
    pub(crate) fn per_bucket(&self, name: &str, role: Role, extra: &[&[u8]]) -> Result<Vec<Value>> {
        self.per_bucket_with(name, role, extra, Retry::Idempotent)
    }

    fn per_bucket_with(
        &self,
        name: &str,
        role: Role,
        extra: &[&[u8]],
        retry: Retry,
    ) -> Result<Vec<Value>> {
        let backend = self.backend()?;
        let cmds: Vec<Cmd> = self
            .buckets
            .iter()
            .map(|b| {
                let mut cmd = redis::cmd(name);
                cmd.arg(b.as_bytes());
                for a in extra {
                    cmd.arg(*a);
                }
                cmd
            })
            .collect();
        backend.run_values(&cmds, role, retry)
    }

    /// Clears any TTL on the table's buckets. TFRA does this when a table opens so that a model
    /// in use never expires.
    ///
    /// # Errors
    ///
    /// [`Error::Connection`] or [`Error::Timeout`] when Redis cannot be reached within the retry
    /// deadline, [`Error::Auth`] when the ACL user may not run the commands, [`Error::Command`]
    /// when Redis refuses one.
    pub fn persist(&self) -> Result<()> {
        self.per_bucket("PERSIST", Role::Write, &[]).map(|_| ())
    }

    /// Puts the configured TTL (`expire_model_tag_in_seconds`) on the table's buckets, as TFRA
    /// does when a table closes; nothing when the setting is negative. 0 deletes the buckets.
    /// One attempt only: a close must not hold a process at exit for a whole retry deadline
    /// when Redis is gone.
    ///
    /// # Errors
    ///
    /// [`Error::Connection`] or [`Error::Timeout`] when Redis cannot be reached within the retry
    /// deadline, [`Error::Auth`] when the ACL user may not run the commands, [`Error::Command`]
    /// when Redis refuses one.
    pub fn expire_per_config(&self) -> Result<()> {
        match self.config.expire_model_tag_in_seconds {
            Some(secs) => {
                let secs = secs.to_string();
                self.per_bucket_with("EXPIRE", Role::Write, &[secs.as_bytes()], Retry::Never)
                    .map(|_| ())
            }
            None => Ok(()),
        }
    }

    /// Puts a TTL of `secs` seconds on the table's buckets.
    ///
    /// # Errors
    ///
    /// [`Error::Connection`] or [`Error::Timeout`] when Redis cannot be reached within the retry
    /// deadline, [`Error::Auth`] when the ACL user may not run the commands, [`Error::Command`]
    /// when Redis refuses one.
    pub fn expire(&self, secs: u64) -> Result<()> {
        let secs = secs.to_string();
        self.per_bucket("EXPIRE", Role::Write, &[secs.as_bytes()])
            .map(|_| ())
    }
}
