"""Time per training step of a CTR model, Redis-backed embeddings against in-memory ones and
against TFRA 0.8.1, on the same data in one run.

Two models (``--model``):

* ``example`` (default): the example model (``examples/train_ctr.py``): user and item ids,
  dim 16, MLP 64-1;
* ``ctr3``: the performance issue's 3-feature CTR model: user (1M), item (200k) and category
  (1k) ids drawn from Zipf distributions (exponent 1.05, ranks shuffled over the id space),
  dim 32, MLP 128-64-1.

Runs ``model.fit`` (graph mode) at batch 4,096 for:

* **redis**: the example model, embeddings in a private redis-server, with and without
  prefetching the next batch's rows (``compile(prefetch_embeddings=...)``), Adam and SGD, and
  with Adam's slots fused into one table (``redis_fused_slots``: **redis+fused**), and with
  Adam's slots in each row's own field (``redis_fused_row``: **redis+fusedrow**; one read
  and one write per id and step); with ``--write-behind MS`` also Adam with
  ``redis_write_behind_ms`` (**redis+behind**, **redis+fusedrow+behind**: each step's write
  rides in the next step's lookup pipeline, one round trip per step less);
* **memory-big**: the example's in-memory model, ``keras.layers.Embedding`` over the whole
  4.5M-id vocabulary (Keras' Adam updates every row of it every step);
* **memory-fair**: in-memory embeddings whose vocabulary is just the ids in the data (remapped
  to 0..V-1), Adam and SGD;
* **dense-only**: the same MLP fed the two embedding rows as inputs (no embedding at all): what
  the dense compute and Keras' per-step work cost;
* **tfra-0.8.1**: TFRA's own training of the same model on the same server (its C++ Redis ops,
  tf_keras, TensorFlow 2.16), run in the venv ``benchmarks/setup_tfra_baseline.sh`` makes;
  the column says "not installed" without it.

For the Redis runs each step is split into lookup (time inside ``RedisStore.find`` on the
step's critical path), embedding apply (the optimizer step's reads of slot rows and writes
of rows and slots in Redis), the prefetch driver
(computing the next batch's ids and starting their reads) and the rest (dense compute, TF and
Keras). Overlapping calls (two tables at once) count once.

    python benchmarks/bench_train_step.py --quick   # under a minute
    python benchmarks/bench_train_step.py           # more steps, two rounds (a few minutes)
    python benchmarks/bench_train_step.py --model ctr3 --optimizers adam
    python benchmarks/bench_train_step.py --write-behind 1000 --delay-ms 0.25  # 0.5 ms RTT

Prints a table and writes ``benchmarks/results/train_step-<timestamp>.json``. Compare ratios
from one run; the machine's other load moves absolute numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import train_ctr  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_store import delay_proxy  # noqa: E402

WARMUP_STEPS = 3  # tracing and first-touch costs; not timed


@dataclass(frozen=True)
class ModelSpec:
    """A CTR model: one embedding per id feature, concatenated, then an MLP."""

    features: dict[str, int]  # feature -> vocabulary size (ids are 0..vocab-1)
    hidden: tuple[int, ...]
    dim: int


MODELS = {
    "example": ModelSpec(
        {"user": train_ctr.USER_VOCAB, "item": train_ctr.ITEM_VOCAB}, (64,), dim=16
    ),
    "ctr3": ModelSpec({"user": 1_000_000, "item": 200_000, "category": 1_000}, (128, 64), 32),
}


def zipf_ids(rng: np.random.Generator, vocab: int, samples: int, exponent: float) -> np.ndarray:
    """Ids whose frequencies follow Zipf's law over ``vocab`` ids; the popular ranks are spread
    over the id space (a random permutation), as real ids are."""
    weights = 1.0 / np.arange(1, vocab + 1, dtype=np.float64) ** exponent
    ranks = np.searchsorted(np.cumsum(weights / weights.sum()), rng.random(samples))
    return rng.permutation(vocab)[np.minimum(ranks, vocab - 1)].astype(np.int64)


def make_data(
    model: str, spec: ModelSpec, samples: int, seed: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    if model == "example":
        return train_ctr.make_dataset(samples, seed)
    rng = np.random.default_rng(seed)
    features = {k: zipf_ids(rng, v, samples, 1.05) for k, v in spec.features.items()}
    logit = sum(
        train_ctr.hidden_preference(ids, 0.7 * i) for i, ids in enumerate(features.values())
    )
    clicks = (rng.random(samples) < 1.0 / (1.0 + np.exp(-(logit - 0.5)))).astype(np.float32)
    return features, clicks


@dataclass
class Result:
    name: str
    optimizer: str
    steps: int
    step_ms: float
    split_ms: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


class Intervals:
    """(start, end) wall-clock intervals of instrumented calls, by kind."""

    def __init__(self) -> None:
        self.by_kind: dict[str, list[tuple[float, float]]] = {}

    def wrap(self, owner: type, attr: str, kind: str) -> Callable[[], None]:
        """Times every call of ``owner.attr``; returns the function that undoes it."""
        original = getattr(owner, attr)
        spans = self.by_kind.setdefault(kind, [])

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spans.append((start, time.perf_counter()))

        setattr(owner, attr, timed)
        return lambda: setattr(owner, attr, original)

    def clear(self) -> None:
        for spans in self.by_kind.values():
            spans.clear()

    def summed(self, kind: str, start: float, end: float) -> float:
        """Seconds of the calls of ``kind`` that started in [start, end], overlaps counted
        twice: above :meth:`covered` when calls ran at the same time."""
        return sum(e - s for s, e in self.by_kind.get(kind, []) if start <= s < end)

    def covered(self, kind: str, start: float, end: float) -> float:
        """Seconds of [start, end] covered by calls of ``kind`` (overlaps counted once)."""
        clipped = sorted(
            (max(s, start), min(e, end))
            for s, e in self.by_kind.get(kind, [])
            if e > start and s < end
        )
        total, reach = 0.0, start
        for s, e in clipped:
            if e > reach:
                total += e - max(s, reach)
                reach = e
        return total


class StepWindows:
    """A Keras callback recording each step's (begin, end) times."""

    def __init__(self, keras: Any) -> None:
        outer = self
        self.windows: list[tuple[float, float]] = []

        class _Callback(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                outer._begin = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                outer.windows.append((outer._begin, time.perf_counter()))

        self.callback = _Callback()


def timed_fit(keras: Any, model: Any, x: Any, y: np.ndarray, batch: int, steps: int) -> Any:
    """Warms ``model`` up, then fits ``steps`` batches; returns the step windows."""
    first = WARMUP_STEPS * batch

    def part(lo: int, hi: int) -> Any:
        return {k: v[lo:hi] for k, v in x.items()} if isinstance(x, dict) else x[lo:hi]

    model.fit(part(0, first), y[:first], batch_size=batch, epochs=1, shuffle=False, verbose=0)
    windows = StepWindows(keras)
    end = first + steps * batch
    model.fit(
        part(first, end),
        y[first:end],
        batch_size=batch,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[windows.callback],
    )
    return windows.windows


def median_ms(values: list[float]) -> float:
    return float(np.median(values) * 1000.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few steps, one round (< 1 min)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--model", choices=sorted(MODELS), default="example")
    p.add_argument("--dim", type=int, help="row size (default: the model's, 16 or 32)")
    p.add_argument(
        "--optimizers",
        default="adam,sgd",
        help="comma-separated, of adam and sgd (default both)",
    )
    p.add_argument("--steps", type=int, help="timed steps per run (default 40, quick 12)")
    p.add_argument(
        "--big-steps", type=int, help="timed steps of memory-big (default 8, quick 4): slow"
    )
    p.add_argument("--rounds", type=int, help="rounds; the best median counts (default 2)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--no-prefetch",
        dest="prefetch",
        action="store_false",
        help="skip the redis+prefetch runs (a shorter run on a busy machine)",
    )
    p.add_argument(
        "--redis-only",
        action="store_true",
        help="skip the in-memory and dense-only runs (a shorter run on a busy machine)",
    )
    p.add_argument(
        "--tfra-venv",
        default=str(ROOT / "benchmarks" / ".tfra-venv"),
        help="venv with TFRA 0.8.1 (benchmarks/setup_tfra_baseline.sh); its training step is "
        "timed beside ours when it exists",
    )
    p.add_argument(
        "--write-behind",
        type=int,
        default=0,
        metavar="MS",
        help="also run Adam with redis_write_behind_ms=MS (TFRA's layout: redis+behind, and "
        "redis_fused_row: redis+fusedrow+behind): each step's write rides with the next lookup",
    )
    p.add_argument(
        "--delay-ms",
        type=float,
        default=0.0,
        help="every Redis client (ours and TFRA's) reaches the server through delay_proxy.py "
        "with this one-way delay, as across a network",
    )
    p.add_argument("--out", help="JSON path (default benchmarks/results/train_step-<time>.json)")
    args = p.parse_args(argv)
    args.steps = args.steps or (12 if args.quick else 40)
    args.big_steps = args.big_steps or (4 if args.quick else 8)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.dim = args.dim or MODELS[args.model].dim
    args.optimizers = [o.strip() for o in args.optimizers.split(",") if o.strip()]
    unknown = set(args.optimizers) - {"adam", "sgd"}
    if unknown or not args.optimizers:
        p.error(f"--optimizers: expected adam and/or sgd, got {args.optimizers}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    batch = args.batch_size
    samples = (WARMUP_STEPS + max(args.steps, args.big_steps)) * batch
    spec = MODELS[args.model]
    features, labels = make_data(args.model, spec, samples, args.seed)
    names = list(spec.features)

    import keras

    import tfra_redis as tfra
    from tfra_redis import testing
    from tfra_redis.dynamic_embedding import optimizer as de_optimizer
    from tfra_redis.dynamic_embedding.training import _PrefetchingTrainFunction

    de = tfra.dynamic_embedding
    optimizer_classes = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}
    lr = 0.01
    intervals = Intervals()
    undo = [
        intervals.wrap(tfra.RedisStore, "find", "lookup"),
        # redis_fused_row: the staging lookup reads rows with their slots, the write-back
        # writes both in one value.
        intervals.wrap(tfra.RedisStore, "find_with_slots", "lookup"),
        intervals.wrap(tfra.RedisStore, "insert_with_slots", "apply"),
        # The optimizer step's Redis I/O: slot rows read, rows and slots written.
        intervals.wrap(de_optimizer, "find_together", "apply"),
        intervals.wrap(de_optimizer, "insert_together", "apply"),
        intervals.wrap(_PrefetchingTrainFunction, "_prefetch", "prefetch"),
    ]

    # memory-fair: a vocabulary of exactly the ids in the data.
    fair_x, fair_vocab = {}, {}
    for key, ids in features.items():
        unique, inverse = np.unique(ids, return_inverse=True)
        fair_x[key] = inverse.astype(np.int64)
        fair_vocab[key] = len(unique)

    def head(x: Any) -> Any:
        for units in spec.hidden:
            x = keras.layers.Dense(units, activation="relu")(x)
        return keras.layers.Dense(1, activation="sigmoid")(x)

    def mlp(inputs: Any, x: Any, optimizer: str) -> Any:
        model = keras.Model(inputs, head(x))
        model.compile(optimizer=optimizer_classes[optimizer](lr), loss="binary_crossentropy")
        return model

    def memory_model(vocab: dict[str, int], optimizer: str) -> Any:
        inputs = {k: keras.Input(shape=(), dtype="int64", name=k) for k in names}
        init = keras.initializers.RandomNormal(0.0, 0.05, seed=1)
        rows = [
            keras.layers.Embedding(vocab[k], args.dim, embeddings_initializer=init)(inputs[k])
            for k in names
        ]
        return mlp(inputs, keras.layers.Concatenate()(rows), optimizer)

    def redis_model(creator: Any, prefetch: bool) -> tuple[Any, list[Any]]:
        """The model with a Redis-backed ``de.keras.layers.Embedding`` per feature (named
        ``<feature>_emb``, as the example names its tables)."""
        inputs = {k: keras.Input(shape=(), dtype="int64", name=k) for k in names}
        init = keras.initializers.RandomNormal(0.0, 0.05, seed=1)
        layers = [
            de.keras.layers.Embedding(
                args.dim, initializer=init, name=f"{k}_emb", kv_creator=creator
            )
            for k in names
        ]
        rows = [layer(inputs[k]) for k, layer in zip(names, layers, strict=True)]
        x = keras.layers.Concatenate()(rows)
        # Prefetching the next batch's rows needs DynamicEmbeddingModel's fit loop.
        model_class = de.DynamicEmbeddingModel if prefetch else keras.Model
        return model_class(inputs, head(x)), layers

    def dense_only(optimizer: str) -> Any:
        inputs = keras.Input(shape=(len(names) * args.dim,), dtype="float32", name="rows")
        return mlp(inputs, inputs, optimizer)

    rng = np.random.default_rng(args.seed)
    dense_rows = rng.normal(0, 0.05, size=(samples, len(names) * args.dim)).astype(np.float32)

    results: list[Result] = []
    tfra_python = Path(args.tfra_venv) / "bin" / "python"
    tfra_note = None if tfra_python.exists() else f"not installed ({args.tfra_venv})"

    def run_memory(name: str, build: Callable[[], Any], x: Any, steps: int, opt: str) -> None:
        model = build()
        windows = timed_fit(keras, model, x, labels, batch, steps)
        results.append(Result(name, opt, steps, median_ms([e - s for s, e in windows])))
        del model
        keras.backend.clear_session()

    with tempfile.TemporaryDirectory(prefix="tfra-bench-train-") as tmp:
        with testing.standalone() as server, contextlib.ExitStack() as stack:
            config = Path(tmp) / "redis_config.json"
            proxied = {}
            if args.delay_ms > 0:
                port = stack.enter_context(delay_proxy(server.port, args.delay_ms))
                proxied = {"redis_host_port": [port]}
            testing.write_config_file(
                config, server, table_store_mode=2, expire_model_tag_in_seconds=-1, **proxied
            )
            run_id = 0

            def run_redis(opt: str, prefetch: bool, fused: str = "", behind: bool = False) -> None:
                nonlocal run_id
                run_id += 1
                # A model tag per run: fresh embedding and slot tables.
                workdir = Path(tmp) / f"run{run_id}"
                workdir.mkdir()
                tagged = train_ctr.with_model_tag(config, f"bench{run_id}", workdir)
                settings = json.loads(tagged.read_text())
                if fused:
                    settings[f"redis_fused_{fused}"] = True
                if behind:
                    settings["redis_write_behind_ms"] = args.write_behind
                tagged.write_text(json.dumps(settings))
                creator = de.RedisTableCreator(de.RedisTableConfig(redis_config_abs_dir=tagged))
                model, layers = redis_model(creator, prefetch)
                # The optimizer as asked, no metrics (the in-memory models have none either).
                model.compile(
                    optimizer=de.DynamicEmbeddingOptimizer(optimizer_classes[opt](lr)),
                    loss="binary_crossentropy",
                    **({"prefetch_embeddings": True} if prefetch else {}),
                )
                intervals.clear()
                windows = timed_fit(keras, model, features, labels, batch, args.steps)
                split: dict[str, list[float]] = {"lookup": [], "apply": [], "prefetch": []}
                for start, end in windows:
                    for kind, values in split.items():
                        values.append(intervals.covered(kind, start, end))
                apply_calls = [intervals.summed("apply", s, e) for s, e in windows]
                steps = [e - s for s, e in windows]
                other = [t - sum(v[i] for v in split.values()) for i, t in enumerate(steps)]
                stats = [layer.params.table.store.prefetch_stats for layer in layers]
                notes = {
                    "prefetch_taken": sum(s.taken for s in stats),
                    "prefetched_keys": sum(s.keys for s in stats),
                    "patched_keys": sum(s.patched for s in stats),
                    "reread_keys": sum(s.reread for s in stats),
                    "rows_in_redis": {layer.name: int(layer.params.size()) for layer in layers},
                }
                variant = {"": "", "slots": "+fused", "row": "+fusedrow"}[fused]
                variant += "+behind" if behind else ""
                name = f"redis{'+prefetch' if prefetch else ''}{variant}"
                result = Result(name, opt, args.steps, median_ms(steps), notes=notes)
                result.split_ms = {k: median_ms(v) for k, v in split.items()}
                result.split_ms["dense+keras"] = median_ms(other)
                # Above "apply" when the two tables' updates ran in parallel.
                result.notes["apply_calls_ms"] = median_ms(apply_calls)
                results.append(result)
                server.flushall()
                del model, layers
                keras.backend.clear_session()

            data_path = Path(tmp) / "data.npz"
            np.savez(data_path, labels=labels, **features)

            def run_tfra(opt: str) -> None:
                """TFRA 0.8.1's own step on the same model, data and server (its venv)."""
                nonlocal run_id
                run_id += 1
                workdir = Path(tmp) / f"run{run_id}"
                workdir.mkdir()
                tagged = train_ctr.with_model_tag(config, f"bench{run_id}", workdir)
                request = {
                    "config": str(tagged),
                    "data": str(data_path),
                    "dim": args.dim,
                    "features": names,
                    "hidden": list(spec.hidden),
                    "optimizer": opt,
                    "lr": lr,
                    "steps": args.steps,
                    "warmup": WARMUP_STEPS,
                    "batch_size": batch,
                }
                done = subprocess.run(
                    [str(tfra_python), str(ROOT / "benchmarks" / "tfra_train_step.py")]
                    + [json.dumps(request)],
                    env=dict(os.environ, TF_USE_LEGACY_KERAS="1"),
                    capture_output=True,
                    text=True,
                )
                if done.returncode != 0:
                    raise RuntimeError(f"TFRA's run failed:\n{done.stderr[-3000:]}")
                report = json.loads(done.stdout.strip().splitlines()[-1])
                results.append(Result("tfra-0.8.1", opt, report["steps"], report["step_ms"]))
                results[-1].notes = {"rows_in_redis": report["rows"]}
                server.flushall()

            for round_ in range(args.rounds):
                print(f"round {round_ + 1}/{args.rounds} ...", flush=True)
                for opt in args.optimizers:
                    for prefetch in (False, True) if args.prefetch else (False,):
                        run_redis(opt, prefetch)
                    if opt == "adam":  # SGD has no slots to fuse
                        run_redis(opt, False, fused="slots")
                        run_redis(opt, False, fused="row")
                        if args.write_behind:
                            run_redis(opt, False, behind=True)
                            run_redis(opt, False, fused="row", behind=True)
                    if tfra_note is None:
                        run_tfra(opt)
                    if args.redis_only:
                        continue
                    run_memory(
                        "memory-fair",
                        lambda o=opt: memory_model(fair_vocab, o),
                        fair_x,
                        args.steps,
                        opt,
                    )
                    run_memory(
                        "dense-only", lambda o=opt: dense_only(o), dense_rows, args.steps, opt
                    )
                if "adam" in args.optimizers and not args.redis_only:
                    run_memory(
                        "memory-big",
                        lambda: memory_model(spec.features, "adam"),
                        features,
                        args.big_steps,
                        "adam",
                    )
    for restore in undo:
        restore()

    # The best round of each configuration.
    best: dict[tuple[str, str], Result] = {}
    for r in results:
        key = (r.name, r.optimizer)
        if key not in best or r.step_ms < best[key].step_ms:
            best[key] = r
    print(
        f"\n{args.model}: batch {batch}, dim {args.dim}, {len(names)} tables, MLP "
        f"{'-'.join(map(str, spec.hidden))}-1; median ms per step "
        f"({args.steps} steps, memory-big {args.big_steps}; best of {args.rounds} rounds)\n"
    )
    header = f"{'model':<23}{'opt':<6}{'step':>8}{'lookup':>8}{'apply':>8}{'prefetch':>9}"
    print(header + f"{'dense+keras':>12}{'apply calls':>12}  re-read")
    for r in sorted(best.values(), key=lambda r: (r.optimizer, r.name)):
        split = r.split_ms
        cells = "".join(
            f"{split[k]:>{w}.1f}" if k in split else f"{'':>{w}}"
            for k, w in (("lookup", 8), ("apply", 8), ("prefetch", 9), ("dense+keras", 12))
        )
        calls = r.notes.get("apply_calls_ms")
        cells += f"{calls:>12.1f}" if calls is not None else f"{'':>12}"
        reread = ""
        if r.notes.get("prefetched_keys"):
            n = r.notes
            reread = f"  {(n['patched_keys'] + n['reread_keys']) / n['prefetched_keys']:.0%}"
            reread += f" ({n['reread_keys'] / n['prefetched_keys']:.0%} on the step)"
        print(f"{r.name:<23}{r.optimizer:<6}{r.step_ms:>8.1f}{cells}{reread}")
    ratios = {}
    for opt in args.optimizers:
        for ours in (
            "redis",
            "redis+prefetch",
            "redis+fused",
            "redis+fusedrow",
            "redis+behind",
            "redis+fusedrow+behind",
        ):
            for base in ("memory-fair", "memory-big", "dense-only", "tfra-0.8.1"):
                if (ours, opt) in best and (base, "adam" if base == "memory-big" else opt) in best:
                    b = best[(base, "adam" if base == "memory-big" else opt)]
                    if base == "memory-big" and opt != "adam":
                        continue
                    ratios[f"{ours}/{base} ({opt})"] = best[(ours, opt)].step_ms / b.step_ms
    if tfra_note is not None:
        print(f"\ntfra-0.8.1: {tfra_note}")
    print("\nratios (ours / baseline, same run):")
    for k, v in ratios.items():
        print(f"  {k:<40} {v:6.2f}x")

    out = Path(args.out) if args.out else None
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = ROOT / "benchmarks" / "results" / f"train_step-{args.model}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "args": vars(args),
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                "best": [asdict(r) for r in best.values()],
                "all": [asdict(r) for r in results],
                "ratios": ratios,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
