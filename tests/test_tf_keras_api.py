"""TFRA's training API on plain Keras 3 models: trainable wrappers seen by Keras and the tape,
de.DynamicEmbeddingOptimizer in fit and custom loops, and the errors that stop silently wrong
training. Against a real redis-server."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfra_redis as tfra  # noqa: E402

de = tfra.dynamic_embedding

pytestmark = pytest.mark.usefixtures("collect_tables_at_module_end")

VOCAB = 100
DIM = 4


@pytest.fixture
def creator(tmp_path, standalone_server, make_config):
    path = make_config(tmp_path, standalone_server, table_store_mode=0)
    return de.RedisTableCreator(de.RedisTableConfig(redis_config_abs_dir=str(path)))


def _task(n: int = 1024, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, size=(n, 2)).astype(np.int64)
    score = rng.normal(size=VOCAB)
    labels = (score[ids[:, 0]] + score[ids[:, 1]] > 0).astype(np.float32)[:, None]
    return ids, labels


def _embedding(creator, name, **kwargs):
    kwargs.setdefault("initializer", keras.initializers.RandomNormal(0.0, 0.1, seed=1))
    return de.keras.layers.Embedding(DIM, name=name, kv_creator=creator, **kwargs)


def _functional(creator, name):
    ids = keras.Input(shape=(2,), dtype="int64")
    x = keras.layers.Flatten()(_embedding(creator, name)(ids))
    return keras.Model(ids, keras.layers.Dense(1, activation="sigmoid")(x))


def _sequential(creator, name):
    return keras.Sequential(
        [
            keras.Input(shape=(2,), dtype="int64"),
            _embedding(creator, name),
            keras.layers.Flatten(),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )


class SubclassedModel(keras.Model):
    def __init__(self, creator, name):
        super().__init__()
        self.embedding = _embedding(creator, name)
        self.out = keras.layers.Dense(1, activation="sigmoid")

    def call(self, ids):
        return self.out(keras.ops.reshape(self.embedding(ids), (-1, 2 * DIM)))


def _table_keys(server, name) -> list[str]:
    return sorted(server.execute("KEYS", f"test:{name}*"))


@pytest.mark.parametrize(
    "build", [_functional, _sequential, SubclassedModel], ids=lambda b: b.__name__
)
def test_plain_keras_models_train_with_fit(creator, unique_name, standalone_server, build):
    ids, labels = _task()
    model = build(creator, unique_name)
    (layer,) = [x for x in model._flatten_layers() if isinstance(x, de.keras.layers.Embedding)]
    assert any(w is layer.shadow for w in layer.trainable_weights)
    model.compile(
        optimizer=de.DynamicEmbeddingOptimizer(keras.optimizers.Adam(0.05)),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    assert any(w is layer.shadow for w in model.trainable_variables)
    history = model.fit(ids, labels, batch_size=64, epochs=3, verbose=0).history
    assert history["loss"][-1] < 0.6 * history["loss"][0]
    assert history["accuracy"][-1] > 0.85
    shadow = f"{unique_name}-parameter_DynamicEmbedding_{unique_name}-shadow"
    assert _table_keys(standalone_server, unique_name) == sorted(
        [f"test:{unique_name}-parameter{{3560}}", f"test:{shadow}_m{{3560}}"]
        + [f"test:{shadow}_v{{3560}}"]
    )
    seen = len(np.unique(ids))
    assert layer.params.size().numpy() == seen
    # predict and evaluate read Redis only: no new rows.
    model.predict(np.array([[1000, 1001]], np.int64), verbose=0)
    model.evaluate(ids[:64] + VOCAB, labels[:64], verbose=0)
    assert layer.params.size().numpy() == seen


def test_custom_loop_over_model_trainable_variables(creator, unique_name):
    """The amazon-video-games-keras-eager style: a subclassed model, gradients of
    model.trainable_variables, optimizer.apply_gradients; eager and in a tf.function."""
    ids, labels = _task(n=512)
    model = SubclassedModel(creator, unique_name)
    optimizer = de.DynamicEmbeddingOptimizer(keras.optimizers.Adam(0.05))
    loss_fn = keras.losses.BinaryCrossentropy()

    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        assert all(g is not None for g in grads)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    graph_step = tf.function(step)
    losses = []
    for epoch in range(4):
        for start in range(0, len(ids), 64):
            run = step if epoch == 0 else graph_step
            losses.append(float(run(ids[start : start + 64], labels[start : start + 64])))
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8])
    assert int(optimizer.iterations.numpy()) == 4 * 8
    assert model.embedding.params.size().numpy() == len(np.unique(ids))


def test_lookup_returns_its_trainable_wrapper(creator, unique_name):
    emb = de.get_variable(unique_name, dim=DIM, kv_creator=creator, initializer=1.0)
    optimizer = de.DynamicEmbeddingOptimizer(keras.optimizers.SGD(0.5))
    with tf.GradientTape() as tape:
        rows, wrapper = de.embedding_lookup(
            emb, tf.constant([7, 8, 7], tf.int64), name="lk", return_trainable=True
        )
        loss = tf.reduce_sum(rows)
    assert isinstance(wrapper, de.TrainableWrapper)
    assert emb.get_trainable_by_name("lk") is wrapper
    assert [v.ref() for v in tape.watched_variables()] == [wrapper.value.ref()]
    grad = tape.gradient(loss, wrapper)
    # One row per distinct id, in the order they were first seen; repeats summed.
    np.testing.assert_array_equal(grad.numpy(), [[2.0] * DIM, [1.0] * DIM])
    optimizer.apply_gradients([(grad, wrapper)])
    found = emb.lookup(tf.constant([7, 8], tf.int64)).numpy()
    np.testing.assert_allclose(found[:, 0], [1.0 - 0.5 * 2, 1.0 - 0.5])


def test_slot_tables_of_a_named_lookup_carry_its_name(creator, unique_name, standalone_server):
    emb = de.get_variable(unique_name, dim=DIM, kv_creator=creator)
    optimizer = de.DynamicEmbeddingOptimizer(keras.optimizers.Adagrad(0.1))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(de.embedding_lookup(emb, tf.constant([1], tf.int64), name="lk"))
    variables = tape.watched_variables()
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
    # TFRA: <params>/<wrapper name>/<slot>, "/" turned into "_" in the Redis key.
    assert [v.name for v in emb.get_slot_variables(optimizer)] == [f"{unique_name}/lk/accumulator"]
    assert _table_keys(standalone_server, unique_name) == sorted(
        [f"test:{unique_name}{{3560}}", f"test:{unique_name}_lk_accumulator{{3560}}"]
    )


@pytest.mark.parametrize("run_eagerly", [False, True], ids=["graph", "eager"])
@pytest.mark.parametrize("make", [keras.optimizers.SGD, keras.optimizers.Adam], ids=["sgd", "adam"])
def test_an_optimizer_without_the_wrapper_is_refused(creator, unique_name, make, run_eagerly):
    ids, labels = _task(n=128)
    model = _sequential(creator, unique_name)
    model.compile(optimizer=make(), loss="binary_crossentropy", run_eagerly=run_eagerly)
    with pytest.raises(de.NotDynamicEmbeddingOptimizerError, match="DynamicEmbeddingOptimizer"):
        model.fit(ids, labels, batch_size=64, epochs=1, verbose=0)
    (layer,) = [x for x in model.layers if isinstance(x, de.keras.layers.Embedding)]
    assert layer.params.size().numpy() == 0


class TwoDefaultNamedEmbeddings(keras.Model):
    def __init__(self, creator):
        super().__init__()
        self.first = de.keras.layers.Embedding(DIM, kv_creator=creator)  # TFRA's default name
        self.second = de.keras.layers.Embedding(DIM, kv_creator=creator)
        self.out = keras.layers.Dense(1)

    def call(self, ids):
        x = keras.ops.concatenate([self.first(ids), self.second(ids)], axis=-1)
        return self.out(keras.ops.reshape(x, (-1, 4 * DIM)))


def test_two_layers_on_one_table_are_refused(creator):
    model = TwoDefaultNamedEmbeddings(creator)
    model.compile(optimizer=de.DynamicEmbeddingOptimizer(keras.optimizers.SGD()), loss="mse")
    with pytest.raises(ValueError, match="DynamicEmbeddingLayer-parameter") as error:
        model.fit(*_task(n=64), batch_size=64, verbose=0)
    assert str(error.value).count("DynamicEmbedding/DynamicEmbeddingLayer-shadow") == 2
    assert model.first.params.size().numpy() == 0


def test_a_distribution_strategy_is_refused(creator, unique_name):
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model = _sequential(creator, unique_name)
        model.compile(optimizer=de.DynamicEmbeddingOptimizer(keras.optimizers.SGD()), loss="mse")
    with pytest.raises(NotImplementedError, match="tf.distribute"):
        model.fit(*_task(n=64), batch_size=64, verbose=0)


def test_dynamic_embedding_optimizer_arguments(creator, unique_name):
    adam = keras.optimizers.Adam(0.01)
    wrapped = de.DynamicEmbeddingOptimizer(adam)
    assert wrapped is adam and isinstance(adam, keras.optimizers.Adam)
    assert type(adam).__name__ == "DynamicEmbeddingAdam"
    assert de.DynamicEmbeddingOptimizer(adam) is adam
    assert adam.get_config()["learning_rate"] == pytest.approx(0.01)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(adam))
    assert type(restored) is type(adam)

    scaled = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD())
    assert de.DynamicEmbeddingOptimizer(scaled) is scaled
    assert type(scaled.inner_optimizer).__name__ == "DynamicEmbeddingSGD"
    assert type(de.DynamicEmbeddingOptimizer("rmsprop")).__name__ == "DynamicEmbeddingRMSprop"

    with pytest.raises(TypeError, match="Supported: SGD, Adam"):
        de.DynamicEmbeddingOptimizer(keras.optimizers.Muon())
    with pytest.raises(TypeError, match="Keras 3 optimizer"):
        de.DynamicEmbeddingOptimizer(object())
    built = keras.optimizers.SGD()
    built.build([keras.Variable(np.zeros(2, np.float32))])
    with pytest.raises(ValueError, match="already built"):
        de.DynamicEmbeddingOptimizer(built)
    with pytest.raises(ValueError, match="synchronous"):
        de.DynamicEmbeddingOptimizer(keras.optimizers.SGD(), synchronous=True)
    with pytest.raises(NotImplementedError, match="gradient_accumulation_steps"):
        optimizer = de.DynamicEmbeddingOptimizer(
            keras.optimizers.SGD(gradient_accumulation_steps=2)
        )
        emb = de.get_variable(unique_name, dim=2, kv_creator=creator)
        optimizer.build([emb.trainable_wrapper()])


def test_mixed_precision_fit(creator, unique_name, standalone_server):
    ids, labels = _task()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = keras.Input(shape=(2,), dtype="int64")
        layer = _embedding(creator, unique_name)
        x = keras.layers.Flatten()(layer(inputs))
        x = keras.layers.Dense(16, activation="relu")(x)
        out = keras.layers.Dense(1, activation="sigmoid", dtype="float32")(x)
        model = keras.Model(inputs, out)
        model.compile(
            optimizer=de.DynamicEmbeddingOptimizer(keras.optimizers.Adam(0.05)),
            loss="binary_crossentropy",
        )
        # Keras wraps the optimizer in a LossScaleOptimizer; its inner one trains the rows.
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert layer.compute_dtype == "float32"
        history = model.fit(ids, labels, batch_size=64, epochs=3, verbose=0).history
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert history["loss"][-1] < 0.6 * history["loss"][0]
    rows = layer.params.lookup(tf.constant(np.unique(ids))).numpy()
    # Unscaled: with the loss scaled by 32768, scaled gradients would blow the rows up.
    assert np.abs(rows).max() < 10
    assert layer.params.size().numpy() == len(np.unique(ids))


def test_learning_rate_callbacks_reach_the_embeddings(creator, unique_name):
    """LearningRateScheduler sets the rate to 0 after the first epoch: the embedding rows stop
    moving (a rate frozen at compile time would keep training them)."""
    ids, labels = _task(n=256)
    model = _functional(creator, unique_name)
    (layer,) = [x for x in model.layers if isinstance(x, de.keras.layers.Embedding)]
    model.compile(
        optimizer=de.DynamicEmbeddingOptimizer(keras.optimizers.SGD(0.5)),
        loss="binary_crossentropy",
    )
    snapshots = []
    keys = tf.constant(np.unique(ids))

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append(layer.params.lookup(keys).numpy())

    schedule = keras.callbacks.LearningRateScheduler(lambda epoch: 0.5 if epoch == 0 else 0.0)
    model.fit(ids, labels, batch_size=64, epochs=3, verbose=0, callbacks=[schedule, Snapshot()])
    assert not np.allclose(snapshots[0], 0.0)
    np.testing.assert_array_equal(snapshots[1], snapshots[0])
    np.testing.assert_array_equal(snapshots[2], snapshots[0])
    assert model.optimizer.iterations.numpy() == 3 * 4


def test_a_layer_called_twice_in_a_step_sums_both_gradients(creator, unique_name):
    layer = _embedding(creator, unique_name, initializer=0.0)
    optimizer = de.DynamicEmbeddingOptimizer(keras.optimizers.SGD(1.0))
    users = tf.constant([1, 2], tf.int64)
    items = tf.constant([2, 3, 3], tf.int64)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(users)) + 2.0 * tf.reduce_sum(layer(items))
        grads = tape.gradient(loss, layer.trainable_weights)
        optimizer.apply_gradients(zip(grads, layer.trainable_weights, strict=True))

    step()
    found = layer.params.lookup(tf.constant([1, 2, 3], tf.int64)).numpy()[:, 0]
    # d(loss)/d(row): id 1 once; id 2 once + 2 * once; id 3 2 * twice.
    np.testing.assert_array_equal(found, [-1.0, -3.0, -4.0])
    step()  # the next step starts a new buffer
    found = layer.params.lookup(tf.constant([1, 2, 3], tf.int64)).numpy()[:, 0]
    np.testing.assert_array_equal(found, [-2.0, -6.0, -8.0])
    assert layer.shadow.ids.numpy().shape == (3,)


def test_inference_mode_never_stages(creator, unique_name):
    layer = _embedding(creator, unique_name)
    de.enable_inference_mode()
    try:
        assert de.get_model_mode() is de.ModelMode.INFERENCE
        with tf.GradientTape() as tape:
            out = layer(tf.constant([1, 2], tf.int64))
        assert tape.watched_variables() == ()
        assert out.shape == (2, DIM)
    finally:
        de.enable_train_mode()
    assert layer.params.size().numpy() == 0


@pytest.mark.parametrize("run_eagerly", [True, False], ids=["eager", "graph"])
def test_redis_errors_during_fit(tmp_path, make_config, unique_name, run_eagerly, monkeypatch):
    """Eagerly the tfra_redis exception itself; in a compiled step TensorFlow's UnknownError,
    whose message ends with the tfra_redis exception's name and message (README). That is the
    numpy_function path; the native op's errors are tested in test_native_ops.py."""
    from tfra_redis import testing

    monkeypatch.setenv("TFRA_REDIS_NATIVE_OPS", "0")

    ids, labels = _task(n=128)
    with testing.standalone() as server:
        path = make_config(tmp_path, server, table_store_mode=0, redis_retry_deadline_ms=300)
        creator = de.RedisTableCreator(de.RedisTableConfig(redis_config_abs_dir=str(path)))
        model = _sequential(creator, unique_name)
        model.compile(
            optimizer=de.DynamicEmbeddingOptimizer(keras.optimizers.Adam()),
            loss="binary_crossentropy",
            run_eagerly=run_eagerly,
        )
        model.fit(ids, labels, batch_size=64, verbose=0)
        server.stop()
        if run_eagerly:
            with pytest.raises(tfra.RedisConnectionError, match="cannot reach Redis"):
                model.fit(ids, labels, batch_size=64, verbose=0)
        else:
            with pytest.raises(tf.errors.UnknownError, match="RedisConnectionError: cannot reach"):
                model.fit(ids, labels, batch_size=64, verbose=0)


