"""TFRA's API breadth: the Keras layers' signatures and configs, sparse/safe/unique/ragged lookups
checked against TensorFlow's own on an equal in-memory table, FieldWiseEmbedding, and training
of half-precision tables. Against a real redis-server."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfra_redis as tfra  # noqa: E402

de = tfra.dynamic_embedding

pytestmark = pytest.mark.usefixtures("collect_tables_at_module_end")

VOCAB = 40
DIM = 3


@pytest.fixture
def creator(tmp_path, standalone_server, make_config):
    path = make_config(tmp_path, standalone_server, table_store_mode=0)
    return de.RedisTableCreator(de.RedisTableConfig(redis_config_abs_dir=str(path)))


@pytest.fixture
def table(creator, unique_name):
    """A de.Variable holding rows for ids 0..VOCAB-1, and the same rows in memory."""
    rows = np.random.default_rng(3).normal(size=(VOCAB, DIM)).astype(np.float32)
    variable = de.get_variable(unique_name, dim=DIM, kv_creator=creator)
    variable.upsert(tf.range(VOCAB, dtype=tf.int64), rows)
    return variable, rows


def _sparse(seed: int, shape=(6, 5), empty_rows=(), negative_weights=False):
    rng = np.random.default_rng(seed)
    indices, values, weights = [], [], []
    for i in range(shape[0]):
        if i in empty_rows:
            continue
        for j in sorted(rng.choice(shape[1], size=rng.integers(1, shape[1] + 1), replace=False)):
            indices.append([i, j])
            values.append(rng.integers(0, VOCAB))
            weights.append(rng.normal() if negative_weights else rng.uniform(0.1, 2.0))
    ids = tf.SparseTensor(indices, np.array(values, np.int64), shape)
    return ids, tf.SparseTensor(indices, np.array(weights, np.float32), shape)


@pytest.mark.parametrize("combiner", ["mean", "sqrtn", "sum"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_embedding_lookup_sparse_matches_tensorflow(table, combiner, weighted):
    variable, rows = table
    ids, weights = _sparse(1, empty_rows=(2, 5))
    weights = weights if weighted else None
    got = de.embedding_lookup_sparse(variable, ids, weights, combiner=combiner)
    want = tf.nn.embedding_lookup_sparse(tf.constant(rows), ids, weights, combiner=combiner)
    assert got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("combiner", ["mean", "sqrtn", "sum"])
@pytest.mark.parametrize("default_id", [None, 7])
def test_safe_embedding_lookup_sparse_matches_tensorflow(table, combiner, default_id):
    variable, rows = table
    ids, weights = _sparse(2, shape=(8, 4), empty_rows=(0, 3, 7), negative_weights=True)
    # Rank 3 ids: [2, 4, 4] -> [2, 4, dim].
    ids3 = tf.sparse.reshape(ids, [2, 4, 4])
    weights3 = tf.sparse.reshape(weights, [2, 4, 4])
    got = de.safe_embedding_lookup_sparse(
        variable, ids3, weights3, combiner=combiner, default_id=default_id
    )
    want = tf.nn.safe_embedding_lookup_sparse(
        tf.constant(rows), ids3, weights3, combiner=combiner, default_id=default_id
    )
    assert got.shape == want.shape == (2, 4, DIM)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)


def test_sparse_lookup_trains_like_tensorflow(table):
    """One SGD step through embedding_lookup_sparse: the touched rows move as TensorFlow's
    gradient of the same loss on the in-memory table says."""
    variable, rows = table
    ids, weights = _sparse(4)
    upstream = np.random.default_rng(5).normal(size=(6, DIM)).astype(np.float32)
    optimizer = de.DynamicEmbeddingOptimizer(keras.optimizers.SGD(0.5))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(de.embedding_lookup_sparse(variable, ids, weights) * upstream)
    watched = tape.watched_variables()
    optimizer.apply_gradients(zip(tape.gradient(loss, watched), watched, strict=True))

    dense = tf.Variable(rows)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.nn.embedding_lookup_sparse(dense, ids, weights) * upstream)
    want = rows - 0.5 * tf.convert_to_tensor(tape.gradient(loss, dense)).numpy()
    got = variable.lookup(tf.range(VOCAB, dtype=tf.int64)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert variable.get_trainable_by_name("embedding_lookup_sparse/embedding_lookup") is not None


def test_ragged_and_unique_lookups(table):
    variable, rows = table
    ragged = tf.ragged.constant([[1, 2, 2], [], [5]], dtype=tf.int64)
    got = de.embedding_lookup(variable, ragged)
    assert isinstance(got, tf.RaggedTensor)
    want = tf.ragged.map_flat_values(tf.gather, tf.constant(rows), ragged)
    np.testing.assert_array_equal(got.to_tensor().numpy(), want.to_tensor().numpy())

    ids = tf.constant([[3, 3], [4, 9]], tf.int64)
    clipped = de.embedding_lookup_unique(variable, ids, max_norm=0.5).numpy()
    assert clipped.shape == (2, 2, DIM)
    assert np.all(np.linalg.norm(clipped, axis=-1) <= 0.5 + 1e-6)


def test_layer_takes_tfra_arguments(creator, unique_name):
    layer = de.keras.layers.Embedding(
        "4", tf.int64, tf.float32, "mean", None, ["/CPU:0"], unique_name, True, False,
        trainable=True, max_norm=1.0, checkpoint=True, init_capacity=10, kv_creator=creator,
        bp_v2=False,
    )  # fmt: skip
    assert layer.embedding_size == 4 and layer.combiner == "mean"
    assert isinstance(layer.initializer, keras.initializers.RandomNormal)  # TFRA's default
    rows = layer(tf.constant([1, 2], tf.int64)).numpy()
    assert rows.std() > 0 and np.all(np.linalg.norm(rows, axis=-1) <= 1.0 + 1e-6)
    with pytest.raises(TypeError, match="embedding_size"):
        de.keras.layers.Embedding("four", kv_creator=creator, name=f"{unique_name}_bad")
    with pytest.warns(UserWarning, match="partitioner has no effect"):
        de.keras.layers.Embedding(
            2, name=f"{unique_name}_p", kv_creator=creator, partitioner=lambda *a: 0
        )
    with pytest.raises(NotImplementedError, match="de.keras.layers.Embedding"):
        de.keras.layers.HvdAllToAllEmbedding(embedding_size=2)


def test_layer_configs_round_trip(creator, unique_name, monkeypatch):
    # The creator is not in the config: a layer made from it uses TFRA_REDIS_CONFIG_PATH.
    monkeypatch.setenv("TFRA_REDIS_CONFIG_PATH", creator.config.redis_config_abs_dir)
    layers = [
        de.keras.layers.Embedding(
            4,
            name=f"{unique_name}_e",
            kv_creator=creator,
            combiner="sqrtn",
            max_norm=2.0,
            initializer=keras.initializers.TruncatedNormal(seed=3),
        ),
        de.keras.layers.SquashedEmbedding(4, name=f"{unique_name}_s", kv_creator=creator),
        de.keras.layers.FieldWiseEmbedding(
            4, 3, slot_map_fn=field_of, name=f"{unique_name}_f", kv_creator=creator
        ),
    ]
    for layer in layers:
        config = layer.get_config()
        json.dumps(config)  # serializable as it is
        copy = type(layer).from_config({**config, "name": config["name"] + "_copy"})
        copy_config = copy.get_config()
        copy_config["name"] = config["name"]
        assert copy_config == config


def test_random_seed_makes_initial_rows_reproducible(creator, unique_name):
    drawn = []
    for run in range(2):
        keras.utils.set_random_seed(11)
        layer = de.keras.layers.Embedding(DIM, name=f"{unique_name}_{run}", kv_creator=creator)
        drawn.append(layer(tf.constant([1, 2, 3], tf.int64)).numpy())
    np.testing.assert_array_equal(drawn[0], drawn[1])


@keras.saving.register_keras_serializable(package="tfra_redis_tests")
def field_of(ids):
    """An id's field: its value modulo 3."""
    return tf.math.floormod(ids, 3)


