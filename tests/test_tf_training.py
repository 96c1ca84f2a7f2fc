"""Training Keras models with Redis-backed embeddings, checkpoints by table_store_mode, and the
seed design note's Python snippets, against a real redis-server."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gc  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfra_redis as tfra  # noqa: E402

de = tfra.dynamic_embedding

VOCAB = 16
DIM = 4
IDS_PER_ROW = 2
BATCH = VOCAB // IDS_PER_ROW  # every id exactly once per step


pytestmark = pytest.mark.usefixtures("collect_tables_at_module_end")


@pytest.fixture
def creator_for(tmp_path, standalone_server, make_config):
    """``creator_for(**config_overrides)``: a creator on the session server."""

    def make(**overrides):
        overrides.setdefault("table_store_mode", 0)
        overrides.setdefault("expire_model_tag_in_seconds", -1)
        path = make_config(tmp_path, standalone_server, **overrides)
        return de.RedisTableCreator(de.RedisTableConfig(redis_config_abs_dir=str(path)))

    return make


@pytest.fixture
def creator(creator_for):
    return creator_for()


def _keys_of(server, pattern="*") -> list[str]:
    return sorted(server.execute("KEYS", pattern))


def _sorted_rows(variable) -> tuple[np.ndarray, np.ndarray]:
    keys, values = (t.numpy() for t in variable.export())
    order = np.argsort(keys)
    return keys[order], values[order]


def _head(embedding: keras.layers.Layer, seed: int = 1) -> tuple[keras.Input, tf.Tensor]:
    ids = keras.Input(shape=(IDS_PER_ROW,), dtype="int64", name="ids")
    x = keras.layers.Flatten()(embedding(ids))
    x = keras.layers.Dense(
        8, activation="tanh", kernel_initializer=keras.initializers.GlorotUniform(seed=seed)
    )(x)
    out = keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 1))(
        x
    )
    return ids, out


def _every_id_each_step(steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Batches holding every id of the vocabulary once.

    Every id: Keras' Adam updates every row of a dense embedding each step (the moments of rows
    without gradient decay), the lazy sparse Adam only the rows in the batch. Once: Keras squares
    the gradient of each occurrence of an id before summing them, the sparse optimizers square
    the sum (as TFRA's, which looks each id up once).
    """
    rng = np.random.default_rng(seed)
    ids = np.concatenate([rng.permutation(VOCAB) for _ in range(steps)]).reshape(
        steps * BATCH, IDS_PER_ROW
    )
    weight = rng.normal(size=VOCAB)
    target = (weight[ids[:, 0]] - weight[ids[:, 1]]).astype(np.float32)[:, None]
    return ids.astype(np.int64), target


