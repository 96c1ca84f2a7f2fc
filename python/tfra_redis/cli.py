"""``tfra-redis``: operator commands for Redis-backed embedding tables (no TensorFlow needed).

Run ``tfra-redis --help`` (or ``python -m tfra_redis.cli --help``) for the commands::

    tfra-redis [--config FILE] [--json] inspect [--model-tag TAG]
    tfra-redis [--config FILE] [--json] export  --table NAME --dim D [--dtype T] --out FILE
    tfra-redis [--config FILE] [--json] import  --table NAME --dim D --in FILE
    tfra-redis [--config FILE] [--json] copy    --table NAME --dim D --to-model-tag TAG
                                                [--to-config FILE] [--to-table NAME]
    tfra-redis [--config FILE] [--json] rebucket --table NAME --dim D
    tfra-redis [--config FILE] [--json] expire  --table NAME --dim D --seconds N
    tfra-redis [--config FILE] [--json] persist --table NAME --dim D
    tfra-redis [--config FILE] [--json] bench   [--keys N] [--dim D] [--batch B]

``--config`` names the same JSON file the tables use. Without it the config is found as a table
finds it (``RedisTableConfig``): ``$TFRA_REDIS_CONFIG_PATH``. ``--config`` and ``--json`` may be
given before or after the command name.

``inspect`` without ``--model-tag`` lists every model tag it finds (a bucket key
``<model tag>:<table>{<digits>}`` is split at its first ``:``; tables named with
``using_md5_prefix_name`` have no readable tag and are not listed). Table commands use the
config's ``model_tag_runtime`` (TFRA's default: ``test``) unless ``--model-tag`` is given.

Exit codes: 0 success; 1 Redis refused or failed (unreachable, authentication, ACL, bad stored
data); 2 usage, config or input-file errors; 3 the table to export or copy does not exist under
that model tag (the error names the tables that do). Passwords are never printed.

Table commands open the table with ``RedisStore(..., manage_ttl=False)``, so running one never
puts a TTL on a table when it ends. Opening a table does what opening it in a training job does:
it clears the buckets' TTL (TFRA's PERSIST on open) and, if its buckets are empty while buckets of
another layout of the same table exist, moves those rows into the config's layout.

Export file format (``TFRAREDIS1``), everything little-endian::

    b"TFRAREDIS1\\n"                       magic and version, 11 bytes
    <JSON metadata>  b"\\n"                 one UTF-8 line: format, version, table, key_dtype,
                                          value_dtype, dim, key_bytes, row_bytes, byteorder,
                                          model_tag, rows_expected, created_utc, buckets, mode
                                          (spaces may pad it before the newline)
    then pages, each:
      b"PAGE" <u32 n> <u32 crc32>         crc32 (zlib) of the n keys' bytes then the rows' bytes
      n keys   (key_bytes each: int64 or int32, two's complement)
      n rows   (row_bytes each: dim values of value_dtype, as stored in Redis)
    and the trailer:
      b"END!" <u64 total rows>

String-key tables (``key_dtype`` ``string``) write ``version`` 2 with ``key_bytes`` 0 (keys of
any length), and their pages carry the size of their key section::

      b"PAGE" <u32 n> <u32 crc32> <u64 K>  crc32 of the K key-section bytes then the rows' bytes
      n keys   (each <u32 length> then that many bytes: the Redis hash field as it is)
      n rows

Files of int tables keep version 1, byte for byte as before; a reader that only knows version 1
refuses a version-2 file by its ``key_dtype``.

Keys and rows are the very bytes TFRA keeps in Redis (README, *Layout in Redis*), so a file can
be read with numpy alone (``np.frombuffer``). A key may appear twice if Redis rehashed a bucket
while it was exported (HSCAN's guarantee); both copies hold the same row, and import is an upsert.

``rows_expected`` is the number of rows in the pages, as the trailer's total: export writes the
table's size first and, once the pages are written, the count it wrote in its place (the line is
padded so that it keeps its length), because a table written to during an export, or a bucket
rehashed meanwhile, gives a different count. Import checks the whole file (metadata, every
page's size and CRC, the trailer, both counts) before it writes the first row, so a damaged file
changes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import struct
import sys
import time
import uuid
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from tfra_redis._resp import RespConnection
    from tfra_redis.store import RedisStore

EXIT_OK = 0
EXIT_REDIS = 1
EXIT_USAGE = 2
EXIT_NO_TABLE = 3

MAGIC = b"TFRAREDIS1\n"
PAGE_TAG = b"PAGE"
END_TAG = b"END!"
_PAGE_HEADER = struct.Struct("<4sII")
_END_BODY = struct.Struct("<Q")
_MAX_META_BYTES = 1 << 20
# Room left in the metadata line for rows_expected to grow into when export rewrites it.
_META_PADDING = 24
# Pages are checked in pieces of this size: a page's length comes from the file.
_CRC_CHUNK = 16 << 20

VALUE_DTYPES = ("float32", "float64", "float16", "bfloat16", "int32", "int64", "int8")
KEY_DTYPES = ("int64", "int32", "string")
# 0: string keys have any length (each page holds the size of its key section).
_KEY_BYTES = {"int64": 8, "int32": 4, "string": 0}
_KEY_SECTION = struct.Struct("<Q")
_KEY_LENGTH = struct.Struct("<I")
_MODES = {0: "cluster", 1: "sentinel", 2: "standalone"}


class UsageError(Exception):
    """A problem with the command line, the config or an input file: exit code 2."""


class RedisUnavailable(Exception):
    """Redis could not be reached or refused a command (outside RedisStore): exit code 1."""


class NoSuchTable(Exception):
    """The table to read has no rows under its model tag (it does not exist): exit code 3."""


# --------------------------------------------------------------------------------------------
# Output


class Output:
    """Where results, notes and errors go; notes and errors (free text from Redis and the core)
    have the config's passwords replaced by ``***`` as a last line of defence."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.secrets: list[str] = []

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def note(self, text: str) -> None:
        print(self.scrub(f"tfra-redis: {text}"), file=sys.stderr, flush=True)

    def error(self, kind: str, text: str) -> None:
        text = self.scrub(text)
        print(f"tfra-redis: error: {text}", file=sys.stderr, flush=True)
        if self.as_json:
            print(json.dumps({"error": {"type": kind, "message": text}}), flush=True)

    def result(self, data: dict[str, Any], human: Callable[[dict[str, Any]], str]) -> None:
        # Results are built here from counts, names and bucket keys, never from the config's
        # secrets; scrubbing them could corrupt the JSON (a one-letter password, say).
        print(json.dumps(data, indent=2) if self.as_json else human(data), flush=True)


