"""A forked child (a data loader, a multiprocessing worker started by fork) can use the tables
its parent opened: its prefetches and concurrent calls complete, and it closes the Redis
sockets it inherited instead of keeping them open next to its own.

Each child reports through a pipe and is waited for with a deadline, so a regression fails
instead of hanging the run.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tfra_redis import RedisStore
from tfra_redis.prefetch import run_concurrently

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

CHILD_DEADLINE = 30.0


def run_in_child(work: Callable[[], str]) -> str:
    """Forks; the child runs ``work`` and reports its result (or traceback); returns it."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            report = "ok " + work()
        except BaseException:
            report = "error " + traceback.format_exc()
        os.write(write_end, report.encode())
        os.close(write_end)
        os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + CHILD_DEADLINE
    try:
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"the forked child did not finish within {CHILD_DEADLINE} s")
            time.sleep(0.05)
        with os.fdopen(read_end, "rb") as pipe:
            report = pipe.read().decode()
    finally:
        try:
            os.close(read_end)
        except OSError:
            pass
    assert report.startswith("ok "), report
    return report[3:]


def rows(keys: np.ndarray, dim: int, offset: float) -> np.ndarray:
    return np.repeat(keys[:, None].astype(np.float32) + offset, dim, axis=1)


def test_a_forked_child_completes_prefetches_and_concurrent_calls(standalone_server, unique_name):
    dim = 4
    store = RedisStore(standalone_server.config_dict(), unique_name, dim, manage_ttl=False)
    keys = np.arange(20_000, dtype=np.int64)
    store.insert(keys, rows(keys, dim, 0.5))
    # Start the executor's threads in the parent, then fork with a prefetch still pending.
    run_concurrently([lambda: store.find(keys[:10]), lambda: store.find(keys[10:20])])
    store.prefetch([keys])

    def child() -> str:
        np.testing.assert_array_equal(store.find(keys), rows(keys, dim, 0.5))
        # A new prefetch in the child, with a write in between that it must see.
        store.prefetch([keys[:100]])
        store.insert(keys[:10], rows(keys[:10], dim, 7.0))
        want = rows(keys[:100], dim, 0.5)
        want[:10] = rows(keys[:10], dim, 7.0)
        np.testing.assert_array_equal(store.find(keys[:100]), want)
        assert store.prefetch_stats.taken >= 1
        results = run_concurrently([lambda i=i: store.find(keys[i : i + 5]) for i in range(6)])
        assert len(results) == 6
        return "done"

    assert run_in_child(child) == "done"
    # The parent's own prefetch is unaffected.
    np.testing.assert_array_equal(store.find(keys), rows(keys, dim, 0.5))
    assert store.prefetch_stats.taken == 1


def redis_sockets(ports: set[int]) -> set[int]:
    """Inodes of this process's TCP sockets connected to one of ``ports``."""
    connected = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port in ports:
                connected.add(int(fields[9]))
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            mine.add(int(target[len("socket:[") : -1]))
    return mine & connected


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("kind", ["standalone", "cluster"])
def test_a_forked_child_closes_the_sockets_it_inherited(request, kind, unique_name):
    if kind == "cluster":
        topology = request.getfixturevalue("cluster")
        ports = {node.port for node in topology.nodes}
        config = {**topology.config_dict(), "storage_slice": 3}
    else:
        topology = request.getfixturevalue("standalone_server")
        ports = {topology.port}
        config = topology.config_dict()
    store = RedisStore(config, unique_name, 2, manage_ttl=False)
    keys = np.arange(1000, dtype=np.int64)
    store.insert(keys, rows(keys, 2, 0.0))
    # Several idle pooled connections, none in use at the fork.
    run_concurrently([lambda: store.find(keys) for _ in range(4)])
    inherited = redis_sockets(ports)
    assert inherited

    def child() -> str:
        np.testing.assert_array_equal(store.find(keys), rows(keys, 2, 0.0))
        own = redis_sockets(ports)
        assert own, "the child reads over sockets of its own"
        still_open = own & inherited
        assert not still_open, f"{len(still_open)} of {len(inherited)} inherited sockets open"
        return "done"

    assert run_in_child(child) == "done"
    np.testing.assert_array_equal(store.find(keys), rows(keys, 2, 0.0))


def test_a_forked_child_reuses_pooled_result_memory_without_touching_the_parents(
    standalone_server, unique_name
):
    """Large results live in a process-wide pool of blocks (``_native.row_buffer``). A child
    forked while the parent holds one result and has a freed block in the pool gets the pool
    unlocked, reuses the inherited free block (copy-on-write), and neither side sees the other's
    rows."""
    from tfra_redis import _native

    dim = 128
    store = RedisStore(standalone_server.config_dict(), unique_name, dim, manage_ttl=False)
    keys = np.arange(4096, dtype=np.int64)  # 2 MiB of rows: pooled
    store.insert(keys, rows(keys, dim, 0.5))
    held = store.find(keys)
    freed = store.find(keys + 1)
    del freed
    assert _native._row_buffer_pool()[0] >= 1

    def child() -> str:
        free_before = _native._row_buffer_pool()[0]
        store.insert(keys, rows(keys, dim, 9.0))  # the parent must not see this in `held`
        got = store.find(keys)
        assert _native._row_buffer_pool()[0] == free_before - 1, "the child did not reuse"
        np.testing.assert_array_equal(got, rows(keys, dim, 9.0))
        np.testing.assert_array_equal(held, rows(keys, dim, 0.5))
        return "reused"

    assert run_in_child(child) == "reused"
    np.testing.assert_array_equal(held, rows(keys, dim, 0.5))
    np.testing.assert_array_equal(store.find(keys), rows(keys, dim, 9.0))
