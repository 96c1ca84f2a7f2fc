"""One side of ``bench_serving.py``: many threads calling a ``tf.function`` around
``RedisTable.lookup`` at once, timed per call.

Runs for tfra-redis (``--client ours``, the project's Python) or for TFRA 0.8.1 itself
(``--client tfra``, the venv ``setup_tfra_baseline.sh`` makes, with ``TF_USE_LEGACY_KERAS=1``);
the two build the same table through the same API (``de.RedisTable(key_dtype, value_dtype,
default_value, name=..., config=de.RedisTableConfig(...))``), so this one script serves both.
Prints one JSON line once the table is open (versions, and a checksum of the rows each batch
size's first id set returned), then answers each request line on stdin (``{"batch": 256,
"threads": 8, "seconds": 4, "warmup": 5}``) with one JSON line: the calls, the wall time and the
call latencies' percentiles.

    python serving_client.py '{"client": "ours", "config": ..., "ids": ..., "batches": ...}'
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def load_de(client: str):
    if client == "tfra":
        import tensorflow_recommenders_addons as tfra

        return tfra.dynamic_embedding, tfra.__version__
    import tfra_redis

    return tfra_redis.dynamic_embedding, getattr(tfra_redis, "__version__", "dev")


def run_cell(serve, batches: list[tf.Tensor], threads: int, seconds: float, warmup: int) -> dict:
    """``threads`` threads call ``serve`` on rotating batches for ``seconds``; every call that
    starts inside the window is timed."""
    barrier = threading.Barrier(threads + 1)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    window: dict[str, float] = {}
    go = threading.Event()

    def worker(t: int) -> None:
        try:
            j = t * 7919
            for _ in range(warmup):
                serve(batches[j % len(batches)])
                j += 1
            barrier.wait()
            go.wait()
            end = window["end"]
            mine = latencies[t]
            while True:
                start = time.perf_counter()
                if start >= end:
                    break
                serve(batches[j % len(batches)])
                mine.append(time.perf_counter() - start)
                j += 1
        except BaseException as error:  # reported by the parent, never swallowed
            errors.append(error)
            barrier.abort()

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    # The window opens when every thread has warmed up.
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    began = time.perf_counter()
    window["end"] = began + seconds
    go.set()
    for thread in pool:
        thread.join()
    wall = time.perf_counter() - began
    if errors:
        raise errors[0]
    flat = np.array([x for per in latencies for x in per]) * 1000.0
    return {
        "threads": threads,
        "calls": int(flat.size),
        "wall_s": wall,
        "calls_per_s": flat.size / wall,
        "p50_ms": float(np.percentile(flat, 50)),
        "p99_ms": float(np.percentile(flat, 99)),
        "p999_ms": float(np.percentile(flat, 99.9)),
        "max_ms": float(flat.max()),
    }


#: Marks this script's answers: TFRA and TensorFlow print to stdout too.
MARK = "@serving "


def say(message: dict) -> None:
    print(MARK + json.dumps(message), flush=True)


def main() -> int:
    args = json.loads(sys.argv[1])
    # A knob for variants (bench_serving.py --variant NAME:SERVING_INTER_OP_THREADS=N): the
    # size of TensorFlow's inter-op pool, where the lookup ops of concurrent calls run.
    inter_op = int(os.environ.get("SERVING_INTER_OP_THREADS", "0"))
    if inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    de, version = load_de(args["client"])
    dim = args["dim"]
    table = de.RedisTable(
        key_dtype=tf.int64,
        value_dtype=tf.float32,
        default_value=tf.zeros([dim], tf.float32),
        name=args["table"],
        config=de.RedisTableConfig(redis_config_abs_dir=args["config"]),
    )

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def serve(ids):
        return table.lookup(ids)

    data = np.load(args["ids"])
    tensors = {b: [tf.constant(row) for row in data[f"b{b}"]] for b in args["batches"]}
    # The rows of each batch size's first id set, for the parent to compare across clients.
    checksums = {
        str(b): float(np.asarray(serve(t[0]), np.float64).sum()) for b, t in tensors.items()
    }
    say(
        {
            "client": args["client"],
            "version": version,
            "tensorflow": tf.__version__,
            "checksums": checksums,
            # Which op serves the lookup: TfraRedisLookup (the native op), PyFunc
            # (numpy_function), or TFRA's own.
            "lookup_ops": sorted(
                {op.type for op in serve.get_concrete_function().graph.get_operations()}
                - {"Placeholder", "Identity", "NoOp", "Const"}
            ),
        }
    )
    # Then one cell per request line, so that the parent can interleave the clients cell by
    # cell while the other one waits here, idle.
    for line in sys.stdin:
        request = json.loads(line)
        batch, threads = request["batch"], request["threads"]
        cell = run_cell(serve, tensors[batch], threads, request["seconds"], request["warmup"])
        cell["batch"] = batch
        say(cell)
    return 0


if __name__ == "__main__":
    sys.exit(main())
