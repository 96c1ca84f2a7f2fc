"""``RedisTableCreator``: TFRA's ``KVCreator`` for Redis, which ``de.Variable`` asks for tables."""

from __future__ import annotations

from typing import Any

try:
    import tensorflow as tf
except ModuleNotFoundError as err:  # no TensorFlow: say how to install it
    from tfra_redis._optional import tensorflow_missing

    raise tensorflow_missing(__name__, err) from err

from tfra_redis._types import DTypeLike, TensorLike
from tfra_redis.config import RedisTableConfig
from tfra_redis.table import RedisTable

__all__ = ["RedisTableCreator"]


class RedisTableCreator:
    """Creates the :class:`RedisTable` of each ``de.Variable`` (and of its optimizer slots, which
    therefore use the same config file).

    Args:
        config: a :class:`~tfra_redis.RedisTableConfig`; ``None`` means ``RedisTableConfig()``
            (the ``TFRA_REDIS_CONFIG_PATH`` environment variable). A config dict or a JSON file
            path is accepted too.
        saver: TFRA's ``DynamicEmbeddingSaver`` (e.g. ``FileSystemSaver``) is not supported; only
            ``None`` is accepted.
    """

    def __init__(self, config: Any = None, saver: Any = None) -> None:
        if saver is not None:
            raise NotImplementedError(
                "RedisTableCreator(saver=...) (TFRA's FileSystemSaver) is not supported; "
                "use table_store_mode in the Redis config to choose what checkpoints hold"
            )
        self.config = config
        self.saver = None
        self.key_dtype: tf.DType | None = None
        self.value_dtype: tf.DType | None = None
        self.default_value: Any = None
        self.name: str | None = None
        self.checkpoint: bool | None = None
        self.init_size: int | None = None
        self.device: str | None = None

    def create(
        self,
        key_dtype: DTypeLike | None = None,
        value_dtype: DTypeLike | None = None,
        default_value: TensorLike | None = None,
        name: str | None = None,
        checkpoint: bool | None = None,
        init_size: int | None = None,
        config: Any = None,
        device: str | None = None,
        shard_saveable_object_fn: Any = None,
    ) -> RedisTable:
        """Returns a new :class:`RedisTable`; ``config`` (if given) overrides the creator's, and
        ``init_size`` is ignored (Redis tables have no capacity), as in TFRA."""
        self.key_dtype = key_dtype
        self.value_dtype = value_dtype
        self.default_value = default_value
        self.name = name
        self.checkpoint = checkpoint
        self.init_size = init_size
        self.device = device
        real_config = config if config is not None else self.config
        if real_config is None:
            real_config = RedisTableConfig(None, None)
        return RedisTable(
            key_dtype=key_dtype,
            value_dtype=value_dtype,
            default_value=default_value,
            name=name if name is not None else "RedisTable",
            checkpoint=bool(checkpoint),
            config=real_config,
            device=device or "",
            shard_saveable_object_fn=shard_saveable_object_fn,
        )

    def get_config(self) -> dict[str, Any]:
        """The arguments of the last :meth:`create` call (eager mode only, as in TFRA)."""
        if not tf.executing_eagerly():
            raise RuntimeError("Unsupported to serialize python object of RedisTableCreator.")
        default = self.default_value
        if tf.is_tensor(default):
            default = default.numpy()
        config = self.config
        if isinstance(config, RedisTableConfig):
            config = {
                "redis_config_abs_dir": config.redis_config_abs_dir,
                "redis_config_abs_dir_env": config.redis_config_abs_dir_env,
            }
        return {
            "key_dtype": self.key_dtype,
            "value_dtype": self.value_dtype,
            "default_value": default,
            "name": self.name,
            "checkpoint": self.checkpoint,
            "init_size": self.init_size,
            "config": config,
            "device": self.device,
        }

    def __repr__(self) -> str:
        return f"RedisTableCreator(config={self.config!r})"
