"""Client memory after a burst of big lookups: RSS before, at the peak, and in steady state.

Starts a 3-master Redis Cluster (no replicas, persistence off), fills one table of dim 128,
then runs a fresh process that opens the table with the default pool (20 connections per
node) and does a burst of 65,536-id ``find`` calls from several threads at once, the way a
TF input pipeline or several workers' threads would. It reports the client's RSS:

* **before**: after one small lookup (connections open, nothing big read yet);
* **peak**: VmHWM during the burst;
* **steady**: a second after the burst, with nothing running: what the process keeps;
* **after idle**: once the connections have been idle longer than
  ``redis_conn_idle_timeout_ms`` and one small lookup ran (the pool evicts idle connections
  on checkout), with the number of client connections the masters count;

Each is measured twice: with glibc's malloc as it comes, and with a fixed mmap threshold
(``MALLOC_MMAP_THRESHOLD_=1048576``). As it comes, glibc raises its mmap threshold after the
first big free and then serves big buffers from per-thread arenas, which keep freed pages:
RSS then shows what the allocator retains rather than what the client still holds. With the
threshold fixed, every big buffer is its own mapping and goes back to the OS when freed.

    python benchmarks/bench_client_memory.py            # the full run (~1 min)
    python benchmarks/bench_client_memory.py --quick    # fewer lookups

Prints a table and writes ``benchmarks/results/client-memory-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import bench_store  # noqa: E402  (the RSS helpers and the environment record)

CHILD = """
import json, sys, threading, time
import numpy as np
sys.path.insert(0, {bench_dir!r})
import bench_store as b
from tfra_redis import RedisStore
from tfra_redis import testing
config, plan = json.loads(sys.argv[1]), json.loads(sys.argv[2])

def clients():
    # Connections the masters count, less the one asking.
    total = 0
    for port in plan["master_ports"]:
        with testing.RespConnection(port=port) as conn:
            total += len(conn.execute("CLIENT", "LIST").splitlines()) - 1
    return total

store = RedisStore(config, "bench_client_memory", plan["dim"], manage_ttl=False)
keys = np.arange(plan["keys"], dtype=np.int64)
store.find(keys[:1024])  # connect outside the measurement
b.reset_peak_rss()
before = b.rss_bytes()

def worker(seed):
    rng = np.random.default_rng(seed)
    for _ in range(plan["lookups_per_thread"]):
        out = store.find(rng.choice(keys, plan["batch"], replace=False))
        assert out.shape == (plan["batch"], plan["dim"])

started = time.perf_counter()
threads = [threading.Thread(target=worker, args=(i,)) for i in range(plan["threads"])]
for t in threads:
    t.start()
for t in threads:
    t.join()
