"""The main job: a small click-through-rate model whose embedding tables live in Redis.

A synthetic dataset of (user id, item id) pairs with power-law id frequencies (over a million
distinct ids) and clicks drawn from a hidden per-id preference. The model looks user and item ids
up in two Redis-backed embedding tables, concatenates the rows and feeds a small MLP. It is a
plain ``keras.Model``: with ``de.DynamicEmbeddingOptimizer(Adam)`` as its optimizer, Keras' own
``fit`` trains the MLP and the embedding rows, which are written back to Redis with their Adam
slots every step. The report ends with the validation AUC of each epoch and whether it rose
every epoch, i.e. whether the model generalizes rather than memorizes (exit code 1 if not).

Redis: ``--config FILE`` (a TFRA-style JSON config), else ``$TFRA_REDIS_CONFIG_PATH``; with
neither, a private redis-server is started on a free port and stopped at the end.

    python examples/train_ctr.py                      # private server, default sizes
    python examples/train_ctr.py --config redis.json  # your Redis
    python examples/train_ctr.py --compare-in-memory  # also time the same model in memory
    python examples/train_ctr.py --prefetch           # read batch N+1's rows during step N
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

USER_VOCAB = 4_000_000
ITEM_VOCAB = 500_000
# Adam's epsilon floors the per-coordinate step normalization. Keras' 1e-7 lets a row seen once
# take a full-size step on one click, so the second epoch over the same examples memorizes them:
# with 1e-7 and learning rate 0.01, training AUC went 0.64 -> 0.89 while validation AUC fell
# (0.702 -> 0.695); an L2 penalty on the looked-up rows (1e-3 to 0.3) or a 10x smaller learning
# rate in epoch 2 did not prevent that. With 3e-5 a row moves in proportion to the evidence for
# it, which frequent ids have and rare ids lack; learning rate 0.02 keeps the rest fast. Measured
# at the default sizes: validation AUC 0.654 -> 0.703, validation loss 0.645 -> 0.626. A third
# epoch over the same examples memorizes again (0.702 -> 0.695), and the report says so.
LEARNING_RATE_DEFAULT = 0.02
ADAM_EPSILON_DEFAULT = 3e-5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="TFRA-style Redis JSON config (default: private server)")
    p.add_argument("--samples", type=int, default=2_000_000, help="training examples")
    p.add_argument(
        "--epochs",
        type=int,
        default=2,
        help="passes over the examples (default 2; a third pass over the same examples "
        "overfits again: validation AUC 0.702 -> 0.695)",
    )
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--dim", type=int, default=16, help="embedding size")
    p.add_argument("--learning-rate", type=float, default=LEARNING_RATE_DEFAULT)
    p.add_argument(
        "--adam-epsilon",
        type=float,
        default=ADAM_EPSILON_DEFAULT,
        help=f"Adam's epsilon (default {ADAM_EPSILON_DEFAULT}; larger keeps rows of rare ids "
        "from memorizing their few clicks)",
    )
    p.add_argument("--model-tag", default="ctr_example", help="model_tag_runtime of the tables")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--compare-in-memory",
        action="store_true",
        help="also train the same model with in-memory embeddings and compare step times",
    )
    p.add_argument(
        "--prefetch",
        action="store_true",
        help="read the next batch's embedding rows while a step runs (same results; pays off "
        "when Redis reads are a large part of a step, e.g. a remote server)",
    )
    p.add_argument("--report-json", help="write the final report here as JSON")
    return p.parse_args(argv)


def hidden_preference(ids: np.ndarray, salt: float) -> np.ndarray:
    """A fixed pseudo-random score per id: what the embeddings have to learn."""
    return np.sin(ids.astype(np.float64) * 12.9898 + salt) * 2.0


def make_dataset(samples: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Ids with power-law frequencies (rank = vocab * u**a) and clicks from the hidden score."""
    rng = np.random.default_rng(seed)
    users = (USER_VOCAB * rng.random(samples) ** 3).astype(np.int64)
    items = (ITEM_VOCAB * rng.random(samples) ** 2).astype(np.int64)
    logit = hidden_preference(users, 0.3) + hidden_preference(items, 1.7) - 0.5
    clicks = (rng.random(samples) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    return {"user": users, "item": items}, clicks


@contextlib.contextmanager
def redis_config(args: argparse.Namespace, workdir: Path) -> Iterator[tuple[Path, str]]:
    """Yields (config file, description): the given one, or a private server's."""
    given = args.config or os.environ.get("TFRA_REDIS_CONFIG_PATH")
    if given:
        yield Path(given), f"config {given}"
        return
    from tfra_redis import testing

    with testing.standalone() as server:
        path = workdir / "redis_config.json"
        # A throwaway server: no TTL bookkeeping (it is stopped before the tables are
        # garbage-collected), nothing saved.
        config = {
            **server.config_dict(),
            "table_store_mode": 2,
            "expire_model_tag_in_seconds": -1,
        }
        path.write_text(json.dumps(config))
        yield path, f"private redis-server on 127.0.0.1:{server.port} (pid {server.pid})"


def with_model_tag(config_path: Path, tag: str, workdir: Path) -> Path:
    """A copy of the config with this run's model tag, so the example never touches other
    tables of the same Redis."""
    config = json.loads(config_path.read_text())
    config["model_tag_runtime"] = config["model_tag_import"] = tag
    out = workdir / "run_config.json"
    out.write_text(json.dumps(config))
    out.chmod(0o600)
    return out


def build_model(
    tf,
    keras,
    de,
    dim: int,
    creator,
    learning_rate: float,
    prefetch: bool = False,
    epsilon: float = ADAM_EPSILON_DEFAULT,
):
    """Two Redis-backed embeddings -> concat -> MLP -> click probability."""
    user_in = keras.Input(shape=(), dtype="int64", name="user")
    item_in = keras.Input(shape=(), dtype="int64", name="item")
    init = keras.initializers.RandomNormal(0.0, 0.05, seed=1)
    user_emb = de.keras.layers.Embedding(dim, initializer=init, name="user_emb", kv_creator=creator)
    item_emb = de.keras.layers.Embedding(dim, initializer=init, name="item_emb", kv_creator=creator)
    x = keras.layers.Concatenate()([user_emb(user_in), item_emb(item_in)])
    x = keras.layers.Dense(64, activation="relu")(x)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    inputs = {"user": user_in, "item": item_in}
    if prefetch:
        # Prefetching the next batch's rows needs DynamicEmbeddingModel's fit loop.
        model = de.DynamicEmbeddingModel(inputs, out)
        extra = {"prefetch_embeddings": True}
    else:
        model, extra = keras.Model(inputs, out), {}
    model.compile(
        optimizer=de.DynamicEmbeddingOptimizer(
            keras.optimizers.Adam(learning_rate, epsilon=epsilon)
        ),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc")],
        **extra,
    )
    return model, (user_emb, item_emb)


def redis_tables(model, layers) -> list:
    """The embedding tables and their optimizer slot tables (Adam's m and v)."""
    slots = [v for layer in layers for v in model.optimizer.slot_variables(layer).values()]
    return [layer.params for layer in layers] + slots


def build_in_memory_model(
    keras, dim: int, learning_rate: float, epsilon: float = ADAM_EPSILON_DEFAULT
):
    """The same model with ordinary Keras embeddings over the whole vocabulary."""
    user_in = keras.Input(shape=(), dtype="int64", name="user")
    item_in = keras.Input(shape=(), dtype="int64", name="item")
    init = keras.initializers.RandomNormal(0.0, 0.05, seed=1)
    user = keras.layers.Embedding(USER_VOCAB, dim, embeddings_initializer=init)(user_in)
    item = keras.layers.Embedding(ITEM_VOCAB, dim, embeddings_initializer=init)(item_in)
    x = keras.layers.Concatenate()([user, item])
    x = keras.layers.Dense(64, activation="relu")(x)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model({"user": user_in, "item": item_in}, out)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate, epsilon=epsilon),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc")],
    )
    return model


