"""A/B throughput of two builds of the native module on the same servers, interleaved.

``bench_store.py`` compares clients within one build; comparing two builds with it means two
runs, minutes apart, on a shared machine whose load wanders more than the effect. Here one
standalone server and one 3-master cluster run side by side, each build serves from its own
worker process, and every round times both builds on both topologies back to back (the order
alternates), so a ratio such as cluster/standalone comes from the same minute of the same
machine. Medians over the rounds are reported.

    python benchmarks/ab_compare.py --a /tmp/before/python --b python --op insert \\
        --dim 128 --batch 4096 --rounds 9

``--b-env K=V`` sets environment variables for build B's worker only (e.g. an experimental
switch), so A and B may also be one build with two settings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

WORKER = r"""
import json, sys, time
import numpy as np
from tfra_redis import RedisStore
from tfra_redis.store import insert_together

spec = json.loads(sys.stdin.readline())
rng = np.random.default_rng(7)
keys = np.unique(rng.integers(1, 2**63 - 1, size=spec["keys"] + 4096, dtype=np.int64))
rng.shuffle(keys)
keys = keys[: spec["keys"]]
dim, batch = spec["dim"], spec["batch"]
stores = {
    t: RedisStore(c, "ab_" + str(dim), dim, manage_ttl=False) for t, c in spec["configs"].items()
}
# Three tables written in one pipeline, as an Adam step writes params, m and v.
together = {
    t: [RedisStore(c, f"ab_{dim}_{n}", dim, manage_ttl=False) for n in ("p", "m", "v")]
    for t, c in spec["configs"].items()
}
if spec["populate"]:
    for store in stores.values():
        for s in range(0, keys.shape[0], 1 << 16):
            k = keys[s : s + (1 << 16)]
            store.insert(k, rng.standard_normal((k.shape[0], dim), dtype=np.float32))
per = spec["ids_per_measurement"] // batch
starts = rng.integers(0, keys.shape[0] - batch, size=per)
pairs = [
    (keys[s : s + batch].copy(), rng.standard_normal((batch, dim), dtype=np.float32))
    for s in starts
]
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    topo, op = line.split()
    store = stores[topo]
    t0 = time.perf_counter()
    if op == "insert":
        for k, v in pairs:
            store.insert(k, v)
    elif op == "insert_together":
        for k, v in pairs:
            insert_together(together[topo], k, [v, v, v])
    else:
        for k, _ in pairs:
            store.find(k)
    took = time.perf_counter() - t0
    print(json.dumps({"keys_per_s": per * batch / took}), flush=True)
"""


def start_worker(pythonpath: str, env_extra: dict[str, str], spec: dict[str, Any]) -> Any:
    env = {**os.environ, "PYTHONPATH": str(Path(pythonpath).resolve()), **env_extra}
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(spec) + "\n")
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline())["ready"]
    return proc


def ask(proc: Any, topo: str, op: str) -> float:
    proc.stdin.write(f"{topo} {op}\n")
    proc.stdin.flush()
    return float(json.loads(proc.stdout.readline())["keys_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", required=True, help="PYTHONPATH of build A")
    parser.add_argument("--b", required=True, help="PYTHONPATH of build B")
    parser.add_argument("--a-env", nargs="*", default=[], help="K=V for A's worker")
    parser.add_argument("--b-env", nargs="*", default=[], help="K=V for B's worker")
    parser.add_argument("--op", choices=["insert", "insert_together", "find"], default="insert")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--keys", type=int, default=300_000)
    parser.add_argument("--ids", type=int, default=131_072, help="ids per measurement")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--topologies", nargs="+", default=["standalone", "cluster"])
    args = parser.parse_args()

    from tfra_redis import testing as servers

    running: list[Any] = []
    configs: dict[str, Any] = {}
    if "standalone" in args.topologies:
        server = servers.RedisServer()
        server.start()
        running.append(server)
        configs["standalone"] = server.config_dict()
    if "cluster" in args.topologies:
        cluster = servers.ClusterTopology(masters=3, replicas_per_master=0)
        cluster.start()
        running.append(cluster)
        configs["cluster"] = {**cluster.config_dict(), "storage_slice": 3}
    spec = {
        "configs": configs,
        "keys": args.keys,
        "dim": args.dim,
        "batch": args.batch,
        "ids_per_measurement": args.ids,
    }
    envs = {
        "A": dict(kv.split("=", 1) for kv in args.a_env),
        "B": dict(kv.split("=", 1) for kv in args.b_env),
    }
    try:
        workers = {
            "A": start_worker(args.a, envs["A"], {**spec, "populate": True}),
            "B": start_worker(args.b, envs["B"], {**spec, "populate": False}),
        }
        samples: dict[tuple[str, str], list[float]] = {}
        for r in range(args.rounds):
            order = ["A", "B"] if r % 2 == 0 else ["B", "A"]
            for name in order:
                for topo in args.topologies:
                    samples.setdefault((name, topo), []).append(ask(workers[name], topo, args.op))
        for w in workers.values():
            w.stdin.close()
            w.wait(timeout=30)
    finally:
        for r in running:
            r.stop()

    print(
        f"op {args.op} dim {args.dim} batch {args.batch}, {args.rounds} rounds, "
        f"{args.ids} ids each; A={args.a} {envs['A']}  B={args.b} {envs['B']}"
    )
    med = {k: statistics.median(v) for k, v in samples.items()}
    for topo in args.topologies:
        a, b = samples[("A", topo)], samples[("B", topo)]
        per_round = [y / x for x, y in zip(a, b, strict=True)]
        print(
            f"  {topo:10s} median Mkeys/s A {med[('A', topo)] / 1e6:.3f}  "
            f"B {med[('B', topo)] / 1e6:.3f}   B/A per round median "
            f"{statistics.median(per_round):.3f} (min {min(per_round):.3f} max "
            f"{max(per_round):.3f})"
        )
    if len(args.topologies) == 2:
        for name in ("A", "B"):
            ratios = [
                c / s
                for s, c in zip(
                    samples[(name, "standalone")], samples[(name, "cluster")], strict=True
                )
            ]
            print(
                f"  {name}: cluster/standalone per round median {statistics.median(ratios):.3f} "
                f"(rounds: {' '.join(f'{x:.2f}' for x in ratios)})"
            )
    out = {f"{k[0]} {k[1]}": v for k, v in samples.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
