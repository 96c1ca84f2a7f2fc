"""Restricting a large embedding: time, and the client's memory while it runs.

Fills a private redis-server with an embedding of ``--rows`` ids (dim ``--dim``) and its
frequency status table (random counts), then, in a fresh process, restricts it to
``--keep`` ids (``Variable.restrict``'s Rust core: a radix select over HSCAN pages, then the
removals, page by page). Reports the time and the restricting process's peak RSS above what it
had just before the call, next to the size of the table's rows and of one page.

    python benchmarks/bench_restrict.py --quick     # 1M -> 100k
    python benchmarks/bench_restrict.py             # 10M -> 1M (a few minutes)

Prints a table and writes ``benchmarks/results/restrict-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, time
import numpy as np
from tfra_redis import _native, RedisStore
from tfra_redis.dynamic_embedding import restrict
args = json.loads(sys.argv[1])
params = RedisStore(args["config"], "bench_emb", args["dim"], manage_ttl=False)
status = RedisStore(args["config"], "bench_emb_frequency", 1, value_dtype="int32",
                    manage_ttl=False)
def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))
base = rss_kib()
start = time.perf_counter()
before, removed = _native.restrict(status._table, [params._table], args["keep"], restrict.PAGE)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "before": before, "removed": removed,
                  "peak_rss_kib_before": base, "peak_rss_kib_after": rss_kib(),
                  "kept": params.size()}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rows", type=int)
    p.add_argument("--keep", type=int)
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--out")
    args = p.parse_args(argv)
    rows = args.rows or (1_000_000 if args.quick else 10_000_000)
    keep = args.keep or rows // 10

    from tfra_redis import RedisStore, testing
    from tfra_redis.dynamic_embedding import restrict

    with tempfile.TemporaryDirectory(prefix="tfra-bench-restrict-") as tmp:
        with testing.standalone() as server:
            config = Path(tmp) / "redis_config.json"
            testing.write_config_file(config, server, expire_model_tag_in_seconds=-1)
            params = RedisStore(str(config), "bench_emb", args.dim, manage_ttl=False)
            status = RedisStore(
                str(config), "bench_emb_frequency", 1, value_dtype="int32", manage_ttl=False
            )
            rng = np.random.default_rng(1)
            print(f"filling {rows:,} ids ...", flush=True)
            fill_start = time.perf_counter()
            chunk = 1 << 18
            for start in range(0, rows, chunk):
                ids = np.arange(start, min(start + chunk, rows), dtype=np.int64)
                params.insert(ids, rng.normal(size=(len(ids), args.dim)).astype(np.float32))
                status.insert(ids, rng.integers(1, 1000, size=(len(ids), 1)).astype(np.int32))
            fill_seconds = time.perf_counter() - fill_start
            print(f"restricting to {keep:,} ...", flush=True)
            child = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    CHILD,
                    json.dumps({"config": str(config), "dim": args.dim, "keep": keep}),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(child.stdout.strip().splitlines()[-1])
    growth_mib = (result["peak_rss_kib_after"] - result["peak_rss_kib_before"]) / 1024
    table_mib = rows * (8 + 4 * args.dim) / 2**20
    page_mib = restrict.PAGE * (8 + 4 * args.dim) / 2**20
    print(f"\n{'rows':>12}{'kept':>12}{'removed':>12}{'seconds':>9}{'peak RSS growth':>17}")
    print(
        f"{rows:>12,}{result['kept']:>12,}{result['removed']:>12,}{result['seconds']:>9.1f}"
        f"{growth_mib:>14.1f} MiB"
    )
    print(
        f"(the embedding's rows: {table_mib:.0f} MiB; one page: {page_mib:.2f} MiB; the two "
        f"histograms: 1 MiB; filling took {fill_seconds:.0f} s)"
    )
    out = Path(args.out) if args.out else None
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = ROOT / "benchmarks" / "results" / f"restrict-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "args": vars(args),
                "rows": rows,
                "keep": keep,
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                "result": result,
                "peak_rss_growth_mib": growth_mib,
                "table_mib": table_mib,
                "page_mib": page_mib,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
