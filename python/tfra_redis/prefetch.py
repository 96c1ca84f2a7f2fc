"""Reading a table's rows ahead of time without ever serving a stale row (no TensorFlow needed).

A training step reads the rows of its batch, then writes the updated rows back. Reading the rows
of batch N+1 while step N runs hides the read, but step N may write rows that batch N+1 also
uses, before, during or after that read. Each table therefore numbers the writes made through it
in this process (:class:`WriteLog`); a prefetch remembers the number of the oldest write that
could still change what it reads (its *horizon*). When the rows are taken, every id written by a
write numbered at or after the horizon is read again, unless a *patch* read of it started after
that write had finished. Patches are started by the writes themselves, in the background, as
soon as a write of a prefetched id ends, so that the re-read normally overlaps compute as well.

The result of taking a prefetch is what a ``find`` at that moment would have returned, as far as
writes made through this process go. Writes by other processes are not tracked: rows they write
after the prefetch started may be missed, as they would be by a ``find`` made a moment earlier.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

__all__ = ["PrefetchStats", "RowPrefetcher", "WriteLog", "run_concurrently"]

# Reads release the GIL while they wait for Redis; a few threads cover a step's tables.
_MAX_THREADS = 4
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()

# Objects whose locks and pending work must be reset in a forked child.
_forkables: weakref.WeakSet[WriteLog | RowPrefetcher] = weakref.WeakSet()


def _submit(fn: Callable[..., object], *args: object) -> Future[Any]:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(_MAX_THREADS, thread_name_prefix="tfra-redis-prefetch")
        return _executor.submit(fn, *args)


@atexit.register
def _shutdown_executor() -> None:
    # The executor of this process only: a forked child must not touch its parent's.
    if _executor is not None:
        _executor.shutdown(wait=False, cancel_futures=True)


def _after_fork_in_child() -> None:
    """Only the thread that called fork() exists in the child. The parent's executor has no
    workers here but believes its idle ones will take new work, so everything submitted to it
    waited forever; its futures, and those of pending prefetches, never complete; and a lock
    another thread held at the fork stays locked. Start over with none of them."""
    global _executor, _executor_lock
    _executor = None
    _executor_lock = threading.Lock()
    for item in list(_forkables):
        item._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


_T = TypeVar("_T")


def run_concurrently(calls: Sequence[Callable[[], _T]]) -> list[_T]:
    """Runs the calls at once (they must release the GIL to gain anything: Redis calls do),
    the first on this thread; returns their results in order, raising the first error."""
    if len(calls) <= 1:
        return [call() for call in calls]
    futures = [_submit(call) for call in calls[1:]]
    try:
        first = calls[0]()
    finally:
        # Wait for all of them even if one failed: none may outlive the step it belongs to.
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error
    return [first, *(f.result() for f in futures)]


class WriteLog:
    """Numbers the writes made to one table through this process and, while some prefetch may
    need it, remembers which ids each wrote (``None``: possibly every id, e.g. ``clear``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0
        self._in_flight: dict[int, np.ndarray | None] = {}
        self._done: deque[tuple[int, np.ndarray | None]] = deque()
        self._watchers: list[int] = []
        _forkables.add(self)

    def _reset_after_fork(self) -> None:
        # Writes in flight at the fork belong to threads the child does not have; the
        # prefetches that watched are dropped by their prefetchers.
        self._lock = threading.Lock()
        self._in_flight.clear()
        self._done.clear()
        self._watchers.clear()

    def begin(self, keys: np.ndarray | None) -> int:
        """Marks the start of a write of ``keys`` (the caller's array, not copied: it is in use
        until :meth:`end`); returns its number."""
        keys = None if keys is None else np.asarray(keys).reshape(-1)
        with self._lock:
            seq = self._next
            self._next += 1
            self._in_flight[seq] = keys
            return seq

    def end(self, seq: int) -> None:
        """Marks the end of write ``seq`` (successful or not: a failed write may have written
        some rows, so it counts as a write)."""
        with self._lock:
            keys = self._in_flight.pop(seq)
            if self._watchers:
                # Kept past the write: a copy, since the caller may reuse its array. Without
                # a watcher (no prefetch pending) a write costs no copy of its ids.
                kept = None if keys is None else np.array(keys, copy=True)
                self._done.append((seq, kept))

    def horizon(self) -> int:
        """The number of the oldest write that may still change what a read started now sees:
        the oldest write in flight, else the next write."""
        with self._lock:
            return self._horizon_locked()

    def _horizon_locked(self) -> int:
        return min(self._in_flight, default=self._next)

    def watch(self) -> int:
        """Starts keeping the ids of writes from the current horizon on; returns the horizon.
        Pair with :meth:`unwatch`."""
        with self._lock:
            horizon = self._horizon_locked()
            self._watchers.append(horizon)
            return horizon

    def unwatch(self, horizon: int) -> None:
        """Ends a :meth:`watch`; entries no watcher needs any more are dropped."""
        with self._lock:
            self._watchers.remove(horizon)
            oldest = min(self._watchers, default=None)
            while self._done and (oldest is None or self._done[0][0] < oldest):
                self._done.popleft()

    def last_write(self, keys: np.ndarray, since: int) -> np.ndarray:
        """For each of ``keys``, the number of the latest write numbered ``>= since`` that may
        have written it (finished or in flight), else -1. Needs an active :meth:`watch` with a
        horizon ``<= since``."""
        last = np.full(keys.shape, -1, dtype=np.int64)
        with self._lock:
            entries = [e for e in self._done if e[0] >= since]
            entries += [(s, k) for s, k in self._in_flight.items() if s >= since]
        for seq, written in sorted(entries, key=lambda e: e[0]):
            mask = np.ones(keys.shape, np.bool_) if written is None else np.isin(keys, written)
            last[mask] = seq
        return last


Rows = tuple[np.ndarray, np.ndarray]  # (rows [n, dim], exists [n])


@dataclass
class PrefetchStats:
    """Counts of one table's prefetches, for benchmarks and tests."""

    #: prefetches taken by a ``find``, and the keys they held
    taken: int = 0
    keys: int = 0
    #: keys written after their prefetch started: re-read in the background after the write
    #: (``patched``) or, when no such re-read had covered them, by the ``find`` itself
    #: (``reread``)
    patched: int = 0
    reread: int = 0


@dataclass
class _Patch:
    mask: np.ndarray  # which keys of the fetch it re-reads
    horizon: int
    future: Future[Any]


@dataclass
class _Fetch:
    keys: np.ndarray
    horizon: int
    future: Future[Any]
    generation: int
    patches: list[_Patch] = field(default_factory=list)


class RowPrefetcher:
    """Prefetched reads of one table (see the module docstring).

    Args:
        read: ``read(keys) -> (rows, exists)`` for flat keys (int64, or an object array of
            ``bytes`` for string tables), missing rows left as they
            come (the caller fills in defaults); called on a background thread.
        log: the table's :class:`WriteLog`.
    """

    def __init__(self, read: Callable[[np.ndarray], Rows], log: WriteLog) -> None:
        self._read = read
        self._log = log
        self._lock = threading.Lock()
        self._pending: list[_Fetch] = []
        self._generation = 0
        self.stats = PrefetchStats()
        _forkables.add(self)

    def _reset_after_fork(self) -> None:
        # The reads of pending prefetches ran on the parent's threads: their results never
        # arrive here. find() reads those rows itself instead.
        self._lock = threading.Lock()
        self._pending = []

    def issue(self, key_sets: Sequence[np.ndarray]) -> None:
        """Starts reading the rows of each key set in the background. A later :meth:`take` of
        exactly one of these key sets gets them.

        The prefetches of the previous call stay pending (the step running now takes them);
        older ones are dropped, so an untaken prefetch lives for two calls at most.
        """
        self._generation += 1
        fetches = []
        for keys in key_sets:
            keys = np.array(keys, copy=True).reshape(-1)
            horizon = self._log.watch()
            fetches.append(_Fetch(keys, horizon, _submit(self._read, keys), self._generation))
        with self._lock:
            keep = self._generation - 1
            old = [f for f in self._pending if f.generation < keep]
            self._pending = [f for f in self._pending if f.generation >= keep] + fetches
        self._release(old)

    def discard(self) -> None:
        """Drops pending prefetches (their results and errors are not needed any more)."""
        with self._lock:
            old, self._pending = self._pending, []
        self._release(old)

    def _release(self, fetches: list[_Fetch]) -> None:
        for fetch in fetches:
            fetch.future.cancel()
            self._log.unwatch(fetch.horizon)

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def written(self, keys: np.ndarray | None) -> None:
        """Called after a write of ``keys`` (``None``: any id) has ended: starts re-reading the
        prefetched ids it wrote, so that :meth:`take` finds fresh rows."""
        with self._lock:
            for fetch in self._pending:
                if keys is None:
                    mask = np.ones(fetch.keys.shape, np.bool_)
                else:
                    mask = np.isin(fetch.keys, keys)
                if mask.any():
                    # Taken after the write ended, so this write is older than the horizon.
                    horizon = self._log.horizon()
                    future = _submit(self._read, fetch.keys[mask])
                    fetch.patches.append(_Patch(mask, horizon, future))

    def take(self, keys: np.ndarray) -> Rows | None:
        """The rows of ``keys`` (flat, as the table's ``_keys`` gives them) if a pending
        prefetch read exactly these keys, as fresh as a read started now; else ``None``.
        Errors of the background reads are raised here."""
        with self._lock:
            index = next(
                (i for i, f in enumerate(self._pending) if np.array_equal(f.keys, keys)), None
            )
            if index is None:
                return None
            fetch = self._pending.pop(index)
            patches = list(fetch.patches)
        try:
            rows, exists = fetch.future.result()
            fresh_from = np.full(keys.shape, fetch.horizon, dtype=np.int64)
            for patch in patches:
                patch_rows, patch_exists = patch.future.result()
                rows[patch.mask] = patch_rows
                exists[patch.mask] = patch_exists
                fresh_from[patch.mask] = patch.horizon
            stale = self._log.last_write(keys, fetch.horizon) >= fresh_from
            if stale.any():
                # A write that no finished patch covers (still in flight when the patch
                # started, or not yet followed by one): read those ids now.
                rows[stale], exists[stale] = self._read(keys[stale])
            stats = self.stats
            stats.taken += 1
            stats.keys += keys.size
            stats.patched += int((fresh_from > fetch.horizon).sum())
            stats.reread += int(stale.sum())
            return rows, exists
        finally:
            self._log.unwatch(fetch.horizon)
