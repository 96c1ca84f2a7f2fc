"""The exception types of tfra-redis, all rooted at :class:`RedisTableError`.

They are defined by the native extension (so Rust errors map straight onto them) and re-exported
here for ``except`` clauses. Their ``__module__`` is ``tfra_redis``, where pickle finds them, so
they cross process boundaries (``multiprocessing``, TensorFlow's workers) like any exception.
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
