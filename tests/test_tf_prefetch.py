"""Prefetching the next batch's embedding rows: training gives the same results with and without
it, rows written by a step are never served stale to the next one, and errors of a background
read reach the user. Against real redis-servers."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfra_redis as tfra  # noqa: E402
from tfra_redis import (
    optimizers,  # noqa: E402
    testing,  # noqa: E402
)
from tfra_redis.dynamic_embedding.training import _PrefetchingTrainFunction  # noqa: E402

de = tfra.dynamic_embedding

DIM = 4
VOCAB = 24
BATCH = 16
IDS_PER_ROW = 2


pytestmark = pytest.mark.usefixtures("collect_tables_at_module_end")


@pytest.fixture
def creator(tmp_path, standalone_server, make_config):
    path = make_config(tmp_path, standalone_server, table_store_mode=2)
    return de.RedisTableCreator(de.RedisTableConfig(redis_config_abs_dir=str(path)))


def _overlapping_batches(steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Batches of ``BATCH`` rows drawn from a small vocabulary, so that consecutive batches
    share most ids: a row updated by one step is looked up again by the next."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, size=(steps * BATCH, IDS_PER_ROW)).astype(np.int64)
    score = rng.normal(size=VOCAB)
    labels = (score[ids[:, 0]] + score[ids[:, 1]] > 0).astype(np.float32)[:, None]
    return ids, labels


def _embedding(creator, name):
    # A random initializer: rows of ids seen for the first time come from a generator, whose
    # draws must not shift when lookups are prefetched.
    return de.keras.layers.Embedding(
        DIM,
        name=name,
        kv_creator=creator,
        initializer=keras.initializers.RandomNormal(0.0, 0.3, seed=5),
    )


def _functional(creator, name):
    ids = keras.Input(shape=(IDS_PER_ROW,), dtype="int64")
    x = keras.layers.Flatten()(_embedding(creator, name)(ids))
    x = keras.layers.Dense(8, activation="tanh", kernel_initializer=keras.initializers.Ones())(x)
    out = keras.layers.Dense(1, activation="sigmoid", kernel_initializer="ones")(x)
    return de.DynamicEmbeddingModel(ids, out)


class TwoLookupsModel(de.DynamicEmbeddingModel):
    """Subclassed; looks one embedding up twice per step and a second one once."""

    def __init__(self, creator, name):
        super().__init__()
        self.shared = _embedding(creator, f"{name}_a")
        self.other = _embedding(creator, f"{name}_b")
        self.dense = keras.layers.Dense(1, activation="sigmoid", kernel_initializer="ones")

    def call(self, ids):
        left, right = self.shared(ids[:, 0]), self.shared(ids[:, 1])
        both = self.other(ids[:, 0] + ids[:, 1])
        return self.dense(tf.concat([left * right, both], axis=-1))


class _StepLosses(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.losses: list[float] = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


def _embeddings(model) -> list:
    return [
        layer for layer in model._flatten_layers(include_self=False) if hasattr(layer, "params")
    ]


def _train(model, optimizer, prefetch: bool, epochs: int = 3):
    ids, labels = _overlapping_batches(steps=6)
    model.compile(optimizer=optimizer, loss="binary_crossentropy", prefetch_embeddings=prefetch)
    record = _StepLosses()
    model.fit(ids, labels, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[record])  # fmt: skip
    tables = []
    for layer in _embeddings(model):
        keys, values = (t.numpy() for t in layer.params.export())
        order = np.argsort(keys)
        tables.append((keys[order], values[order]))
    return record.losses, tables, [w.numpy() for w in model.weights]


@pytest.mark.parametrize("build", [_functional, TwoLookupsModel], ids=["functional", "subclassed"])
@pytest.mark.parametrize(
    "make_optimizer",
    [lambda: keras.optimizers.SGD(0.5), lambda: keras.optimizers.Adam(0.05)],
    ids=["sgd", "adam"],
)
def test_prefetch_trains_exactly_as_without(creator, unique_name, build, make_optimizer):
    runs = {}
    for prefetch in (False, True):
        model = build(creator, f"{unique_name}_{int(prefetch)}")
        runs[prefetch] = _train(model, make_optimizer(), prefetch)
        prefetching = isinstance(model.train_function, _PrefetchingTrainFunction)
        assert prefetching is prefetch
        stats = [layer.params.table.store.prefetch_stats for layer in _embeddings(model)]
    losses, tables, weights = runs[True]
    base_losses, base_tables, base_weights = runs[False]
    assert len(losses) == 3 * 6
    np.testing.assert_allclose(losses, base_losses, rtol=1e-6)
    assert len(tables) == len(base_tables)
    for (keys, values), (base_keys, base_values) in zip(tables, base_tables, strict=True):
        np.testing.assert_array_equal(keys, base_keys)
        np.testing.assert_allclose(values, base_values, rtol=1e-6, atol=1e-7)
    for w, base in zip(weights, base_weights, strict=True):
        np.testing.assert_allclose(w, base, rtol=1e-6, atol=1e-7)
    # The lookups used the prefetched rows, and some of them had been written by the step in
    # between: served as prefetched, they would have been stale and the results would differ.
    for s in stats:
        # Every step but the first of each epoch (and the second of fit) used prefetched rows.
        assert s.taken >= 3 * 5 - 1
        assert s.patched + s.reread > 0
    # Without the re-reads, the rows taken would be those of the previous step: check that the
    # data makes that matter, i.e. the next batch shares ids with the current one.
    ids, _ = _overlapping_batches(steps=6)
    batches = ids.reshape(6, -1)
    assert all(np.intersect1d(a, b).size for a, b in zip(batches, batches[1:], strict=False))


def test_prefetch_trains_exactly_as_without_when_the_native_op_is_built(
    creator, unique_name, native_library, monkeypatch
):
    """Where the native lookup op is on, the prefetching trainer still traces its step with
    numpy_function lookups: only they take the prefetched rows (the native op reads Redis
    itself, which would waste every prefetch; the test's prefetch counts catch that)."""
    monkeypatch.setenv("TFRA_REDIS_NATIVE_OPS", "1")
    test_prefetch_trains_exactly_as_without(
        creator, unique_name, TwoLookupsModel, lambda: keras.optimizers.Adam(0.05)
    )


def test_prefetch_is_off_in_eager_mode(creator, unique_name):
    model = _functional(creator, unique_name)
    ids, labels = _overlapping_batches(steps=2)
    model.compile(
        optimizer="sgd", loss="binary_crossentropy", run_eagerly=True, prefetch_embeddings=True
    )
    model.fit(ids, labels, batch_size=BATCH, epochs=1, verbose=0)
    assert not isinstance(model.train_function, _PrefetchingTrainFunction)


# -- the store level: prefetch, write, find -----------------------------------------------------


@pytest.fixture
def store(tmp_path, standalone_server, make_config, unique_name):
    path = make_config(tmp_path, standalone_server)
    return tfra.RedisStore(str(path), unique_name, DIM)


def test_find_after_prefetch_sees_writes_made_since(store):
    keys = np.arange(10, dtype=np.int64)
    store.insert(keys[:6], np.ones((6, DIM), np.float32))
    store.prefetch([keys])
    # Written after the prefetch started: updated (0, 1), inserted (8), removed (5).
    store.insert(np.array([0, 1, 8]), np.full((3, DIM), 7.0, np.float32))
    store.remove(np.array([5]))
    default = np.full((10, DIM), -1.0, np.float32)
    rows, exists = store.find(keys, default=default, return_exists=True)
    assert store.prefetch_stats.taken == 1
    expected, expected_exists = store._read(keys)  # a plain read, made now
    expected[~expected_exists] = -1.0
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_array_equal(exists, expected_exists)
    np.testing.assert_array_equal(exists, [1, 1, 1, 1, 1, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(rows[[0, 1, 8], 0], [7.0, 7.0, 7.0])
    np.testing.assert_array_equal(rows[[2, 3, 4], 0], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(rows[[5, 6, 7, 9], 0], [-1.0] * 4)


def test_prefetch_is_only_used_for_the_same_keys_and_only_once(store):
    store.insert(np.array([1, 2]), np.ones((2, DIM), np.float32))
    store.prefetch([np.array([1, 2])])
    store.find(np.array([2, 1]))  # other keys (order counts): read directly
    assert store.prefetch_stats.taken == 0
    store.find(np.array([1, 2]))
    store.find(np.array([1, 2]))
    assert store.prefetch_stats.taken == 1


def test_optimizer_writes_make_prefetched_rows_fresh(store):
    opt = optimizers.Adam(0.1)
    slots = opt.slot_stores(store)
    keys = np.array([3, 4, 5], dtype=np.int64)
    init = np.zeros((3, DIM), np.float32)
    opt.apply(store, slots, keys, np.ones((3, DIM), np.float32), init, step=1)
    store.prefetch([keys])
    opt.apply(store, slots, keys[:2], np.ones((2, DIM), np.float32), init[:2], step=2)
    rows = store.find(keys)
    np.testing.assert_array_equal(rows, store._read(keys)[0])
    assert store.prefetch_stats.patched + store.prefetch_stats.reread == 2


def test_errors_of_a_prefetch_reach_the_find_that_uses_it(tmp_path, make_config, unique_name):
    with testing.standalone() as server:
        path = make_config(tmp_path, server, redis_retry_deadline_ms=0, redis_socket_timeout=200)
        store = tfra.RedisStore(str(path), unique_name, DIM, manage_ttl=False)
        keys = np.arange(5, dtype=np.int64)
        store.insert(keys, np.ones((5, DIM), np.float32))
        with server.pausing():
            store.prefetch([keys])
            pending = store._prefetcher._pending[0].future
            with pytest.raises(tfra.RedisTableError):
                pending.result(timeout=30)
        # The server answers again and a direct read would succeed; the find that takes the
        # failed prefetch must still raise its error rather than hide it.
        np.testing.assert_array_equal(store._read(keys)[0], 1.0)
        with pytest.raises(tfra.RedisTableError):
            store.find(keys)
        np.testing.assert_array_equal(store.find(keys), 1.0)  # the next find reads again


def test_fused_row_trains_as_tfras_layout_with_and_without_prefetch(
    tmp_path, standalone_server, make_config, unique_name
):
    """redis_fused_row with Adam: the same losses, tables and slots as TFRA's layout, also
    when the lookups take prefetched rows (they hold no slots: the optimizer reads those), and
    when each step's write waits for the next command on its rows (redis_write_behind_ms):
    the prefetch of batch N+1 may start before step N's write reaches Redis."""
    runs = {}
    for fused, prefetch, behind in (
        (False, False, 0),
        (True, False, 0),
        (True, True, 0),
        (True, True, 600_000),
        (False, True, 600_000),
    ):
        path = make_config(
            tmp_path,
            standalone_server,
            table_store_mode=2,
            redis_fused_row=fused,
            redis_write_behind_ms=behind,
        )
        creator = de.RedisTableCreator(de.RedisTableConfig(redis_config_abs_dir=str(path)))
        name = f"{unique_name}_{int(fused)}{int(prefetch)}{int(bool(behind))}"
        model = TwoLookupsModel(creator, name)
        optimizer = keras.optimizers.Adam(0.05)
        losses, tables, weights = _train(model, optimizer, prefetch)
        slots = []
        for layer, (keys, _) in zip(_embeddings(model), tables, strict=True):
            found = optimizer.slot_variables(layer)
            if fused:
                slots.append(found["slots"].lookup_slots(keys))
            else:
                m, v = (found[s].lookup(tf.constant(keys)).numpy() for s in ("m", "v"))
                slots.append(np.concatenate([m, v], axis=1))
        runs[fused, prefetch, behind] = (losses, tables, weights, slots)
    base_losses, base_tables, base_weights, base_slots = runs[False, False, 0]
    for run in list(runs)[1:]:
        losses, tables, weights, slots = runs[run]
        np.testing.assert_allclose(losses, base_losses, rtol=1e-5, err_msg=str(run))
        for (keys, values), (base_keys, base_values) in zip(tables, base_tables, strict=True):
            np.testing.assert_array_equal(keys, base_keys)
            np.testing.assert_allclose(values, base_values, rtol=1e-5, atol=1e-6)
        for got, want in zip(slots, base_slots, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        for w, base in zip(weights, base_weights, strict=True):
            np.testing.assert_allclose(w, base, rtol=1e-5, atol=1e-6)
