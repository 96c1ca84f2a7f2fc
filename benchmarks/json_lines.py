"""A helper process spoken to in JSON lines: the benchmarks' clients that run in another
interpreter (TFRA's venv, or ours on another TensorFlow) use it.

The process answers each request with one line ``<mark><json>``; TensorFlow and TFRA print to
stdout too, so lines without the mark are skipped. Its stderr goes to a temporary file, shown
(the tail) when the process dies.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any


class JsonLineProcess:
    """``argv`` started once; :meth:`ask` sends a request and returns the marked answer."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], mark: str, label: str) -> None:
        self.mark = mark
        self.label = label
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self._proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )

    def answer(self) -> dict[str, Any]:
        """The next marked line, decoded; raises with the process's stderr when it ended."""
        assert self._proc.stdout is not None
        while True:
            line = self._proc.stdout.readline()
            if not line:
                self._proc.wait()
                self._stderr.seek(0)
                raise RuntimeError(f"{self.label} failed:\n{self._stderr.read()[-3000:]}")
            if line.startswith(self.mark):
                answer: dict[str, Any] = json.loads(line[len(self.mark) :])
                return answer

    def ask(self, request: Mapping[str, Any]) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        return self.answer()

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._stderr.close()
