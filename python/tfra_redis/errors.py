"""The exception types of tfra-redis, all rooted at :class:`RedisTableError`.

They are defined by the native extension (so Rust errors map straight onto them) and re-exported
here for ``except`` clauses.
"""

from tfra_redis._native import (
    ConfigError,
    RedisAuthError,
    RedisCommandError,
    RedisConnectionError,
    RedisDataError,
    RedisTableError,
    RedisTimeoutError,
)

__all__ = [
    "ConfigError",
    "RedisAuthError",
    "RedisCommandError",
    "RedisConnectionError",
    "RedisDataError",
    "RedisTableError",
    "RedisTimeoutError",
]
