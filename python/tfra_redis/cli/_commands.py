"""The table commands of ``tfra-redis``: export, import, copy, rebucket, expire, persist, bench."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import time
import uuid
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tfra_redis.cli._config import (
    _MODES,
    _config_fields,
    _load_config,
    _strip_prefix,
    _with_model_tag,
)
from tfra_redis.cli._errors import EXIT_OK, NoSuchTable, RedisUnavailable, UsageError
from tfra_redis.cli._export_file import (
    _END_BODY,
    _KEY_BYTES,
    _META_PADDING,
    END_TAG,
    MAGIC,
    _write_page,
    read_export_header,
    read_export_pages,
    verify_export,
)
from tfra_redis.cli._inspect import _inspect, _model_tags
from tfra_redis.cli._output import Output, Progress

if TYPE_CHECKING:
    from tfra_redis.store import RedisStore


def _open_store(
    config: Any, args: argparse.Namespace, out: Output, name: str | None = None
) -> tuple[RedisStore, list[str]]:
    """Opens ``--table`` without TTL management; notes from opening go to stderr."""
    from tfra_redis.store import RedisStore

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = RedisStore(
            config,
            name or args.table,
            args.dim,
            key_dtype=args.key_dtype,
            value_dtype=args.dtype,
            manage_ttl=False,
        )
    notes = [_strip_prefix(str(w.message)) for w in caught]
    for note in notes:
        out.note(note)
    return store, notes


def _names(keys: Sequence[bytes]) -> list[str]:
    return [k.decode("utf-8", "backslashreplace") for k in keys]


def _table_summary(store: Any, config: Any) -> dict[str, Any]:
    fields = _config_fields(config)
    return {
        "table": store.name,
        "model_tag": fields["model_tag_runtime"],
        "mode": _MODES.get(fields["redis_connection_mode"], "?"),
        "key_dtype": store.key_dtype,
        "value_dtype": store.value_dtype,
        "dim": store.dim,
        "buckets": _names(store.bucket_keys),
    }


def _require_rows(store: Any, config: Any) -> int:
    """The table's size; raises :class:`NoSuchTable` naming the tables that exist under its
    model tag when it has no rows (Redis deletes an empty hash: an empty table does not exist)."""
    size = int(store.size())
    if size:
        return size
    fields = _config_fields(config)
    tag = fields["model_tag_runtime"]
    try:
        names = [t["table"] for t in _inspect(fields, tag)["tables"]]
        tags = [] if names else _model_tags(fields)
    except (UsageError, RedisUnavailable) as err:  # e.g. a TLS config, which inspect lacks
        listing = f"(could not list the tables there: {err})"
    else:
        if names:
            listing = "tables there: " + ", ".join(names)
        else:
            listing = (
                "no table at all is stored under this model tag; model tags holding tables: "
                + (", ".join(repr(t) for t in tags) or "none")
                + " (pass one as --model-tag; 'tfra-redis inspect' lists their tables)"
            )
    raise NoSuchTable(f"table {store.name!r} does not exist under model tag {tag!r}; {listing}")


def _progress_enabled(args: argparse.Namespace) -> bool:
    return args.progress if args.progress is not None else sys.stderr.isatty()


def cmd_export(args: argparse.Namespace, config: Any, out: Output) -> int:
    config = _with_model_tag(config, args.model_tag)
    store, notes = _open_store(config, args, out)
    expected = _require_rows(store, config)
    summary = _table_summary(store, config)
    meta = {
        "format": "tfra-redis export",
        "version": 2 if store.key_dtype == "string" else 1,
        **{k: summary[k] for k in ("table", "key_dtype", "value_dtype", "dim", "model_tag")},
        "key_bytes": _KEY_BYTES[store.key_dtype],
        "row_bytes": store.dim * store.np_value_dtype.itemsize,
        "byteorder": "little",
        "rows_expected": expected,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": summary["mode"],
        "buckets": summary["buckets"],
    }
    temporary = f"{args.out}.tmp-{os.getpid()}"
    progress = Progress(f"export {store.name}", expected, _progress_enabled(args))
    try:
        stream = open(temporary, "wb")  # noqa: SIM115 - closed below, removed on failure
    except OSError as err:
        raise UsageError(f"cannot write {args.out}: {err}") from None
    try:
        with stream:
            stream.write(MAGIC)
            line = json.dumps(meta, separators=(",", ":")).encode()
            line_room = len(line) + _META_PADDING
            stream.write(line.ljust(line_room) + b"\n")

            def sink(keys: Any, rows: Any) -> None:
                progress.advance(_write_page(stream, keys, rows, store.key_dtype))

            store.export_pages(sink, page=args.page)
            stream.write(END_TAG + _END_BODY.pack(progress.done))
            if progress.done != expected:
                # The count import checks: the rows written, not the size before the export.
                meta["rows_expected"] = progress.done
                line = json.dumps(meta, separators=(",", ":")).encode()
                stream.seek(len(MAGIC))
                stream.write(line.ljust(line_room))
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, args.out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    progress.finish()
    result = {
        **summary,
        "file": args.out,
        "rows": progress.done,
        "bytes": os.path.getsize(args.out),
        "seconds": round(time.monotonic() - progress.started, 3),
        "rows_per_second": round(progress.rate()),
        "notes": notes,
    }
    out.result(
        result,
        lambda r: (
            f"exported {r['rows']} rows of {r['table']} ({r['dim']} x {r['value_dtype']}) "
            f"to {r['file']}: {r['bytes']} bytes, {r['rows_per_second']:,} rows/s"
        ),
    )
    return EXIT_OK


def cmd_import(args: argparse.Namespace, config: Any, out: Output) -> int:
    config = _with_model_tag(config, args.model_tag)
    try:
        stream = open(args.input, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as err:
        raise UsageError(f"cannot read {args.input}: {err}") from None
    with stream:
        meta = read_export_header(stream)
        if meta["dim"] != args.dim:
            raise UsageError(
                f"{args.input} holds rows of dim {meta['dim']}, but --dim is {args.dim}"
            )
        if args.dtype is not None and args.dtype != meta["value_dtype"]:
            raise UsageError(
                f"{args.input} holds {meta['value_dtype']} rows, but --dtype is {args.dtype}"
            )
        if args.key_dtype is not None and args.key_dtype != meta["key_dtype"]:
            raise UsageError(
                f"{args.input} holds {meta['key_dtype']} keys, but --key-dtype is {args.key_dtype}"
            )
        args.dtype, args.key_dtype = meta["value_dtype"], meta["key_dtype"]
        file_size = os.fstat(stream.fileno()).st_size
        pages_start = stream.tell()
        rows_in_file = verify_export(stream, meta, file_size)
        stream.seek(pages_start)
        store, notes = _open_store(config, args, out)
        progress = Progress(f"import {store.name}", rows_in_file, _progress_enabled(args))
        for keys, rows in read_export_pages(stream, meta, file_size):
            store.insert(keys, rows)
            progress.advance(len(keys))
    progress.finish()
    result = {
        **_table_summary(store, config),
        "file": args.input,
        "source_table": meta.get("table"),
        "rows": progress.done,
        "size_after": store.size(),
        "seconds": round(time.monotonic() - progress.started, 3),
        "rows_per_second": round(progress.rate()),
        "notes": notes,
    }
    out.result(
        result,
        lambda r: (
            f"imported {r['rows']} rows from {r['file']} into {r['table']} "
            f"(model tag {r['model_tag']}; now {r['size_after']} rows), "
            f"{r['rows_per_second']:,} rows/s"
        ),
    )
    return EXIT_OK


def cmd_copy(args: argparse.Namespace, config: Any, out: Output) -> int:
    if args.to_model_tag is None and args.to_config is None and args.to_table is None:
        raise UsageError("copy needs --to-model-tag, --to-config or --to-table")
    source_config = _with_model_tag(config, args.model_tag)
    target_config = _load_config(args.to_config, out) if args.to_config else source_config
    target_config = _with_model_tag(target_config, args.to_model_tag)
    target_name = args.to_table or args.table
    same_place = _config_fields(target_config) == _config_fields(source_config)
    if same_place and target_name == args.table:
        raise UsageError("the copy's target is the table itself; change the tag, table or config")
    source, notes = _open_store(source_config, args, out)
    source_rows = _require_rows(source, source_config)
    target, target_notes = _open_store(target_config, args, out, name=target_name)
    progress = Progress(f"copy {source.name}", source_rows, _progress_enabled(args))

    def sink(keys: Any, rows: Any) -> None:
        target.insert(keys, rows)
        progress.advance(len(keys))

    source.export_pages(sink, page=args.page)
    progress.finish()
    result = {
        "from": _table_summary(source, source_config),
        "to": _table_summary(target, target_config),
        "rows": progress.done,
        "size_after": target.size(),
        "seconds": round(time.monotonic() - progress.started, 3),
        "rows_per_second": round(progress.rate()),
        "notes": notes + target_notes,
    }
    out.result(
        result,
        lambda r: (
            f"copied {r['rows']} rows from {r['from']['model_tag']}:{r['from']['table']} "
            f"to {r['to']['model_tag']}:{r['to']['table']} ({r['to']['mode']}; now "
            f"{r['size_after']} rows), {r['rows_per_second']:,} rows/s"
        ),
    )
    return EXIT_OK


def cmd_rebucket(args: argparse.Namespace, config: Any, out: Output) -> int:
    config = _with_model_tag(config, args.model_tag)
    store, notes = _open_store(config, args, out)
    old, copied = store.rebucket()
    moved_at_open = [n for n in notes if n.startswith("moved ")]
    result = {
        **_table_summary(store, config),
        "moved_at_open": moved_at_open,
        "old_buckets": old,
        "rows_copied": copied,
        "rows": store.size(),
        "notes": notes,
    }

    def human(r: dict[str, Any]) -> str:
        lines = [f"table {r['table']} (model tag {r['model_tag']}): layout {r['buckets']}"]
        lines += [f"  at open: {note}" for note in r["moved_at_open"]]
        if r["old_buckets"]:
            lines.append(
                f"  moved {r['rows_copied']} rows from {r['old_buckets']} into the layout "
                "and deleted the old buckets"
            )
        elif not r["moved_at_open"]:
            lines.append("  nothing to move: no buckets of this table outside the layout")
        lines.append(f"  {r['rows']} rows in the layout now")
        return "\n".join(lines)

    out.result(result, human)
    return EXIT_OK


def _set_ttl(args: argparse.Namespace, config: Any, out: Output, seconds: int | None) -> int:
    """EXPIRE (``seconds``) or PERSIST (``None``) the table's buckets and report it."""
    config = _with_model_tag(config, args.model_tag)
    store, notes = _open_store(config, args, out)
    if seconds is None:
        store.persist()
    else:
        store.expire(seconds)
    result = {**_table_summary(store, config), "ttl_seconds": seconds, "notes": notes}
    done = "cleared" if seconds is None else f"{seconds}s set"
    out.result(
        result,
        lambda r: (
            f"TTL {done} on the {len(r['buckets'])} bucket(s) of {r['table']}: "
            f"{', '.join(r['buckets'])}"
        ),
    )
    return EXIT_OK


