"""The vendored TFRA fixture is complete and unchanged, and the repository needs nothing outside
itself: a clone alone runs every test (no ``../shared`` beside it, no absolute paths)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "tfra-0.8.1-standalone"


def _manifest() -> dict:
    return json.loads((FIXTURE / "manifest.json").read_text())


def test_fixture_files_match_the_manifest():
    manifest = _manifest()
    files = [
        {"path": manifest["rdb"]["file"], **manifest["rdb"]},
        *manifest["table_store_mode_1_files"]["files"],
    ]
    for entry in files:
        data = (FIXTURE / entry["path"]).read_bytes()
        assert len(data) == entry["size"], entry["path"]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["path"]


def test_fixture_readme_states_the_byte_facts():
    readme = (ROOT / "tests" / "fixtures" / "README.md").read_text()
    assert "0.8.1" in readme and "manifest.json" in readme
    for path in [*FIXTURE.rglob("*")]:
        if path.is_file():
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            assert digest in readme, f"README lacks the sha256 of {path.name}"
            assert f"| {len(data)} |" in readme, f"README lacks the size of {path.name}"


def test_fixture_bytes_are_what_tfra_wrote():
    rdb = (FIXTURE / "dump.rdb").read_bytes()
    assert rdb.startswith(b"REDIS0010")
    assert b"fixture:fixture_table{3560}" in rdb
    files = FIXTURE / "model_lib" / "fixture"
    payload = (files / "fixture:fixture_table{3560}.rdb").read_bytes()
    # A DUMP payload: type byte 0x04 (hash), body, RDB version 10 (2 bytes LE), CRC64 (8 bytes).
    assert payload[0] == 0x04
    assert payload[-10:-8] == b"\x0a\x00"
    assert (files / "fixture:fixture_table{8209}.rdb").stat().st_size == 0


# Outside a git checkout (an unpacked sdist), every file but these build and tool folders.
_NOT_SOURCES = {".git", "target", "__pycache__", ".venv", ".tfra-venv", "results", ".hypothesis"}


def _repository_files() -> list[Path]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return [
            path
            for path in ROOT.rglob("*")
            if not _NOT_SOURCES.intersection(path.relative_to(ROOT).parts)
        ]
    return [ROOT / name for name in listed.decode().split("\0") if name]


# Paths that would reach out of a checkout: the old sibling fixture folder, and absolute paths
# of the machines this was developed on.
_OUTSIDE = re.compile(r"\.\./shared\b|\bshared/fixtures\b|[\"']shared[\"']\s*/|/work/|/home/[a-z]")


def test_nothing_in_the_repository_points_outside_it():
    offenders = []
    for path in _repository_files():
        if not path.is_file() or path.suffix in {".rdb", ".so"}:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if path.name == "README.md" and path.parent.name == "fixtures":
                continue  # names where the files came from
            if path == Path(__file__).resolve():
                continue
            if _OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
