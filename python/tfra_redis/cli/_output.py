"""Where ``tfra-redis`` writes: results (JSON or human text), notes and errors, progress."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any


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
