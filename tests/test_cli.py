"""The ``tfra-redis`` command line, run as ``python -m tfra_redis.cli`` against a real
standalone server and the real cluster: every command, ``--json`` output, exit codes, and an
export -> import round trip that must give the rows back bit for bit."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tfra_redis import RedisStore, testing
from tfra_redis.cli import MAGIC

KINDS = ["standalone", "cluster"]
COMMANDS = [
    "inspect",
    "export",
    "import",
    "copy",
    "rebucket",
    "convert-slots",
    "expire",
    "persist",
    "bench",
]


def cli(*args: Any, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs the CLI in a fresh interpreter, without any config path from our environment."""
    clean = {k: v for k, v in os.environ.items() if k != "TFRA_REDIS_CONFIG_PATH"}
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "tfra_redis.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=clean,
        timeout=120,
    )


def ok_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    return json.loads(result.stdout)


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


@pytest.fixture
def topology(request, kind):
    return request.getfixturevalue({"standalone": "standalone_server", "cluster": "cluster"}[kind])


@pytest.fixture
def tag() -> str:
    """A model tag of the test's own, so inspect sees only this test's tables."""
    return "cli" + uuid.uuid4().hex[:10]


@pytest.fixture
def config_file(tmp_path, topology, tag, make_config) -> Path:
    return make_config(
        tmp_path, topology, storage_slice=3, model_tag_runtime=tag, model_tag_import=tag
    )


def store_for(config: Path | dict, name: str, dim: int, **kwargs: Any) -> RedisStore:
    if isinstance(config, Path):
        config = json.loads(config.read_text())
    return RedisStore(config, name, dim, manage_ttl=False, **kwargs)


def rows(keys: Any, dim: int, scale: float = 1.0) -> np.ndarray:
    keys = np.asarray(keys, dtype=np.float64)
    return ((keys[..., None] * scale) + np.arange(dim)).astype(np.float32)


def sorted_export(store: RedisStore) -> tuple[np.ndarray, np.ndarray]:
    keys, values = store.export()
    order = np.argsort(keys, kind="stable")
    return keys[order], values[order]


def node_of(topology, key: bytes) -> testing.RedisServer:
    if isinstance(topology, testing.ClusterTopology):
        return topology.node_for_slot(topology.masters()[0].execute("CLUSTER", "KEYSLOT", key))
    return topology


def ttl(topology, key: bytes) -> int:
    return node_of(topology, key).execute("TTL", key)


# --------------------------------------------------------------------------------------------


def test_help_of_every_command():
    main = cli("--help")
    assert main.returncode == 0
    assert main.stdout.startswith("usage: tfra-redis")
    for command in COMMANDS:
        assert command in main.stdout
    for command in COMMANDS:
        result = cli(command, "--help")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"usage: tfra-redis {command}")
        assert "--config" in result.stdout and "--json" in result.stdout
    usage = cli("export")
    assert usage.returncode == 2
    assert "--table" in usage.stderr and "required" in usage.stderr
    assert cli("bench", "--keys", "0").returncode == 2