def test_field_wise_embedding_pools_per_field(creator, unique_name):
    layer = de.keras.layers.FieldWiseEmbedding(
        DIM, 3, slot_map_fn=field_of, combiner="mean", name=unique_name, kv_creator=creator
    )
    ids = np.array([[0, 3, 4, 9], [1, 1, 2, 7]], np.int64)
    rows = np.random.default_rng(1).normal(size=(10, DIM)).astype(np.float32)
    layer.params.upsert(tf.range(10, dtype=tf.int64), rows)
    got = layer(tf.constant(ids)).numpy()
    assert got.shape == (2, 3, DIM)
    want = np.zeros((2, 3, DIM), np.float32)
    for b in range(2):
        for field in range(3):
            chosen = [i for i in ids[b] if i % 3 == field]
            if chosen:
                want[b, field] = rows[chosen].mean(axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="slot_map_fn"):
        de.keras.layers.FieldWiseEmbedding(DIM, 3, slot_map_fn=None, kv_creator=creator)


SAVE_SCRIPT = """
import sys, json
sys.path.insert(0, {tests!r})
import test_tf_api_breadth as t
t.load_and_predict(sys.argv[1])
"""


def _breadth_model(prefix: str):
    ids = keras.Input(shape=(4,), dtype="int64")
    plain = keras.layers.Flatten()(de.keras.layers.Embedding(DIM, name=f"{prefix}_e")(ids))
    squashed = de.keras.layers.SquashedEmbedding(DIM, name=f"{prefix}_s", combiner="mean")(ids)
    fields = de.keras.layers.FieldWiseEmbedding(DIM, 3, slot_map_fn=field_of, name=f"{prefix}_f")(
        ids
    )
    x = keras.layers.Concatenate()([plain, squashed, keras.layers.Flatten()(fields)])
    return keras.Model(ids, keras.layers.Dense(1, activation="sigmoid")(x))


