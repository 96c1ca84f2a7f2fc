"""de.DynamicEmbeddingOptimizer against Keras' own math, per optimizer, against a real redis-server.

The reference is the same Keras optimizer applied to a dense variable holding every id's row,
with the step's gradient scattered into it, after which the rows the step did not touch get
their value and their slots back: that is "what Keras computes on a variable holding just the
step's rows", the lazy semantics the Redis path has (and TFRA's). Steps repeat ids within a
batch (their gradients must be summed), bring new ids (rows from the initializer) and ids stored
beforehand. Rows and every slot table must agree with rtol 1e-5.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfra_redis as tfra  # noqa: E402
from tfra_redis.dynamic_embedding import optimizer as de_optimizer  # noqa: E402

de = tfra.dynamic_embedding

pytestmark = pytest.mark.usefixtures("collect_tables_at_module_end")

VOCAB = 12
DIM = 3
STEPS = 4
# The row of an id never stored: a constant initializer, so the reference knows it too.
INIT_ROW = np.array([0.1, -0.2, 0.3], np.float32)
STORED_IDS = np.array([0, 1, 2, 3], np.int64)  # upserted before training


@pytest.fixture
def creator(tmp_path, standalone_server, make_config):
    path = make_config(tmp_path, standalone_server, table_store_mode=0)
    return de.RedisTableCreator(de.RedisTableConfig(redis_config_abs_dir=str(path)))


def _batches(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids [4, 2], upstream gradient [4, 2, DIM]) per step: repeats within a step, ids that
    appear for the first time in later steps, ids that never appear."""
    rng = np.random.default_rng(seed)
    pools = [[0, 1, 4, 5], [0, 4, 6, 7], [1, 6, 8, 9], [0, 9, 10, 2]]
    out = []
    for pool in pools[:STEPS]:
        ids = rng.choice(pool, size=(4, 2)).astype(np.int64)
        ids[0, 1] = ids[0, 0]  # a repeat in every step
        out.append((ids, rng.normal(size=(4, 2, DIM)).astype(np.float32)))
    return out


def _stored_rows() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(len(STORED_IDS), DIM)).astype(np.float32)


def _reference(make_optimizer, batches, loss_scale=False):
    """Keras' optimizer on a dense variable of all rows, lazily: returns (rows, {slot: rows},
    iterations) after the steps."""
    initial = np.tile(INIT_ROW, (VOCAB, 1))
    initial[STORED_IDS] = _stored_rows()
    var = keras.Variable(initial, name="reference")
    optimizer = make_optimizer()
    if loss_scale:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build([var])
    inner = optimizer.inner_optimizer if loss_scale else optimizer
    slots = {
        v.name.removeprefix("reference_"): v
        for v in inner.variables
        if tuple(v.shape) == (VOCAB, DIM)
    }
    for ids, upstream in batches:
        grad = np.zeros((VOCAB, DIM), np.float32)
        np.add.at(grad, ids.reshape(-1), upstream.reshape(-1, DIM))
        if loss_scale:
            grad = grad * float(optimizer.dynamic_scale.numpy())
        before = {name: v.numpy() for name, v in slots.items()}
        before_rows = var.numpy()
        optimizer.apply_gradients([(tf.constant(grad), var)])
        untouched = np.setdiff1d(np.arange(VOCAB), ids.reshape(-1))
        rows = var.numpy()
        rows[untouched] = before_rows[untouched]
        var.assign(rows)
        for name, v in slots.items():
            value = v.numpy()
            value[untouched] = before[name][untouched]
            v.assign(value)
    return var.numpy(), {n: v.numpy() for n, v in slots.items()}, int(inner.iterations.numpy())


def _train_redis(creator, name, make_optimizer, batches, *, graph, loss_scale=False):
    layer = de.keras.layers.Embedding(DIM, name=name, kv_creator=creator, initializer=INIT_ROW)
    layer.params.upsert(tf.constant(STORED_IDS), _stored_rows())
    optimizer = make_optimizer()
    if loss_scale:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer = de.DynamicEmbeddingOptimizer(optimizer)

    def step(ids, upstream):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(ids) * upstream)
            if loss_scale:
                loss = optimizer.scale_loss(loss)
        grads = tape.gradient(loss, layer.trainable_weights)
        optimizer.apply_gradients(zip(grads, layer.trainable_weights, strict=True))

    if graph:
        step = tf.function(step)
    for ids, upstream in batches:
        step(tf.constant(ids), tf.constant(upstream))
    inner = optimizer.inner_optimizer if loss_scale else optimizer
    return layer, inner