class _StepLosses(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.losses: list[float] = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


# -- (a) the same model with Redis and with in-memory embeddings ------------------------------


@pytest.mark.parametrize(
    "make_optimizer",
    [lambda: keras.optimizers.SGD(0.1), lambda: keras.optimizers.Adam(0.01)],
    ids=["sgd", "adam"],
)
@pytest.mark.parametrize("plain", [False, True], ids=["DynamicEmbeddingModel", "keras.Model"])
def test_redis_embedding_trains_like_an_in_memory_one(creator, unique_name, make_optimizer, plain):
    steps = 8
    ids, target = _every_id_each_step(steps)
    initial_rows = np.random.default_rng(1).normal(0, 0.3, size=(VOCAB, DIM)).astype(np.float32)

    memory_embedding = keras.layers.Embedding(VOCAB, DIM, name="memory_emb")
    memory_model = keras.Model(*_head(memory_embedding))
    memory_embedding.embeddings.assign(initial_rows)

    redis_embedding = de.keras.layers.Embedding(DIM, name=unique_name, kv_creator=creator)
    # A plain keras.Model with the optimizer wrapped by hand, TFRA's way; or the sugar class.
    redis_model = (keras.Model if plain else de.DynamicEmbeddingModel)(*_head(redis_embedding))
    redis_embedding.params.upsert(tf.range(VOCAB, dtype=tf.int64), initial_rows)
    dense = [w for w in redis_model.weights if not isinstance(w, de.TrainableWrapper)]
    for a, b in zip(memory_model.weights[1:], dense, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    losses, epoch_losses = {}, {}
    for label, model in (("memory", memory_model), ("redis", redis_model)):
        optimizer = make_optimizer()
        if label == "redis" and plain:
            optimizer = de.DynamicEmbeddingOptimizer(optimizer)
        model.compile(optimizer=optimizer, loss="mse")
        record = _StepLosses()
        history = model.fit(
            ids, target, batch_size=BATCH, epochs=3, shuffle=False, verbose=0, callbacks=[record]
        )
        losses[label] = record.losses
        epoch_losses[label] = history.history["loss"]
    assert len(losses["redis"]) == 3 * steps
    np.testing.assert_allclose(losses["redis"], losses["memory"], rtol=1e-4)
    assert epoch_losses["redis"][-1] < 0.9 * epoch_losses["redis"][0]

    keys, rows = _sorted_rows(redis_embedding.params)
    np.testing.assert_array_equal(keys, np.arange(VOCAB))
    np.testing.assert_allclose(rows, memory_embedding.embeddings.numpy(), rtol=1e-4, atol=1e-6)
    for a, b in zip(memory_model.weights[1:], dense, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-6)
    assert redis_model.optimizer.iterations.numpy() == 3 * steps


# -- (b) the loss falls under model.fit, eager and graph --------------------------------------


def _learnable_task(n: int = 2048, vocab: int = 200, seed: int = 0):
    """Label 1 when the hidden scores of the two ids add up to more than 0."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(n, IDS_PER_ROW)).astype(np.int64)
    score = rng.normal(size=vocab)
    labels = (score[ids[:, 0]] + score[ids[:, 1]] > 0).astype(np.float32)[:, None]
    return ids, labels


def _classifier(creator, name, **layer_kwargs) -> de.DynamicEmbeddingModel:
    embedding = de.keras.layers.Embedding(
        8,
        name=name,
        kv_creator=creator,
        initializer=keras.initializers.RandomNormal(0.0, 0.1, seed=3),
        **layer_kwargs,
    )
    ids = keras.Input(shape=(IDS_PER_ROW,), dtype="int64")
    x = keras.layers.Flatten()(embedding(ids))
    x = keras.layers.Dense(16, activation="relu")(x)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    return de.DynamicEmbeddingModel(ids, out)


@pytest.mark.parametrize("run_eagerly", [True, False], ids=["eager", "graph"])
def test_loss_falls_with_fit(creator, unique_name, run_eagerly):
    ids, labels = _learnable_task()
    model = _classifier(creator, unique_name)
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss="binary_crossentropy",
        metrics=["accuracy"],
        run_eagerly=run_eagerly,
    )
    history = model.fit(ids, labels, batch_size=128, epochs=4, verbose=0).history
    assert history["loss"][-1] < 0.6 * history["loss"][0]
    assert history["accuracy"][-1] > 0.8
    evaluation = model.evaluate(ids, labels, batch_size=256, verbose=0, return_dict=True)
    assert evaluation["accuracy"] > 0.8
    assert model.predict(ids[:5], verbose=0).shape == (5, 1)


class SharedEmbeddingModel(de.DynamicEmbeddingModel):
    """A subclassed model that looks one embedding up twice per step (users and items)."""

    def __init__(self, creator, name):
        super().__init__()
        self.embedding = de.keras.layers.Embedding(
            8,
            name=name,
            kv_creator=creator,
            initializer=keras.initializers.RandomUniform(-0.1, 0.1),
        )
        self.out = keras.layers.Dense(1, activation="sigmoid")

    def call(self, x):
        user = self.embedding(x[:, 0])
        item = self.embedding(x[:, 1] + 1000)
        return self.out(tf.concat([user, item, user * item], -1))


def test_subclassed_model_with_a_shared_embedding(creator, unique_name):
    ids, labels = _learnable_task()
    model = SharedEmbeddingModel(creator, unique_name)
    with pytest.warns(UserWarning, match="jit_compile"):
        model.compile(
            optimizer=keras.optimizers.Adam(0.05),
            loss="binary_crossentropy",
            jit_compile=True,
        )
    assert model.jit_compile is False
    history = model.fit(ids, labels, batch_size=128, epochs=4, verbose=0).history
    assert history["loss"][-1] < 0.8 * history["loss"][0]
    distinct = len(np.unique(ids[:, 0])) + len(np.unique(ids[:, 1]))
    assert model.embedding.params.size().numpy() == distinct


def test_custom_training_loop(creator, unique_name):
    """get_variable + embedding_lookup + tape.watched_variables() + DynamicEmbeddingOptimizer,
    in a tf.function (TFRA's custom-loop style)."""
    emb = de.get_variable(unique_name, dim=DIM, kv_creator=creator, initializer=0.5)
    optimizer = de.DynamicEmbeddingOptimizer(keras.optimizers.SGD(learning_rate=0.5))
    ids = tf.constant([[1, 2], [2, 3]], tf.int64)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(de.embedding_lookup(emb, ids, name="lookup"))
        variables = tape.watched_variables()
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return loss

    assert step().numpy() == pytest.approx(4 * DIM * 0.5)
    # d(loss)/d(row) = number of occurrences: 1, 2, 1.
    found = emb.lookup(tf.constant([1, 2, 3], tf.int64)).numpy()
    np.testing.assert_allclose(found[:, 0], [0.5 - 0.5, 0.5 - 1.0, 0.5 - 0.5])
    assert optimizer.iterations.numpy() == 1


# -- (c) slot tables with TFRA's names, the step counter ---------------------------------------


@pytest.mark.parametrize(
    ("make_optimizer", "slots"),
    [
        (lambda: keras.optimizers.Adam(0.01), ("m", "v")),
        (lambda: keras.optimizers.Adagrad(0.1), ("accumulator",)),
    ],
    ids=["adam", "adagrad"],
)
def test_slot_tables_have_tfra_names(
    creator, unique_name, standalone_server, make_optimizer, slots
):
    ids, labels = _learnable_task(n=512)
    model = _classifier(creator, unique_name)
    model.compile(optimizer=make_optimizer(), loss="binary_crossentropy")
    model.fit(ids, labels, batch_size=128, epochs=1, verbose=0)
    expected = [f"test:{unique_name}-parameter{{3560}}"] + [
        f"test:{unique_name}-parameter_DynamicEmbedding_{unique_name}-shadow_{slot}{{3560}}"
        for slot in slots
    ]
    assert _keys_of(standalone_server, f"test:{unique_name}*") == sorted(expected)
    rows = len(np.unique(ids))
    for key in expected:
        assert standalone_server.execute("HLEN", key) == rows

    # The step counter is the optimizer's and goes on across fit calls.
    assert model.optimizer.iterations.numpy() == 4
    model.fit(ids, labels, batch_size=128, epochs=1, verbose=0)
    assert model.optimizer.iterations.numpy() == 8
    # Compiled again with the same optimizer: the same counter; a new optimizer: a new one.
    model.compile(optimizer=model.optimizer, loss="binary_crossentropy")
    assert model.optimizer.iterations.numpy() == 8
    model.compile(optimizer=make_optimizer(), loss="binary_crossentropy")
    assert model.optimizer.iterations.numpy() == 0


def test_get_variable_slot_tables_have_tfra_names(creator, unique_name, standalone_server):
    emb = de.get_variable(unique_name, dim=DIM, kv_creator=creator)
    optimizer = de.DynamicEmbeddingOptimizer(keras.optimizers.Adam(0.1))
    with tf.GradientTape() as tape:
        rows, wrapper = de.embedding_lookup(
            emb, tf.constant([5, 6], tf.int64), return_trainable=True
        )
        loss = tf.reduce_sum(rows**2)
    optimizer.apply_gradients([(tape.gradient(loss, wrapper), wrapper)])
    assert _keys_of(standalone_server, f"test:{unique_name}*") == sorted(
        f"test:{name}{{3560}}"
        for name in (
            unique_name,
            f"{unique_name}_{unique_name}_shadow_m",
            f"{unique_name}_{unique_name}_shadow_v",
        )
    )


# -- (d) checkpoints by table_store_mode -------------------------------------------------------


def _trained_model(creator, name) -> de.DynamicEmbeddingModel:
    ids, labels = _learnable_task(n=512, vocab=100)
    model = _classifier(creator, name)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    model.fit(ids, labels, batch_size=128, epochs=1, verbose=0)
    return model


def _all_rows(model) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    (layer,) = [x for x in model.layers if isinstance(x, de.keras.layers.Embedding)]
    variables = {"params": layer.params}
    variables.update(model.optimizer.slot_variables(layer))
    return {name: _sorted_rows(v) for name, v in variables.items()}


def test_checkpoint_mode_0_restores_rows_into_an_empty_redis(
    creator, unique_name, standalone_server, tmp_path, flushed
):
    model = _trained_model(creator, unique_name)
    before = _all_rows(model)
    assert set(before) == {"params", "m", "v"} and len(before["params"][0]) == 100
    path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(str(tmp_path / "ckpt"))
    saved = dict(tf.train.list_variables(path))
    rows_saved = [k for k in saved if k.endswith("/-values")]
    assert len(rows_saved) == 3 and all(saved[k] == [100, 8] for k in rows_saved)

    flushed(standalone_server)
    assert standalone_server.execute("DBSIZE") == 0
    # A new model object (a new process would build one the same way).
    restored = _classifier(creator, unique_name)
    restored.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    tf.train.Checkpoint(model=restored, optimizer=restored.optimizer).restore(path)
    # The slot tables are made when the optimizer is built: the restore waits for them.
    restored.optimizer.build(restored.trainable_variables)
    after = _all_rows(restored)
    for name, (keys, values) in before.items():
        np.testing.assert_array_equal(after[name][0], keys)
        np.testing.assert_array_equal(after[name][1], values)
    assert restored.optimizer.iterations.numpy() == 4
    ids, _ = _learnable_task(n=8, vocab=100)
    np.testing.assert_allclose(
        restored.predict(ids, verbose=0), model.predict(ids, verbose=0), rtol=1e-6
    )


def test_checkpoint_mode_2_keeps_rows_in_redis_only(creator_for, unique_name, tmp_path):
    model = _trained_model(creator_for(table_store_mode=2), unique_name)
    before = _all_rows(model)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    path = checkpoint.save(str(tmp_path / "ckpt"))
    saved = dict(tf.train.list_variables(path))
    tables = [k[: -len("/-keys")] for k in saved if k.endswith("/-keys")]
    assert len(tables) == 3
    for table in tables:
        assert saved[f"{table}/-keys"] == [0]
        assert saved[f"{table}/-values"] == [0, 8]
        manifest = json.loads(tf.train.load_variable(path, f"{table}/-manifest"))
        assert manifest["table_store_mode"] == 2 and manifest["rows"] == 100
    params = model.layers[1].params
    params.upsert(tf.constant([12345], tf.int64), tf.ones([1, 8]))
    tf.train.Checkpoint(model=model).restore(path)
    assert params.size().numpy() == 101  # Redis was left alone
    checkpoint.restore(path)
    after = _all_rows(model)
    np.testing.assert_array_equal(after["m"][1], before["m"][1])


def test_checkpoint_mode_1_dump_files(creator_for, unique_name, tmp_path):
    model_lib = tmp_path / "model_lib"
    model = _trained_model(
        creator_for(table_store_mode=1, model_lib_abs_dir=str(model_lib)), unique_name
    )
    before = _all_rows(model)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    path = checkpoint.save(str(tmp_path / "ckpt"))
    files = sorted(p.name for p in (model_lib / "test").iterdir())
    assert f"test:{unique_name}-parameter{{3560}}.rdb" in files
    assert len(files) == 3
    params = model.layers[1].params
    for variable in [params, *model.optimizer.slot_variables(model.layers[1]).values()]:
        variable.clear()
    checkpoint.restore(path)
    after = _all_rows(model)
    for name, (keys, values) in before.items():
        np.testing.assert_array_equal(after[name][0], keys)
        np.testing.assert_array_equal(after[name][1], values)


# Keras' own variables warn under numpy 2 when saved (not ours).
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_keras_weights_file_round_trip_mode_0(creator, unique_name, tmp_path):
    model = _trained_model(creator, unique_name)
    params = model.layers[1].params
    keys, values = _sorted_rows(params)
    # The trainable wrapper's buffer is saved empty (the rows are in Redis), as TFRA's is.
    weights = [w for w in model.weights if not isinstance(w, de.TrainableWrapper)]
    dense = [w.numpy() for w in weights]
    path = str(tmp_path / "model.weights.h5")
    model.save_weights(path)
    params.clear()
    for w in model.weights:
        w.assign(tf.zeros_like(w))
    model.load_weights(path)
    keys2, values2 = _sorted_rows(params)
    np.testing.assert_array_equal(keys2, keys)
    np.testing.assert_array_equal(values2, values)
    for a, b in zip(dense, weights, strict=True):
        np.testing.assert_array_equal(a, b.numpy())


# -- (e) the seed design note's Python snippets ------------------------------------------------


@pytest.mark.filterwarnings("ignore:tfra-redis:UserWarning")
def test_seed_snippet_1(standalone_server, make_config, tmp_path, monkeypatch, unique_name):
    config = make_config(tmp_path, standalone_server, expire_model_tag_in_seconds=-1)
    monkeypatch.setenv("model1_tfra_redis_config_path", str(config))

    class Model:
        embedding_size = 8

        def __init__(self):
            # -- from the seed, as written --
            redis_config1 = tfra.dynamic_embedding.RedisTableConfig(
                redis_config_abs_dir_env="model1_tfra_redis_config_path",
                redis_config_abs_dir="/tmp/test/",
            )
            redis_creator1 = tfra.dynamic_embedding.RedisTableCreator(redis_config1)

            self.user_embeddings = tfra.dynamic_embedding.get_variable(
                name="user_dynamic_embeddings",
                dim=self.embedding_size,
                initializer=tf.keras.initializers.RandomNormal(-1, 1),
                checkpoint=False,
                KVCreator=redis_creator1,
            )

    model = Model()
    rows = de.embedding_lookup(model.user_embeddings, tf.range(4000, dtype=tf.int64)).numpy()
    assert rows.shape == (4000, 8)
    assert abs(rows.mean() + 1) < 0.05 and abs(rows.std() - 1) < 0.05
    del model
    gc.collect()  # frees the name "user_dynamic_embeddings" for the next snippet


@pytest.mark.filterwarnings("ignore:tfra-redis:UserWarning")
def test_seed_snippet_2(standalone_server, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_TMPDIR", str(tmp_path))
    monkeypatch.delenv("model1_tfra_redis_config_path", raising=False)
    monkeypatch.delenv("TFRA_REDIS_CONFIG_PATH", raising=False)
    port = standalone_server.port  # the seed has 6379

    class Model:
        embedding_size = 8

        def __init__(self):
            # -- from the seed, as written (but the port) --
            redis_config_dir = os.path.join(
                tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR")), "save_restore"
            )
            redis_config_path = os.path.join(tempfile.mkdtemp(prefix=redis_config_dir), "hash")
            os.makedirs(redis_config_path)
            redis_config_path = os.path.join(redis_config_path, "redis_config.json")
            redis_config_params = {
                "redis_host_ip": ["127.0.0.1"],
                "redis_host_port": [port],
                "using_model_lib": False,
            }
            with open(redis_config_path, "w", encoding="utf-8") as f:
                f.write(json.dumps(redis_config_params, indent=2, ensure_ascii=True))
            redis_config = de.RedisTableConfig(
                redis_config_abs_dir_env="model1_tfra_redis_config_path",
                redis_config_abs_dir=redis_config_path,
            )
            redis_creator = tfra.dynamic_embedding.RedisTableCreator(redis_config)

            self.user_embeddings = tfra.dynamic_embedding.get_variable(
                name="user_dynamic_embeddings",
                dim=self.embedding_size,
                initializer=tf.keras.initializers.RandomNormal(-1, 1),
                checkpoint=False,
                KVCreator=redis_creator,
            )

    model = Model()
    emb = model.user_embeddings
    emb.clear()
    emb.upsert(tf.constant([1, 2], tf.int64), tf.ones([2, 8]))
    assert emb.size().numpy() == 2
    np.testing.assert_array_equal(emb.lookup(tf.constant([2], tf.int64)).numpy(), np.ones([1, 8]))
    assert standalone_server.execute("HLEN", "test:user_dynamic_embeddings{3560}") == 2
    emb.clear()
    del model, emb
    gc.collect()  # closes the table (a TTL) while the server runs
