"""String keys (``tf.string`` ids) against real servers: rows read back bit-exact, and the bytes
in Redis are the ones TFRA's layout rules give (the field is the string's raw bytes; standalone
keeps everything in bucket 0; cluster mode picks the bucket TFRA picks, for strings up to 22
bytes). The stored bytes are read with the ``redis`` client, and the expected bucket is computed
here with a bitwise CRC-32C written for this test, independent of the package's code."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from tfra_redis import RedisStore, testing

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
    if isinstance(topology, testing.ClusterTopology):
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


# -- TensorFlow: RedisTable, get_variable + embedding_lookup, a Keras model trained by fit ----


@pytest.fixture
def tf_creator(tmp_path, request, make_config):
    """A ``RedisTableCreator`` on the session cluster (storage_slice 3), table_store_mode 0."""
    from tfra_redis import dynamic_embedding as de

    request.getfixturevalue("collect_tables_at_module_end")
    cluster = request.getfixturevalue("cluster")
    path = make_config(tmp_path, cluster, storage_slice=3, table_store_mode=0)
    return cluster, de.RedisTableCreator(de.RedisTableConfig(redis_config_abs_dir=str(path)))


def redis_rows(topology: Any, bucket_keys: list[bytes], dim: int) -> dict[bytes, np.ndarray]:
    """Every (field, row) of the buckets, read with the redis client."""
    rows = {}
    for bucket in bucket_keys:
        with raw_client(topology, bucket) as client:
            for field, value in client.hgetall(bucket).items():
                rows[field] = np.frombuffer(value, dtype=np.float32).reshape(dim)
    return rows


def test_redis_table_ops_and_checkpoint_with_string_keys(tf_creator, unique_name, tmp_path):
    import tensorflow as tf

    from tfra_redis.dynamic_embedding import RedisTable

    cluster, creator = tf_creator
    table = RedisTable(
        tf.string, tf.float32, [0.0, 0.0], name=unique_name, checkpoint=True, config=creator.config
    )
    keys = tf.constant([b"a", b"a\0", b"", "ü".encode(), b"z" * 40])
    values = tf.reshape(tf.range(10, dtype=tf.float32), [5, 2])
    table.insert(keys, values)

    @tf.function
    def lookup(k):
        return table.lookup(k, return_exists=True)

    found, exists = lookup(tf.constant([[b"a", b"b"], [b"", b"z" * 40]]))
    assert found.numpy().tolist() == [[[0, 1], [0, 0]], [[4, 5], [8, 9]]]
    assert exists.numpy().tolist() == [[True, False], [True, True]]
    exported_keys, exported = table.export()
    assert exported_keys.dtype == tf.string
    assert dict(zip(exported_keys.numpy(), exported.numpy().tolist(), strict=True)) == {
        b"a": [0, 1],
        b"a\0": [2, 3],
        b"": [4, 5],
        "ü".encode(): [6, 7],
        b"z" * 40: [8, 9],
    }
    stored = redis_rows(cluster, table.store.bucket_keys, 2)
    assert {k: v.tolist() for k, v in stored.items()} == {
        k: v for k, v in zip(exported_keys.numpy(), exported.numpy().tolist(), strict=True)
    }

    # A checkpoint (mode 0) holds the string keys and restores them into an empty table.
    checkpoint = tf.train.Checkpoint(table=table)
    path = checkpoint.write(str(tmp_path / "ckpt"))
    table.clear()
    assert int(table.size()) == 0
    checkpoint.read(path).assert_consumed()
    assert int(table.size()) == 5
    assert table.lookup(tf.constant([b"a\0"])).numpy().tolist() == [[2, 3]]

    table.remove(tf.constant([b"a", b"a\0"]))
    assert int(table.size()) == 3
    from tfra_redis.table import KeyDtypeError

    with pytest.raises(KeyDtypeError, match="must be string, got int64"):
        table.lookup(tf.constant([1], tf.int64))


def test_get_variable_and_embedding_lookup_with_string_ids(tf_creator, unique_name):
    import tensorflow as tf

    from tfra_redis import dynamic_embedding as de

    _, creator = tf_creator
    var = de.get_variable(
        unique_name, key_dtype=tf.string, dim=3, initializer=-1.0, kv_creator=creator
    )
    var.upsert(tf.constant([b"apple", b"pear"]), tf.ones([2, 3]))
    rows = de.embedding_lookup(var, tf.constant([b"pear", b"plum", b"apple"]))
    assert rows.numpy().tolist() == [[1.0] * 3, [-1.0] * 3, [1.0] * 3]
    assert int(var.size()) == 2
    with pytest.raises(TypeError, match="int64, int32 or string"):
        de.get_variable(unique_name + "_f", key_dtype=tf.float32, dim=3, kv_creator=creator)


def test_keras_model_with_string_ids_trains_through_fit(tf_creator, unique_name, tmp_path):
    import keras
    import tensorflow as tf

    from tfra_redis import dynamic_embedding as de

    cluster, creator = tf_creator
    rng = np.random.default_rng(0)
    vocab = [f"item-{i}".encode() for i in range(40)] + [b"", b"\0", b"x" * 30]
    weight = rng.normal(size=len(vocab))
    picks = rng.integers(0, len(vocab), size=(512, 2))
    ids = np.array([[vocab[a], vocab[b]] for a, b in picks], dtype=object)
    target = (weight[picks[:, 0]] - weight[picks[:, 1]]).astype(np.float32)[:, None]

    embedding = de.keras.layers.Embedding(
        4,
        key_dtype=tf.string,
        name=unique_name,
        kv_creator=creator,
        initializer=keras.initializers.RandomNormal(0.0, 0.1, seed=1),
    )
    inputs = keras.Input(shape=(2,), dtype="string")
    x = keras.layers.Flatten()(embedding(inputs))
    x = keras.layers.Dense(16, activation="tanh")(x)
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    model.compile(optimizer=de.DynamicEmbeddingOptimizer(keras.optimizers.Adam(0.05)), loss="mse")

    history = model.fit(tf.constant(ids), target, batch_size=64, epochs=1, verbose=0)
    before = redis_rows(cluster, embedding.params.table.store.bucket_keys, 4)
    assert set(before) <= set(vocab) and len(before) > 30
    history = model.fit(tf.constant(ids), target, batch_size=64, epochs=5, verbose=0).history
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    after = redis_rows(cluster, embedding.params.table.store.bucket_keys, 4)
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert len(changed) > 30
    # The Adam slot tables hold the same string keys.
    slots = model.optimizer.slot_variables(embedding)
    assert set(slots) == {"m", "v"}
    slot_keys, _ = slots["m"].export()
    assert set(slot_keys.numpy()) == set(after)

    with pytest.raises(TypeError, match="ids must be strings"):
        embedding(tf.constant([[1, 2]], tf.int64))

    # A .keras file (table_store_mode 0) carries the string-keyed rows and Adam's slot rows:
    # HDF5 has no object arrays, so the ids go as bytes plus offsets. Cleared tables come back.
    want = model.predict(tf.constant(ids[:16]), verbose=0)
    path = tmp_path / "strings.keras"
    model.save(path)
    slot_rows = redis_rows(cluster, slots["v"].table.store.bucket_keys, 4)
    embedding.params.table.store.clear()
    slots["v"].table.store.clear()
    # Compiled, so that Keras restores the optimizer with its slot tables.
    os.environ["TFRA_REDIS_CONFIG_PATH"] = str(creator.config.redis_config_abs_dir)
    try:
        loaded = keras.models.load_model(path)
    finally:
        del os.environ["TFRA_REDIS_CONFIG_PATH"]
    assert redis_rows(cluster, embedding.params.table.store.bucket_keys, 4).keys() == after.keys()
    restored = redis_rows(cluster, slots["v"].table.store.bucket_keys, 4)
    assert {k: v.tobytes() for k, v in restored.items()} == {
        k: v.tobytes() for k, v in slot_rows.items()
    }
    np.testing.assert_array_equal(loaded.predict(tf.constant(ids[:16]), verbose=0), want)


# -- the CLI: export and import of a string table -------------------------------------------


@pytest.mark.parametrize("kind", ["standalone", "cluster"])
def test_cli_export_import_round_trip(
    request: pytest.FixtureRequest, kind: str, unique_name: str, tmp_path, make_config
) -> None:
    topology, store = open_store(request, kind, unique_name)
    extra = {} if kind == "standalone" else {"storage_slice": 5}
    config = make_config(tmp_path, topology, redis_hash_tags_hypodispersion=True, **extra)
    many = KEYS + [f"row-{i}".encode() for i in range(2500)]
    rows = rows_for(len(many), 3)
    store.insert(many, rows)
    before = redis_rows(topology, store.bucket_keys, 3)

    out = tmp_path / "strings.tfra"
    cli_args = ["--config", config, "--json"]
    table = ["--table", unique_name, "--dim", 3]
    exported = run_cli(*cli_args, "export", *table, "--key-dtype", "string", "--out", out)
    assert exported["rows"] == len(many) and exported["key_dtype"] == "string"
    data = out.read_bytes()
    meta = json.loads(data.split(b"\n")[1])
    assert (meta["version"], meta["key_dtype"], meta["key_bytes"]) == (2, "string", 0)
    # Keys are written as <u32 length><bytes>: the 300-byte one appears with its length.
    assert struct.pack("<I", len(KEYS[-1])) + KEYS[-1] in data

    # inspect tells string ids from int ids by the lengths of sampled fields.
    config_tag = json.loads(Path(config).read_text()).get("model_tag_runtime", "test")
    shown = run_cli(*cli_args, "inspect", "--model-tag", config_tag)
    (listed,) = [t for t in shown["tables"] if t["table"] == unique_name]
    assert listed["key_dtype"] == "string" and listed["rows"] == len(many)

    store.clear()
    assert store.size() == 0
    imported = run_cli(*cli_args, "import", "--table", unique_name, "--dim", 3, "--in", out)
    assert imported["rows"] == len(many) and imported["size_after"] == len(many)
    after = redis_rows(topology, store.bucket_keys, 3)
    assert {k: v.tobytes() for k, v in after.items()} == {k: v.tobytes() for k, v in before.items()}
    found = store.find(many)
    assert found.tobytes() == rows.tobytes()

    # A flipped byte inside a key is caught by the page CRC, before anything is written.
    broken = bytearray(data)
    broken[data.index(b"row-1234")] ^= 0x01
    (tmp_path / "broken.tfra").write_bytes(bytes(broken))
    result = cli(*cli_args, "import", *table, "--in", tmp_path / "broken.tfra")
    assert result.returncode == 2 and "CRC" in result.stderr


def cli(*args: Any) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TFRA_REDIS_CONFIG_PATH"}
    return subprocess.run(
        [sys.executable, "-m", "tfra_redis.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def run_cli(*args: Any) -> dict[str, Any]:
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