def _tfra_slot_names(optimizer) -> dict[str, str]:
    base = de_optimizer._keras_base(type(optimizer)) or ""
    return de_optimizer._TFRA_SLOT_NAMES.get(base, {})


OPTIMIZERS = {
    "sgd": lambda: keras.optimizers.SGD(0.1),
    "sgd_momentum_nesterov": lambda: keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
    "adam": lambda: keras.optimizers.Adam(0.05),
    "adam_amsgrad": lambda: keras.optimizers.Adam(0.05, amsgrad=True),
    "adamw": lambda: keras.optimizers.AdamW(0.05, weight_decay=0.1),
    "adamax": lambda: keras.optimizers.Adamax(0.05),
    "nadam": lambda: keras.optimizers.Nadam(0.05),
    "adagrad": lambda: keras.optimizers.Adagrad(0.1, initial_accumulator_value=0.2),
    "adadelta": lambda: keras.optimizers.Adadelta(1.0, rho=0.9),
    "rmsprop": lambda: keras.optimizers.RMSprop(0.05),
    "rmsprop_momentum_centered": lambda: keras.optimizers.RMSprop(
        0.05, rho=0.8, momentum=0.5, centered=True
    ),
    "ftrl": lambda: keras.optimizers.Ftrl(
        0.1,
        l1_regularization_strength=0.01,
        l2_regularization_strength=0.02,
        l2_shrinkage_regularization_strength=0.01,
        beta=0.1,
    ),
    "lion": lambda: keras.optimizers.Lion(0.01),
    "adam_clipnorm": lambda: keras.optimizers.Adam(0.05, clipnorm=0.5),
    "sgd_clipvalue": lambda: keras.optimizers.SGD(0.1, clipvalue=0.3),
    "adam_global_clipnorm": lambda: keras.optimizers.Adam(0.05, global_clipnorm=0.7),
    "sgd_weight_decay": lambda: keras.optimizers.SGD(0.1, weight_decay=0.2),
    "adam_schedule": lambda: keras.optimizers.Adam(
        keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    ),
    "lion_ema": lambda: keras.optimizers.Lion(0.01, use_ema=True, ema_momentum=0.5),
}


def _check_against_reference(layer, optimizer, make_optimizer, batches, loss_scale=False):
    want_rows, want_slots, want_iterations = _reference(make_optimizer, batches, loss_scale)
    touched = np.unique(np.concatenate([ids.reshape(-1) for ids, _ in batches]))
    keys, rows = (t.numpy() for t in layer.params.export())
    stored = dict(zip(keys.tolist(), rows, strict=True))
    # Every touched id was written (new ids too), every stored id kept, nothing else.
    assert set(stored) == set(touched) | set(STORED_IDS.tolist())
    got = np.stack([stored[i] for i in touched])
    np.testing.assert_allclose(got, want_rows[touched], rtol=1e-5, atol=1e-7)
    assert int(optimizer.iterations.numpy()) == want_iterations == len(batches)

    tables = optimizer.slot_variables(layer)
    names = _tfra_slot_names(optimizer)
    assert sorted(tables) == sorted(names.get(k, k) for k in want_slots)
    for keras_name, want in want_slots.items():
        table = tables[names.get(keras_name, keras_name)]
        found = table.lookup(tf.constant(touched)).numpy()
        np.testing.assert_allclose(
            found, want[touched], rtol=1e-5, atol=1e-7, err_msg=f"slot {keras_name}"
        )
        assert table.size().numpy() == len(touched), f"slot {keras_name}"


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_each_optimizer_matches_keras_on_the_touched_rows(creator, unique_name, kind):
    make = OPTIMIZERS[kind]
    batches = _batches()
    layer, optimizer = _train_redis(creator, unique_name, make, batches, graph=True)
    _check_against_reference(layer, optimizer, make, batches)


@pytest.mark.parametrize("kind", ["adam", "rmsprop_momentum_centered"])
def test_eager_steps_match_too(creator, unique_name, kind):
    make = OPTIMIZERS[kind]
    batches = _batches(seed=3)
    layer, optimizer = _train_redis(creator, unique_name, make, batches, graph=False)
    _check_against_reference(layer, optimizer, make, batches)