class Progress:
    """Progress on stderr without dependencies. On a terminal, a bar redrawn in place (``\\r``) at
    most 10 times a second; otherwise (a log file, a pipe) plain lines, at most one every 5
    seconds plus the last, so a redirected log holds no control characters."""

    def __init__(
        self, label: str, total: int | None, enabled: bool, tty: bool | None = None
    ) -> None:
        self.label = label
        self.total = total if total and total > 0 else None
        self.enabled = enabled
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.interval = 0.1 if self.tty else 5.0
        self.done = 0
        self.started = time.monotonic()
        self._drawn = self.started if not self.tty else 0.0

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def advance(self, rows: int) -> None:
        self.done += rows
        now = time.monotonic()
        if self.enabled and now - self._drawn >= self.interval:
            self._drawn = now
            self._draw()

    def _text(self) -> str:
        if self.total:
            fraction = min(self.done / self.total, 1.0)
            if self.tty:
                filled = int(fraction * 30)
                bar = f"[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} rows"
            else:
                bar = f"{self.done}/{self.total} rows ({fraction:.0%})"
        else:
            bar = f"{self.done} rows"
        return f"{self.label} {bar} {self.rate():,.0f} rows/s"

    def _draw(self, end: str = "") -> None:
        if self.tty:
            sys.stderr.write(f"\r{self._text()}{end}")
        else:
            sys.stderr.write(f"{self._text()}\n")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            self._draw(end="\n")


# --------------------------------------------------------------------------------------------
# Config


def _load_config(path: str | None, out: Output) -> Any:
    """The parsed config: ``path`` when given (it wins over the environment), else the file a
    table would find (``RedisTableConfig``: ``$TFRA_REDIS_CONFIG_PATH``)."""
    from tfra_redis import _native
    from tfra_redis.config import RedisTableConfig

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if path is None:
            try:
                found = RedisTableConfig().resolve_path()
            except _native.ConfigError as err:
                raise UsageError(
                    "no Redis config: pass --config FILE (a TFRA-style JSON config, e.g. "
                    '{"redis_connection_mode": 2, "redis_host_ip": ["127.0.0.1"], '
                    '"redis_host_port": [6379]}) or set TFRA_REDIS_CONFIG_PATH '
                    f"({_strip_prefix(str(err))})"
                ) from None
            config = _native.Config.from_path(found)
            for message in config.warnings:
                warnings.warn(f"tfra-redis: {message} (in {found})", stacklevel=1)
        else:
            if os.path.isdir(path):
                path = os.path.join(path, "redis_config.json")
            if not os.path.isfile(path):
                raise UsageError(f"the config file given by --config, {path}, does not exist")
            config = _native.Config.from_path(path)
            for message in config.warnings:
                warnings.warn(f"tfra-redis: {message} (in {path})", stacklevel=1)
    for warning in caught:
        out.note(_strip_prefix(str(warning.message)))
    _remember_secrets(config, out)
    return config


