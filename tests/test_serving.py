"""Serving in a fresh process: a model reloaded with its Redis lookups, and a table frozen into
a plain SavedModel that runs without tfra-redis."""

import json
import os
import subprocess
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

import tfra_redis as tfra
from tfra_redis import serving

de = tfra.dynamic_embedding


def run_fresh(code: str, env: dict | None = None) -> dict:
    """Runs Python code in a new interpreter and returns the JSON it prints last."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def small_model(config_path, name):
    creator = de.RedisTableCreator(de.RedisTableConfig(redis_config_abs_dir=config_path))
    ids = keras.Input(shape=(), dtype="int64", name="ids")
    emb = de.keras.layers.Embedding(
        4,
        initializer=keras.initializers.RandomNormal(0.0, 0.5, seed=3),
        name=name,
        kv_creator=creator,
    )
    out = keras.layers.Dense(1, activation="sigmoid")(emb(ids))
    model = de.DynamicEmbeddingModel({"ids": ids}, out)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="binary_crossentropy")
    return model, emb


def test_saved_model_reattaches_redis_in_a_fresh_process(
    standalone_server, make_config, tmp_path, unique_name
):
    config = make_config(tmp_path, standalone_server, table_store_mode=2)
    model, emb = small_model(config, unique_name)
    emb.params.clear()
    x = np.arange(64, dtype=np.int64)
    y = (x % 2).astype(np.float32)
    model.fit({"ids": x}, y, batch_size=16, epochs=2, verbose=0)
    expected = model.predict({"ids": x}, verbose=0).reshape(-1)
    path = serving.save_model(model, tmp_path / "model.keras")

    got = run_fresh(
        f"""
        import json, numpy as np
        from tfra_redis import serving
        model = serving.load_model({str(path)!r}, config={str(config)!r})
        x = np.arange(64, dtype=np.int64)
        print(json.dumps(model.predict({{"ids": x}}, verbose=0).reshape(-1).tolist()))
        """
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # The rows came from Redis, not from the file: changing one in Redis changes the prediction.
    emb.params.upsert(tf.constant([0], tf.int64), tf.constant([[9.0, 9.0, 9.0, 9.0]]))
    changed = run_fresh(
        f"""
        import json, numpy as np
        from tfra_redis import serving
        model = serving.load_model({str(path)!r}, config={str(config)!r})
        print(json.dumps(model.predict({{"ids": np.array([0])}}, verbose=0).reshape(-1).tolist()))
        """
    )
    assert abs(changed[0] - expected[0]) > 1e-3
    emb.params.clear()


def test_frozen_table_serves_without_tfra_redis(
    standalone_server, make_config, tmp_path, unique_name
):
    config = make_config(tmp_path, standalone_server, table_store_mode=2)
    _, emb = small_model(config, unique_name)
    emb.params.clear()
    keys = np.array([3, 5, 1 << 40], dtype=np.int64)
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    emb.params.upsert(tf.constant(keys), tf.constant(rows))

    frozen = serving.freeze_embedding(emb)

    class Serve(tf.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
        def __call__(self, ids):
            return self.layer(ids)

    export_dir = tmp_path / "frozen"
    tf.saved_model.save(Serve(frozen), str(export_dir))
    got = run_fresh(
        f"""
        import json, sys, tensorflow as tf
        served = tf.saved_model.load({str(export_dir)!r})
        out = served(tf.constant([5, 3, 7, {1 << 40}], tf.int64)).numpy()
        assert "tfra_redis" not in sys.modules
        print(json.dumps(out.tolist()))
        """
    )
    np.testing.assert_array_equal(got[0], rows[1])
    np.testing.assert_array_equal(got[1], rows[0])
    np.testing.assert_array_equal(got[2], [0, 0, 0, 0])  # unseen: the default row
    np.testing.assert_array_equal(got[3], rows[2])
    emb.params.clear()


def test_freeze_refuses_tables_too_large(standalone_server, make_config, tmp_path, unique_name):
    config = make_config(tmp_path, standalone_server, table_store_mode=2)
    _, emb = small_model(config, unique_name)
    emb.params.upsert(tf.constant([1, 2, 3], tf.int64), tf.zeros([3, 4]))
    try:
        import pytest

        with pytest.raises(ValueError, match="max_rows"):
            serving.freeze_embedding(emb, max_rows=2)
    finally:
        emb.params.clear()
