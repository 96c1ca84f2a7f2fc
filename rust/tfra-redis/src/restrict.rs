//! Trimming an embedding to its newest or most used ids: the work behind TFRA's restrict
//! policies (`TimestampRestrictPolicy`, `FrequencyRestrictPolicy`, `Variable.restrict`).
//!
//! A policy keeps one int32 *status* per id in a table of its own (a Unix time, or a count of
//! the training steps that updated the id). Restricting to `num_reserved` ids removes the ids
//! with the smallest statuses from the status table and from every table given (the
//! embedding and its optimizer slots).
//!
//! The status table is never loaded whole: the smallest `k` statuses are found by a radix
//! select over `HSCAN` pages (a histogram of the high 16 bits, then of the low 16 bits within
//! the chosen high bucket), and a third pass removes the ids below the threshold, page by page.
//! Client memory is a page plus two 65,536-entry histograms, whatever the table's size.

use crate::codec::{KeyBuf, ValueDtype};
use crate::error::{Error, Result};
use crate::table::Table;

/// Statuses per `HSCAN` page when nothing else is asked for.
pub const DEFAULT_PAGE: usize = 4096;

const BUCKETS: usize = 1 << 16;

/// What one [`restrict`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Restriction {
    /// Ids in the status table when it started.
    pub before: u64,
    /// Ids removed (from the status table and from every other table).
    pub removed: u64,
}

/// Orders int32 statuses as unsigned numbers: the sign bit flipped.
fn biased(status: i32) -> u32 {
    (status as u32) ^ 0x8000_0000
}

/// The bucket holding the `rank`-th smallest entry (0-based) of `histogram`, and how many
/// entries the buckets before it hold.
fn select(histogram: &[u64], rank: u64) -> (usize, u64) {
    let mut below = 0;
    for (bucket, &count) in histogram.iter().enumerate() {
        if below + count > rank {
            return (bucket, below);
        }
        below += count;
    }
    (histogram.len() - 1, below)
}

/// Removes the ids with the smallest statuses until `num_reserved` remain in `status`, from
/// `status` and from each of `tables` (ids missing from a table are skipped). Ties at the
/// threshold are broken in scan order. Ids of `tables` that have no status are never removed
/// (TFRA's rule).
///
/// `HSCAN` may report an id twice if Redis rehashes the status hash during the scan; such an
/// id is counted twice, so a restriction running beside heavy writes may remove a few ids
/// fewer than asked, never more.
///
/// # Errors
/// `status` is not an int32 table of dim 1; Redis errors of any pass (ids removed by earlier
/// pages stay removed: restricting again finishes the job).
pub fn restrict(
    status: &Table,
    tables: &[&Table],
    num_reserved: u64,
    page: usize,
) -> Result<Restriction> {
    let spec = status.spec();
    if spec.value_dtype != ValueDtype::I32 || spec.dim.get() != 1 {
        return Err(Error::invalid(
            crate::error::ArgumentKind::TableSet,
            format!(
                "a restrict status table holds one int32 per id; {:?} holds {} x {}",
                spec.name,
                spec.dim.get(),
                spec.value_dtype.numpy_name()
            ),
        ));
    }
    for table in tables {
        if table.spec().key_dtype != spec.key_dtype {
            return Err(Error::invalid(
                crate::error::ArgumentKind::TableSet,
                format!(
                    "table {:?} has {} keys, its status table {:?} has {}",
                    table.spec().name,
                    table.spec().key_dtype.name(),
                    spec.name,
                    spec.key_dtype.name()
                ),
            ));
        }
    }
    let page = page.max(1);
    let before = status.size()?;
    if before <= num_reserved {
        return Ok(Restriction { before, removed: 0 });
    }
    let remove = before - num_reserved;
    let statuses = |values: &[u8]| -> Vec<u32> {
        values
            .chunks_exact(4)
            .map(|c| biased(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect()
    };

    // Pass 1: the high half of the threshold.
    let mut high = vec![0u64; BUCKETS];
    status.export_pages(page, |_, values| {
        for s in statuses(values) {
            high[(s >> 16) as usize] += 1;
        }
        Ok(())
    })?;
    let (high_bucket, below_high) = select(&high, remove - 1);
    drop(high);

    // Pass 2: the low half, among statuses in that high bucket.
    let mut low = vec![0u64; BUCKETS];
    status.export_pages(page, |_, values| {
        for s in statuses(values) {
            if (s >> 16) as usize == high_bucket {
                low[(s & 0xFFFF) as usize] += 1;
            }
        }
        Ok(())
    })?;
    let (low_bucket, below_low) = select(&low, remove - 1 - below_high);
    drop(low);
    let threshold = ((high_bucket as u32) << 16) | low_bucket as u32;
    // Everything below the threshold goes, and as many at it as needed to reach `remove`.
    let mut ties = remove - below_high - below_low;

    // Pass 3: remove page by page.
    let mut removed = 0u64;
    status.export_pages(page, |keys, values| {
        let mut chosen = KeyBuf::new(spec.key_dtype);
        for (i, s) in statuses(values).into_iter().enumerate() {
            if s < threshold {
                chosen.push_key(keys, i);
            } else if s == threshold && ties > 0 {
                ties -= 1;
                chosen.push_key(keys, i);
            }
        }
        if chosen.is_empty() {
            return Ok(());
        }
        for table in tables {
            table.remove(&chosen)?;
        }
        status.remove(&chosen)?;
        removed += chosen.len() as u64;
        Ok(())
    })?;
    Ok(Restriction { before, removed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn biasing_orders_negative_statuses_first() {
        let mut values = [5, -3, i32::MIN, i32::MAX, 0];
        values.sort_by_key(|&v| biased(v));
        assert_eq!(values, [i32::MIN, -3, 0, 5, i32::MAX]);
    }

    #[test]
    fn select_finds_the_bucket_of_a_rank() {
        let histogram = [2, 0, 3, 1];
        assert_eq!(select(&histogram, 0), (0, 0));
        assert_eq!(select(&histogram, 1), (0, 0));
        assert_eq!(select(&histogram, 2), (2, 2));
        assert_eq!(select(&histogram, 4), (2, 2));
        assert_eq!(select(&histogram, 5), (3, 5));
    }
}
