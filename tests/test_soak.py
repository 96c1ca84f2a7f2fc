"""A concurrency soak: 8 threads mixing every table operation on shared tables for 20 s per
topology (standalone, 3-master cluster, Sentinel), against real servers.

Each thread owns an id range, so what it reads back is known exactly: after every write it
checks its rows, and at the end the table holds exactly the rows the threads last wrote. All
threads also read and write one shared range at once (no assertion on those values, only that
nothing fails) and share the tables, pools and prefetchers.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from tfra_redis import RedisStore

pytestmark = pytest.mark.slow

THREADS = 8
SECONDS = 20.0
DIM = 8
OWN = 500  # ids per thread
SHARED = np.arange(10_000_000, 10_000_200, dtype=np.int64)

TOPOLOGIES = {
    "standalone": lambda r: r.getfixturevalue("standalone_server").config_dict(),
    "cluster": lambda r: {**r.getfixturevalue("cluster").config_dict(), "storage_slice": 3},
    "sentinel": lambda r: r.getfixturevalue("sentinel").config_dict(),
}


def _worker(
    index: int, store: RedisStore, deadline: float, expected: dict[int, np.ndarray]
) -> None:
    rng = np.random.default_rng(index)
    ids = np.arange(index * OWN, (index + 1) * OWN, dtype=np.int64)
    mine: dict[int, np.ndarray] = {}
    step = 0
    while time.monotonic() < deadline:
        step += 1
        chosen = rng.choice(ids, size=rng.integers(1, 200), replace=False)
        op = step % 5
        if op in (0, 1):
            rows = rng.normal(size=(len(chosen), DIM)).astype(np.float32)
            store.insert(chosen, rows)
            mine.update(zip(chosen.tolist(), rows, strict=True))
        elif op == 2:
            store.remove(chosen[: len(chosen) // 4])
            for key in chosen[: len(chosen) // 4].tolist():
                mine.pop(key, None)
        elif op == 3:
            store.prefetch([chosen])
            store.insert(SHARED[:50], rng.normal(size=(50, DIM)).astype(np.float32))
        rows, exists = store.find(chosen, default=-9.0, return_exists=True)
        for key, row, found in zip(chosen.tolist(), rows, exists, strict=True):
            want = mine.get(key)
            assert found == (want is not None), f"thread {index}: id {key} exists={found}"
            if want is not None:
                np.testing.assert_array_equal(row, want, err_msg=f"thread {index}: id {key}")
        store.find(SHARED)
    expected.update(mine)


@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
def test_threads_mixing_every_operation(request, unique_name, topology):
    config: dict[str, Any] = {
        **TOPOLOGIES[topology](request),
        "redis_conn_pool_size": 4,
        "expire_model_tag_in_seconds": -1,
    }
    store = RedisStore(config, unique_name, DIM, manage_ttl=False)
    store.clear()
    deadline = time.monotonic() + SECONDS
    expected: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            _worker(index, store, deadline, expected)
        except BaseException as err:  # reported below, with the thread's own message
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=SECONDS + 120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors[0]
    assert len(expected) > THREADS * OWN // 4, "the threads hardly wrote anything"
    keys, rows = store.export()
    own = keys < THREADS * OWN
    assert sorted(keys[own].tolist()) == sorted(expected)
    for key, row in zip(keys[own].tolist(), rows[own], strict=True):
        np.testing.assert_array_equal(row, expected[key])
    store.clear()
    store.close()
