"""String keys (``tf.string`` ids) against real servers: rows read back bit-exact, and the bytes
in Redis are the ones TFRA's layout rules give (the field is the string's raw bytes; standalone
keeps everything in bucket 0; cluster mode picks the bucket TFRA picks, for strings up to 22
bytes). The stored bytes are read with the ``redis`` client, and the expected bucket is computed
here with a bitwise CRC-32C written for this test, independent of the package's code."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import redis

from tfra_redis import RedisStore, servers

# ASCII, UTF-8, empty, NULs inside, at the end and alone, non-UTF-8 bytes, and the lengths
# around TensorFlow's small-string limit (22 bytes), plus a long one.
KEYS = [
    b"user:42",
    "café ☕".encode(),
    b"",
    b"a\0b",
    b"ab\0",
    b"\0",
    b"\xff\xfe\x00\x80",
    b"x",
    b"k" * 21,
    b"k" * 22,
    b"k" * 23,
    b"k" * 24,
    b"long-" * 60,
]


def crc32c_no_final_xor(data: bytes) -> int:
    """CRC-32C bit by bit: init 0xFFFFFFFF, reflected polynomial 0x82F63B78, no final XOR."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc


def tfra_string_bucket(key: bytes, slices: int) -> int:
    """TFRA's bucket of a string key of at most 22 bytes: the CRC of its tstring object's first
    ``len`` bytes, a header byte ``len << 2`` and all but the last character."""
    assert len(key) <= 22
    hashed = bytes([len(key) << 2]) + key[:-1] if key else b""
    return crc32c_no_final_xor(hashed) % slices


def test_the_hash_of_this_test_matches_the_spec_vector() -> None:
    assert crc32c_no_final_xor(bytes([0x0C, 0x61, 0x62])) == 718772414
    assert tfra_string_bucket(b"abc", 1 << 32) == 718772414


def rows_for(n: int, dim: int) -> np.ndarray:
    return (np.arange(n * dim, dtype=np.float32).reshape(n, dim) * 0.25 - 3.0).astype(np.float32)


def open_store(request: pytest.FixtureRequest, kind: str, name: str, dim: int = 3, **kw: Any):
    if kind == "standalone":
        topology = request.getfixturevalue("standalone_server")
        config = topology.config_dict()
    else:
        topology = request.getfixturevalue("cluster")
        config = {
            **topology.config_dict(),
            "storage_slice": 5,
            "redis_hash_tags_hypodispersion": True,
        }
    config["expire_model_tag_in_seconds"] = -1
    return topology, RedisStore(config, name, dim, key_dtype="string", **kw)


def raw_client(topology: Any, key: bytes) -> redis.Redis:
    """A ``redis`` client on the server holding ``key`` (its cluster master)."""
    if isinstance(topology, servers.ClusterTopology):
        slot = topology.masters()[0].execute("CLUSTER", "KEYSLOT", key)
        topology = topology.node_for_slot(slot)
    return redis.Redis(host="127.0.0.1", port=topology.port)


@pytest.mark.parametrize("kind", ["standalone", "cluster"])
def test_round_trip_and_bytes_in_redis(
    request: pytest.FixtureRequest, kind: str, unique_name: str
) -> None:
    topology, store = open_store(request, kind, unique_name)
    rows = rows_for(len(KEYS), 3)
    store.insert(KEYS, rows)
    assert store.size() == len(KEYS)

    found, exists = store.find(np.array(KEYS, dtype=object), -1.0, return_exists=True)
    assert exists.all()
    assert found.tobytes() == rows.tobytes()

    # The bytes in Redis: field = the key's raw bytes, value = the row's float32 LE bytes,
    # in the bucket TFRA's rule gives.
    buckets = store.bucket_keys
    for i, key in enumerate(KEYS):
        if kind == "standalone":
            want = 0
        elif len(key) <= 22:
            want = tfra_string_bucket(key, len(buckets))
        else:
            # Our documented rule past 22 bytes: CRC-32C (same variant) of the bytes.
            want = crc32c_no_final_xor(key) % len(buckets)
        bucket = buckets[want]
        with raw_client(topology, bucket) as client:
            assert client.hget(bucket, key) == rows[i].tobytes(), (key, bucket)
    if kind == "cluster":
        # The keys really are spread: more than one bucket holds some.
        used = set()
        for bucket in buckets:
            with raw_client(topology, bucket) as client:
                if client.hlen(bucket):
                    used.add(bucket)
        assert len(used) > 1

    # Export: every key once, as bytes, with its row.
    keys, values = store.export()
    assert keys.dtype == object
    got = {k: v.tobytes() for k, v in zip(keys, values, strict=True)}
    assert got == {k: r.tobytes() for k, r in zip(KEYS, rows, strict=True)}

    # Remove some, including the empty key and one with NULs; import the export back.
    store.remove([b"", b"a\0b", "café ☕"])
    assert store.size() == len(KEYS) - 3
    _, exists = store.find([b"", b"a", b"a\0b", b"ab\0"], 0.0, return_exists=True)
    assert exists.tolist() == [False, False, False, True]
    store.clear()
    store.insert(keys, values)
    again, exists = store.find(KEYS, 0.0, return_exists=True)
    assert exists.all() and again.tobytes() == rows.tobytes()

    # Paged export of a bigger table.
    many = [f"id-{i}".encode() for i in range(3000)]
    store.insert(many, rows_for(3000, 3))
    seen: dict[bytes, bytes] = {}
    store.export_pages(
        lambda k, v: seen.update(zip(k, (r.tobytes() for r in v), strict=True)), page=500
    )
    assert len(seen) == 3000 + len(KEYS)
    assert seen[b"id-2999"] == rows_for(3000, 3)[2999].tobytes()


