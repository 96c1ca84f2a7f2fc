"""``RedisTableConfig``: where a table finds its JSON config, as in TFRA."""

from __future__ import annotations

import os
import warnings

from tfra_redis import _native


class RedisTableConfig:
    """Names the JSON config file of a Redis-backed table.

    The file is chosen when a table opens, in this order (the seed design note's priority):

    1. the file named by the environment variable ``redis_config_abs_dir_env`` (default
       ``TFRA_REDIS_CONFIG_PATH``), if that variable is set and the file exists;
    2. the file named by ``TFRA_REDIS_CONFIG_PATH``, if set and existing;
    3. ``redis_config_abs_dir``: a JSON file, or a directory holding ``redis_config.json``.

    Unlike TFRA, a variable that is unset or names a missing file falls through to the next step
    instead of raising; only when every step fails is a :class:`~tfra_redis.ConfigError` raised,
    naming each variable and path tried.
    """

    def __init__(
        self,
        redis_config_abs_dir: str | os.PathLike[str] | None = None,
        redis_config_abs_dir_env: str | None = None,
    ) -> None:
        self.redis_config_abs_dir = (
            os.fspath(redis_config_abs_dir) if redis_config_abs_dir is not None else None
        )
        self.redis_config_abs_dir_env = redis_config_abs_dir_env

    def resolve_path(self) -> str:
        """The config file this config names now (the environment is read on every call)."""
        return _native.resolve_path(self.redis_config_abs_dir_env, self.redis_config_abs_dir)

    def load(self) -> _native.Config:
        """Resolves, reads and validates the JSON file; unknown fields give a warning."""
        config = _native.Config.from_path(self.resolve_path())
        for message in config.warnings:
            warnings.warn(f"tfra-redis: {message} (in {config.path})", stacklevel=2)
        return config

    def __repr__(self) -> str:
        return (
            f"RedisTableConfig(redis_config_abs_dir={self.redis_config_abs_dir!r}, "
            f"redis_config_abs_dir_env={self.redis_config_abs_dir_env!r})"
        )
