//! Recycled memory for large lookup results (issue #13).
//!
//! A lookup of 65,536 ids at dim 128 returns a 32 MiB array. glibc serves an allocation that
//! large with a fresh `mmap` and unmaps it on free, so every call paid a page fault and the
//! kernel's zeroing of each 4 KiB page (`clear_page_erms` was the top client symbol) — more
//! client CPU than the Redis replies themselves. [`row_buffer`] instead hands out a numpy
//! `uint8` array over a block from a small process-wide pool; the array's base is a
//! [`RowBuffer`], and when the last array viewing the block is gone the block goes back to the
//! pool, pages still mapped, for the next lookup.
//!
//! A block is only reused once nothing views it: numpy keeps the `RowBuffer` alive through the
//! base of every view, and the block returns to the pool in the `RowBuffer`'s `Drop`.
//!
//! (The Python buffer protocol would be the obvious way to expose a block, but PyO3 offers it
//! under the stable ABI only from Python 3.11 and this extension targets 3.10, so the array is
//! built here with the block's owner as its base.)
//!
//! Fork: every pool access runs with the GIL held (the `RowBuffer` is freed by Python's
//! deallocator, [`row_buffer`] is a Python call) and never releases it inside the lock, so the
//! thread that forks (which holds the GIL) cannot fork while another thread holds the pool's
//! lock. A child inherits the parent's pooled blocks as copy-on-write memory and may reuse them.

use std::alloc::{self, Layout};
use std::ptr::NonNull;
use std::sync::{Mutex, OnceLock};

use numpy::PyArray1;
use numpy::ndarray::ArrayView1;
use pyo3::exceptions::{PyMemoryError, PyValueError};
use pyo3::prelude::*;

/// Blocks start on a 64-byte boundary: a cache line, and more than any numpy dtype needs.
const ALIGN: usize = 64;

/// Blocks smaller than this are not kept: malloc serves them from its heap without page
/// faults, and keeping them would only hold memory.
pub const MIN_POOLED_BYTES: usize = 1 << 20;

/// The most bytes the pool keeps by default: two 32 MiB results (a 65,536 x 128 float32
/// lookup), enough for a loop that holds its previous result while it reads the next one. The
/// pool only holds memory the process had in use at once before, but it holds it for good:
/// after a burst of big lookups the client's resident memory stays up to this much higher
/// (`benchmarks/bench_client_memory.py`: 47 -> 175 MB at 128 MiB). An optimizer step that
/// reads a parameter and two slot tables of that size at once needs 96 MiB to skip every page
/// fault; `TFRA_REDIS_BUFFER_POOL_BYTES` raises the cap for that, or lowers it (0 turns the
/// pool off) where resident memory matters more than the page faults.
const DEFAULT_POOL_BYTES: usize = 64 << 20;

/// The environment variable that sets the pool's byte cap.
const POOL_BYTES_ENV: &str = "TFRA_REDIS_BUFFER_POOL_BYTES";

/// One aligned allocation (`len` bytes; none when `len` is 0).
struct Block {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Block owns its allocation exclusively, like a `Box<[u8]>`, and offers no access to
// the bytes through `&Block` (only the pointer, which numpy uses under the GIL).
unsafe impl Send for Block {}
unsafe impl Sync for Block {}

impl Block {
    fn new(len: usize) -> Option<Block> {
        if len == 0 {
            // Non-null and aligned, never dereferenced: numpy needs a data pointer even for an
            // empty array.
            let ptr = NonNull::new(ALIGN as *mut u8)?;
            return Some(Block { ptr, len });
        }
        let layout = Layout::from_size_align(len, ALIGN).ok()?;
        // SAFETY: the layout has a non-zero size. The bytes are left uninitialised, as
        // `np.empty` leaves them; every caller overwrites the whole result.
        let ptr = NonNull::new(unsafe { alloc::alloc(layout) })?;
        // Without the advice a fresh block cost twice the client CPU of `np.empty`'s (0.53
        // against 0.26 µs per id on a 65,536 x 128 find with the pool off): numpy advises its
        // own big arrays (`numpy/_core/src/multiarray/alloc.c`).
        tfra_redis::advise_huge_pages(ptr.as_ptr(), len);
        Some(Block { ptr, len })
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: allocated in `Block::new` with this very layout.
            unsafe {
                alloc::dealloc(
                    self.ptr.as_ptr(),
                    Layout::from_size_align_unchecked(self.len, ALIGN),
                )
            }
        }
    }
}

/// Free blocks, oldest returned first, and their total size.
struct Pool {
    free: Vec<Block>,
    bytes: usize,
    cap: usize,
}

/// The pool, or why `TFRA_REDIS_BUFFER_POOL_BYTES` could not be read.
fn pool() -> Result<&'static Mutex<Pool>, &'static str> {
    static POOL: OnceLock<Result<Mutex<Pool>, String>> = OnceLock::new();
    let pool = POOL.get_or_init(|| {
        let cap = match std::env::var(POOL_BYTES_ENV) {
            Err(_) => DEFAULT_POOL_BYTES,
            Ok(text) => text.trim().parse::<usize>().map_err(|_| {
                format!("{POOL_BYTES_ENV} must be a number of bytes (0 = no pool), got {text:?}")
            })?,
        };
        Ok(Mutex::new(Pool {
            free: Vec::new(),
            bytes: 0,
            cap,
        }))
    });
    pool.as_ref().map_err(String::as_str)
}

