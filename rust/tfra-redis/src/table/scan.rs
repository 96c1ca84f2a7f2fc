//! Reading whole buckets: `export_pages`, `export`, `scan_bucket` and `sample_ids`.

use redis::Value;

use super::Table;
use crate::backend::{self, Retry, Role};
use crate::codec::{KeyBuf, Keys};
use crate::error::{Error, Result};

/// Fields per `HSCAN` page when exporting.
const SCAN_COUNT: usize = 1024;
impl Table {
    /// Up to `n` random ids stored in runtime bucket `bucket` (`HRANDFIELD`), cheap evidence of
    /// whether the bucket holds rows of another layout.
    pub(crate) fn sample_ids(&self, bucket: usize, n: usize) -> Result<KeyBuf> {
        let backend = self.backend()?;
        let cmd = redis::cmd("HRANDFIELD")
            .arg(self.buckets[bucket].as_bytes())
            .arg(n)
            .clone();
        let reply = backend
            .run_values(&[cmd], Role::Write, Retry::Idempotent)?
            .pop()
            .unwrap_or(Value::Nil);
        let mut ids = KeyBuf::new(self.spec.key_dtype);
        if let Value::Array(items) = reply {
            for item in items {
                if let Value::BulkString(f) = item {
                    // A field of another width is not one of this table's ids: skipped.
                    ids.push_field(self.spec.key_dtype, &f);
                }
            }
        }
        Ok(ids)
    }

    /// Streams the pairs of any bucket hash (not necessarily one of this table's) in pages:
    /// `sink(ids, values, width)`, each value `width` bytes. Values are rows, except with
    /// `whole` on a `redis_fused_row` table: then each stored value is handed over as it is
    /// (row and slots), one call per value size in a page, so that copies keep the slots.
    pub(crate) fn scan_bucket(
        &self,
        bucket: &[u8],
        page: usize,
        whole: bool,
        mut sink: impl FnMut(Keys<'_>, &[u8], usize) -> Result<()>,
    ) -> Result<()> {
        let whole = whole && self.config.redis_fused_row;
        let backend = self.backend()?;
        let dtype = self.spec.key_dtype;
        let rb = self.row_bytes;
        let name = crate::layout::printable(bucket);
        let mut cursor = 0u64;
        loop {
            let cmd = redis::cmd("HSCAN")
                .arg(bucket)
                .arg(cursor)
                .arg("COUNT")
                .arg(page.clamp(1, SCAN_COUNT * 64))
                .clone();
            let mut replies = backend.run_values(&[cmd], Role::Write, Retry::Idempotent)?;
            let bad = |m: &str| Error::Data {
                bucket: name.clone(),
                message: m.to_string(),
            };
            let (next, items) = backend::parse_scan_reply(replies.remove(0))
                .map_err(|_| bad("HSCAN answered with an unexpected shape"))?;
            let mut keys = KeyBuf::new(dtype);
            let mut values = Vec::with_capacity(items.len() / 2 * rb);
            // Whole fused values longer than a row, by size.
            let mut wider: std::collections::BTreeMap<usize, (KeyBuf, Vec<u8>)> =
                std::collections::BTreeMap::new();
            for pair in items.chunks(2) {
                let [field, value] = pair else {
                    return Err(bad("HSCAN answered with an odd item count"));
                };
                let whole_row = value.len() > rb && value.len().is_multiple_of(rb);
                if whole && whole_row {
                    let (k, v) = wider
                        .entry(value.len())
                        .or_insert_with(|| (KeyBuf::new(dtype), Vec::new()));
                    if k.push_field(dtype, field) {
                        v.extend_from_slice(value);
                        continue;
                    }
                }
                if !keys.push_field(dtype, field) {
                    return Err(bad(&format!(
                        "field {} is {} bytes, but {} keys are {} bytes",
                        crate::layout::printable(field),
                        field.len(),
                        dtype.name(),
                        dtype.width().unwrap_or(field.len())
                    )));
                }
                if value.len() != rb && !(self.config.redis_fused_row && whole_row) {
                    let key = keys.keys().label(keys.len() - 1);
                    return Err(Error::Data {
                        bucket: name.clone(),
                        message: self.row_len_message(&key, value.len()),
                    });
                }
                // A fused row's slots stay behind unless the caller takes whole values.
                values.extend_from_slice(&value[..rb]);
            }
            if !keys.is_empty() {
                sink(keys.keys(), &values, rb)?;
            }
            for (width, (k, v)) in &wider {
                sink(k.keys(), v, *width)?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Streams every (id, row) pair, bucket by bucket, in pages of about `page` pairs, so memory
    /// stays bounded whatever the table size. `HSCAN` may report a pair twice when the hash is
    /// rehashed meanwhile; importing the pages is an upsert, so that is harmless.
    ///
    /// # Errors
    ///
    /// [`Error::Connection`] or [`Error::Timeout`] when Redis cannot be reached within the retry
    /// deadline, [`Error::Auth`] when the ACL user may not run the commands, [`Error::Command`]
    /// when Redis refuses one; [`Error::Data`] when a stored field or row does not fit the table;
    /// any error `on_page` returns, which stops the export.
    pub fn export_pages(
        &self,
        page: usize,
        mut sink: impl FnMut(Keys<'_>, &[u8]) -> Result<()>,
    ) -> Result<()> {
        for bucket in &self.buckets {
            self.scan_bucket(bucket.as_bytes(), page, false, |k, v, _| sink(k, v))?;
        }
        Ok(())
    }

    /// Every pair at once, without duplicates. Only for tables that fit in memory; use
    /// [`Table::export_pages`] otherwise.
    ///
    /// # Errors
    ///
    /// As [`Table::export_pages`].
    pub fn export(&self) -> Result<(KeyBuf, Vec<u8>)> {
        let rb = self.row_bytes;
        let dtype = self.spec.key_dtype;
        let mut seen = std::collections::HashSet::new();
        let mut keys = KeyBuf::new(dtype);
        let mut values = Vec::new();
        self.export_pages(SCAN_COUNT, |k, v| {
            for i in 0..k.len() {
                if seen.insert(k.field(i, dtype).as_ref().to_vec()) {
                    keys.push_key(k, i);
                    values.extend_from_slice(&v[i * rb..(i + 1) * rb]);
                }
            }
            Ok(())
        })?;
        Ok((keys, values))
    }
}