def test_loss_scaling_unscales_embedding_gradients(creator, unique_name):
    make = OPTIMIZERS["adam"]
    batches = _batches(seed=5)
    layer, optimizer = _train_redis(
        creator, unique_name, make, batches, graph=True, loss_scale=True
    )
    _check_against_reference(layer, optimizer, make, batches, loss_scale=True)


def test_a_non_finite_step_writes_nothing(creator, unique_name):
    layer = de.keras.layers.Embedding(DIM, name=unique_name, kv_creator=creator, initializer=0.5)
    optimizer = de.DynamicEmbeddingOptimizer(
        keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(0.1))
    )

    @tf.function
    def step(ids, upstream):
        with tf.GradientTape() as tape:
            loss = optimizer.scale_loss(tf.reduce_sum(layer(ids) * upstream))
        grads = tape.gradient(loss, layer.trainable_weights)
        optimizer.apply_gradients(zip(grads, layer.trainable_weights, strict=True))

    ids = tf.constant([[1, 2]], tf.int64)
    step(ids, tf.ones([1, 2, DIM]))
    before = layer.params.lookup(tf.constant([1, 2, 3], tf.int64)).numpy()
    scale = float(optimizer.dynamic_scale.numpy())
    step(tf.constant([[1, 3]], tf.int64), tf.constant([[[np.inf] * DIM, [1.0] * DIM]]))
    assert layer.params.size().numpy() == 2, "the step with an inf gradient inserted id 3"
    np.testing.assert_array_equal(
        layer.params.lookup(tf.constant([1, 2, 3], tf.int64)).numpy(), before
    )
    assert float(optimizer.dynamic_scale.numpy()) == scale / 2
    assert int(optimizer.iterations.numpy()) == 1


def test_slot_tables_written_by_tfra_continue_training(creator, unique_name):
    """Rows and Adam slots stored under the names TFRA gives them (measured on TFRA 0.8.1, see
    tests/fixtures/README.md): the first step here starts from those slots."""
    config = creator.config.load()
    layer_params = f"{unique_name}-parameter"
    shadow = f"{layer_params}_DynamicEmbedding_{unique_name}-shadow"
    rng = np.random.default_rng(9)
    ids = np.arange(4, dtype=np.int64)
    stored = {name: rng.normal(size=(4, DIM)).astype(np.float32) for name in ("params", "m", "v")}
    stored["v"] = np.abs(stored["v"])
    for name, table in (("params", layer_params), ("m", f"{shadow}_m"), ("v", f"{shadow}_v")):
        store = tfra.RedisStore(config, table, DIM)
        store.insert(ids, stored[name])
        store.close()

    layer = de.keras.layers.Embedding(DIM, name=unique_name, kv_creator=creator)
    optimizer = de.DynamicEmbeddingOptimizer(keras.optimizers.Adam(0.1))
    upstream = rng.normal(size=(4, DIM)).astype(np.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(tf.constant(ids)) * upstream)
    grads = tape.gradient(loss, layer.trainable_weights)
    optimizer.apply_gradients(zip(grads, layer.trainable_weights, strict=True))

    reference = keras.Variable(stored["params"], name="reference")
    keras_adam = keras.optimizers.Adam(0.1)
    keras_adam.build([reference])
    keras_adam._momentums[0].assign(stored["m"])
    keras_adam._velocities[0].assign(stored["v"])
    keras_adam.apply_gradients([(tf.constant(upstream), reference)])
    slots = optimizer.slot_variables(layer)
    np.testing.assert_allclose(layer.params.lookup(ids).numpy(), reference.numpy(), rtol=1e-5)
    np.testing.assert_allclose(
        slots["m"].lookup(ids).numpy(), keras_adam._momentums[0].numpy(), rtol=1e-5
    )
    np.testing.assert_allclose(
        slots["v"].lookup(ids).numpy(), keras_adam._velocities[0].numpy(), rtol=1e-5
    )