def test_inspect_lists_tables_buckets_rows_dim_and_ttl(kind, topology, config_file, tag):
    emb = store_for(config_file, "emb", 4)
    emb.insert(np.arange(3000), rows(np.arange(3000), 4))
    slot_table = store_for(config_file, "emb_Adam_m", 4)
    slot_table.insert(np.arange(30), rows(np.arange(30), 4))
    slot_table.expire(100)
    other_tag = store_for(
        {**json.loads(config_file.read_text()), "model_tag_runtime": "x" + tag}, "hidden", 2
    )
    other_tag.insert([1], [[1, 2]])

    data = ok_json(cli("--config", config_file, "--json", "inspect", "--model-tag", tag))
    assert data["model_tag"] == tag and data["mode"] == kind
    assert len(data["masters"]) == (3 if kind == "cluster" else 1)
    by_name = {t["table"]: t for t in data["tables"]}
    assert sorted(by_name) == ["emb", "emb_Adam_m"]
    table = by_name["emb"]
    assert table["rows"] == 3000
    assert table["bytes"] > 3000 * 24
    assert table["value_bytes"] == 16 and table["dim_if_float32"] == 4
    assert table["key_dtype"] == "int64"
    assert table["ttl_min"] is None and table["buckets_without_ttl"] == table["bucket_count"]
    if kind == "cluster":
        # storage_slice 3 over 3 masters: one bucket on each.
        assert table["bucket_count"] == 3
        assert sorted(table["buckets_per_node"].values()) == [1, 1, 1]
    else:
        assert table["bucket_count"] == 1  # standalone keeps every row in bucket 0
    assert {b["key"] for b in table["buckets"]} <= {k.decode() for k in emb.bucket_keys}
    assert 90 <= by_name["emb_Adam_m"]["ttl_min"] <= 100

    # --json after the command name works too; a model tag with no tables is not an error.
    empty = ok_json(cli("--config", config_file, "inspect", "--model-tag", "none" + tag, "--json"))
    assert empty["tables"] == []
    assert {tag, "x" + tag} <= set(empty["model_tags_with_tables"])  # where the tables are

    human = cli("--config", config_file, "inspect", "--model-tag", tag)
    assert human.returncode == 0, human.stderr
    assert f"model tag '{tag}' on {kind}" in human.stdout
    assert "emb_Adam_m" in human.stdout and "none" in human.stdout
    assert "hidden" not in human.stdout

    # Without --model-tag: every tag found (other tests' tags too), each table under its own.
    every = ok_json(cli("--config", config_file, "--json", "inspect"))
    assert every["model_tag"] is None
    assert {tag, "x" + tag} <= set(every["model_tags"])
    ours = {(t["model_tag"], t["table"]): t["rows"] for t in every["tables"]}
    assert ours[(tag, "emb")] == 3000 and ours[(tag, "emb_Adam_m")] == 30
    assert ours[("x" + tag, "hidden")] == 1
    human = cli("--config", config_file, "inspect")
    assert human.returncode == 0, human.stderr
    assert f"model tag 'x{tag}' on {kind}" in human.stdout
    assert f"model tag '{tag}' on {kind}" in human.stdout and "hidden" in human.stdout
    for store in (emb, slot_table, other_tag):
        store.clear()


def read_export(path: Path) -> tuple[dict[str, Any], int]:
    """The metadata and page count of an export file, read with the documented format only."""
    data = path.read_bytes()
    assert data.startswith(MAGIC)
    line_end = data.index(b"\n", len(MAGIC))
    meta = json.loads(data[len(MAGIC) : line_end])
    offset, pages, total = line_end + 1, 0, 0
    while data[offset : offset + 4] == b"PAGE":
        n, _crc = struct.unpack_from("<II", data, offset + 4)
        offset += 12 + n * (meta["key_bytes"] + meta["row_bytes"])
        pages, total = pages + 1, total + n
    assert data[offset : offset + 4] == b"END!"
    assert struct.unpack_from("<Q", data, offset + 4)[0] == total
    assert offset + 12 == len(data)
    return meta, pages


def test_export_then_import_round_trips_every_row_exactly(config_file, tmp_path, kind):
    n, dim = 20_000, 8
    keys = np.random.default_rng(5).permutation(n).astype(np.int64) * 977 - 12345
    values = np.random.default_rng(6).standard_normal((n, dim)).astype(np.float32)
    values[0] = np.array([0x7FC00001, 0xFF800000, 0x80000000, 1, 2, 3, 4, 5], np.uint32).view(
        np.float32
    )
    source = store_for(config_file, "src", dim)
    source.insert(keys, values)
    out = tmp_path / "src.tfra"

    result = cli(
        "--config",
        config_file,
        "--json",
        "export",
        "--table",
        "src",
        "--dim",
        dim,
        "--out",
        out,
        "--page",
        4096,
        "--progress",
    )
    exported = ok_json(result)
    assert exported["rows"] == n and exported["file"] == str(out)
    assert exported["rows_per_second"] > 0
    # Progress forced on with stderr a pipe: plain lines, no "\r" redraws (see the tests below).
    assert f"export src {n}/{n} rows (100%)" in result.stderr and "rows/s" in result.stderr
    meta, pages = read_export(out)
    assert meta["table"] == "src" and meta["dim"] == dim and meta["value_dtype"] == "float32"
    assert meta["key_dtype"] == "int64" and meta["rows_expected"] == n
    assert pages > 1
    assert not list(tmp_path.glob("*.tmp-*"))

    imported = ok_json(
        cli(
            "--config", config_file, "--json", "import", "--table", "dst", "--dim", dim, "--in", out
        )
    )
    assert imported["rows"] == n and imported["size_after"] == n
    target = store_for(config_file, "dst", dim)
    want_keys, want_values = sorted_export(source)
    got_keys, got_values = sorted_export(target)
    assert np.array_equal(got_keys, want_keys)
    assert got_values.view(np.uint32).tobytes() == want_values.view(np.uint32).tobytes()

    # Human output says what happened.
    again = cli("--config", config_file, "import", "--table", "dst", "--dim", dim, "--in", out)
    assert again.returncode == 0 and f"imported {n} rows" in again.stdout
    print(
        f"{kind}: export {exported['rows_per_second']:,} rows/s, "
        f"import {imported['rows_per_second']:,} rows/s ({n} rows x dim {dim} float32)"
    )
    source.clear()
    target.clear()