def _strip_prefix(text: str) -> str:
    return text.removeprefix("tfra-redis: ")


def _config_fields(config: Any) -> dict[str, Any]:
    fields: dict[str, Any] = json.loads(config.to_json())
    return fields


def _remember_secrets(config: Any, out: Output) -> None:
    fields = _config_fields(config)
    for key in ("redis_password", "redis_sentinel_password"):
        if fields.get(key) and fields[key] not in out.secrets:
            out.secrets.append(fields[key])


def _with_fields(config: Any, **changes: Any) -> Any:
    from tfra_redis import _native

    fields = _config_fields(config)
    fields.update(changes)
    return _native.Config.from_json(json.dumps(fields), config.path or "<command line>")


def _with_model_tag(config: Any, tag: str | None) -> Any:
    if tag is None:
        return config
    return _with_fields(config, model_tag_runtime=tag, model_tag_import=tag)


# --------------------------------------------------------------------------------------------
# Tables


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


# --------------------------------------------------------------------------------------------
# Talking to Redis directly (inspect): masters, scan, per-bucket facts


def _connect(fields: dict[str, Any], host: str, port: int) -> RespConnection:
    from tfra_redis._resp import RedisReplyError, RespConnection

    user = fields.get("redis_user") or "default"
    password = fields.get("redis_password") or None
    if password is None and user != "default":
        password = ""
    timeout = max(fields.get("redis_connect_timeout", 1000), 1) / 1000
    try:
        conn = RespConnection(
            host,
            port,
            username=user if user != "default" else None,
            password=password,
            timeout=max(timeout, fields.get("redis_socket_timeout", 1000) / 1000, 1.0),
        )
    except RedisReplyError as err:
        raise RedisUnavailable(f"Redis at {host}:{port} refused the login: {err}") from None
    except OSError as err:
        raise RedisUnavailable(f"cannot reach Redis at {host}:{port}: {err}") from None
    if fields.get("redis_db"):
        conn.execute("SELECT", fields["redis_db"])
    return conn


def _masters(fields: dict[str, Any]) -> list[tuple[str, int]]:
    """Every master holding data: the server, the sentinels' master, or CLUSTER SLOTS'."""
    from tfra_redis._resp import RedisReplyError, RespConnection

    if fields.get("redis_tls"):
        raise UsageError("inspect does not support redis_tls configs yet")
    hosts = list(zip(fields["redis_host_ip"], fields["redis_host_port"], strict=False))
    if not hosts:
        raise UsageError("the config names no redis_host_ip / redis_host_port")
    mode = fields["redis_connection_mode"]
    if mode == 2:
        return [hosts[0]]
    problems = []
    for host, port in hosts:
        try:
            if mode == 0:
                with _connect(fields, host, port) as conn:
                    slots = conn.execute("CLUSTER", "SLOTS")
                masters: list[tuple[str, int]] = []
                for entry in slots:
                    address = (entry[2][0] or host, int(entry[2][1]))
                    if address not in masters:
                        masters.append(address)
                return sorted(masters)
            password = fields.get("redis_sentinel_password") or None
            timeout = max(fields.get("redis_sentinel_connect_timeout", 1000) / 1000, 1.0)
            with RespConnection(host, port, password=password, timeout=timeout) as conn:
                reply = conn.execute(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", fields["redis_master_name"]
                )
            if reply:
                return [(reply[0], int(reply[1]))]
            problems.append(f"{host}:{port} knows no master {fields['redis_master_name']!r}")
        except (OSError, RedisReplyError, RedisUnavailable) as err:
            problems.append(f"{host}:{port}: {err}")
    raise RedisUnavailable("no Redis node answered: " + "; ".join(problems))


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


_BUCKET = re.compile(rb"^(?P<prefix>.*)\{(?P<tag>[0-9]+)\}$", re.DOTALL)


def _scan(conn: Any, pattern: str) -> Iterator[bytes]:
    cursor = b"0"
    while True:
        cursor, keys = conn.execute(
            "SCAN", cursor, "MATCH", pattern, "COUNT", 1000, "TYPE", "hash", decode=False
        )
        yield from keys
        if cursor == b"0":
            return


# Fields sampled per bucket to tell the key dtype: ids of one width are int64 (8 bytes) or int32
# (4 bytes), anything else string ids. String ids that all have 4 or 8 bytes look like ints.
_SAMPLED_FIELDS = 16