def keras_verbosity() -> int:
    """Keras' progress bar (1) on a terminal; one line per epoch (2) otherwise. Keras 3 redraws
    its bar with ``\\r`` and ANSI codes even when stdout is a file, which made a redirected log
    hundreds of KB of control characters on a few lines."""
    return 1 if sys.stdout.isatty() else 2


class StepTimer:
    """A Keras callback recording the wall time of every training step."""

    def __init__(self, keras):
        outer = self

        class _Callback(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                outer._start = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                outer.times.append(time.perf_counter() - outer._start)

        self.times: list[float] = []
        self._start = 0.0
        self.callback = _Callback()

    def median_ms(self, skip: int = 3) -> float:
        times = self.times[skip:] or self.times
        return float(np.median(times) * 1000.0)


def redis_memory(config_path: Path) -> str:
    """used_memory of the configured servers (standalone or cluster seeds), best effort."""
    from tfra_redis import testing

    config = json.loads(config_path.read_text())
    if config.get("redis_connection_mode", 1) == 1:
        return "n/a (Sentinel: ask the master)"
    total = 0
    seen = set()
    for host, port in zip(config["redis_host_ip"], config["redis_host_port"], strict=True):
        try:
            with testing.RespConnection(
                host, port, password=config.get("redis_password") or None, timeout=2.0
            ) as conn:
                info = testing.parse_info(conn.execute("INFO", "memory"))
                replication = testing.parse_info(conn.execute("INFO", "replication"))
        except (OSError, testing.RedisReplyError) as err:
            return f"n/a ({err})"
        if replication.get("role") == "master" and (host, port) not in seen:
            seen.add((host, port))
            total += int(info.get("used_memory", 0))
    return f"{total / 2**20:.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print("generating the dataset ...", flush=True)
    features, labels = make_dataset(args.samples, args.seed)
    distinct = len(np.unique(features["user"])) + len(np.unique(features["item"]))
    print(
        f"{args.samples:,} examples, {distinct:,} distinct ids "
        f"({len(np.unique(features['user'])):,} users, {len(np.unique(features['item'])):,} "
        f"items), click rate {labels.mean():.3f}",
        flush=True,
    )
    split = int(len(labels) * 0.9)
    train = ({k: v[:split] for k, v in features.items()}, labels[:split])
    valid = ({k: v[split:] for k, v in features.items()}, labels[split:])

    import keras
    import tensorflow as tf

    import tfra_redis as tfra

    de = tfra.dynamic_embedding
    report: dict = {"samples": args.samples, "distinct_ids": distinct, "epochs": []}
    with tempfile.TemporaryDirectory(prefix="tfra-redis-example-") as tmp:
        workdir = Path(tmp)
        with redis_config(args, workdir) as (config_path, where):
            print(f"embeddings in Redis: {where}", flush=True)
            run_config = with_model_tag(config_path, args.model_tag, workdir)
            creator = de.RedisTableCreator(de.RedisTableConfig(redis_config_abs_dir=run_config))
            model, layers = build_model(
                tf,
                keras,
                de,
                args.dim,
                creator,
                args.learning_rate,
                prefetch=args.prefetch,
                epsilon=args.adam_epsilon,
            )
            # A fresh start for this model tag: no rows or optimizer slots of an earlier run.
            model.optimizer.build(model.trainable_variables)
            for table in redis_tables(model, layers):
                table.clear()
            timer = StepTimer(keras)
            history = model.fit(
                train[0],
                train[1],
                batch_size=args.batch_size,
                epochs=args.epochs,
                validation_data=valid,
                callbacks=[timer.callback],
                verbose=keras_verbosity(),
            )
            for epoch in range(args.epochs):
                report["epochs"].append({k: float(v[epoch]) for k, v in history.history.items()})
            rows = {layer.name: int(layer.params.size()) for layer in layers}
            report["rows_in_redis"] = rows
            report["redis_memory"] = redis_memory(run_config)
            report["step_ms_redis"] = timer.median_ms()
            report["batch_size"] = args.batch_size
            report["prefetch"] = args.prefetch
            if not where.startswith("private"):
                # Leave your Redis as it was. A private server is simply stopped: deleting its
                # million-row hashes would only block it for a while.
                for table in redis_tables(model, layers):
                    table.clear()

        if args.compare_in_memory:
            print("training the same model with in-memory embeddings ...", flush=True)
            mem_model = build_in_memory_model(
                keras, args.dim, args.learning_rate, args.adam_epsilon
            )
            mem_timer = StepTimer(keras)
            mem_model.fit(
                train[0],
                train[1],
                batch_size=args.batch_size,
                epochs=1,
                callbacks=[mem_timer.callback],
                verbose=keras_verbosity(),
            )
            report["step_ms_in_memory"] = mem_timer.median_ms()

    print("\n== report")
    print(f"{'epoch':>5} {'loss':>8} {'auc':>7} {'val_loss':>9} {'val_auc':>8}")
    for i, e in enumerate(report["epochs"], 1):
        print(
            f"{i:>5} {e['loss']:>8.4f} {e['auc']:>7.4f} "
            f"{e.get('val_loss', float('nan')):>9.4f} {e.get('val_auc', float('nan')):>8.4f}"
        )
    for name, n in report["rows_in_redis"].items():
        print(f"rows in Redis, {name}: {n:,}")
    print(f"Redis memory used: {report['redis_memory']}")
    print(f"median step time, batch {args.batch_size}: {report['step_ms_redis']:.1f} ms (Redis)")
    if "step_ms_in_memory" in report:
        ratio = report["step_ms_redis"] / report["step_ms_in_memory"]
        print(
            f"median step time, batch {args.batch_size}: {report['step_ms_in_memory']:.1f} ms "
            f"(in-memory embeddings); Redis / in-memory = {ratio:.2f}x"
        )
    val_auc = [e["val_auc"] for e in report["epochs"]]
    report["val_auc_rose_every_epoch"] = bool(np.all(np.diff(val_auc) > 0))
    trend = " -> ".join(f"{v:.4f}" for v in val_auc)
    if report["val_auc_rose_every_epoch"]:
        print(
            f"validation AUC {trend}: it rose every epoch, so the model generalizes to the "
            "held-out 10% of clicks"
        )
    else:
        best = int(np.argmax(val_auc)) + 1
        print(
            f"warning: validation AUC {trend} fell after epoch {best} while training went on: "
            f"the model overfits (try a larger --adam-epsilon, or --epochs {best})",
            file=sys.stderr,
        )
    if args.report_json:
        Path(args.report_json).write_text(json.dumps(report, indent=2))
    first, last = report["epochs"][0]["loss"], report["epochs"][-1]["loss"]
    if args.epochs > 1 and not last < first:
        print(f"warning: the loss did not fall ({first:.4f} -> {last:.4f})", file=sys.stderr)
        return 1
    return 0 if report["val_auc_rose_every_epoch"] else 1


if __name__ == "__main__":
    sys.exit(main())
