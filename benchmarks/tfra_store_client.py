"""TFRA 0.8.1's own Redis table, driven by ``bench_store.py`` for its TFRA column.

Runs inside the TFRA baseline venv (``benchmarks/setup_tfra_baseline.sh``) with
``TF_USE_LEGACY_KERAS=1``. Started once; then each request line on stdin names an op, a table
and the files ``bench_store.py`` wrote for the raw limit (``keys.bin``: int64 ids, ``values.bin``:
float32 rows), and is answered with one line: the seconds the op took over every batch, this
process's CPU seconds and its peak RSS (VmHWM, reset before the op). Rows cross as numpy, as for
ours: ``lookup(...).numpy()`` and ``insert(numpy ids, numpy rows)``, eager.

    TF_USE_LEGACY_KERAS=1 .tfra-venv/bin/python tfra_store_client.py
    {"op": "find", "config": "/tmp/c.json", "table": "bench_d32", "dim": 32, "batch": 4096,
     "keys": "/tmp/keys.bin", "values": null}
"""

from __future__ import annotations

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
#: Marks this script's answers: TFRA and TensorFlow print to stdout too.
MARK = "@tfra-store "


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def main() -> int:
    tables: dict[tuple[str, str, int], object] = {}
    print(MARK + json.dumps({"tfra": tfra.__version__, "tensorflow": tf.__version__}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        dim, batch = request["dim"], request["batch"]
        key = (request["config"], request["table"], dim)
        if key not in tables:
            tables[key] = de.RedisTable(
                key_dtype=tf.int64,
                value_dtype=tf.float32,
                default_value=tf.zeros([dim], tf.float32),
                name=request["table"],
                config=de.RedisTableConfig(redis_config_abs_dir=request["config"]),
            )
        table = tables[key]
        keys = np.fromfile(request["keys"], dtype=np.int64).reshape(-1, batch)
        values = None
        if request.get("values"):
            values = np.fromfile(request["values"], dtype=np.float32).reshape(-1, batch, dim)
        checksum = 0.0
        reset_peak_rss()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        if request["op"] == "find":
            for k in keys:
                rows = table.lookup(k).numpy()
            checksum = float(rows.astype(np.float64).sum())
        elif request["op"] == "insert":
            for k, v in zip(keys, values, strict=True):
                table.insert(k, v)
        else:
            raise ValueError(f"unknown op {request['op']!r}")
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        answer = {"seconds": seconds, "client_cpu": cpu, "peak_rss": peak_rss()}
        answer["checksum_last_batch"] = checksum
        print(MARK + json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
