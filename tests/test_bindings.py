"""What the native bindings accept from numpy: bool arrays whose bytes are not 0 or 1, output
arrays that overlap an input or are read-only. Each must be a clear ``ValueError`` before any
Redis round trip, never undefined behaviour in Rust (a ``bool`` byte other than 0/1 is) or a
``PanicException`` (what numpy's borrow checker raises through PyO3 by default)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tfra_redis import RedisStore, _native

DIM = 2


@pytest.fixture
def store(standalone_server: Any, unique_name: str) -> RedisStore:
    return RedisStore(standalone_server.config_dict(), unique_name, DIM, manage_ttl=False)


def bools(*raw: int) -> np.ndarray:
    """A numpy bool array holding exactly these bytes (numpy itself never checks them)."""
    return np.array(raw, dtype=np.uint8).view(np.bool_)


def test_accum_rejects_bool_bytes_other_than_0_and_1(store: RedisStore) -> None:
    keys = np.array([1, 2, 3], np.int64)
    deltas = np.ones((3, DIM), np.float32)
    with pytest.raises(ValueError, match=r"exists.*byte 2 at index 1"):
        store.accum(keys, deltas, bools(1, 2, 0))
    assert store.size() == 0, "nothing may be written when the flags are refused"
    # 0 and 1 still work, and a view with a stride is copied rather than refused.
    store.accum(keys, deltas, bools(0, 0, 0))
    store.accum(keys, deltas, bools(1, 0, 0, 0, 1, 0)[::2])
    np.testing.assert_array_equal(store.find(keys)[:, 0], [2, 1, 2])


def test_find_clears_an_exists_output_of_any_bytes(store: RedisStore) -> None:
    # An output's old bytes are never read: np.empty(n, bool) may hold anything.
    store.insert(np.array([5], np.int64), np.ones((1, DIM), np.float32))
    table = store._table
    keys = np.array([5, 6], np.int64)
    out = np.empty(2 * table.row_bytes, np.uint8)
    exists = bools(7, 200)
    table.find(keys, np.zeros(table.row_bytes, np.uint8), out, exists)
    assert exists.view(np.uint8).tolist() == [1, 0]


def test_outputs_that_overlap_inputs_are_refused(store: RedisStore) -> None:
    table = store._table
    rb = table.row_bytes
    keys = np.array([1, 2], np.int64)
    default = np.zeros(rb, np.uint8)
    # The output is the key buffer itself, or part of the default rows.
    with pytest.raises(ValueError, match="overlap"):
        table.find(keys, default, keys.view(np.uint8)[: 2 * rb])
    shared = np.zeros(4 * rb, np.uint8)
    with pytest.raises(ValueError, match="overlap"):
        table.find(keys, shared[: 2 * rb], shared[rb : 3 * rb])
    # exists overlapping out.
    buf = np.zeros(2 * rb + 2, np.uint8)
    with pytest.raises(ValueError, match="overlap"):
        table.find(keys, default, buf[: 2 * rb], buf[2 * rb - 1 : 2 * rb + 1].view(np.bool_))
    # Two outputs of find_together that share memory.
    outs = np.zeros(3 * rb, np.uint8)
    with pytest.raises(ValueError, match="overlap"):
        _native.find_together([table, table], keys, [default, default], [outs[: 2 * rb], outs[rb:]])
    # Disjoint parts of one buffer are fine.
    whole = np.zeros(4 * rb, np.uint8)
    table.find(keys, whole[: 2 * rb], whole[2 * rb :])


def test_read_only_outputs_are_refused(store: RedisStore) -> None:
    table = store._table
    keys = np.array([1, 2], np.int64)
    default = np.zeros(table.row_bytes, np.uint8)
    out = np.zeros(2 * table.row_bytes, np.uint8)
    out.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        table.find(keys, default, out)
    with pytest.raises(ValueError, match="read-only"):
        _native.find_together([table], keys, [default], [out])
    exists = np.zeros(2, np.bool_)
    exists.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        table.find(keys, default, np.zeros(2 * table.row_bytes, np.uint8), exists)