@pytest.mark.parametrize("kind", ["adam_amsgrad", "rmsprop_momentum_centered", "ftrl"])
def test_fused_slots_match_keras_too(tmp_path, standalone_server, make_config, unique_name, kind):
    """redis_fused_slots: every slot of an id in one row of one table (columns in the
    optimizer's slot order), the same numbers as Keras."""
    path = make_config(tmp_path, standalone_server, table_store_mode=0, redis_fused_slots=True)
    creator = de.RedisTableCreator(de.RedisTableConfig(redis_config_abs_dir=str(path)))
    make = OPTIMIZERS[kind]
    batches = _batches(seed=8)
    layer, optimizer = _train_redis(creator, unique_name, make, batches, graph=True)
    want_rows, want_slots, _ = _reference(make, batches)
    touched = np.unique(np.concatenate([ids.reshape(-1) for ids, _ in batches]))
    np.testing.assert_allclose(
        layer.params.lookup(tf.constant(touched)).numpy(), want_rows[touched], rtol=1e-5, atol=1e-7
    )
    tables = optimizer.slot_variables(layer)
    assert list(tables) == ["slots"]
    fused = tables["slots"]
    assert fused.dim == DIM * len(want_slots)
    assert standalone_server.execute("KEYS", f"test:{unique_name}*_slots*") == [
        f"test:{unique_name}-parameter_DynamicEmbedding_{unique_name}-shadow_slots{{3560}}"
    ]
    rows = fused.lookup(tf.constant(touched)).numpy()
    inner = optimizer.inner_optimizer if hasattr(optimizer, "inner_optimizer") else optimizer
    order = [s.keras_name for s in de_optimizer._state(inner).slots[id(layer.shadow)]]
    assert sorted(order) == sorted(want_slots)
    for i, keras_name in enumerate(order):
        np.testing.assert_allclose(
            rows[:, i * DIM : (i + 1) * DIM],
            want_slots[keras_name][touched],
            rtol=1e-5,
            atol=1e-7,
            err_msg=keras_name,
        )


def _fused_row_creator(tmp_path, server, make_config):
    path = make_config(tmp_path, server, table_store_mode=0, redis_fused_row=True)
    return de.RedisTableCreator(de.RedisTableConfig(redis_config_abs_dir=str(path)))


@pytest.mark.parametrize("kind", ["adam", "sgd", "adagrad", "adam_amsgrad", "ftrl"])
def test_fused_row_matches_keras(tmp_path, standalone_server, make_config, unique_name, kind):
    """redis_fused_row: an id's slots follow its row in the row's own field (in the
    optimizer's slot order), and the numbers are Keras' (as for the other layouts)."""
    creator = _fused_row_creator(tmp_path, standalone_server, make_config)
    make = OPTIMIZERS[kind]
    batches = _batches(seed=8)
    layer, optimizer = _train_redis(creator, unique_name, make, batches, graph=True)
    want_rows, want_slots, _ = _reference(make, batches)
    touched = np.unique(np.concatenate([ids.reshape(-1) for ids, _ in batches]))
    np.testing.assert_allclose(
        layer.params.lookup(tf.constant(touched)).numpy(), want_rows[touched], rtol=1e-5, atol=1e-7
    )
    # No slot table: one bucket, the embedding's, whose values are row || slots.
    assert standalone_server.execute("KEYS", f"test:{unique_name}*") == [
        f"test:{unique_name}-parameter{{3560}}"
    ]
    bucket = f"test:{unique_name}-parameter{{3560}}"
    for i in touched:
        size = standalone_server.execute("HSTRLEN", bucket, np.int64(i).tobytes())
        assert int(size) == 4 * DIM * (1 + len(want_slots))
    keys, exported = (t.numpy() for t in layer.params.export())
    assert exported.shape == (len(keys), DIM)  # export gives rows only
    tables = optimizer.slot_variables(layer)
    if not want_slots:
        assert tables == {}
        return
    assert list(tables) == ["slots"]
    slots = tables["slots"].lookup_slots(touched)
    order = [s.keras_name for s in de_optimizer._state(optimizer).slots[id(layer.shadow)]]
    assert sorted(order) == sorted(want_slots)
    for i, keras_name in enumerate(order):
        np.testing.assert_allclose(
            slots[:, i * DIM : (i + 1) * DIM],
            want_slots[keras_name][touched],
            rtol=1e-5,
            atol=1e-7,
            err_msg=keras_name,
        )


