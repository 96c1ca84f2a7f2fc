"""``python -m tfra_redis.testing up {standalone|cluster|sentinel} --json FILE``.

Starts a topology on 127.0.0.1, writes its description (config fragment, ports, PIDs) as JSON
and stays in the foreground until SIGTERM or SIGINT, then stops every process it started. For
anything outside Python (a shell script, another language's tests) that needs a topology.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tfra_redis.testing.processes import ENGINES
from tfra_redis.testing.topologies import ClusterTopology, SentinelTopology, StandaloneTopology

_TOPOLOGIES = {
    "standalone": StandaloneTopology,
    "cluster": ClusterTopology,
    "sentinel": SentinelTopology,
}


def _write_json_atomically(path: str, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2) + "\n"
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    # A reader polling for the file must never see half of it.
    temporary = f"{path}.tmp-{os.getpid()}"
    Path(temporary).write_text(text)
    os.replace(temporary, path)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m tfra_redis.testing``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m tfra_redis.testing",
        description="Start a Redis or Valkey topology on 127.0.0.1 and keep it up until "
        "SIGTERM/SIGINT.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start a topology and stay in the foreground")
    up.add_argument("kind", choices=sorted(_TOPOLOGIES))
    up.add_argument(
        "--json",
        required=True,
        metavar="FILE",
        help="where to write the description ('-' = stdout)",
    )
    up.add_argument("--password", help="requirepass of the data servers")
    up.add_argument("--sentinel-password", help="requirepass of the sentinels (sentinel only)")
    up.add_argument(
        "--node-timeout", type=int, default=2000, help="cluster-node-timeout in ms (cluster only)"
    )
    up.add_argument(
        "--engine", choices=ENGINES, default="redis", help="which server to run (default redis)"
    )
    args = parser.parse_args(argv)

    options: dict[str, Any] = {"engine": args.engine}
    if args.password is not None:
        options["password"] = args.password
    if args.kind == "cluster":
        options["node_timeout"] = args.node_timeout
    if args.kind == "sentinel" and args.sentinel_password is not None:
        options["sentinel_password"] = args.sentinel_password

    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    topology = _TOPOLOGIES[args.kind](**options)
    with topology:
        description = topology.describe()
        description["startup_seconds"] = round(topology.startup_seconds, 3)
        description["harness_pid"] = os.getpid()
        _write_json_atomically(args.json, description)
        print(
            f"{args.kind} topology up in {topology.startup_seconds:.2f}s; "
            f"stop with kill -TERM {os.getpid()}",
            file=sys.stderr,
            flush=True,
        )
        while not stop_requested.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