def _key_dtype(key_lengths: set[int]) -> str | None:
    if not key_lengths:
        return None
    if key_lengths in ({8}, {4}):
        return "int64" if key_lengths == {8} else "int32"
    return "string"


def _bucket_facts(conn: Any, keys: list[bytes]) -> list[dict[str, Any]]:
    commands = []
    for key in keys:
        commands += [
            ("HLEN", key),
            ("MEMORY", "USAGE", key),
            ("TTL", key),
            ("HRANDFIELD", key, _SAMPLED_FIELDS, "WITHVALUES"),
        ]
    replies = conn.pipeline(commands, decode=False)
    facts = []
    for i in range(len(keys)):
        hlen, memory, ttl, sample = replies[4 * i : 4 * i + 4]
        fact: dict[str, Any] = {
            "rows": hlen if isinstance(hlen, int) else 0,
            "bytes": memory if isinstance(memory, int) else None,
            "ttl": ttl if isinstance(ttl, int) else None,
            "key_lengths": None,
            "value_bytes": None,
        }
        if isinstance(sample, list) and len(sample) >= 2:
            # Field lengths of the sample: one length for int ids, usually several for strings.
            fact["key_lengths"] = sorted({len(field) for field in sample[0::2]})
            fact["value_bytes"] = len(sample[1])
        facts.append(fact)
    return facts


def _split_bucket(key: bytes, tag: str | None) -> tuple[str, str] | None:
    """``(model tag, table)`` of a bucket key ``<tag>:<table>{<digits>}``, or ``None`` when the
    key is not a bucket of ``tag`` (any tag when ``None``: split at the first ``:``)."""
    match = _BUCKET.match(key)
    if not match:
        return None
    prefix = match["prefix"]
    if tag is not None:
        tag_prefix = tag.encode() + b":"
        if not prefix.startswith(tag_prefix):
            return None
        return tag, prefix[len(tag_prefix) :].decode("utf-8", "backslashreplace")
    found_tag, colon, name = prefix.partition(b":")
    if not colon or not found_tag:
        return None
    return (
        found_tag.decode("utf-8", "backslashreplace"),
        name.decode("utf-8", "backslashreplace"),
    )


def _summarize(tag: str, name: str, buckets: list[dict[str, Any]]) -> dict[str, Any]:
    per_node: dict[str, int] = {}
    for bucket in buckets:
        per_node[bucket["node"]] = per_node.get(bucket["node"], 0) + 1
    sampled = [b for b in buckets if b["value_bytes"] is not None]
    value_bytes = sorted({b["value_bytes"] for b in sampled})
    key_lengths = {n for b in sampled for n in b["key_lengths"]}
    ttls = [b["ttl"] for b in buckets if b["ttl"] is not None and b["ttl"] >= 0]
    return {
        "model_tag": tag,
        "table": name,
        "bucket_count": len(buckets),
        "buckets_per_node": per_node,
        "rows": sum(b["rows"] for b in buckets),
        "bytes": sum(b["bytes"] or 0 for b in buckets),
        "key_dtype": _key_dtype(key_lengths),
        "value_bytes": value_bytes[0] if len(value_bytes) == 1 else value_bytes or None,
        "dim_if_float32": value_bytes[0] // 4
        if len(value_bytes) == 1 and value_bytes[0] % 4 == 0
        else None,
        "ttl_min": min(ttls) if ttls else None,
        "ttl_max": max(ttls) if ttls else None,
        "buckets_without_ttl": sum(1 for b in buckets if b["ttl"] == -1),
        "buckets": buckets,
    }


def _buckets_of(conn: Any, tag: str | None) -> list[tuple[bytes, tuple[str, str]]]:
    """``(key, (model tag, table))`` of the buckets on one node, sorted."""
    pattern = "*{[0-9]*}" if tag is None else _glob_escape(tag) + ":*{[0-9]*}"
    found = []
    for key in _scan(conn, pattern):
        where = _split_bucket(key, tag)
        if where is not None:
            found.append((key, where))
    return sorted(found)


def _model_tags(fields: dict[str, Any]) -> list[str]:
    """Every model tag that holds a table."""
    tags: set[str] = set()
    for host, port in _masters(fields):
        with _connect(fields, host, port) as conn:
            tags.update(tag for _, (tag, _) in _buckets_of(conn, None))
    return sorted(tags)


