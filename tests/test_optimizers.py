"""Sparse optimizers applied through Redis: the same numbers as Keras' math in numpy and as the
real Keras optimizers on a dense variable, slot rows in TFRA-named tables, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from tfra_redis import RedisStore, _native
from tfra_redis.optimizers import (
    SGD,
    Adagrad,
    Adam,
    Ftrl,
    from_keras,
    keras_layer_slot_table_name,
    slot_table_name,
    sum_duplicates,
)

DIM = 3
ROWS = 6
STEPS = 5

# Each optimizer with non-default hyper-parameters, so a default silently used would show.
OPTIMIZERS = {
    "sgd": lambda: SGD(learning_rate=0.1),
    "adagrad": lambda: Adagrad(learning_rate=0.1, initial_accumulator_value=0.2, epsilon=1e-6),
    "adam": lambda: Adam(learning_rate=0.02, beta_1=0.8, beta_2=0.99, epsilon=1e-6),
    "ftrl": lambda: Ftrl(
        learning_rate=0.1,
        l1_regularization_strength=0.001,
        l2_regularization_strength=0.01,
        l2_shrinkage_regularization_strength=0.02,
        beta=0.1,
    ),
}


def f32(x: float) -> np.float32:
    return np.float32(x)


def reference_step(opt, step: int, p: np.ndarray, slots: dict[str, np.ndarray], g: np.ndarray):
    """Keras 3's ``update_step`` in numpy float32, in place. Python floats are combined in
    double precision first and rounded once when they meet a float32 array, as in TensorFlow."""
    h = opt.get_config()
    lr = f32(h["learning_rate"])
    if isinstance(opt, SGD):
        p -= g * lr
    elif isinstance(opt, Adagrad):
        acc = slots["accumulator"]
        acc += np.square(g)
        p -= (lr * g) / np.sqrt(acc + f32(h["epsilon"]))
    elif isinstance(opt, Adam):
        m, v = slots["m"], slots["v"]
        t = f32(step)
        b1p = np.power(f32(h["beta_1"]), t)
        b2p = np.power(f32(h["beta_2"]), t)
        alpha = lr * np.sqrt(f32(1) - b2p) / (f32(1) - b1p)
        m += (g - m) * f32(1 - h["beta_1"])
        v += (np.square(g) - v) * f32(1 - h["beta_2"])
        p -= (m * alpha) / (np.sqrt(v) + f32(h["epsilon"]))
    elif isinstance(opt, Ftrl):
        acc, linear = slots["accumulator"], slots["linear"]
        l2_reg = f32(h["l2_regularization_strength"]) + f32(h["beta"]) / (f32(2.0) * lr)
        power = f32(-h["learning_rate_power"])
        grad_to_use = g + f32(2 * h["l2_shrinkage_regularization_strength"]) * p
        new_acc = acc + np.square(g)
        linear += grad_to_use - ((np.power(new_acc, power) - np.power(acc, power)) / lr) * p
        quadratic = np.power(new_acc, power) / lr + f32(2) * l2_reg
        l1 = f32(h["l1_regularization_strength"])
        p[...] = (np.clip(linear, -l1, l1) - linear) / quadratic
        acc[...] = new_acc
    else:
        raise AssertionError(opt)


@pytest.fixture
def tables(standalone_server, unique_name):
    """``open(opt)`` -> (params, slots) on the session server, named as TFRA names them."""

    def open_tables(opt, dim=DIM):
        params = RedisStore(standalone_server.config_dict(), unique_name, dim)
        return params, opt.slot_stores(params)

    return open_tables


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_lazy_steps_match_keras_math_in_numpy(tables, name):
    opt = OPTIMIZERS[name]()
    params, slots = tables(opt)
    rng = np.random.default_rng(7)
    init = rng.normal(size=(ROWS, DIM)).astype(np.float32)
    # Row 0 exists before training; the others start from their initializer rows.
    stored = rng.normal(size=(1, DIM)).astype(np.float32)
    params.insert(np.array([0]), stored)
    want = init.copy()
    want[0] = stored[0]
    want_slots = {
        s: np.full((ROWS, DIM), opt.initial_slot_value(s), np.float32) for s in opt.slot_names
    }
    for step in range(1, STEPS + 1):
        # The last row never gets a gradient.
        keys = np.sort(rng.choice(ROWS - 1, size=4, replace=False)).astype(np.int64)
        grads = rng.normal(size=(keys.size, DIM)).astype(np.float32)
        opt.apply(params, slots, keys, grads, init[keys], step)
        rows, sub = want[keys], {s: a[keys] for s, a in want_slots.items()}
        reference_step(opt, step, rows, sub, grads)
        want[keys] = rows
        for s, a in sub.items():
            want_slots[s][keys] = a

    touched = np.arange(ROWS)
    got, exists = params.find(touched, return_exists=True)
    # Bit-exact: the same float32 operations in the same order (numpy's pow is libm's powf too).
    np.testing.assert_array_equal(got[exists], want[exists])
    for s, table in slots.items():
        np.testing.assert_array_equal(table.find(touched)[exists], want_slots[s][exists])
    # Rows never in a batch stay absent, with no slot rows either.
    assert not exists[-1]
    assert params.size() == int(exists.sum())
    for table in slots.values():
        assert table.size() == int(exists.sum())


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_dense_steps_match_the_keras_optimizer_on_a_variable(tables, name):
    import keras
    import tensorflow as tf

    ours = OPTIMIZERS[name]()
    keras_opt = getattr(keras.optimizers, ours.keras_name)(**ours.get_config())
    opt = from_keras(keras_opt)
    assert opt.get_config() == pytest.approx(ours.get_config())
    params, slots = tables(opt)

    rng = np.random.default_rng(11)
    init = rng.normal(size=(ROWS, DIM)).astype(np.float32)
    var = tf.Variable(init)
    keys = np.arange(ROWS, dtype=np.int64)
    for step in range(1, STEPS + 1):
        grads = rng.normal(size=(ROWS, DIM)).astype(np.float32)
        assert int(keras_opt.iterations.numpy()) + 1 == step
        keras_opt.apply_gradients([(tf.constant(grads), var)])
        opt.apply(params, slots, keys, grads, init, step)

    # Bit-exact, except FTRL: TensorFlow's pow on a tensor is Eigen's vectorised one, which can
    # differ from libm's powf (used here) by one ulp.
    tol = {"rtol": 1e-6, "atol": 1e-7} if name == "ftrl" else {"rtol": 0, "atol": 0}
    np.testing.assert_allclose(params.find(keys), var.numpy(), **tol)
    keras_slots = {
        "m": "_momentums",
        "v": "_velocities",
        "accumulator": "_accumulators",
        "linear": "_linears",
    }
    for s, table in slots.items():
        keras_slot = getattr(keras_opt, keras_slots[s])[0].numpy()
        np.testing.assert_allclose(table.find(keys), keras_slot, **tol)


@pytest.mark.parametrize("name", ["sgd", "adagrad"])
def test_keras_indexed_slices_updates_are_lazy_too(tables, name):
    """Keras applies IndexedSlices gradients to the given rows only for SGD and Adagrad, so a
    batch touching some rows matches Keras exactly."""
    import keras
    import tensorflow as tf

    ours = OPTIMIZERS[name]()
    keras_opt = getattr(keras.optimizers, ours.keras_name)(**ours.get_config())
    params, slots = tables(ours)
    rng = np.random.default_rng(3)
    init = rng.normal(size=(ROWS, DIM)).astype(np.float32)
    params.insert(np.arange(ROWS), init)
    var = tf.Variable(init)
    for step in range(1, STEPS + 1):
        keys = np.sort(rng.choice(ROWS, size=3, replace=False)).astype(np.int64)
        grads = rng.normal(size=(keys.size, DIM)).astype(np.float32)
        sparse = tf.IndexedSlices(tf.constant(grads), tf.constant(keys), tf.constant([ROWS, DIM]))
        keras_opt.apply_gradients([(sparse, var)])
        ours.apply(params, slots, keys, grads, init[keys], step)
    np.testing.assert_array_equal(params.find(np.arange(ROWS)), var.numpy())


def test_slot_rows_land_in_tables_with_tfra_names(standalone_server, unique_name):
    config = {**standalone_server.config_dict(), "model_tag_runtime": unique_name}
    params = RedisStore(config, "user_emb", 2)
    opt = Adam(learning_rate=0.1)
    slots = opt.slot_stores(params)
    assert [t.name for t in slots.values()] == [
        "user_emb_user_emb_shadow_m",
        "user_emb_user_emb_shadow_v",
    ]
    opt.apply(params, slots, [5, 9], np.ones((2, 2)), np.zeros((2, 2)), step=1)
    # The bucket keys TFRA wrote for these tables (tests/fixtures/README.md, standalone).
    for suffix, first_moment in [
        ("", None),
        ("_user_emb_shadow_m", 0.1),
        ("_user_emb_shadow_v", None),
    ]:
        bucket = f"{unique_name}:user_emb{suffix}{{3560}}"
        assert standalone_server.execute("HLEN", bucket) == 2, bucket
        if first_moment is not None:
            raw = standalone_server.execute("HGET", bucket, np.int64(5).tobytes(), decode=False)
            np.testing.assert_array_equal(
                np.frombuffer(raw, "<f4"), np.full(2, 1.0 * np.float32(0.1), np.float32)
            )


def test_tfra_slot_table_names():
    assert slot_table_name("user_emb", "m") == "user_emb_user_emb_shadow_m"
    assert slot_table_name("user_emb", "accumulator") == "user_emb_user_emb_shadow_accumulator"
    assert slot_table_name("emb", "m", shadow_name="Adam") == "emb_Adam_m"
    assert (
        keras_layer_slot_table_name("user_emb", "m")
        == "user_emb-parameter_DynamicEmbedding_user_emb-shadow_m"
    )


def test_mismatched_tables_are_refused_clearly(standalone_server, unique_name):
    config = standalone_server.config_dict()
    params = RedisStore(config, unique_name, DIM)
    opt = Adam()
    good = opt.slot_stores(params)
    keys, grads, init = np.array([1, 2]), np.ones((2, DIM)), np.zeros((2, DIM))

    wide = {**good, "v": RedisStore(config, unique_name + "_v4", DIM + 1)}
    with pytest.raises(ValueError, match=rf"{unique_name}_v4.*dim {DIM + 1}.*dim {DIM}"):
        opt.apply(params, wide, keys, grads, init, 1)
    double = {**good, "m": RedisStore(config, unique_name + "_m64", DIM, value_dtype="float64")}
    with pytest.raises(TypeError, match=rf"float32 tables only.*{unique_name}_m64.*float64"):
        opt.apply(params, double, keys, grads, init, 1)
    with pytest.raises(ValueError, match=r"missing \['v'\]"):
        opt.apply(params, {"m": good["m"]}, keys, grads, init, 1)
    with pytest.raises(ValueError, match=r"Expected shape \[2, 3\] for grads"):
        opt.apply(params, good, keys, np.ones((2, DIM + 1)), init, 1)
    with pytest.raises(ValueError, match=r"Expected shape \[2, 3\] for init_rows"):
        opt.apply(params, good, keys, grads, np.zeros(DIM), 1)
    with pytest.raises(ValueError, match="step"):
        opt.apply(params, good, keys, grads, init, 0)
    with pytest.raises(ValueError, match="key 1 appears more than once"):
        opt.apply(params, good, np.array([1, 1]), grads, init, 1)
    # The same checks in the core, when the native function is called directly.
    with pytest.raises(ValueError, match=r"float32 tables only.*float64"):
        _native.apply_gradients(
            "adam",
            {},
            params._table,
            [good["m"]._table, double["m"]._table],
            keys,
            grads.astype(np.float32).reshape(-1),
            init.astype(np.float32).reshape(-1),
            1,
        )
    # Nothing was written by the refused calls.
    assert params.size() == 0 and good["m"].size() == 0


def test_native_names_unknown_optimizers_and_hyper_parameters(standalone_server, unique_name):
    params = RedisStore(standalone_server.config_dict(), unique_name, 1)
    args = (params._table, [], np.array([1]), np.ones(1, np.float32), np.zeros(1, np.float32), 1)
    with pytest.raises(ValueError, match='"rmsprop"'):
        _native.apply_gradients("rmsprop", {}, *args)
    with pytest.raises(ValueError, match='"momentum"'):
        _native.apply_gradients("sgd", {"momentum": 0.9}, *args)
    _native.apply_gradients("sgd", {"learning_rate": 0.5}, *args)
    np.testing.assert_array_equal(params.find([1]), [[-0.5]])


def test_from_keras_refuses_what_it_cannot_mirror():
    import keras

    with pytest.raises(ValueError, match="momentum"):
        from_keras(keras.optimizers.SGD(momentum=0.9))
    with pytest.raises(ValueError, match="amsgrad"):
        from_keras(keras.optimizers.Adam(amsgrad=True))
    with pytest.raises(ValueError, match="clipnorm"):
        from_keras(keras.optimizers.Adagrad(clipnorm=1.0))
    with pytest.raises(TypeError, match="RMSprop"):
        from_keras(keras.optimizers.RMSprop())
    adam = from_keras(keras.optimizers.Adam(learning_rate=0.01, beta_2=0.99))
    assert isinstance(adam, Adam)
    assert adam.get_config() == {
        "learning_rate": float(np.float32(0.01)),
        "beta_1": 0.9,
        "beta_2": 0.99,
        "epsilon": 1e-7,
    }


def test_sum_duplicates_adds_rows_of_repeated_ids():
    keys, grads, first = sum_duplicates(
        np.array([4, 2, 4, 7]), np.array([[1.0], [2.0], [3.0], [4.0]])
    )
    np.testing.assert_array_equal(keys, [2, 4, 7])
    np.testing.assert_array_equal(grads, [[2.0], [4.0], [4.0]])
    np.testing.assert_array_equal(first, [1, 0, 3])


def test_optimizer_defaults_are_keras_defaults():
    import keras

    for cls in (SGD, Adagrad, Adam, Ftrl):
        keras_config = getattr(keras.optimizers, cls.keras_name)().get_config()
        for key, value in cls().get_config().items():
            assert keras_config[key] == pytest.approx(value), (cls.keras_name, key)
