"""TFRA's restrict policies against a real redis-server: statuses written by optimizer steps,
``Variable.restrict`` trimming the embedding, its status table and its slot tables."""

from __future__ import annotations

import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfra_redis as tfra  # noqa: E402
from tfra_redis import _native  # noqa: E402
from tfra_redis.dynamic_embedding import restrict as restrict_module  # noqa: E402

de = tfra.dynamic_embedding

pytestmark = pytest.mark.usefixtures("collect_tables_at_module_end")

DIM = 2


@pytest.fixture
def creator(tmp_path, standalone_server, make_config):
    path = make_config(tmp_path, standalone_server, table_store_mode=0)
    return de.RedisTableCreator(de.RedisTableConfig(redis_config_abs_dir=str(path)))


def _train(layer, optimizer, steps) -> None:
    for ids in steps:
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(tf.constant(ids, tf.int64)))
        grads = tape.gradient(loss, layer.trainable_weights)
        optimizer.apply_gradients(zip(grads, layer.trainable_weights, strict=True))


def _keys(variable) -> list[int]:
    return sorted(variable.export()[0].numpy().tolist())


def test_frequency_policy_keeps_the_most_updated_ids(creator, unique_name, standalone_server):
    layer = de.keras.layers.Embedding(
        DIM, name=unique_name, kv_creator=creator, restrict_policy=de.FrequencyRestrictPolicy
    )
    optimizer = de.DynamicEmbeddingOptimizer(keras.optimizers.Adam(0.1))
    _train(layer, optimizer, [list(range(10)), [0, 1, 2, 3, 4], [0, 1, 2, 2]])
    policy = layer.params.restrict_policy
    status = policy.status_var
    assert status.name == f"{unique_name}-parameter/frequency"
    assert (
        standalone_server.execute("HLEN", f"test:{unique_name}-parameter_frequency{{3560}}") == 10
    )
    counts = status.lookup(tf.range(10, dtype=tf.int64)).numpy().reshape(-1)
    np.testing.assert_array_equal(counts, [3, 3, 3, 2, 2, 1, 1, 1, 1, 1])

    assert layer.params.restrict(5) == 5
    slots = optimizer.slot_variables(layer)
    for variable in [layer.params, status, slots["m"], slots["v"]]:
        assert _keys(variable) == [0, 1, 2, 3, 4], variable.name
    # A lookup does not count: only optimizer steps do.
    layer(tf.constant([9], tf.int64))
    assert status.size().numpy() == 5


def test_timestamp_policy_keeps_the_newest_ids(creator, unique_name, monkeypatch):
    emb = de.get_variable(
        unique_name, dim=DIM, kv_creator=creator, restrict_policy=de.TimestampRestrictPolicy
    )
    optimizer = de.DynamicEmbeddingOptimizer(keras.optimizers.SGD(0.1))
    clock = iter([100, 200, 300])
    monkeypatch.setattr(restrict_module, "_now", lambda: next(clock))
    for ids in ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [5, 6, 7, 8, 9], [8, 9]):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(de.embedding_lookup(emb, tf.constant(ids, tf.int64), name="lk"))
        watched = tape.watched_variables()
        optimizer.apply_gradients(zip(tape.gradient(loss, watched), watched, strict=True))
    status = emb.restrict_policy.status_var
    assert status.name == f"{unique_name}/timestamp"
    # Below the trigger: nothing happens.
    assert emb.restrict(3, trigger=10) == 0 and emb.size().numpy() == 10
    # Ties at the threshold (time 100) are broken: exactly 7 remain, the newest 5 among them.
    assert emb.restrict(7) == 3
    kept = _keys(emb)
    assert len(kept) == 7 and {5, 6, 7, 8, 9} <= set(kept)
    assert _keys(status) == kept
    assert emb.restrict(2) == 5
    assert _keys(emb) == [8, 9] and _keys(status) == [8, 9]


def test_restrict_without_a_policy_warns(creator, unique_name, caplog):
    emb = de.get_variable(unique_name, dim=DIM, kv_creator=creator)
    with caplog.at_level(logging.WARNING, logger="tfra_redis"):
        assert emb.restrict(1) is None
    assert "without setting restrict policy" in caplog.text
    with pytest.raises(TypeError, match="RestrictPolicy subclass"):
        de.get_variable(
            f"{unique_name}_bad",
            dim=DIM,
            kv_creator=creator,
            restrict_policy="timestamp",
        )