def test_missing_keys_take_defaults_and_str_is_utf8(
    request: pytest.FixtureRequest, unique_name: str
) -> None:
    _, store = open_store(request, "standalone", unique_name, dim=2)
    store.insert(["é"], [[1.0, 2.0]])
    found = store.find([["é", b"\xc3\xa9"], ["nope", ""]], default=[7.0, 8.0])
    assert found.shape == (2, 2, 2)
    assert found.tolist() == [[[1.0, 2.0], [1.0, 2.0]], [[7.0, 8.0], [7.0, 8.0]]]


@pytest.mark.parametrize("kind", ["standalone", "cluster"])
def test_optimizer_steps_and_accum_with_string_ids(
    request: pytest.FixtureRequest, kind: str, unique_name: str
) -> None:
    from tfra_redis import store as store_module

    _, params = open_store(request, kind, unique_name, dim=2)
    _, slot = open_store(request, kind, unique_name + "_m", dim=2)
    keys = np.array([b"a", b"b" * 30, b""], dtype=object)
    store_module.insert_together([params, slot], keys, [np.ones((3, 2)), np.zeros((3, 2))])
    rows, slots = store_module.find_together([params, slot], keys, [0.0, 5.0])
    assert rows.tolist() == [[1.0, 1.0]] * 3 and slots.tolist() == [[0.0, 0.0]] * 3

    params.accum(keys, np.full((3, 2), 0.5), np.array([True, True, False]))
    assert params.find(keys).tolist() == [[1.5, 1.5], [1.5, 1.5], [1.0, 1.0]]


def test_wrong_key_kinds_are_named_errors(request: pytest.FixtureRequest, unique_name: str) -> None:
    _, store = open_store(request, "standalone", unique_name, dim=2)
    with pytest.raises(TypeError, match="must be string .*int64"):
        store.find(np.array([1, 2], dtype=np.int64))
    with pytest.raises(TypeError, match="must be string .*got int 3"):
        store.insert([b"a", 3], np.zeros((2, 2)))
    with pytest.raises(TypeError, match="must be string"):
        store.remove([1.5])
    ints = RedisStore(
        {
            **request.getfixturevalue("standalone_server").config_dict(),
            "expire_model_tag_in_seconds": -1,
        },
        unique_name + "_ints",
        2,
        key_dtype="int64",
    )
    with pytest.raises(TypeError, match="must be int64, got object"):
        ints.find(np.array([b"a"], dtype=object))
    with pytest.raises(TypeError, match="must be int64"):
        ints.insert([b"a"], np.zeros((1, 2)))
    # The native layer refuses the other kind too, naming the table's key dtype.
    with pytest.raises(ValueError, match="has string keys, but integer ids were given"):
        store._table.remove(np.array([1], dtype=np.int64))
    with pytest.raises(ValueError, match="has int64 keys, but string ids were given"):
        ints._table.remove([b"a"])
    with pytest.raises(TypeError, match="key 1 is float"):
        store._table.remove([b"a", 1.5])
    with pytest.raises(TypeError, match="not a single bytes"):
        store._table.remove(b"abc")
