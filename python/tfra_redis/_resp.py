"""A tiny RESP2 client over a plain socket: what the CLI and `tfra_redis.testing` need.

Private: `tfra_redis.testing` re-exports `RespConnection`, `RedisReplyError` and `parse_info`
for users' tests. Only the standard library is used (no redis-py). It speaks RESP2 to Redis
and Valkey alike.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any, BinaryIO

__all__ = ["RedisReplyError", "RespConnection", "parse_info"]


class RedisReplyError(Exception):
    """An error reply from Redis, such as ``NOPERM ...`` or ``MOVED 3999 127.0.0.1:7001``."""

    @property
    def code(self) -> str:
        """The first word of the error, for example ``NOPERM`` or ``WRONGPASS``."""
        return str(self).split(" ", 1)[0]


def _encode_command(args: Sequence[Any]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes | bytearray | memoryview):
            data = bytes(arg)
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int | float):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot send {type(arg).__name__} to Redis: {arg!r}")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RespConnection:
    """One RESP2 connection to a Redis or Valkey server or sentinel, enough for tests and tools.

    Replies map to Python as: simple string -> ``str``, integer -> ``int``, bulk string ->
    ``str`` (or ``bytes`` with ``decode=False``), nil -> ``None``, array -> ``list``. An error
    reply is raised as `RedisReplyError` (inside an array it is returned in place, as for EXEC).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float | None = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        self._sock = socket.create_connection((host, port), timeout=timeout)
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._reader: BinaryIO | None = self._sock.makefile("rb")
            if password is not None:
                self.execute("AUTH", *([username] if username else []), password)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> RespConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket; safe to call twice."""
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.close()
            self._reader = None
        self._sock.close()

    def execute(self, *args: Any, decode: bool = True) -> Any:
        """Send one command and return its reply; raise `RedisReplyError` on an error reply."""
        self._sock.sendall(_encode_command(args))
        reply = self._read_reply(decode)
        if isinstance(reply, RedisReplyError):
            raise reply
        return reply

    def pipeline(self, commands: Sequence[Sequence[Any]], *, decode: bool = True) -> list[Any]:
        """Send many commands in one write; return all replies (errors returned, not raised)."""
        self._sock.sendall(b"".join(_encode_command(cmd) for cmd in commands))
        return [self._read_reply(decode) for _ in commands]

    def _read_line(self) -> bytes:
        assert self._reader is not None, "the connection is closed"
        line = self._reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError(f"connection to {self.host}:{self.port} closed by the server")
        return line[:-2]

    def _read_reply(self, decode: bool) -> Any:
        line = self._read_line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RedisReplyError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            length = int(rest)
            if length < 0:
                return None
            assert self._reader is not None, "the connection is closed"
            data = self._reader.read(length + 2)
            if len(data) != length + 2:
                raise ConnectionError(f"connection to {self.host}:{self.port} closed mid-reply")
            data = data[:-2]
            return data.decode(errors="surrogateescape") if decode else data
        if kind == b"*":
            count = int(rest)
            if count < 0:
                return None
            return [self._read_reply(decode) for _ in range(count)]
        raise ConnectionError(f"unexpected RESP reply from {self.host}:{self.port}: {line[:80]!r}")


def parse_info(text: str) -> dict[str, str]:
    """Turn the text of an INFO (or CLUSTER INFO) reply into a ``{field: value}`` dict."""
    fields = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            key, value = line.split(":", 1)
            fields[key] = value.strip()
    return fields
