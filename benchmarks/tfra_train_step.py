"""TFRA 0.8.1's own training step on the example model, for ``bench_train_step.py``.

Runs inside the TFRA baseline venv (``benchmarks/setup_tfra_baseline.sh``) with
``TF_USE_LEGACY_KERAS=1``: the example model (``examples/train_ctr.py``: two Redis-backed
embeddings, concat, Dense 64, Dense 1) built with TFRA's ``de.keras.layers.Embedding`` and
``de.DynamicEmbeddingOptimizer``, trained by ``fit`` against the Redis the JSON config names.
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
    features = {"user": data["user"], "item": data["item"]}
    labels = data["labels"]
    creator = de.RedisTableCreator(de.RedisTableConfig(redis_config_abs_dir=args["config"]))
    dim = args["dim"]
    user_in = keras.Input(shape=(), dtype=tf.int64, name="user")
    item_in = keras.Input(shape=(), dtype=tf.int64, name="item")
    init = keras.initializers.RandomNormal(0.0, 0.05)
    user_emb = de.keras.layers.Embedding(dim, initializer=init, name="user_emb", kv_creator=creator)
    item_emb = de.keras.layers.Embedding(dim, initializer=init, name="item_emb", kv_creator=creator)
    x = keras.layers.Concatenate()([user_emb(user_in), item_emb(item_in)])
    x = keras.layers.Dense(64, activation="relu")(x)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model({"user": user_in, "item": item_in}, out)
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
                "rows": {
                    "user_emb": int(user_emb.params.size().numpy()),
                    "item_emb": int(item_emb.params.size().numpy()),
                },
                "tfra": tfra.__version__,
                "tensorflow": tf.__version__,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
