"""``tfra-redis inspect``: the tables Redis holds, found by scanning every master for bucket keys
(no table is opened), with per-bucket facts summed per table."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tfra_redis.cli._config import _MODES, _config_fields
from tfra_redis.cli._errors import EXIT_OK, RedisUnavailable, UsageError
from tfra_redis.cli._output import Output

if TYPE_CHECKING:
    from tfra_redis._resp import RespConnection


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


def cmd_inspect(args: argparse.Namespace, config: Any, out: Output) -> int:
    fields = _config_fields(config)
    data = _inspect(fields, args.model_tag)
    if args.model_tag is not None and not data["tables"]:
        # A mistyped or defaulted tag: say where the tables are.
        data["model_tags_with_tables"] = _model_tags(fields)
    out.result(data, _human_inspect)
    return EXIT_OK