@pytest.mark.parametrize("kind", ["standalone"], indirect=True)
@pytest.mark.parametrize(("dtype", "key_dtype"), [("bfloat16", "int64"), ("int8", "int32")])
def test_export_import_other_dtypes(config_file, tmp_path, dtype, key_dtype):
    from tfra_redis.store import numpy_dtype

    keys = np.arange(-50, 50, dtype=key_dtype)
    values = (np.arange(100 * 3).reshape(100, 3) - 150).astype(numpy_dtype(dtype))
    store_for(config_file, "typed", 3, key_dtype=key_dtype, value_dtype=dtype).insert(keys, values)
    out = tmp_path / "typed.tfra"
    ok_json(
        cli(
            "--config",
            config_file,
            "--json",
            "export",
            "--table",
            "typed",
            "--dim",
            3,
            "--dtype",
            dtype,
            "--key-dtype",
            key_dtype,
            "--out",
            out,
        )
    )
    assert (
        ok_json(
            cli(
                "--config",
                config_file,
                "--json",
                "import",
                "--table",
                "typed2",
                "--dim",
                3,
                "--in",
                out,
            )
        )["value_dtype"]
        == dtype
    )
    copy = store_for(config_file, "typed2", 3, key_dtype=key_dtype, value_dtype=dtype)
    got = copy.find(keys)
    assert got.view(np.uint8).tobytes() == values.view(np.uint8).tobytes()


@pytest.mark.parametrize("kind", ["standalone"], indirect=True)
def test_import_rejects_bad_files(config_file, tmp_path):
    store_for(config_file, "t", 2).insert(np.arange(100), rows(np.arange(100), 2))
    good = tmp_path / "t.tfra"
    ok_json(
        cli("--config", config_file, "--json", "export", "--table", "t", "--dim", 2, "--out", good)
    )
    data = good.read_bytes()

    wrong_dim = cli("--config", config_file, "import", "--table", "u", "--dim", 3, "--in", good)
    assert wrong_dim.returncode == 2
    assert "dim 2" in wrong_dim.stderr and "--dim is 3" in wrong_dim.stderr

    corrupt = tmp_path / "corrupt.tfra"
    corrupt.write_bytes(data[:-40] + bytes([data[-40] ^ 0xFF]) + data[-39:])
    result = cli(
        "--config", config_file, "--json", "import", "--table", "u", "--dim", 2, "--in", corrupt
    )
    assert result.returncode == 2 and "CRC" in result.stderr
    assert json.loads(result.stdout)["error"]["type"] == "UsageError"

    truncated = tmp_path / "truncated.tfra"
    truncated.write_bytes(data[:-20])
    result = cli("--config", config_file, "import", "--table", "u", "--dim", 2, "--in", truncated)
    assert result.returncode == 2 and "truncated" in result.stderr

    not_ours = tmp_path / "other.bin"
    not_ours.write_bytes(b"hello")
    result = cli("--config", config_file, "import", "--table", "u", "--dim", 2, "--in", not_ours)
    assert result.returncode == 2 and "not a tfra-redis export file" in result.stderr

    missing = cli(
        "--config", config_file, "import", "--table", "u", "--dim", 2, "--in", tmp_path / "missing"
    )
    assert missing.returncode == 2


