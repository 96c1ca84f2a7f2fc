"""Errors as Python sees them: every failure is a ``tfra_redis`` exception (an ``Exception``,
never pyo3's ``PanicException``), and the exception types pickle, cross process boundaries and
name themselves ``tfra_redis.<Name>``."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import traceback

import pytest

import tfra_redis
from tfra_redis import RedisStore, _native

ERROR_TYPES = [
    tfra_redis.RedisTableError,
    tfra_redis.ConfigError,
    tfra_redis.RedisConnectionError,
    tfra_redis.RedisTimeoutError,
    tfra_redis.RedisAuthError,
    tfra_redis.RedisCommandError,
    tfra_redis.RedisDataError,
]


@pytest.mark.parametrize(
    "overrides",
    [
        {"storage_slice": 16385},
        {"storage_slice": 2**32 - 1},
        {"storage_slice_import": 16385},
        {"storage_slice_import": 2**31},
    ],
)
def test_bucket_counts_above_the_slot_count_are_a_config_error(
    standalone_server, unique_name, overrides
):
    config = {**standalone_server.config_dict(), **overrides}
    (key, value) = next(iter(overrides.items()))
    with pytest.raises(tfra_redis.ConfigError, match=rf"^{key} must be between 1 and 16384") as e:
        RedisStore(config, unique_name, 2, manage_ttl=False)
    assert str(value) in str(e.value)


def test_the_largest_bucket_count_opens(standalone_server, unique_name):
    config = {**standalone_server.config_dict(), "storage_slice": 16384}
    store = RedisStore(config, unique_name, 2, manage_ttl=False)
    assert len(store.bucket_keys) == 16384


@pytest.mark.parametrize("dim", [2**26 + 1, 2**61 + 1, 2**62])
def test_a_dim_whose_rows_cannot_be_stored_is_refused(standalone_server, unique_name, dim):
    # dim x value width used to overflow: 2**62 float32 values gave rows of 0 bytes.
    config = _native.Config.from_json(json.dumps(standalone_server.config_dict()))
    with pytest.raises(ValueError, match="embedding dim must be between 1 and 67108864"):
        _native.Table(config, unique_name, "int64", "float32", dim, False)
    with pytest.raises(ValueError, match="embedding dim"):
        RedisStore(standalone_server.config_dict(), unique_name, dim, manage_ttl=False)


def test_a_panic_in_the_native_code_is_a_tfra_redis_exception():
    # No input is known to reach a panic any more; the hook panics on purpose, inside the
    # same wrapper every detached call goes through.
    with pytest.raises(tfra_redis.RedisTableError, match="internal error") as e:
        _native._panic_for_tests()
    assert isinstance(e.value, Exception)


@pytest.mark.parametrize("cls", ERROR_TYPES, ids=lambda c: c.__name__)
def test_error_types_name_themselves_tfra_redis(cls):
    assert cls.__module__ == "tfra_redis"
    assert str(cls) == f"<class 'tfra_redis.{cls.__name__}'>"
    assert getattr(tfra_redis, cls.__name__) is cls
    try:
        raise cls("boom")
    except cls as e:
        shown = "".join(traceback.format_exception(e))
    assert f"tfra_redis.{cls.__name__}: boom" in shown


@pytest.mark.parametrize("cls", ERROR_TYPES, ids=lambda c: c.__name__)
def test_error_types_pickle(cls):
    error = cls("the message")
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is cls
    assert back.args == ("the message",)
    assert isinstance(back, tfra_redis.RedisTableError)


def _raise_config_error(path: str) -> None:
    tfra_redis.RedisTableConfig(path).load()


def test_errors_cross_process_boundaries(tmp_path):
    bad = tmp_path / "redis_config.json"
    bad.write_text('{"storage_slice": 0}')
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result = pool.apply_async(_raise_config_error, (str(bad),))
        with pytest.raises(tfra_redis.ConfigError, match="storage_slice"):
            result.get(timeout=60)
