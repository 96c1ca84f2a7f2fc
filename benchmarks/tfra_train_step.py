"""TFRA 0.8.1's own training step on the benchmark's CTR model, for ``bench_train_step.py``.

Runs inside the TFRA baseline venv (``benchmarks/setup_tfra_baseline.sh``) with
``TF_USE_LEGACY_KERAS=1``: the model the request describes (a Redis-backed embedding per
feature, concat, the hidden Dense layers, Dense 1) built with TFRA's
``de.keras.layers.Embedding`` and ``de.DynamicEmbeddingOptimizer``, trained by ``fit`` against
the Redis the JSON config names.
Prints one JSON line: the median step time and the rows TFRA wrote.

    TF_USE_LEGACY_KERAS=1 .tfra-venv/bin/python tfra_train_step.py '{"config": ..., ...}'
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_recommenders_addons as tfra  # noqa: E402

de = tfra.dynamic_embedding
keras = tf.keras


def main() -> int:
    args = json.loads(sys.argv[1])
    data = np.load(args["data"])
    names = args["features"]
    features = {k: data[k] for k in names}
    labels = data["labels"]
    creator = de.RedisTableCreator(de.RedisTableConfig(redis_config_abs_dir=args["config"]))
    dim = args["dim"]
    inputs = {k: keras.Input(shape=(), dtype=tf.int64, name=k) for k in names}
    init = keras.initializers.RandomNormal(0.0, 0.05)
    layers = {
        k: de.keras.layers.Embedding(dim, initializer=init, name=f"{k}_emb", kv_creator=creator)
        for k in names
    }
    x = keras.layers.Concatenate()([layers[k](inputs[k]) for k in names])
    for units in args["hidden"]:
        x = keras.layers.Dense(units, activation="relu")(x)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, out)
    optimizers = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}
    optimizer = de.DynamicEmbeddingOptimizer(optimizers[args["optimizer"]](args["lr"]))
    model.compile(optimizer=optimizer, loss="binary_crossentropy")

    times = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter() - self.start)

    steps = args["steps"] + args["warmup"]
    batch = args["batch_size"]
    model.fit(
        {k: v[: steps * batch] for k, v in features.items()},
        labels[: steps * batch],
        batch_size=batch,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[Timer()],
    )
    measured = times[args["warmup"] :]
    print(
        json.dumps(
            {
                "step_ms": float(np.median(measured) * 1000),
                "steps": len(measured),
                "rows": {f"{k}_emb": int(layers[k].params.size().numpy()) for k in names},
                "tfra": tfra.__version__,
                "tensorflow": tf.__version__,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