def _inspect(fields: dict[str, Any], tag: str | None) -> dict[str, Any]:
    """The tables of model tag ``tag``, or of every model tag found when it is ``None``."""
    masters = _masters(fields)
    tables: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for host, port in masters:
        node = f"{host}:{port}"
        with _connect(fields, host, port) as conn:
            found = _buckets_of(conn, tag)
            for start in range(0, len(found), 256):
                chunk = found[start : start + 256]
                for (key, where), fact in zip(
                    chunk, _bucket_facts(conn, [k for k, _ in chunk]), strict=True
                ):
                    tables.setdefault(where, []).append(
                        {"key": key.decode("utf-8", "backslashreplace"), "node": node, **fact}
                    )
    summaries = [_summarize(t, name, tables[(t, name)]) for t, name in sorted(tables)]
    tags = sorted({t for t, _ in tables})
    return {
        "model_tag": tag,
        "model_tags": [tag] if tag is not None else tags,
        "mode": _MODES.get(fields["redis_connection_mode"], "?"),
        "masters": [f"{h}:{p}" for h, p in masters],
        "tables": summaries,
    }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _human_inspect(data: dict[str, Any]) -> str:
    where = f"{data['mode']} ({_plural(len(data['masters']), 'master')})"
    if data["model_tag"] is None and not data["tables"]:
        return f"no tables on {where}"
    lines = []
    if data["model_tag"] is None:
        lines.append(
            f"{_plural(len(data['model_tags']), 'model tag')} on {where}: "
            + ", ".join(repr(t) for t in data["model_tags"])
        )
    for tag in data["model_tags"]:
        tables = [t for t in data["tables"] if t["model_tag"] == tag]
        lines.append(f"model tag {tag!r} on {where}: {_plural(len(tables), 'table')}")
        if tables:
            lines += _table_lines(tables)
    others = data.get("model_tags_with_tables")
    if others is not None:
        lines.append(
            "  model tags holding tables: " + ", ".join(repr(t) for t in others)
            if others
            else "  no model tag holds any table"
        )
    return "\n".join(lines)


