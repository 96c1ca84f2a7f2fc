"""``_native.pyi`` matches the extension: mypy's stubtest imports ``tfra_redis._native`` and
compares every name, class and signature with the stub.

PyO3 gives each function a ``__text_signature__``, so a parameter added in Rust and forgotten in
the stub (or the reverse) fails here. ``--ignore-disjoint-bases``: PEP 800's ``@disjoint_base``
is newer than the type checkers this stub serves, and our classes are ``@final`` anyway.
"""

from __future__ import annotations

import subprocess
import sys


def test_the_native_stub_matches_the_extension():
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "--ignore-disjoint-bases", "tfra_redis._native"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