def test_several_steps_per_execution_train_as_single_steps(creator, unique_name):
    """steps_per_execution=4 runs four steps in one traced loop: the staging of each step must
    start over at run time, not at trace time."""
    ids, labels = _task(n=512)
    results = []
    for steps in (1, 4):
        keras.utils.set_random_seed(3)
        model = _functional(creator, f"{unique_name}_{steps}")
        model.compile(
            optimizer=de.DynamicEmbeddingOptimizer(keras.optimizers.Adam(0.05)),
            loss="binary_crossentropy",
            steps_per_execution=steps,
        )
        model.fit(ids, labels, batch_size=64, epochs=2, shuffle=False, verbose=0)
        (layer,) = [x for x in model.layers if isinstance(x, de.keras.layers.Embedding)]
        keys = tf.constant(np.unique(ids))
        results.append(
            (layer.params.lookup(keys).numpy(), [w.numpy() for w in model.layers[-1].weights])
        )
        assert int(model.optimizer.iterations.numpy()) == 16
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


LAYOUTS = {
    "tfra": {},
    "fused_slots": {"redis_fused_slots": True},
    "fused_row": {"redis_fused_row": True},
    # Each step's write waits in the client and rides with the next step's lookup.
    "tfra_write_behind": {"redis_write_behind_ms": 600_000},
    "fused_row_write_behind": {"redis_fused_row": True, "redis_write_behind_ms": 600_000},
}