def _table_lines(tables: list[dict[str, Any]]) -> list[str]:
    lines = []
    header = ("TABLE", "BUCKETS", "ROWS", "BYTES", "VALUE BYTES", "DIM IF F32", "TTL")
    rows = []
    for t in tables:
        if t["ttl_min"] is None:
            ttl = "none"
        elif t["ttl_min"] == t["ttl_max"]:
            ttl = f"{t['ttl_min']}s"
        else:
            ttl = f"{t['ttl_min']}-{t['ttl_max']}s"
        if t["ttl_min"] is not None and t["buckets_without_ttl"]:
            ttl += f" ({t['buckets_without_ttl']} without)"
        rows.append(
            (
                t["table"],
                str(t["bucket_count"]),
                str(t["rows"]),
                str(t["bytes"]),
                str(t["value_bytes"] if t["value_bytes"] is not None else "?"),
                str(t["dim_if_float32"] if t["dim_if_float32"] is not None else "?"),
                ttl,
            )
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append(
            "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        )
    for t in tables:
        nodes = ", ".join(f"{node}: {n}" for node, n in sorted(t["buckets_per_node"].items()))
        lines.append(f"    {t['table']}: buckets per node {nodes}")
    return lines


# --------------------------------------------------------------------------------------------
# The export file


def _string_key_section(keys: Any) -> bytes:
    return b"".join(_KEY_LENGTH.pack(len(k)) + bytes(k) for k in keys)


def _write_page(stream: BinaryIO, keys: Any, rows: Any, key_dtype: str) -> int:
    import numpy as np

    if key_dtype == "string":
        key_bytes = _string_key_section(keys)
    else:
        key_bytes = np.ascontiguousarray(
            keys, dtype=np.dtype(key_dtype).newbyteorder("<")
        ).tobytes()
    row_bytes = np.ascontiguousarray(rows).view(np.uint8).tobytes()
    crc = zlib.crc32(row_bytes, zlib.crc32(key_bytes))
    stream.write(_PAGE_HEADER.pack(PAGE_TAG, len(keys), crc))
    if key_dtype == "string":
        stream.write(_KEY_SECTION.pack(len(key_bytes)))
    stream.write(key_bytes)
    stream.write(row_bytes)
    return len(keys)


def _read_exact(stream: BinaryIO, size: int, what: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise UsageError(f"the file ends inside {what} (truncated?)")
    return data


def read_export_header(stream: BinaryIO) -> dict[str, Any]:
    """Checks the magic and returns the metadata of a ``TFRAREDIS1`` file."""
    magic = stream.read(len(MAGIC))
    if magic != MAGIC:
        raise UsageError(f"not a tfra-redis export file (expected it to start with {MAGIC!r})")
    line = stream.readline(_MAX_META_BYTES)
    if not line.endswith(b"\n"):
        raise UsageError("the metadata line of the export file is cut off")
    try:
        meta = json.loads(line)
    except ValueError as err:
        raise UsageError(f"the metadata line of the export file is not JSON: {err}") from None
    for field in ("key_dtype", "value_dtype", "dim", "row_bytes", "key_bytes"):
        if field not in meta:
            raise UsageError(f"the export file's metadata has no {field!r}")
    if meta["key_dtype"] not in KEY_DTYPES or meta["value_dtype"] not in VALUE_DTYPES:
        raise UsageError(
            f"the export file holds {meta['key_dtype']} -> {meta['value_dtype']}, "
            "which this version cannot import"
        )
    from tfra_redis.store import numpy_dtype

    # Page sizes are computed from these: each must be what the dtypes and dim imply, or a
    # damaged line could ask for any amount of memory.
    dim = _meta_int(meta, "dim", 1)
    key_bytes = _meta_int(meta, "key_bytes", 0)
    row_bytes = _meta_int(meta, "row_bytes", 1)
    if key_bytes != _KEY_BYTES[meta["key_dtype"]]:
        raise UsageError(
            f"the export file's metadata says key_bytes {key_bytes}, but {meta['key_dtype']} "
            f"keys take {_KEY_BYTES[meta['key_dtype']]} (corrupt metadata)"
        )
    want_version = 2 if meta["key_dtype"] == "string" else 1
    if meta.get("version", 1) != want_version:
        raise UsageError(
            f"the export file is version {meta.get('version')!r}, but {meta['key_dtype']} "
            f"keys are written as version {want_version} (corrupt metadata)"
        )
    want_row_bytes = dim * numpy_dtype(meta["value_dtype"]).itemsize
    if row_bytes != want_row_bytes:
        raise UsageError(
            f"the export file's metadata says row_bytes {row_bytes}, but {dim} "
            f"{meta['value_dtype']} values take {want_row_bytes} (corrupt metadata)"
        )
    if "rows_expected" in meta:
        _meta_int(meta, "rows_expected", 0)
    checked: dict[str, Any] = meta
    return checked


def _meta_int(meta: dict[str, Any], field: str, minimum: int) -> int:
    value = meta[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(
            f"the export file's metadata has {field} {value!r}; expected an integer "
            f">= {minimum} (corrupt metadata)"
        )
    return value


def _page_header(
    stream: BinaryIO, meta: dict[str, Any], file_size: int, total: int
) -> tuple[int, int, int] | None:
    """Reads the next page header: ``(rows, crc, key section bytes)``, or ``None`` at a valid
    trailer (then the stream is at the end of the file). Checks the page fits in what is left
    of the file before anything of that size is read."""
    tag = _read_exact(stream, 4, "a page header")
    if tag == END_TAG:
        (count,) = _END_BODY.unpack(_read_exact(stream, _END_BODY.size, "the trailer"))
        if count != total:
            raise UsageError(f"the trailer says {count} rows but the pages hold {total}")
        if stream.read(1):
            raise UsageError("the export file has bytes after its trailer")
        return None
    if tag != PAGE_TAG:
        raise UsageError(f"expected a page header at row {total}, found {tag!r}")
    n, crc = struct.unpack("<II", _read_exact(stream, 8, "a page header"))
    if meta["key_dtype"] == "string":
        (keys_size,) = _KEY_SECTION.unpack(_read_exact(stream, _KEY_SECTION.size, "a page header"))
        if keys_size < n * _KEY_LENGTH.size:
            raise UsageError(
                f"the page starting at row {total} says its {n} keys take {keys_size} bytes, "
                "less than their lengths alone (corrupt)"
            )
    else:
        keys_size = n * meta["key_bytes"]
    size = keys_size + n * meta["row_bytes"]
    left = file_size - stream.tell()
    if size > left:
        raise UsageError(
            f"the page starting at row {total} says it holds {n} rows ({size} bytes), but only "
            f"{left} bytes are left in the file (truncated or corrupt)"
        )
    return n, crc, keys_size


def verify_export(stream: BinaryIO, meta: dict[str, Any], file_size: int) -> int:
    """Reads the pages from the stream's position to the end, checking each page's size and
    CRC, the trailer and ``rows_expected``, without keeping any of them; returns the row
    count."""
    total = 0
    while (page := _page_header(stream, meta, file_size, total)) is not None:
        n, crc, keys_size = page
        left = keys_size + n * meta["row_bytes"]
        computed = 0
        while left:
            chunk = _read_exact(stream, min(left, _CRC_CHUNK), "a page")
            computed = zlib.crc32(chunk, computed)
            left -= len(chunk)
        if computed != crc:
            raise UsageError(f"the page starting at row {total} fails its CRC check (corrupt)")
        total += n
    expected = meta.get("rows_expected", total)
    if expected != total:
        raise UsageError(
            f"the export file's metadata says rows_expected is {expected}, but its pages hold "
            f"{total} rows (an incomplete file, or not the file its metadata describes)"
        )
    return total


def read_export_pages(
    stream: BinaryIO, meta: dict[str, Any], file_size: int
) -> Iterator[tuple[Any, Any]]:
    """Yields (keys, rows) numpy arrays page by page; checks sizes, CRCs and the trailer (run
    :func:`verify_export` first to know the whole file is good before using any page)."""
    import numpy as np

    from tfra_redis.store import numpy_dtype

    strings = meta["key_dtype"] == "string"
    key_dtype = None if strings else np.dtype(meta["key_dtype"]).newbyteorder("<")
    value_dtype = numpy_dtype(meta["value_dtype"])
    row_bytes, dim = meta["row_bytes"], meta["dim"]
    total = 0
    while (page := _page_header(stream, meta, file_size, total)) is not None:
        n, crc, keys_size = page
        keys_raw = _read_exact(stream, keys_size, "a page's keys")
        rows_raw = _read_exact(stream, n * row_bytes, "a page's rows")
        if zlib.crc32(rows_raw, zlib.crc32(keys_raw)) != crc:
            raise UsageError(f"the page starting at row {total} fails its CRC check (corrupt)")
        if strings:
            keys = _split_string_keys(keys_raw, n, total)
        else:
            keys = np.frombuffer(keys_raw, dtype=key_dtype).astype(meta["key_dtype"])
        rows = np.frombuffer(rows_raw, dtype=value_dtype).reshape(n, dim)
        total += n
        yield keys, rows


def _split_string_keys(section: bytes, n: int, first_row: int) -> Any:
    """The ``n`` length-prefixed keys of a page's key section, as an object array of bytes;
    the lengths must add up to the section exactly."""
    import numpy as np

    keys = np.empty((n,), dtype=object)
    at = 0
    for i in range(n):
        if at + _KEY_LENGTH.size > len(section):
            raise UsageError(f"the keys of the page starting at row {first_row} are cut off")
        (length,) = _KEY_LENGTH.unpack_from(section, at)
        at += _KEY_LENGTH.size
        if at + length > len(section):
            raise UsageError(f"the keys of the page starting at row {first_row} are cut off")
        keys[i] = section[at : at + length]
        at += length
    if at != len(section):
        raise UsageError(
            f"the keys of the page starting at row {first_row} leave {len(section) - at} bytes "
            "over (corrupt)"
        )
    return keys


# --------------------------------------------------------------------------------------------
# Commands


def cmd_inspect(args: argparse.Namespace, config: Any, out: Output) -> int:
    fields = _config_fields(config)
    data = _inspect(fields, args.model_tag)
    if args.model_tag is not None and not data["tables"]:
        # A mistyped or defaulted tag: say where the tables are.
        data["model_tags_with_tables"] = _model_tags(fields)
    out.result(data, _human_inspect)
    return EXIT_OK


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


# --------------------------------------------------------------------------------------------
# Argument parsing


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _global_options(suppress: bool) -> argparse.ArgumentParser:
    # The same options on the main parser and on every command, so they work in either place;
    # SUPPRESS keeps a command's missing option from overwriting the main parser's value.
    parent = argparse.ArgumentParser(add_help=False)
    default = argparse.SUPPRESS if suppress else None
    parent.add_argument(
        "--config",
        metavar="FILE",
        default=default,
        help="JSON config of the Redis backend (a table's config file, or a directory holding "
        "redis_config.json); default: $TFRA_REDIS_CONFIG_PATH",
    )
    parent.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="print the result as JSON on stdout (errors too)",
    )
    return parent


def _table_options(parser: argparse.ArgumentParser, *, dtype_default: str | None) -> None:
    parser.add_argument("--table", required=True, metavar="NAME", help="the table name")
    parser.add_argument("--dim", required=True, type=_positive, metavar="D", help="values per row")
    parser.add_argument(
        "--dtype",
        choices=VALUE_DTYPES,
        default=dtype_default,
        help=f"value dtype (default: {dtype_default or 'from the file'})",
    )
    parser.add_argument(
        "--key-dtype",
        choices=KEY_DTYPES,
        default="int64" if dtype_default else None,
        help=f"key dtype (default: {'int64' if dtype_default else 'from the file'})",
    )
    parser.add_argument(
        "--model-tag",
        metavar="TAG",
        help="use this model tag instead of the config's model_tag_runtime (whose default, "
        "as in TFRA, is 'test')",
    )


def _progress_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``tfra-redis`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="tfra-redis",
        description="Inspect, move and measure Redis-backed embedding tables (TFRA layout).",
        parents=[_global_options(suppress=False)],
        epilog="Exit codes: 0 ok, 1 Redis error, 2 usage or config error, 3 no such table. "
        "Run 'tfra-redis COMMAND --help' for a command's options.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    shared = [_global_options(suppress=True)]

    def command(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, description=description, parents=shared)

    p = command(
        "inspect",
        "list the tables of every model tag, or of one",
        "List the tables stored under every model tag found (or under --model-tag): buckets "
        "per node, rows (HLEN), bytes "
        "(MEMORY USAGE, estimated), value size and the dim it means for float32 (sampled "
        "with HRANDFIELD), and TTL. Reads only; changes nothing.",
    )
    p.add_argument(
        "--model-tag", metavar="TAG", help="only this model tag (default: every tag found)"
    )
    p.set_defaults(run=cmd_inspect)

    p = command(
        "export",
        "write a table to a portable file",
        "Write every row of a table to a TFRAREDIS1 file (see the module docs for the format).",
    )
    _table_options(p, dtype_default="float32")
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    p.add_argument("--page", type=_positive, default=65536, help="rows per page (default 65536)")
    _progress_options(p)
    p.set_defaults(run=cmd_export)

    p = command(
        "import",
        "load a file written by export into a table",
        "Upsert the rows of a TFRAREDIS1 file into a table (dtypes come from the file).",
    )
    _table_options(p, dtype_default=None)
    p.add_argument("--in", dest="input", required=True, metavar="FILE", help="the file to read")
    _progress_options(p)
    p.set_defaults(run=cmd_import)

    p = command(
        "copy",
        "copy a table to another model tag, name or server",
        "Copy every row of a table to another model tag, table name or Redis (--to-config); "
        "an upsert into the target.",
    )
    _table_options(p, dtype_default="float32")
    p.add_argument("--to-model-tag", metavar="TAG", help="the target model tag")
    p.add_argument("--to-config", metavar="FILE", help="the target's config (another Redis)")
    p.add_argument("--to-table", metavar="NAME", help="the target table name (default: same)")
    p.add_argument("--page", type=_positive, default=65536, help="rows per page (default 65536)")
    _progress_options(p)
    p.set_defaults(run=cmd_copy)

    p = command(
        "rebucket",
        "move a table's rows into the config's bucket layout",
        "Move rows of the table that sit in buckets of another layout (another storage_slice "
        "or other hash tags, same model tag) into the config's layout: copy, verify, then "
        "delete the old buckets. Safe to re-run after an interruption.",
    )
    _table_options(p, dtype_default="float32")
    p.set_defaults(run=cmd_rebucket)

    p = command("expire", "put a TTL on a table", "Set a TTL on every bucket of a table.")
    _table_options(p, dtype_default="float32")
    p.add_argument(
        "--seconds", required=True, type=int, metavar="N", help="TTL in seconds (0 deletes)"
    )
    p.set_defaults(run=cmd_expire)

    p = command("persist", "clear a table's TTL", "Remove the TTL from every bucket of a table.")
    _table_options(p, dtype_default="float32")
    p.set_defaults(run=cmd_persist)

    p = command(
        "bench",
        "measure insert and find throughput",
        "Insert and find float32 rows in a scratch table, print rows/s, delete the table.",
    )
    p.add_argument("--keys", type=_positive, default=100_000, help="rows (default 100000)")
    p.add_argument("--dim", type=_positive, default=16, help="values per row (default 16)")
    p.add_argument("--batch", type=_positive, default=4096, help="rows per call (default 4096)")
    p.set_defaults(run=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tfra-redis`` console script and ``python -m tfra_redis.cli``."""
    args = build_parser().parse_args(argv)
    out = Output(as_json=args.json)
    try:
        from tfra_redis import (
            ConfigError,
            RedisAuthError,
            RedisConnectionError,
            RedisTableError,
        )
    except ImportError as err:  # a broken install; say so instead of a traceback
        print(f"tfra-redis: error: cannot load tfra_redis: {err}", file=sys.stderr)
        return EXIT_REDIS
    try:
        config = _load_config(args.config, out)
        code: int = args.run(args, config, out)
        return code
    except (UsageError, ConfigError) as err:
        out.error(type(err).__name__, str(err))
        return EXIT_USAGE
    except (ValueError, TypeError) as err:
        # RedisStore's argument checks (dim, dtypes, shapes).
        out.error(type(err).__name__, str(err))
        return EXIT_USAGE
    except (RedisConnectionError, RedisAuthError, RedisUnavailable) as err:
        out.error(type(err).__name__, str(err))
        return EXIT_REDIS
    except RedisTableError as err:
        out.error(type(err).__name__, str(err))
        return EXIT_REDIS
    except NoSuchTable as err:
        out.error(type(err).__name__, str(err))
        return EXIT_NO_TABLE
    except KeyboardInterrupt:
        out.error("KeyboardInterrupt", "interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