def cmd_expire(args: argparse.Namespace, config: Any, out: Output) -> int:
    if args.seconds < 0:
        raise UsageError("--seconds must be >= 0 (0 deletes the table); use persist to clear")
    return _set_ttl(args, config, out, args.seconds)


def cmd_persist(args: argparse.Namespace, config: Any, out: Output) -> int:
    return _set_ttl(args, config, out, None)


def cmd_bench(args: argparse.Namespace, config: Any, out: Output) -> int:
    import numpy as np

    if args.keys < 1 or args.dim < 1 or args.batch < 1:
        raise UsageError("--keys, --dim and --batch must be positive")
    args.table = f"tfra-redis-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    args.dtype, args.key_dtype = "float32", "int64"
    store, _ = _open_store(config, args, out)
    rng = np.random.default_rng(0)
    keys = rng.permutation(args.keys).astype(np.int64) * 2654435761 + 1
    rows = rng.standard_normal((args.keys, args.dim)).astype(np.float32)
    try:
        started = time.perf_counter()
        for i in range(0, args.keys, args.batch):
            store.insert(keys[i : i + args.batch], rows[i : i + args.batch])
        insert_s = time.perf_counter() - started
        started = time.perf_counter()
        found = 0
        for i in range(0, args.keys, args.batch):
            _, exists = store.find(keys[i : i + args.batch], return_exists=True)
            found += int(exists.sum())
        find_s = time.perf_counter() - started
    finally:
        store.clear()
    if found != args.keys:
        raise RedisUnavailable(f"bench read back {found} of {args.keys} rows")
    row_mb = args.dim * 4 / 1e6
    result = {
        "mode": _MODES.get(_config_fields(config)["redis_connection_mode"], "?"),
        "keys": args.keys,
        "dim": args.dim,
        "batch": args.batch,
        "insert_seconds": round(insert_s, 4),
        "find_seconds": round(find_s, 4),
        "insert_rows_per_second": round(args.keys / insert_s),
        "find_rows_per_second": round(args.keys / find_s),
        "insert_mb_per_second": round(args.keys * row_mb / insert_s, 1),
        "find_mb_per_second": round(args.keys * row_mb / find_s, 1),
        "scratch_table": args.table,
        "scratch_table_deleted": store.size() == 0,
    }
    out.result(
        result,
        lambda r: (
            f"{r['mode']}: {r['keys']} keys x dim {r['dim']} float32, batches of "
            f"{r['batch']}\n  insert {r['insert_rows_per_second']:,} rows/s "
            f"({r['insert_mb_per_second']} MB/s)\n  find   {r['find_rows_per_second']:,} rows/s "
            f"({r['find_mb_per_second']} MB/s)"
        ),
    )
    return EXIT_OK
