"""Large lookup results live in recycled memory (``_native.row_buffer``, issue #13): the same
values as a fresh array, aligned for every value dtype, never reused while an array still views
them, and a pool that stays under its cap."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest

from tfra_redis import RedisStore, _native
from tfra_redis.store import find_together, new_rows, numpy_dtype

VALUE_DTYPES = ["float32", "float64", "float16", "int32", "int64", "int8", "bfloat16"]
MIB = 1 << 20


def rows(keys: np.ndarray, dim: int, offset: float, dtype: Any = np.float32) -> np.ndarray:
    """Distinct rows per id: id + offset + column, as ``dtype``."""
    return (keys[:, None] % 100 + offset + np.arange(dim)[None, :]).astype(dtype)


def pooled(array: np.ndarray) -> bool:
    """Whether ``array``'s memory is a ``RowBuffer``'s."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, _native.RowBuffer)


@pytest.fixture(params=["standalone", "cluster"])
def config(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "standalone":
        return request.getfixturevalue("standalone_server").config_dict()
    return {**request.getfixturevalue("cluster").config_dict(), "storage_slice": 3}


def test_a_pooled_find_equals_a_find_into_a_fresh_array(config, unique_name):
    dim, n = 128, 4096  # 2 MiB of float32 rows: pooled
    store = RedisStore(config, unique_name, dim, manage_ttl=False)
    keys = np.arange(n, dtype=np.int64)
    store.insert(keys[::2], rows(keys[::2], dim, 0.5))
    got = store.find(keys, default=-1.0)
    assert pooled(got)
    fresh = store.find(keys, default=-1.0, out=np.empty((n, dim), np.float32))
    assert not pooled(fresh)
    np.testing.assert_array_equal(got, fresh)
    want = np.full((n, dim), -1.0, np.float32)
    want[::2] = rows(keys[::2], dim, 0.5)
    np.testing.assert_array_equal(got, want)
    # Keys of any shape: the result keeps it.
    got2d, exists = store.find(keys.reshape(64, 64), -1.0, return_exists=True)
    assert pooled(got2d) and got2d.shape == (64, 64, dim)
    np.testing.assert_array_equal(got2d.reshape(n, dim), want)
    np.testing.assert_array_equal(exists.reshape(-1), np.arange(n) % 2 == 0)


def test_results_held_at_once_stay_intact_while_later_finds_reuse_memory(config, unique_name):
    dim, n = 64, 4096  # 1 MiB per result
    store = RedisStore(config, unique_name, dim, manage_ttl=False)
    batches = [np.arange(n, dtype=np.int64) + i * n for i in range(6)]
    for i, keys in enumerate(batches):
        store.insert(keys, rows(keys, dim, float(i)))
    held = {}
    reused = 0
    for round_ in range(4):
        for i, keys in enumerate(batches):
            if (i + round_) % 3 == 0:
                held.pop(i, None)  # freed: its block may serve the next find
            gc.collect()
            free_before = _native._row_buffer_pool()[0]
            result = store.find(keys)
            assert pooled(result)
            reused += _native._row_buffer_pool()[0] < free_before
            held[i] = result
            for j, kept in held.items():
                np.testing.assert_array_equal(kept, rows(batches[j], dim, float(j)))
    # 8 of the 24 finds came after a result was freed; each of those reused memory.
    assert reused >= 8
    addresses = [a.ctypes.data for a in held.values()]
    assert len(set(addresses)) == len(addresses)


def test_every_value_dtype_gets_aligned_writable_rows(standalone_server, unique_name):
    n = 8192
    keys = np.arange(n, dtype=np.int64)
    for name in VALUE_DTYPES:
        dtype = numpy_dtype(name)
        dim = max(1, MIB // (n * dtype.itemsize)) * 2  # 2 MiB of rows
        store = RedisStore(
            standalone_server.config_dict(),
            f"{unique_name}_{name}",
            dim,
            value_dtype=name,
            manage_ttl=False,
        )
        want = rows(keys, dim, 1.0, dtype)
        store.insert(keys, want)
        for got in (store.find(keys), store.find_rows(keys, np.zeros(dim, dtype).view(np.uint8))):
            assert pooled(got), name
            assert got.dtype == dtype and got.shape == (n, dim)
            assert got.ctypes.data % 64 == 0 and got.flags.aligned, name
            assert got.flags.c_contiguous and got.flags.writeable, name
            np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
    # Zero ids: an empty result, from plain numpy.
    empty = store.find(np.zeros((0,), np.int64))
    assert empty.shape == (0, dim)
    assert _native.row_buffer(0).shape == (0,)


def test_find_together_and_find_with_slots_return_pooled_exact_rows(standalone_server, unique_name):
    dim, n = 128, 4096
    keys = np.arange(n, dtype=np.int64)
    config = standalone_server.config_dict()
    stores = [RedisStore(config, f"{unique_name}_{i}", dim, manage_ttl=False) for i in range(3)]
    for i, store in enumerate(stores):
        store.insert(keys, rows(keys, dim, float(i)))
    outs = find_together(stores, keys, [0.0, 0.0, 0.0])
    for i, out in enumerate(outs):
        assert pooled(out)
        np.testing.assert_array_equal(out, rows(keys, dim, float(i)))

    fused = RedisStore(
        {**config, "redis_fused_row": True}, f"{unique_name}_fused", dim, manage_ttl=False
    )
    fused.insert_with_slots(keys[::2], rows(keys[::2], dim, 0.5), rows(keys[::2], 2 * dim, 2.0))
    got_rows, got_slots = fused.find_with_slots(keys, -1.0, np.full(2 * dim, -2.0, np.float32))
    assert pooled(got_rows) and pooled(got_slots)
    want_rows = np.full((n, dim), -1.0, np.float32)
    want_rows[::2] = rows(keys[::2], dim, 0.5)
    want_slots = np.full((n, 2 * dim), -2.0, np.float32)
    want_slots[::2] = rows(keys[::2], 2 * dim, 2.0)
    np.testing.assert_array_equal(got_rows, want_rows)
    np.testing.assert_array_equal(got_slots, want_slots)


def test_the_pool_stays_under_its_cap_in_this_process(standalone_server, unique_name):
    dim, n = 128, 8192  # 4 MiB per result
    store = RedisStore(standalone_server.config_dict(), unique_name, dim, manage_ttl=False)
    keys = np.arange(n, dtype=np.int64)
    store.insert(keys, rows(keys, dim, 0.0))
    _, _, cap = _native._row_buffer_pool()
    held = [store.find(keys) for _ in range(cap // (4 * MIB) + 4)]
    del held
    gc.collect()
    blocks, nbytes, _ = _native._row_buffer_pool()
    assert 0 < nbytes <= cap
    assert blocks <= cap // MIB


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_cap_comes_from_the_environment_and_zero_turns_the_pool_off():
    code = """
        import numpy as np
        from tfra_redis import _native
        from tfra_redis.store import new_rows
        held = [new_rows((1280, 1024), np.dtype(np.uint8)) for _ in range(5)]  # 1.25 MiB each
        del held
        print(*_native._row_buffer_pool())
    """
    small = run_python(code, TFRA_REDIS_BUFFER_POOL_BYTES=str(3 * MIB))
    assert small.returncode == 0, small.stderr
    blocks, nbytes, cap = map(int, small.stdout.split())
    assert (blocks, cap) == (2, 3 * MIB) and nbytes <= cap
    off = run_python(code, TFRA_REDIS_BUFFER_POOL_BYTES="0")
    assert off.returncode == 0, off.stderr
    assert off.stdout.split() == ["0", "0", "0"]
    bad = run_python(code, TFRA_REDIS_BUFFER_POOL_BYTES="lots")
    assert bad.returncode != 0
    assert "TFRA_REDIS_BUFFER_POOL_BYTES must be a number of bytes" in bad.stderr


def test_new_rows_below_a_mebibyte_is_plain_numpy():
    small = new_rows((1000, 100), np.dtype(np.float32))
    assert not pooled(small) and small.shape == (1000, 100)
    big = new_rows((1000, 1000), np.dtype(np.float32))
    assert pooled(big) and big.shape == (1000, 1000) and big.base is not None
