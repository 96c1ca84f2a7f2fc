"""The Rust core logs through the ``log`` crate, which the bindings forward to Python's
``logging`` under the ``tfra_redis`` logger; warnings about conditions that recur on every call
are rate-limited."""

from __future__ import annotations

import logging

import numpy as np

from tfra_redis import RedisStore, testing


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_lookup_defaults_warning_reaches_logging_once_not_once_per_call(unique_name):
    recorder = Recorder()
    logger = logging.getLogger("tfra_redis")
    logger.addHandler(recorder)
    try:
        with testing.RedisServer() as server:
            config = {
                **server.config_dict(),
                "redis_lookup_defaults_on_error": True,
                "redis_retry_deadline_ms": 50,
            }
            store = RedisStore(config, unique_name, 2, manage_ttl=False)
            server.kill()
            keys = np.arange(4, dtype=np.int64)
            for _ in range(10):
                np.testing.assert_array_equal(store.find(keys, default=7.0), np.full((4, 2), 7.0))
    finally:
        logger.removeHandler(recorder)
    # Ten failed lookups within the 60 s interval: one warning (the rest are counted and
    # reported with the next warning after the interval).
    assert len(recorder.records) == 1, [r.getMessage() for r in recorder.records]
    record = recorder.records[0]
    assert record.name == "tfra_redis.table"
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert unique_name in message and "redis_lookup_defaults_on_error" in message
