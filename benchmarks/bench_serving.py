"""Online serving: many threads calling a ``tf.function`` around ``RedisTable.lookup`` at once,
ours beside TFRA 0.8.1 in the same run, on the same server and table.

Starts one redis-server, fills one table (1M ids, dim 32; the layout is TFRA's, so both clients
read the same rows), draws Zipf-distributed id batches, then starts ``serving_client.py`` once
per client and asks each for one cell at a time (1, 8, 32 threads x batch 256, 4,096), cells
interleaved across the clients (who goes first alternates) while the other client idles: calls/s
and the latency percentiles of the calls. Per cell the round with the most calls/s is kept.

    python benchmarks/bench_serving.py            # ~10 minutes
    python benchmarks/bench_serving.py --quick    # ~1 minute: 200k ids, shorter windows
    python benchmarks/bench_serving.py --delay-ms 0.25   # through delay_proxy.py: 0.5 ms RTT

TFRA runs from ``benchmarks/.tfra-venv`` (``benchmarks/setup_tfra_baseline.sh``; ``--tfra-venv``
or ``TFRA_VENV`` to point elsewhere); without it the TFRA column says "not installed". Prints a
table and writes ``benchmarks/results/serving-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_store import delay_proxy
from json_lines import JsonLineProcess

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "benchmarks"
TABLE = "serve_mht_1of1"
FILL_CHUNK = 65_536
MARK = "@serving "  # the prefix of serving_client.py's answers


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200k ids, 1.5 s windows, 1 round")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--threads", default="1,8,32", help="comma-separated thread counts")
    parser.add_argument("--batches", default="256,4096", help="comma-separated batch sizes")
    parser.add_argument(
        "--seconds", type=float, help="timed window per cell and round (3; quick 1.5)"
    )
    parser.add_argument("--rounds", type=int, help="rounds, interleaved (5; quick 1)")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of the ids")
    parser.add_argument("--clients", default="ours,tfra", help="which clients to run (ours, tfra)")
    parser.add_argument(
        "--tfra-venv",
        default=os.environ.get("TFRA_VENV", str(BENCH_DIR / ".tfra-venv")),
        help="venv with TFRA 0.8.1 (benchmarks/setup_tfra_baseline.sh)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:VAR=VALUE[,VAR=VALUE]",
        help="also run our client as NAME with these environment variables: PYTHONPATH=DIR to "
        "measure another checkout's python/ beside this one, PYTHON=EXE for another interpreter "
        "(the TFRA venv's, for ours on TFRA's TensorFlow); repeatable",
    )
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=0.0,
        help="clients reach the server through delay_proxy.py with this one-way delay (a "
        "remote Redis: 0.25 is a 0.5 ms round trip); the fill goes direct",
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.quick:
        args.rows = min(args.rows, 200_000)
    args.seconds = args.seconds or (1.5 if args.quick else 3.0)
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.threads = [int(x) for x in args.threads.split(",")]
    args.batches = [int(x) for x in args.batches.split(",")]
    args.clients = [x.strip() for x in args.clients.split(",") if x.strip()]
    return args


def zipf_batches(rng: np.random.Generator, rows: int, batch: int, count: int, a: float):
    """``count`` batches of ids in ``[0, rows)``, Zipf-distributed: rank r drawn with weight
    ``r**-a``, ranks spread over the id space by a fixed permutation (hot ids are not all
    neighbours)."""
    ranks = rng.zipf(a, size=(count, batch)) - 1
    ranks = ranks % rows
    return rng.permutation(rows)[ranks].astype(np.int64)


def fill(store: Any, rows: int, dim: int, rng: np.random.Generator) -> None:
    for start in range(0, rows, FILL_CHUNK):
        keys = np.arange(start, min(start + FILL_CHUNK, rows), dtype=np.int64)
        store.insert(keys, rng.standard_normal((keys.size, dim), dtype=np.float32))


class Client:
    """One ``serving_client.py`` process: started once, then asked for one cell at a time."""

    def __init__(
        self, name: str, python: str, request: dict[str, Any], extra_env: dict[str, str]
    ) -> None:
        env = dict(os.environ)
        kind = "tfra" if name == "tfra" else "ours"
        if kind == "tfra":
            env["TF_USE_LEGACY_KERAS"] = "1"
        else:
            env["PYTHONPATH"] = os.pathsep.join(
                [str(ROOT / "python"), *filter(None, [env.get("PYTHONPATH")])]
            )
        env.update(extra_env)
        self.name = name
        self._process = JsonLineProcess(
            [python, str(BENCH_DIR / "serving_client.py"), json.dumps({**request, "client": kind})],
            env,
            MARK,
            f"{name}'s serving client",
        )
        self.info = self._process.answer()

    def cell(self, **request: Any) -> dict[str, Any]:
        return self._process.ask(request)

    def close(self) -> None:
        self._process.close()


def best_cells(cells: list[dict[str, Any]]) -> dict[tuple[int, int], dict[str, Any]]:
    """Per (batch, threads), the round with the most calls/s."""
    best: dict[tuple[int, int], dict[str, Any]] = {}
    for cell in cells:
        key = (cell["batch"], cell["threads"])
        if key not in best or cell["calls_per_s"] > best[key]["calls_per_s"]:
            best[key] = cell
    return best


def paired_ratios(
    runs: dict[str, list[dict[str, Any]]], name: str
) -> dict[tuple[int, int], list[float]]:
    """Per (batch, threads), ``name``'s calls/s over TFRA's in each round: the two ran one
    after the other, so a ratio sees one moment of the machine's load."""
    out: dict[tuple[int, int], list[float]] = {}
    if "tfra" not in runs:
        return out
    theirs = {}
    for k, cell in enumerate(runs["tfra"]):
        theirs[(cell["batch"], cell["threads"], k)] = cell["calls_per_s"]
    for k, cell in enumerate(runs[name]):
        key = (cell["batch"], cell["threads"])
        other = theirs.get((*key, k))
        if other:
            out.setdefault(key, []).append(cell["calls_per_s"] / other)
    return out


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{float(np.median(values)):.2f} ({min(values):.2f}-{max(values):.2f})"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def table_lines(
    best: dict[str, dict[tuple[int, int], dict[str, Any]]],
    tfra_note: str | None,
    paired: dict[str, dict[tuple[int, int], list[float]]],
) -> list[str]:
    """One row per (batch, threads) and client other than TFRA, beside TFRA's cell."""
    tfra = best.get("tfra", {})
    missing = tfra_note or "-"
    lines = [
        "| batch | threads | client | calls/s | TFRA calls/s | / TFRA | / TFRA per round: "
        "median (range) | p50 ms / TFRA | p99 ms / TFRA | p99.9 ms / TFRA |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({key for cells in best.values() for key in cells})
    for key in keys:
        t = tfra.get(key)

        def theirs(field: str, fmt: str, t: dict[str, Any] | None = t) -> str:
            return missing if t is None else format(t[field], fmt)

        for name, cells in best.items():
            o = cells.get(key)
            if name == "tfra" or o is None:
                continue
            lines.append(
                f"| {key[0]:,} | {key[1]} | {name} | {o['calls_per_s']:,.0f} "
                f"| {theirs('calls_per_s', ',.0f')} "
                f"| {ratio(o['calls_per_s'], t and t['calls_per_s'])} "
                f"| {spread(paired.get(name, {}).get(key, []))} "
                f"| {o['p50_ms']:.2f} / {theirs('p50_ms', '.2f')} "
                f"| {o['p99_ms']:.2f} / {theirs('p99_ms', '.2f')} "
                f"| {o['p999_ms']:.2f} / {theirs('p999_ms', '.2f')} |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT / "python"))
    import tfra_redis
    from tfra_redis import testing

    tfra_python = Path(args.tfra_venv) / "bin" / "python"
    tfra_note = None
    if "tfra" in args.clients and not tfra_python.exists():
        tfra_note = "not installed"
        args.clients = [c for c in args.clients if c != "tfra"]
    pythons = {"ours": sys.executable, "tfra": str(tfra_python)}
    variants: dict[str, dict[str, str]] = {}
    for spec in args.variant:
        name, _, settings = spec.partition(":")
        variants[name] = dict(s.split("=", 1) for s in settings.split(",") if s)
        if "PYTHON" in variants[name]:
            pythons[name] = variants[name].pop("PYTHON")
        args.clients.append(name)
    rng = np.random.default_rng(args.seed)
    started = time.time()
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in args.clients}
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="tfra-bench-serving-"))
        server = stack.enter_context(testing.standalone())
        table_settings: dict[str, Any] = {
            "model_tag_runtime": "serving",
            "model_tag_import": "serving",
            "expire_model_tag_in_seconds": -1,
            "table_store_mode": 2,
        }
        config = testing.write_config_file(
            Path(tmp) / "redis_config.json", server, **table_settings
        )
        client_config = config
        if args.delay_ms > 0:
            proxy_port = stack.enter_context(delay_proxy(server.port, args.delay_ms))
            client_config = testing.write_config_file(
                Path(tmp) / "redis_config_proxied.json",
                server,
                redis_host_port=[proxy_port],
                **table_settings,
            )
        print(f"filling {args.rows:,} ids of dim {args.dim} ...", flush=True)
        store = tfra_redis.RedisStore(str(config), TABLE, args.dim)
        fill(store, args.rows, args.dim, rng)
        ids_path = Path(tmp) / "ids.npz"
        np.savez(
            ids_path,
            **{
                f"b{b}": zipf_batches(rng, args.rows, b, 512 if b < 4096 else 64, args.zipf)
                for b in args.batches
            },
        )
        request = {
            "config": str(client_config),
            "ids": str(ids_path),
            "table": TABLE,
            "dim": args.dim,
            "batches": args.batches,
        }
        clients = []
        try:
            for name in args.clients:
                print(f"starting {name} ...", flush=True)
                python = pythons.get(name, sys.executable)
                clients.append(Client(name, python, request, variants.get(name, {})))
                print(f"  {name} looks up with {clients[-1].info['lookup_ops']}", flush=True)
            cells = [(b, t) for b in args.batches for t in args.threads]
            for round_ in range(args.rounds):
                print(f"round {round_ + 1}/{args.rounds} ...", flush=True)
                for k, (batch, threads) in enumerate(cells):
                    # Cell by cell, each client first in turn.
                    turn = clients if (round_ + k) % 2 == 0 else clients[::-1]
                    for client in turn:
                        runs[client.name].append(
                            client.cell(
                                batch=batch, threads=threads, seconds=args.seconds, warmup=5
                            )
                        )
        finally:
            for client in clients:
                client.close()
        infos = {c.name: c.info for c in clients}
        server_cpu = testing.parse_info(server.execute("INFO", "cpu"))
    checks = {name: info["checksums"] for name, info in infos.items()}
    if len({json.dumps(c, sort_keys=True) for c in checks.values()}) > 1:
        print(f"WARNING: the clients read different rows: {checks}", file=sys.stderr)
    best = {name: best_cells(rs) for name, rs in runs.items()}
    paired = {name: paired_ratios(runs, name) for name in runs if name != "tfra"}
    lines = table_lines(best, tfra_note, paired)
    print()
    print("\n".join(lines))
    if tfra_note:
        print(f"\nTFRA: {tfra_note} ({args.tfra_venv}; benchmarks/setup_tfra_baseline.sh)")
    results_dir = BENCH_DIR / "results"
    results_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = results_dir / f"serving-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "args": {k: v for k, v in vars(args).items()},
                "machine": {
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                },
                "seconds": time.time() - started,
                "tfra": tfra_note or "installed",
                "clients": infos,
                "cells": runs,
                "server_cpu": server_cpu,
                "table": lines,
            },
            indent=2,
        )
    )
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