def test_fused_row_eager_matches_keras(tmp_path, standalone_server, make_config, unique_name):
    creator = _fused_row_creator(tmp_path, standalone_server, make_config)
    make = OPTIMIZERS["adam"]
    batches = _batches(seed=3)
    layer, optimizer = _train_redis(creator, unique_name, make, batches, graph=False)
    want_rows, want_slots, _ = _reference(make, batches)
    touched = np.unique(np.concatenate([ids.reshape(-1) for ids, _ in batches]))
    np.testing.assert_allclose(
        layer.params.lookup(tf.constant(touched)).numpy(), want_rows[touched], rtol=1e-5, atol=1e-7
    )
    slots = optimizer.slot_variables(layer)["slots"].lookup_slots(touched)
    want = np.concatenate([want_slots["momentum"], want_slots["velocity"]], axis=1)
    np.testing.assert_allclose(slots, want[touched], rtol=1e-5, atol=1e-7)


def _command_calls(server) -> dict[str, int]:
    info = server.execute("INFO", "commandstats")
    if isinstance(info, bytes):
        info = info.decode()
    calls = {}
    for line in str(info).splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line.partition(":")
            calls[name.removeprefix("cmdstat_")] = int(rest.split(",")[0].split("=")[1])
    return calls


def _commands_used_by(server, action) -> dict[str, int]:
    """The Redis commands (name: calls) ``action`` made ``server`` run."""
    before = _command_calls(server)
    action()
    after = _command_calls(server)
    used = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    used.pop("info", None)
    return used


def _graph_step(layer, optimizer):
    """One traced training step of ``layer`` on (ids, upstream gradient)."""

    @tf.function
    def step(ids, upstream):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(ids) * upstream)
        grads = tape.gradient(loss, layer.trainable_weights)
        optimizer.apply_gradients(zip(grads, layer.trainable_weights, strict=True))

    return step


@pytest.mark.parametrize("fused", ["row", "slots", "none"])
def test_an_adam_step_reads_and_writes_each_id_once_with_fused_row(
    tmp_path, standalone_server, make_config, unique_name, fused
):
    """The point of redis_fused_row: a step after the first reads every id's row and slots
    with one HMGET field and writes them with one HSET field (one command each here: one
    bucket, few ids). Fused slots need two of each, TFRA's layout three."""
    settings = {"row": {"redis_fused_row": True}, "slots": {"redis_fused_slots": True}}
    path = make_config(tmp_path, standalone_server, table_store_mode=0, **settings.get(fused, {}))
    creator = de.RedisTableCreator(de.RedisTableConfig(redis_config_abs_dir=str(path)))
    batches = _batches(seed=4)
    layer, optimizer = _train_redis(
        creator, unique_name, OPTIMIZERS["adam"], batches[:1], graph=True
    )
    step = _graph_step(layer, optimizer)

    ids, upstream = batches[1]
    step(tf.constant(ids), tf.constant(upstream))  # traced, and a first step for new ids
    ids, upstream = batches[2]
    used = _commands_used_by(
        standalone_server, lambda: step(tf.constant(ids), tf.constant(upstream))
    )
    want = {"row": 1, "slots": 2, "none": 3}[fused]
    assert used == {"hmget": want, "hset": want}


def test_fused_row_refuses_two_wrappers_of_one_embedding(
    tmp_path, standalone_server, make_config, unique_name
):
    """Two wrappers of one de.Variable have a set of slots each; a fused row holds one."""
    creator = _fused_row_creator(tmp_path, standalone_server, make_config)
    params = de.get_variable(unique_name, dim=DIM, kv_creator=creator, initializer=0.1)
    optimizer = de.DynamicEmbeddingOptimizer(keras.optimizers.Adam(0.1))
    ids = tf.constant([1, 2], tf.int64)
    with tf.GradientTape() as tape:
        first, a = de.embedding_lookup(params, ids, name="a", return_trainable=True)
        second, b = de.embedding_lookup(params, ids, name="b", return_trainable=True)
        loss = tf.reduce_sum(first) + tf.reduce_sum(second)
    grads = tape.gradient(loss, [a, b])
    with pytest.raises(ValueError, match="same redis_fused_row values"):
        optimizer.apply_gradients(zip(grads, [a, b], strict=True))


