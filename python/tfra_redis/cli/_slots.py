"""``tfra-redis convert-slots``: move an embedding's optimizer slots between layouts.

TFRA keeps each optimizer slot in its own table (``<params>_<wrapper>_m``, ``..._v``: the
``per-slot`` layout); ``redis_fused_slots`` keeps them side by side in one table
(``<params>_<wrapper>_slots``: ``fused``); ``redis_fused_row`` keeps them after each id's row
in the embedding's own table (``fused-row``). Any layout converts to any other. The work is
done by the core crate (``tfra_redis::slot_layout::convert_slots``): bucket by bucket, every
copied id read back, the source's slots deleted (fused-row: stripped from the rows) only once
the destination is complete, and a marker key that makes training refuse the slots until the
conversion finished. Interrupted at any point, run it again.

``TFRA_REDIS_TEST_CONVERT_CRASH_AFTER`` is a test hook: the process dies (``os._exit``, no
cleanup, as ``kill -9``) once that many ids were copied, or, set to ``deleting``, when the
copy is complete and the source is about to be deleted.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from tfra_redis.cli._commands import _progress_enabled
from tfra_redis.cli._config import _MODES, _config_fields, _with_model_tag
from tfra_redis.cli._errors import EXIT_OK, UsageError
from tfra_redis.cli._output import Output, Progress

#: The environment variable of the crash test hook (see the module docs).
CRASH_HOOK = "TFRA_REDIS_TEST_CONVERT_CRASH_AFTER"


def _initial_rows(args: argparse.Namespace, slots: list[str]) -> list[bytes]:
    """One slot row of bytes per slot from ``--initial`` (a value per slot), or none (zeros)."""
    if args.initial is None:
        return []
    import numpy as np

    from tfra_redis.store import numpy_dtype

    try:
        values = [float(v) for v in args.initial.split(",")]
    except ValueError:
        raise UsageError(f"--initial {args.initial!r}: give one number per slot") from None
    if len(values) != len(slots):
        raise UsageError(
            f"--initial has {len(values)} values but --slots names {len(slots)} slots "
            f"({','.join(slots)})"
        )
    dtype = numpy_dtype(args.dtype).newbyteorder("<")
    return [np.full(args.dim, v, dtype=dtype).tobytes() for v in values]


def cmd_convert_slots(args: argparse.Namespace, config: Any, out: Output) -> int:
    from tfra_redis import _native

    if (args.wrapper is None) == (not args.short_file_name):
        raise UsageError("give --wrapper NAME, or --short-file-name for TFRA's short names")
    config = _with_model_tag(config, args.model_tag)
    slots: list[str] = args.slots
    crash_at = os.environ.get(CRASH_HOOK, "")
    to = "fused-row" if args.to == "row" else args.to
    source = "fused-row" if args.from_layout == "row" else args.from_layout
    label = f"convert-slots {args.params} -> {to}"
    progress = Progress(label, None, _progress_enabled(args))

    def report(phase: str, done: int, buckets: int, copied: int, total: int) -> None:
        if progress.total is None and total:
            progress.total = total
        progress.label = f"{label} ({phase}, bucket {done}/{buckets})"
        progress.advance(copied - progress.done)
        if crash_at and (phase == crash_at or (crash_at.isdigit() and copied >= int(crash_at))):
            os._exit(137)

    started = time.monotonic()
    result: dict[str, Any] = _native.convert_slots(
        config,
        args.params,
        args.wrapper,
        slots,
        source,
        to,
        args.key_dtype,
        args.dtype,
        args.dim,
        _initial_rows(args, slots),
        args.keep_source,
        args.overwrite,
        args.dry_run,
        args.page,
        report,
    )
    if not args.dry_run:
        progress.finish()
    fields = _config_fields(config)
    result.update(
        {
            "params": args.params,
            "slots": slots,
            "model_tag": fields["model_tag_runtime"],
            "mode": _MODES.get(fields["redis_connection_mode"], "?"),
            "seconds": round(time.monotonic() - started, 3),
        }
    )
    result["source"] = [{"table": t, "rows": n} for t, n in result["source"]]
    for key in ("destination_before", "destination_after"):
        result[key] = [{"table": t, "rows": n} for t, n in result[key]]
    out.result(result, _human)
    return EXIT_OK


def _tables(entries: list[dict[str, Any]]) -> str:
    return ", ".join(f"{e['table']} ({e['rows']} rows)" for e in entries)


def _human(r: dict[str, Any]) -> str:
    lines = [f"slots of {r['params']} (model tag {r['model_tag']}): {r['from']} -> {r['to']}"]
    lines.append(f"  source: {_tables(r['source'])}")
    lines.append(f"  destination before: {_tables(r['destination_before'])}")
    if r["dry_run"]:
        action = "would resume an interrupted conversion" if r["resumed"] else "would convert"
        if not any(e["rows"] for e in r["source"]) and not r["resumed"]:
            action = "nothing to convert: the source holds no rows"
        lines.append(f"  dry run, nothing written: {action}")
        return "\n".join(lines)
    if not r["ids_copied"] and not r["resumed"]:
        lines.append("  nothing to convert: the source holds no rows")
        return "\n".join(lines)
    if r["resumed"]:
        lines.append("  finished an interrupted conversion")
    lines.append(f"  copied {r['ids_copied']} ids in {r['seconds']} s")
    if r["ids_without_row"]:
        lines.append(
            f"  {r['ids_without_row']} ids had slots but no embedding row: not copied into "
            "the rows (the optimizer starts them fresh if they come back)"
        )
    lines.append(f"  destination now: {_tables(r['destination_after'])}")
    if not r["source_deleted"]:
        lines.append("  source kept (--keep-source)")
    elif r["from"] == "fused-row":
        lines.append("  slots stripped from the embedding's rows (the rows are kept)")
    else:
        lines.append("  source tables deleted")
    return "\n".join(lines)
