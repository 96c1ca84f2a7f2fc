"""Loading the Redis config ``tfra-redis`` works on, and deriving configs from it."""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

from tfra_redis.cli._errors import UsageError
from tfra_redis.cli._output import Output

_MODES = {0: "cluster", 1: "sentinel", 2: "standalone"}


def _load_config(path: str | None, out: Output) -> Any:
    """The parsed config: ``path`` when given (it wins over the environment), else the file a
    table would find (``RedisTableConfig``: ``$TFRA_REDIS_CONFIG_PATH``)."""
    from tfra_redis import _native
    from tfra_redis.config import RedisTableConfig

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if path is None:
            try:
                found = RedisTableConfig().resolve_path()
            except _native.ConfigError as err:
                raise UsageError(
                    "no Redis config: pass --config FILE (a TFRA-style JSON config, e.g. "
                    '{"redis_connection_mode": 2, "redis_host_ip": ["127.0.0.1"], '
                    '"redis_host_port": [6379]}) or set TFRA_REDIS_CONFIG_PATH '
                    f"({_strip_prefix(str(err))})"
                ) from None
            config = _native.Config.from_path(found)
            for message in config.warnings:
                warnings.warn(f"tfra-redis: {message} (in {found})", stacklevel=1)
        else:
            if os.path.isdir(path):
                path = os.path.join(path, "redis_config.json")
            if not os.path.isfile(path):
                raise UsageError(f"the config file given by --config, {path}, does not exist")
            config = _native.Config.from_path(path)
            for message in config.warnings:
                warnings.warn(f"tfra-redis: {message} (in {path})", stacklevel=1)
    for warning in caught:
        out.note(_strip_prefix(str(warning.message)))
    _remember_secrets(config, out)
    return config


def _strip_prefix(text: str) -> str:
    return text.removeprefix("tfra-redis: ")


def _config_fields(config: Any) -> dict[str, Any]:
    fields: dict[str, Any] = json.loads(config.to_json())
    return fields


def _remember_secrets(config: Any, out: Output) -> None:
    fields = _config_fields(config)
    for key in ("redis_password", "redis_sentinel_password"):
        if fields.get(key) and fields[key] not in out.secrets:
            out.secrets.append(fields[key])


def _with_fields(config: Any, **changes: Any) -> Any:
    from tfra_redis import _native

    fields = _config_fields(config)
    fields.update(changes)
    return _native.Config.from_json(json.dumps(fields), config.path or "<command line>")


def _with_model_tag(config: Any, tag: str | None) -> Any:
    if tag is None:
        return config
    return _with_fields(config, model_tag_runtime=tag, model_tag_import=tag)