def _train_twice_per_step(tmp_path, server, make_config, name, fused, steps):
    """Adam, a layer called twice per step (ids shared between the calls); returns the
    touched ids' rows and slots (m, v side by side) and the commands of the last step."""
    settings = {"row": {"redis_fused_row": True}, "slots": {"redis_fused_slots": True}}
    path = make_config(tmp_path, server, table_store_mode=0, **settings.get(fused, {}))
    creator = de.RedisTableCreator(de.RedisTableConfig(redis_config_abs_dir=str(path)))
    layer = de.keras.layers.Embedding(DIM, name=name, kv_creator=creator, initializer=INIT_ROW)
    layer.params.upsert(tf.constant(STORED_IDS), _stored_rows())
    optimizer = de.DynamicEmbeddingOptimizer(keras.optimizers.Adam(0.05))

    @tf.function
    def step(a, b, upstream):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum((layer(a) - 2.0 * layer(b)) * upstream)
        grads = tape.gradient(loss, layer.trainable_weights)
        optimizer.apply_gradients(zip(grads, layer.trainable_weights, strict=True))

    for i, (a, b, upstream) in enumerate(steps):
        if i == len(steps) - 1:
            before = _command_calls(server)
        step(tf.constant(a), tf.constant(b), tf.constant(upstream))
    after = _command_calls(server)
    used = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    used.pop("info", None)
    touched = np.unique(np.concatenate([np.concatenate([a, b]) for a, b, _ in steps]))
    rows = layer.params.lookup(tf.constant(touched)).numpy()
    tables = optimizer.slot_variables(layer)
    if fused == "row":
        slots = tables["slots"].lookup_slots(touched)
    elif fused == "slots":
        slots = tables["slots"].lookup(tf.constant(touched)).numpy()
    else:
        slots = np.concatenate(
            [tables[s].lookup(tf.constant(touched)).numpy() for s in ("m", "v")], axis=1
        )
    return rows, slots, used


def test_layouts_agree_when_a_layer_is_called_twice_per_step(
    tmp_path, standalone_server, make_config, unique_name
):
    """TFRA's layout, fused slots and fused row give the same rows and slots on the same
    gradients, also when a step looks the embedding up twice (repeated ids across the calls:
    the fused row's kept slots are merged as the wrapper merges its rows)."""
    rng = np.random.default_rng(21)
    steps = []
    for _ in range(4):
        a = rng.integers(0, VOCAB, 6).astype(np.int64)
        b = rng.integers(0, VOCAB, 6).astype(np.int64)
        b[0] = a[1]  # an id in both calls
        steps.append((a, b, rng.normal(size=(6, DIM)).astype(np.float32)))
    results = {
        fused: _train_twice_per_step(
            tmp_path,
            standalone_server,
            make_config,
            f"{unique_name}_{fused or 'tfra'}",
            fused,
            steps,
        )
        for fused in ("", "slots", "row")
    }
    rows, slots, _ = results[""]
    for fused in ("slots", "row"):
        np.testing.assert_allclose(results[fused][0], rows, rtol=1e-5, err_msg=fused)
        np.testing.assert_allclose(results[fused][1], slots, rtol=1e-5, err_msg=fused)
    # Two lookups, one write; the optimizer read nothing (fused slots: one more read).
    assert results["row"][2] == {"hmget": 2, "hset": 1}
    assert results["slots"][2] == {"hmget": 3, "hset": 2}


@pytest.mark.parametrize("fused", ["row", "none"])
def test_with_write_behind_a_steps_write_rides_with_the_next_lookup(
    tmp_path, standalone_server, make_config, unique_name, fused
):
    """redis_write_behind_ms: a step's HSETs do not reach Redis with the step; the next
    step's lookup carries them (in its own pipeline), and a flush sends the last ones."""
    settings = {"redis_write_behind_ms": 600_000}
    if fused == "row":
        settings["redis_fused_row"] = True
    path = make_config(tmp_path, standalone_server, table_store_mode=0, **settings)
    creator = de.RedisTableCreator(de.RedisTableConfig(redis_config_abs_dir=str(path)))
    batches = _batches(seed=4)
    layer, optimizer = _train_redis(
        creator, unique_name, OPTIMIZERS["adam"], batches[:1], graph=True
    )
    step = _graph_step(layer, optimizer)

    def used_by(action):
        return _commands_used_by(standalone_server, action)

    ids, upstream = batches[1]
    step(tf.constant(ids), tf.constant(upstream))  # traced, and a first step for new ids
    tfra.store.flush_deferred_writes()
    n = {"row": 1, "none": 3}[fused]
    ids, upstream = batches[2]
    assert used_by(lambda: step(tf.constant(ids), tf.constant(upstream))) == {"hmget": n}
    ids, upstream = batches[3]
    assert used_by(lambda: step(tf.constant(ids), tf.constant(upstream))) == {
        "hmget": n,
        "hset": n,
    }
    assert used_by(tfra.store.flush_deferred_writes) == {"hset": n}
