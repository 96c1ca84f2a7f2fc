"""tfra-redis: Redis-backed embedding tables for TensorFlow, compatible with the Redis backend of
TensorFlow Recommenders-Addons (TFRA).

``import tfra_redis`` works without TensorFlow; the TensorFlow API lives in
``tfra_redis.dynamic_embedding`` and imports TensorFlow when it is first used.
"""

from types import ModuleType

from tfra_redis import _native
from tfra_redis.config import RedisTableConfig
from tfra_redis.errors import (
    ConfigError,
    RedisAuthError,
    RedisCommandError,
    RedisConnectionError,
    RedisDataError,
    RedisTableError,
    RedisTimeoutError,
)
from tfra_redis.store import RedisStore

#: The package version: the workspace version in Cargo.toml, which maturin also gives the wheel.
__version__: str = _native.__version__

__all__ = [
    "ConfigError",
    "RedisAuthError",
    "RedisCommandError",
    "RedisConnectionError",
    "RedisDataError",
    "RedisStore",
    "RedisTableConfig",
    "RedisTableError",
    "RedisTimeoutError",
    "__version__",
]


def __getattr__(name: str) -> ModuleType:
    # dynamic_embedding imports TensorFlow; load it only when asked for.
    if name == "dynamic_embedding":
        import importlib

        return importlib.import_module("tfra_redis.dynamic_embedding")
    raise AttributeError(f"module 'tfra_redis' has no attribute {name!r}")