def _breadth_data():
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 60, size=(512, 4)).astype(np.int64)
    labels = (np.sin(ids.sum(axis=1)) > 0).astype(np.float32)[:, None]
    return ids, labels


def load_and_predict(arguments: str) -> None:
    """In a fresh process: load the .keras file (no custom_objects) and predict."""
    args = json.loads(arguments)
    model = keras.models.load_model(args["path"])
    ids, _ = _breadth_data()
    np.save(args["out"], model.predict(ids[:32], verbose=0))


def test_every_layer_trains_with_fit_and_reloads_in_a_fresh_process(
    tmp_path, standalone_server, make_config, unique_name, monkeypatch
):
    config = make_config(tmp_path, standalone_server, table_store_mode=2)
    monkeypatch.setenv("TFRA_REDIS_CONFIG_PATH", str(config))
    model = _breadth_model(unique_name)
    model.compile(
        optimizer=de.DynamicEmbeddingOptimizer(keras.optimizers.Adam(0.05)),
        loss="binary_crossentropy",
    )
    ids, labels = _breadth_data()
    history = model.fit(ids, labels, batch_size=64, epochs=4, verbose=0).history
    assert history["loss"][-1] < 0.85 * history["loss"][0]
    for layer in model.layers:
        if isinstance(layer, de.keras.layers.Embedding):
            assert layer.params.size().numpy() == len(np.unique(ids)), layer.name
    path = tmp_path / "model.keras"
    model.save(path)
    want = model.predict(ids[:32], verbose=0)
    out = tmp_path / "predicted.npy"
    process = subprocess.run(
        [
            sys.executable,
            "-c",
            SAVE_SCRIPT.format(tests=str(Path(__file__).parent)),
            json.dumps({"path": str(path), "out": str(out)}),
        ],
        env=dict(os.environ, TFRA_REDIS_CONFIG_PATH=str(config)),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert process.returncode == 0, process.stderr[-4000:]
    np.testing.assert_allclose(np.load(out), want, rtol=1e-5)


HALF = {"float16": tf.float16, "bfloat16": tf.bfloat16}


@pytest.mark.parametrize("dtype", sorted(HALF))
def test_half_precision_tables_train_in_float32(creator, unique_name, dtype):
    """Adam on a float16/bfloat16 table: each step is Keras' float32 math on the rows and
    slots read from Redis, and what is stored is that result in the table's dtype."""
    value_dtype = HALF[dtype]
    np_dtype = value_dtype.as_numpy_dtype
    layer = de.keras.layers.Embedding(
        DIM, value_dtype=value_dtype, name=unique_name, kv_creator=creator, initializer=0.25
    )
    optimizer = de.DynamicEmbeddingOptimizer(keras.optimizers.Adam(0.05))
    rng = np.random.default_rng(6)
    batches = [rng.integers(0, 6, size=(4,)).astype(np.int64) for _ in range(3)]
    # Gradients exact in both half formats: the layer's output (and so the gradient reaching
    # it) is in the table's dtype, as in TFRA.
    upstreams = [(rng.integers(-8, 8, size=(4, DIM)) / 4).astype(np.float32) for _ in range(3)]

    reference = keras.Variable(np.full((6, DIM), 0.25, np.float32), name="half_reference")
    keras_adam = keras.optimizers.Adam(0.05)
    keras_adam.build([reference])
    slots = [keras_adam._momentums[0], keras_adam._velocities[0]]
    for ids, upstream in zip(batches, upstreams, strict=True):
        with tf.GradientTape() as tape:
            out = layer(tf.constant(ids))
            assert out.dtype == value_dtype
            loss = tf.reduce_sum(tf.cast(out, tf.float32) * upstream)
        grads = tape.gradient(loss, layer.trainable_weights)
        optimizer.apply_gradients(zip(grads, layer.trainable_weights, strict=True))

        grad = np.zeros((6, DIM), np.float32)
        np.add.at(grad, ids, upstream)
        untouched = np.setdiff1d(np.arange(6), ids)
        before = [v.numpy() for v in (reference, *slots)]
        keras_adam.apply_gradients([(tf.constant(grad), reference)])
        for variable, old in zip((reference, *slots), before, strict=True):
            value = variable.numpy()
            value[untouched] = old[untouched]
            # Stored in the table's dtype, read back as float32 for the next step.
            variable.assign(value.astype(np_dtype).astype(np.float32))
    touched = np.unique(np.concatenate(batches))
    keys = tf.constant(touched)
    np.testing.assert_array_equal(
        layer.params.lookup(keys).numpy().astype(np.float32), reference.numpy()[touched]
    )
    tables = optimizer.slot_variables(layer)
    assert tables["m"].value_dtype == value_dtype
    np.testing.assert_array_equal(
        tables["m"].lookup(keys).numpy().astype(np.float32), slots[0].numpy()[touched]
    )
    np.testing.assert_array_equal(
        tables["v"].lookup(keys).numpy().astype(np.float32), slots[1].numpy()[touched]
    )