def test_restriction_streams_pages_and_handles_negative_statuses(creator, unique_name):
    """The radix select over many pages, with statuses of both signs and many ties."""
    config = creator.config.load()
    rng = np.random.default_rng(2)
    n = 20_000
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    statuses = rng.integers(-50, 50, size=n).astype(np.int32)
    status = tfra.RedisStore(config, f"{unique_name}_status", 1, value_dtype="int32")
    params = tfra.RedisStore(config, unique_name, DIM)
    status.insert(ids, statuses[:, None])
    params.insert(ids, np.ones((n, DIM), np.float32))
    params.insert(np.array([-1], np.int64), np.ones((1, DIM), np.float32))  # no status
    before, removed = _native.restrict(status._table, [params._table], 1234, 257)
    assert (before, removed) == (n, n - 1234)
    kept_keys = np.sort(status.export()[0])
    assert len(kept_keys) == 1234
    kept_status = statuses[np.isin(ids, kept_keys)]
    dropped_status = statuses[~np.isin(ids, kept_keys)]
    assert kept_status.min() >= dropped_status.max()
    np.testing.assert_array_equal(np.sort(params.export()[0]), np.sort([*kept_keys, -1]))
    with pytest.raises(ValueError, match="one int32 per id"):
        _native.restrict(params._table, [], 1, 10)


@keras.saving.register_keras_serializable(package="tfra_redis_tests")
def category_of(ids):
    return tf.math.floormod(ids, 4)


def test_amazon_demo_style_restriction_after_each_fit(creator, unique_name):
    """TFRA's amazon-video-games demo: a FieldWiseEmbedding with FrequencyRestrictPolicy, one
    fit per step, then embedding_store.restrict(0.8 * max_size, trigger=max_size)."""
    max_size = 150
    ids_in = keras.Input(shape=(3,), dtype="int64")
    layer = de.keras.layers.FieldWiseEmbedding(
        DIM,
        4,
        slot_map_fn=category_of,
        restrict_policy=de.FrequencyRestrictPolicy,
        combiner="mean",
        name=unique_name,
        kv_creator=creator,
    )
    out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(layer(ids_in)))
    model = keras.Model(ids_in, out)
    model.compile(
        optimizer=de.DynamicEmbeddingOptimizer(keras.optimizers.Adam(1e-2)),
        loss="binary_crossentropy",
    )
    rng = np.random.default_rng(0)
    sizes = []
    for _ in range(8):
        ids = rng.integers(0, 1000, size=(32, 3)).astype(np.int64)
        labels = (ids.sum(axis=1) % 2).astype(np.float32)
        model.fit(ids, labels, steps_per_epoch=1, epochs=1, verbose=0)
        layer.params.restrict(int(max_size * 0.8), trigger=max_size)
        sizes.append(int(layer.params.size()))
    assert max(sizes) <= max_size and sizes[-1] >= int(max_size * 0.8)
    status = layer.params.restrict_policy.status_var
    slots = model.optimizer.slot_variables(layer)
    assert _keys(status) == _keys(layer.params) == _keys(slots["m"]) == _keys(slots["v"])


def test_restriction_removes_fused_row_slots_with_their_rows(
    tmp_path, standalone_server, make_config, unique_name
):
    """redis_fused_row: the slots live in the row's field, so removing a row removes them,
    and the kept ids keep theirs."""
    path = make_config(tmp_path, standalone_server, table_store_mode=0, redis_fused_row=True)
    creator = de.RedisTableCreator(de.RedisTableConfig(redis_config_abs_dir=str(path)))
    layer = de.keras.layers.Embedding(
        DIM, name=unique_name, kv_creator=creator, restrict_policy=de.FrequencyRestrictPolicy
    )
    optimizer = de.DynamicEmbeddingOptimizer(keras.optimizers.Adam(0.1))
    _train(layer, optimizer, [list(range(10)), [0, 1, 2, 3, 4], [0, 1, 2, 2]])
    slots = optimizer.slot_variables(layer)["slots"]
    kept = np.arange(5, dtype=np.int64)
    before = slots.lookup_slots(kept)
    assert np.all(before[:, DIM:] > 0)  # Adam's velocities: trained, not the defaults

    assert layer.params.restrict(5) == 5
    assert _keys(layer.params) == _keys(layer.params.restrict_policy.status_var) == kept.tolist()
    bucket = f"test:{unique_name}-parameter{{3560}}"
    assert standalone_server.execute("HLEN", bucket) == 5
    np.testing.assert_array_equal(slots.lookup_slots(kept), before)