def _every_id_once_per_batch(batches: int, vocab: int, seed: int = 3):
    """Batches of ``vocab // 2`` rows of two ids, holding every id of ``range(vocab)`` exactly
    once. Every id in every step: Keras' dense Adam moves the same rows as the sparse one (a
    missing id would still move under the dense optimizer's decaying moments). Each id once:
    Keras squares an ``IndexedSlices`` gradient's values before summing repeated indices, so
    with repeats its dense reference would not be Keras' math on the summed gradient."""
    rng = np.random.default_rng(seed)
    ids = np.concatenate([rng.permutation(vocab).reshape(-1, 2) for _ in range(batches)])
    labels = rng.integers(0, 2, size=(len(ids), 1)).astype(np.float32)
    return ids.astype(np.int64), labels


@pytest.mark.parametrize("loop", ["fit", "tape"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_plain_keras_model_trains_as_keras_does(
    tmp_path, standalone_server, make_config, unique_name, layout, loop
):
    """A plain keras.Model with de.keras.layers.Embedding and DynamicEmbeddingOptimizer(Adam),
    trained by fit or by a GradientTape loop, gives Keras' own numbers: the same model with a
    dense keras.layers.Embedding holding the same rows, on the same batches (rtol 1e-5)."""
    vocab, batch = 16, 8
    ids, labels = _every_id_once_per_batch(6, vocab)
    initial = np.random.default_rng(5).normal(0.0, 0.1, size=(vocab, DIM)).astype(np.float32)
    kernel = np.random.default_rng(6).normal(0.0, 0.5, size=(2 * DIM, 1)).astype(np.float32)

    def model_with(embedding):
        inputs = keras.Input(shape=(2,), dtype="int64")
        x = keras.layers.Flatten()(embedding(inputs))
        dense = keras.layers.Dense(
            1, "sigmoid", kernel_initializer=keras.initializers.Constant(kernel)
        )
        return keras.Model(inputs, dense(x))

    path = make_config(tmp_path, standalone_server, table_store_mode=0, **LAYOUTS[layout])
    creator = de.RedisTableCreator(de.RedisTableConfig(redis_config_abs_dir=str(path)))
    layer = de.keras.layers.Embedding(DIM, name=unique_name, kv_creator=creator)
    layer.params.upsert(tf.constant(np.arange(vocab, dtype=np.int64)), initial)
    ours = model_with(layer)
    reference = model_with(
        keras.layers.Embedding(
            vocab, DIM, embeddings_initializer=keras.initializers.Constant(initial)
        )
    )

    def train(model, optimizer):
        if loop == "fit":
            model.compile(optimizer=optimizer, loss="binary_crossentropy")
            return model.fit(ids, labels, batch_size=batch, shuffle=False, verbose=0).history[
                "loss"
            ]
        loss_fn = keras.losses.BinaryCrossentropy()

        @tf.function
        def step(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        return [
            float(step(ids[s : s + batch], labels[s : s + batch]))
            for s in range(0, len(ids), batch)
        ]

    got = train(ours, de.DynamicEmbeddingOptimizer(keras.optimizers.Adam(0.05)))
    want = train(reference, keras.optimizers.Adam(0.05))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    rows = layer.params.lookup(tf.constant(np.arange(vocab, dtype=np.int64))).numpy()
    np.testing.assert_allclose(rows, reference.layers[1].embeddings.numpy(), rtol=1e-5, atol=1e-7)
    assert not np.allclose(rows, initial)  # the rows did train
    np.testing.assert_allclose(
        ours.layers[-1].kernel.numpy(), reference.layers[-1].kernel.numpy(), rtol=1e-5, atol=1e-7
    )
