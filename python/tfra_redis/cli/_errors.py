"""Exit codes of ``tfra-redis`` and the errors that :func:`tfra_redis.cli.main` maps to them."""

from __future__ import annotations

EXIT_OK = 0
EXIT_REDIS = 1
EXIT_USAGE = 2
EXIT_NO_TABLE = 3


class UsageError(Exception):
    """A problem with the command line, the config or an input file: exit code 2."""


class RedisUnavailable(Exception):
    """Redis could not be reached or refused a command (outside RedisStore): exit code 1."""


class NoSuchTable(Exception):
    """The table to read has no rows under its model tag (it does not exist): exit code 3."""