def with_meta(data: bytes, **changes: Any) -> bytes:
    """The export file ``data`` with its metadata line's fields changed."""
    line_end = data.index(b"\n", len(MAGIC))
    meta = {**json.loads(data[len(MAGIC) : line_end]), **changes}
    return MAGIC + json.dumps(meta).encode() + data[line_end:]


@pytest.mark.parametrize("kind", ["standalone"], indirect=True)
def test_import_of_a_damaged_file_writes_nothing(config_file, tmp_path):
    """Every check runs before the first row is written: a damaged file changes nothing, and
    sizes in the file are checked against its length before anything is allocated (a huge
    ``row_bytes`` or page count once gave a bare MemoryError)."""
    n, dim = 3000, 2
    store_for(config_file, "t", dim).insert(np.arange(n), rows(np.arange(n), dim))
    good = tmp_path / "t.tfra"
    ok_json(
        cli(
            "--config", config_file, "--json", "export", "--table", "t", "--dim", dim,
            "--out", good, "--page", 500,
        )
    )  # fmt: skip
    data = good.read_bytes()
    meta, pages = read_export(good)
    assert pages > 2
    # Where each page header starts, walking the documented format.
    page_at = [data.index(b"\n", len(MAGIC)) + 1]
    for _ in range(pages - 1):
        (count,) = struct.unpack_from("<I", data, page_at[-1] + 4)
        page_at.append(page_at[-1] + 12 + count * (meta["key_bytes"] + meta["row_bytes"]))
    huge_page = bytearray(data)
    struct.pack_into("<I", huge_page, page_at[1] + 4, 0xFFFFFFFF)
    bad_crc = bytearray(data)
    bad_crc[page_at[-1] + 12] ^= 0xFF
    cases = {
        # Cut just before the trailer: every page is intact.
        "no trailer": (data[:-12], "truncated"),
        "trailer cut": (data[:-3], "truncated"),
        "trailer count": (data[:-8] + struct.pack("<Q", n + 1), f"trailer says {n + 1} rows"),
        "bytes after the trailer": (data + b"x", "after its trailer"),
        "CRC of the last page": (bytes(bad_crc), "CRC"),
        "rows_expected": (with_meta(data, rows_expected=n + 5), f"rows_expected is {n + 5}"),
        "rows_expected type": (with_meta(data, rows_expected="many"), "rows_expected"),
        "huge row_bytes": (with_meta(data, row_bytes=2**40), "row_bytes"),
        "huge dim": (with_meta(data, dim=2**40, row_bytes=2**42), "bytes are left in the file"),
        "key_bytes": (with_meta(data, key_bytes=2**40), "key_bytes"),
        "huge page count": (bytes(huge_page), "4294967295 rows"),
    }
    failures = []
    for case, (content, message) in cases.items():
        damaged = tmp_path / f"{case.replace(' ', '_')}.tfra"
        damaged.write_bytes(content)
        dim_arg = 2**40 if case == "huge dim" else dim
        result = cli(
            "--config", config_file, "--json", "import", "--table", "u", "--dim", dim_arg,
            "--in", damaged,
        )  # fmt: skip
        target = store_for(config_file, "u", dim)
        written = target.size()
        target.clear()
        if result.returncode != 2 or message not in result.stderr or written:
            failures.append(f"{case}: exit {result.returncode}, {written} rows written, {result}")
        elif "Traceback" in result.stderr or '"UsageError"' not in result.stdout:
            failures.append(f"{case}: {result}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("kind", ["standalone"], indirect=True)
def test_export_records_the_rows_it_wrote(config_file, tmp_path, monkeypatch, capsys):
    """A table written to during an export (or a bucket rehashed meanwhile) gives another
    count than its size when the export started; the file must still import, so its
    rows_expected is the count of rows written."""
    from tfra_redis import cli as cli_module
    from tfra_redis.store import RedisStore as Store

    n = 700
    store_for(config_file, "grown", 2).insert(np.arange(n), rows(np.arange(n), 2))
    monkeypatch.setattr(Store, "size", lambda self: 12)  # the size before rows were added
    out = tmp_path / "grown.tfra"
    args = ["--config", str(config_file), "export", "--table", "grown", "--dim", "2"]
    assert cli_module.main([*args, "--out", str(out), "--page", "100"]) == 0
    capsys.readouterr()
    meta, _ = read_export(out)
    assert meta["rows_expected"] == n
    monkeypatch.undo()
    imported = ok_json(
        cli("--config", config_file, "--json", "import", "--table", "g2", "--dim", 2, "--in", out)
    )
    assert imported["rows"] == n and imported["size_after"] == n


def test_copy_to_another_model_tag_and_to_another_server(
    kind, config_file, tmp_path, tag, standalone_server, cluster, make_config
):
    keys = np.arange(5000, dtype=np.int64)
    source = store_for(config_file, "emb", 4)
    source.insert(keys, rows(keys, 4, 0.5))

    result = ok_json(
        cli(
            "--config",
            config_file,
            "--json",
            "copy",
            "--table",
            "emb",
            "--dim",
            4,
            "--to-model-tag",
            tag + "v2",
        )
    )
    assert result["rows"] == 5000 and result["to"]["model_tag"] == tag + "v2"
    target_config = {**json.loads(config_file.read_text()), "model_tag_runtime": tag + "v2"}
    copied = store_for(target_config, "emb", 4)
    assert np.array_equal(copied.find(keys), rows(keys, 4, 0.5))
    assert source.size() == 5000  # the source stays

    # To the other topology, under another name.
    other = cluster if kind == "standalone" else standalone_server
    other_file = make_config(tmp_path, other, model_tag_runtime=tag, model_tag_import=tag)
    result = ok_json(
        cli(
            "--config",
            config_file,
            "--json",
            "copy",
            "--table",
            "emb",
            "--dim",
            4,
            "--to-config",
            other_file,
            "--to-table",
            "emb_copy",
        )
    )
    assert result["to"]["mode"] == ("cluster" if other is cluster else "standalone")
    remote = store_for(other_file, "emb_copy", 4)
    assert np.array_equal(remote.find(keys), rows(keys, 4, 0.5))

    itself = cli("--config", config_file, "copy", "--table", "emb", "--dim", 4)
    assert itself.returncode == 2
    for store in (source, copied, remote):
        store.clear()


def test_export_or_copy_of_a_missing_table_fails_naming_the_tables_there(
    kind, config_file, tmp_path, tag
):
    store_for(config_file, "user_emb", 2).insert(np.arange(10), rows(np.arange(10), 2))
    store_for(config_file, "item_emb", 2).insert(np.arange(5), rows(np.arange(5), 2))
    out = tmp_path / "typo.tfra"
    result = cli("--config", config_file, "export", "--table", "usr_emb", "--dim", 2, "--out", out)
    assert result.returncode == 3, result.stderr
    assert f"'usr_emb' does not exist under model tag '{tag}'" in result.stderr
    assert "tables there: item_emb, user_emb" in result.stderr
    assert not out.exists() and list(tmp_path.glob("typo.tfra*")) == []
    as_json = cli(
        "--config", config_file, "--json", "export", "--table", "usr_emb", "--dim", 2, "--out", out
    )
    assert as_json.returncode == 3
    assert json.loads(as_json.stdout)["error"]["type"] == "NoSuchTable"

    # A tag with no tables at all says how to find the right one.
    result = cli(
        "--config", config_file, "export", "--table", "user_emb", "--dim", 2,
        "--model-tag", "none" + tag, "--out", out,
    )  # fmt: skip
    assert result.returncode == 3
    assert "no table at all is stored under this model tag" in result.stderr
    assert f"'{tag}'" in result.stderr and "tfra-redis inspect" in result.stderr

    copy = cli("--config", config_file, "copy", "--table", "usr_emb", "--dim", 2, "--to-table", "c")
    assert copy.returncode == 3 and "tables there: item_emb, user_emb" in copy.stderr
    assert store_for(config_file, "c", 2).size() == 0
    for name in ("user_emb", "item_emb"):
        store_for(config_file, name, 2).clear()


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(
    standalone_server, tmp_path, tag, make_config
):
    config = make_config(tmp_path, standalone_server, model_tag_runtime=tag, model_tag_import=tag)
    store = store_for(config, "t", 2)
    store.insert(np.arange(3000), rows(np.arange(3000), 2))
    out = tmp_path / "t.tfra"
    args = ["export", "--table", "t", "--dim", 2, "--out", out, "--page", 500, "--progress"]
    # Bytes, not text: text mode would turn a "\r" into a newline.
    result = subprocess.run(
        [sys.executable, "-m", "tfra_redis.cli", "--config", str(config), *map(str, args)],
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert b"\r" not in result.stderr and b"\x1b" not in result.stderr
    assert b"export t 3000/3000 rows (100%)" in result.stderr.splitlines()[-1]
    store.clear()


def test_progress_redraws_in_place_on_a_terminal(capsys):
    from tfra_redis.cli import Progress

    progress = Progress("copy t", 10, enabled=True, tty=True)
    progress.advance(10)
    progress.finish()
    err = capsys.readouterr().err
    assert err.startswith("\rcopy t [") and err.endswith("rows/s\n") and "10/10 rows" in err


def test_rebucket_moves_rows_into_the_config_layout(kind, topology, tmp_path, tag, make_config):
    extra = {"redis_hash_tags_hypodispersion": True} if kind == "cluster" else {}
    old_slices, new_slices = (2, 5) if kind == "cluster" else (1, 3)
    old_file = make_config(
        tmp_path,
        topology,
        storage_slice=old_slices,
        model_tag_runtime=tag,
        model_tag_import=tag,
        **extra,
    )
    new_file = make_config(
        tmp_path,
        topology,
        storage_slice=new_slices,
        model_tag_runtime=tag,
        model_tag_import=tag,
        **extra,
    )
    keys = np.arange(6000, dtype=np.int64)
    old = store_for(old_file, "emb", 2)
    old.insert(keys, rows(keys, 2))
    old_buckets = [k.decode() for k in old.bucket_keys]

    result = cli("--config", new_file, "--json", "rebucket", "--table", "emb", "--dim", 2)
    data = ok_json(result)
    assert data["rows"] == 6000
    assert len(data["moved_at_open"]) == 1 and "moved 6000 rows" in data["moved_at_open"][0]
    assert "moved 6000 rows" in result.stderr  # the note is shown as it happens
    assert data["buckets"] != old_buckets
    new = store_for(new_file, "emb", 2)
    assert np.array_equal(new.find(keys), rows(keys, 2))

    again = cli("--config", new_file, "rebucket", "--table", "emb", "--dim", 2)
    assert again.returncode == 0 and "nothing to move" in again.stdout

    if kind == "cluster":
        # A move interrupted half-way (old buckets still there): opening the table finishes it.
        old.insert(keys, rows(keys, 2))
        data = ok_json(
            cli("--config", new_file, "--json", "rebucket", "--table", "emb", "--dim", 2)
        )
        assert len(data["moved_at_open"]) == 1, data
        assert all(b in data["moved_at_open"][0] for b in old_buckets)
        assert data["rows"] == 6000
        assert old.size() == 0
    new.clear()


def test_expire_and_persist(topology, config_file):
    store = store_for(config_file, "emb", 2)
    store.insert(np.arange(300), rows(np.arange(300), 2))
    buckets = [b for b in store.bucket_keys if node_of(topology, b).execute("EXISTS", b)]

    data = ok_json(
        cli(
            "--config",
            config_file,
            "--json",
            "expire",
            "--table",
            "emb",
            "--dim",
            2,
            "--seconds",
            300,
        )
    )
    assert data["ttl_seconds"] == 300
    assert all(290 <= ttl(topology, b) <= 300 for b in buckets)

    human = cli("--config", config_file, "persist", "--table", "emb", "--dim", 2)
    assert human.returncode == 0 and "TTL cleared" in human.stdout
    assert all(ttl(topology, b) == -1 for b in buckets)

    assert (
        cli(
            "--config", config_file, "expire", "--table", "emb", "--dim", 2, "--seconds", -5
        ).returncode
        == 2
    )
    store.clear()


def test_bench_measures_and_deletes_its_scratch_table(kind, topology, config_file):
    data = ok_json(
        cli("--config", config_file, "--json", "bench", "--keys", 3000, "--dim", 8, "--batch", 500)
    )
    assert data["keys"] == 3000 and data["dim"] == 8 and data["mode"] == kind
    assert data["insert_rows_per_second"] > 0 and data["find_rows_per_second"] > 0
    assert data["scratch_table_deleted"]
    masters = topology.masters() if kind == "cluster" else [topology]
    for master in masters:
        assert master.execute("KEYS", "*tfra-redis-bench*") == []


# --------------------------------------------------------------------------------------------
# Errors and config resolution


def test_config_errors_exit_2(tmp_path, standalone_server, make_config):
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "redis_connection_mode": 2,\n  "storage_slice": ,\n}')
    result = cli("--config", bad, "inspect")
    assert result.returncode == 2
    assert "line 3, column" in result.stderr and result.stdout == ""
    as_json = cli("--config", bad, "--json", "inspect")
    assert as_json.returncode == 2
    assert json.loads(as_json.stdout)["error"]["type"] == "ConfigError"

    wrong_type = tmp_path / "wrong.json"
    wrong_type.write_text('{"redis_connection_mode": 2, "storage_slice": "2"}')
    result = cli(
        "--config", wrong_type, "export", "--table", "t", "--dim", 2, "--out", tmp_path / "x"
    )
    assert result.returncode == 2 and "storage_slice should be json integer" in result.stderr

    assert cli("--config", tmp_path / "missing.json", "inspect").returncode == 2
    nothing = cli("inspect")  # no --config and no TFRA_REDIS_CONFIG_PATH
    assert nothing.returncode == 2 and "TFRA_REDIS_CONFIG_PATH" in nothing.stderr
    assert "pass --config FILE" in nothing.stderr and "Traceback" not in nothing.stderr
    missing = cli("--config", tmp_path / "missing.json", "inspect")
    assert "--config" in missing.stderr and "missing.json" in missing.stderr

    # Without --config the seed's resolution applies: $TFRA_REDIS_CONFIG_PATH.
    good = make_config(tmp_path, standalone_server)
    from_env = cli("--json", "inspect", env={"TFRA_REDIS_CONFIG_PATH": str(good)})
    assert ok_json(from_env)["mode"] == "standalone"
    # An explicit --config wins over the environment.
    assert (
        cli("--config", bad, "inspect", env={"TFRA_REDIS_CONFIG_PATH": str(good)}).returncode == 2
    )


@pytest.mark.parametrize("mode", [0, 2])
def test_unreachable_server_exits_1_quickly(tmp_path, mode):
    config = tmp_path / "down.json"
    config.write_text(
        json.dumps(
            {
                "redis_connection_mode": mode,
                "redis_host_ip": ["127.0.0.1"],
                "redis_host_port": [testing.find_free_port()],
                "redis_retry_deadline_ms": 0,
                "redis_connect_timeout": 200,
            }
        )
    )
    for args in (["inspect"], ["export", "--table", "t", "--dim", 2, "--out", tmp_path / "o"]):
        started = time.monotonic()
        result = cli("--config", config, *args)
        assert result.returncode == 1, result.stderr
        assert time.monotonic() - started < 10
        assert "cannot reach Redis" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_wrong_password_exits_1_without_printing_it(tmp_path, acl_server):
    secret = "Wr0ng-secret-value"
    config = tmp_path / "auth.json"
    config.write_text(
        json.dumps(
            {
                **acl_server.config_dict(),
                "redis_password": secret,
                "redis_retry_deadline_ms": 0,
            }
        )
    )
    for args in (["inspect"], ["persist", "--table", "t", "--dim", 2], ["bench", "--keys", 10]):
        result = cli("--config", config, "--json", *args)
        assert result.returncode == 1, result.stderr
        assert secret not in result.stdout + result.stderr
        assert json.loads(result.stdout)["error"]["type"] in ("RedisAuthError", "RedisUnavailable")


def test_inspect_through_sentinel(sentinel, tmp_path, tag, make_config):
    config_file = make_config(tmp_path, sentinel, model_tag_runtime=tag, model_tag_import=tag)
    store = store_for(config_file, "emb", 4)
    store.insert(np.arange(10), rows(np.arange(10), 4))
    data = ok_json(cli("--config", config_file, "--json", "inspect", "--model-tag", tag))
    host, port = sentinel.current_master_addr()
    assert data["mode"] == "sentinel" and data["masters"] == [f"{host}:{port}"]
    assert [(t["table"], t["rows"]) for t in data["tables"]] == [("emb", 10)]
    store.clear()
