"""Every ```python block of README.md and of the docs site's pages (docs/) runs as pasted.

The site includes README sections (pymdownx.snippets), so its pages hold few blocks of their
own; a test below checks that every section a page includes exists.

Each block runs in a fresh interpreter whose working directory holds ``redis.json``: the config
of the session's standalone server with a model tag of this test's own, the situation the
README describes ("in a directory holding your config as ``redis.json``"). Nothing else from our
environment reaches it: ``TFRA_REDIS_CONFIG_PATH`` is unset.

An HTML comment on the line before a block (invisible on GitHub),
``<!-- readme-test: env NAME=VALUE ... -->``, runs the block with these variables set (values
are relative to the block's directory when they name a file there). There is no way to leave a
block out: every snippet a newcomer can paste must run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tfra_redis import testing

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").rglob("*.md"))]
_BLOCK = re.compile(
    r"(?:^<!-- readme-test: (?P<directive>.*?) -->\n)?^```python\n(?P<code>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)


def _blocks() -> list[tuple[str, str, str]]:
    """(file:line, directive, code) of every python block."""
    found = []
    for page in DOCS:
        text = page.read_text()
        name = page.relative_to(ROOT)
        found += [
            (f"{name}:{text.count(chr(10), 0, m.start('code'))}", m["directive"] or "", m["code"])
            for m in _BLOCK.finditer(text)
        ]
    return found


BLOCKS = _blocks()


def test_the_readme_has_its_snippets():
    # The parser sees every python fence (a typo in a directive would hide a block otherwise).
    fences = sum(page.read_text().count("```python\n") for page in DOCS)
    assert len(BLOCKS) == fences >= 3


_INCLUDE = re.compile(r'^--8<-- "(?P<file>[^":]+)(?::(?P<section>[\w-]+))?"$', re.MULTILINE)


def test_every_docs_include_names_a_section_that_exists():
    # pymdownx.snippets renders a missing section as nothing, so the site would silently lose
    # a README part that was renamed; and a README section no page includes is missing from it.
    included = set()
    for page in DOCS[1:]:
        for m in _INCLUDE.finditer(page.read_text()):
            source = (ROOT / m["file"]).read_text()
            if m["section"]:
                for edge in ("start", "end"):
                    marker = f"<!-- --8<-- [{edge}:{m['section']}] -->"
                    assert source.count(marker) == 1, f"{page.name}: {m[0]} lacks {marker}"
                included.add((m["file"], m["section"]))
    sections = set(re.findall(r"<!-- --8<-- \[start:([\w-]+)\] -->", README.read_text()))
    assert {s for f, s in included if f == "README.md"} == sections


@pytest.mark.parametrize(("line", "directive", "code"), BLOCKS, ids=[b[0] for b in BLOCKS])
def test_readme_snippet_runs_as_pasted(line, directive, code, tmp_path, standalone_server):
    tag = "readme" + uuid.uuid4().hex[:8]
    testing.write_config_file(
        tmp_path / "redis.json",
        standalone_server,
        model_tag_runtime=tag,
        model_tag_import=tag,
        expire_model_tag_in_seconds=-1,
    )
    env = {k: v for k, v in os.environ.items() if k != "TFRA_REDIS_CONFIG_PATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if directive:
        kind, *pairs = directive.split()
        assert kind == "env" and pairs, f"{line}: unknown directive {directive!r}"
        for pair in pairs:
            name, _, value = pair.partition("=")
            env[name] = str(tmp_path / value) if (tmp_path / value).exists() else value
    script = tmp_path / "snippet.py"
    script.write_text(code)
    try:
        result = subprocess.run(
            [sys.executable, script.name],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, (
            f"{line} failed (exit {result.returncode}):\n{code}\n{result.stderr[-3000:]}"
        )
    finally:
        keys = standalone_server.execute("KEYS", f"{tag}:*", decode=False)
        if keys:
            standalone_server.execute("DEL", *keys)