burst_seconds = time.perf_counter() - started
peak = b.peak_rss_bytes()
clients_after_burst = clients()
time.sleep(plan["settle_seconds"])
steady = b.rss_bytes()
time.sleep(plan["idle_seconds"])
store.find(keys[:1024])
after_idle = b.rss_bytes()
print(json.dumps({{
    "before": before, "peak": peak, "steady": steady, "after_idle": after_idle,

    "clients_after_burst": clients_after_burst, "clients_after_idle": clients(),
    "burst_seconds": burst_seconds,
}}))
"""


MALLOC_SETTINGS: list[tuple[str, dict[str, str]]] = [
    ("glibc malloc as it comes", {}),
    ("MALLOC_MMAP_THRESHOLD_=1048576", {"MALLOC_MMAP_THRESHOLD_": "1048576"}),
]


def run_child(config: dict[str, Any], plan: dict[str, Any], extra_env: dict[str, str]) -> Any:
    """Runs the measurement in a fresh process; returns what it printed (bytes, counts)."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD.format(bench_dir=str(BENCH_DIR)),
            json.dumps(config),
            json.dumps(plan),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **extra_env},
    )
    if done.returncode != 0:
        raise RuntimeError(f"the measuring child failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer lookups per thread")
    parser.add_argument("--keys", type=int, default=262_144, help="rows in the table")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=65_536, help="ids per find")
    parser.add_argument("--threads", type=int, default=4, help="threads doing finds at once")
    parser.add_argument("--lookups", type=int, help="finds per thread (8; quick 3)")
    parser.add_argument(
        "--idle-timeout-ms",
        type=int,
        default=2000,
        help="redis_conn_idle_timeout_ms for the run (the default, 300000, is too long to wait)",
    )
    parser.add_argument(
        "--config",
        type=json.loads,
        default={},
        help="extra config fields as JSON, e.g. '{\"redis_client_buffer_keep_bytes\": 0}'",
    )
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/...)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    env = bench_store.environment()

    def log(message: str) -> None:
        print(f"{time.perf_counter() - started:7.1f}s  {message}", flush=True)

    from tfra_redis import RedisStore, testing

    plan: dict[str, Any] = {
        "keys": args.keys,
        "dim": args.dim,
        "batch": args.batch,
        "threads": args.threads,
        "lookups_per_thread": args.lookups or (3 if args.quick else 8),
        "settle_seconds": 1.0,
        "idle_seconds": args.idle_timeout_ms / 1000 + 0.5,
    }
    topo = testing.ClusterTopology(
        masters=3, replicas_per_master=0, extra_args=bench_store.LAZY_FREE
    )
    topo.start()
    try:
        plan["master_ports"] = [m.port for m in topo.masters()]
        config = {
            **topo.config_dict(),
            "storage_slice": 3,
            "redis_conn_idle_timeout_ms": args.idle_timeout_ms,
            **args.config,
        }
        log(f"cluster up: masters {plan['master_ports']}; config {config}")
        store = RedisStore(config, "bench_client_memory", args.dim, manage_ttl=False)
        rng = np.random.default_rng(7)
        for s in range(0, args.keys, 65_536):
            k = np.arange(s, min(s + 65_536, args.keys), dtype=np.int64)
            store.insert(k, rng.standard_normal((k.shape[0], args.dim), dtype=np.float32))
        log(f"{args.keys:,} rows of dim {args.dim} inserted")
        runs = {label: run_child(config, plan, extra_env) for label, extra_env in MALLOC_SETTINGS}
        store.clear()
    finally:
        topo.stop()

    mb = 1 << 20
    out_mb = args.batch * args.dim * 4 / mb
    lookups = plan["threads"] * plan["lookups_per_thread"]
    first = runs[MALLOC_SETTINGS[0][0]]
    print()
    print(
        f"3-master cluster, default pool, {plan['threads']} threads x "
        f"{plan['lookups_per_thread']} finds of {args.batch:,} ids of dim {args.dim} "
        f"({out_mb:.0f} MB output each), {first['burst_seconds']:.1f} s, "
        f"{lookups * args.batch / first['burst_seconds'] / 1e6:.2f} Mkeys/s"
    )
    print()
    labels = [label for label, _ in MALLOC_SETTINGS]
    print("| client RSS, MB | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    rows = [
        ("before the burst", "before"),
        ("peak during the burst", "peak"),
        ("steady, 1 s after the burst", "steady"),
        (f"after {plan['idle_seconds']:.1f} s idle + one small find", "after_idle"),
    ]
    for title, key in rows:
        print(f"| {title} | " + " | ".join(f"{runs[x][key] / mb:.0f}" for x in labels) + " |")
    print(
        "| connections on the masters: after the burst / after idle | "
        + " | ".join(
            f"{runs[x]['clients_after_burst']} / {runs[x]['clients_after_idle']}" for x in labels
        )
        + " |"
    )
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": time.perf_counter() - started,
        "plan": plan,
        "config": config,
        "environment": env,
        "runs": runs,
    }
    out = args.out or (
        BENCH_DIR / "results" / f"client-memory-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out} ({time.perf_counter() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