/// Locks the pool. Nothing in the locked sections can panic, but if something ever did, the
/// pool's bookkeeping is still whole (a list and a sum), so a poisoned lock is used as is.
fn lock(pool: &Mutex<Pool>) -> std::sync::MutexGuard<'_, Pool> {
    pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The size allocated for a request of `n` bytes: rounded up to one of 16 steps per power of
/// two (at most ~6 % more), so lookups of slightly different sizes (a step's unique ids vary)
/// share blocks.
fn size_class(n: usize) -> Option<usize> {
    if n < MIN_POOLED_BYTES {
        return Some(n);
    }
    let step = n.checked_next_power_of_two()? / 16;
    n.checked_next_multiple_of(step)
}

/// A free block of at least `n` bytes and at most twice that (a much larger one would hold
/// memory the result does not use), or a new one.
fn take(n: usize) -> PyResult<Block> {
    if n >= MIN_POOLED_BYTES {
        let pool = pool().map_err(PyValueError::new_err)?;
        let mut pool = lock(pool);
        let best = (pool.free.iter().enumerate())
            .filter(|(_, b)| b.len >= n && b.len / 2 <= n)
            .min_by_key(|(_, b)| b.len)
            .map(|(i, _)| i);
        if let Some(i) = best {
            let block = pool.free.remove(i);
            pool.bytes -= block.len;
            return Ok(block);
        }
    }
    size_class(n)
        .and_then(Block::new)
        .ok_or_else(|| PyMemoryError::new_err(format!("cannot allocate {n} bytes for rows")))
}

/// Keeps a freed block for later, dropping the oldest free blocks to stay under the cap.
fn give_back(block: Block) {
    let Ok(pool) = pool() else { return };
    if block.len < MIN_POOLED_BYTES {
        return;
    }
    let mut evicted = Vec::new();
    {
        let mut pool = lock(pool);
        if block.len > pool.cap {
            evicted.push(block);
        } else {
            while pool.bytes + block.len > pool.cap {
                let old = pool.free.remove(0);
                pool.bytes -= old.len;
                evicted.push(old);
            }
            pool.bytes += block.len;
            pool.free.push(block);
        }
    }
    // Unmapping happens after the lock is released.
    drop(evicted);
}

/// The owner of a pooled block: the base of the numpy array [`row_buffer`] returns. Its block
/// goes back to the pool when the last array viewing it is gone.
#[pyclass(frozen, module = "tfra_redis._native", name = "RowBuffer")]
pub struct RowBuffer {
    block: Option<Block>,
}

#[pymethods]
impl RowBuffer {
    /// The block's size in bytes (at least what was asked for).
    #[getter]
    fn capacity(&self) -> usize {
        self.block.as_ref().map_or(0, |b| b.len)
    }
}

impl Drop for RowBuffer {
    fn drop(&mut self) {
        if let Some(block) = self.block.take() {
            give_back(block);
        }
    }
}

/// A writable, C-contiguous `uint8` array of `nbytes` bytes, 64-byte aligned, over a block
/// reused from earlier large results when one is free (uninitialised, as `np.empty`). View it
/// as the rows' dtype and shape; the block is recycled once every view of it is gone.
#[pyfunction]
pub fn row_buffer(py: Python<'_>, nbytes: usize) -> PyResult<Bound<'_, PyArray1<u8>>> {
    let block = take(nbytes)?;
    let ptr = block.ptr.as_ptr();
    let owner = Bound::new(py, RowBuffer { block: Some(block) })?;
    // SAFETY: the block holds at least `nbytes` bytes at `ptr` and lives as long as `owner`,
    // which becomes the array's base; nothing else reads or writes the block until `owner` is
    // dropped, and the block never moves.
    unsafe {
        let view = ArrayView1::from_shape_ptr(nbytes, ptr.cast_const());
        Ok(PyArray1::borrow_from_array(&view, owner.into_any()))
    }
}

/// For tests: `(free blocks, their bytes, the cap)` of the pool.
#[pyfunction]
pub fn _row_buffer_pool() -> PyResult<(usize, usize, usize)> {
    let pool = pool().map_err(PyValueError::new_err)?;
    let pool = lock(pool);
    Ok((pool.free.len(), pool.bytes, pool.cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_round_up_by_at_most_a_sixteenth_of_a_power_of_two() {
        assert_eq!(size_class(0), Some(0));
        assert_eq!(size_class(1000), Some(1000));
        assert_eq!(size_class(32 << 20), Some(32 << 20));
        assert_eq!(size_class((32 << 20) + 1), Some(36 << 20));
        assert_eq!(size_class(usize::MAX), None);
    }
}
