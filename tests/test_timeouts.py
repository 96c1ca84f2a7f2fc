"""How long a call may block on a server that stops answering, and what the error says.

These tests measure time because the time bound is what they check; the margins are wide (the
machine may be loaded) and say which wait they allow for.
"""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

import tfra_redis
from tfra_redis import RedisStore, testing

DIM = 2


def waited_ms(err: Exception) -> int:
    """The call's own time, as the error message reports it."""
    found = re.search(r"after (\d+) ms \(timeout (\d+) ms per wait\)", str(err))
    assert found, str(err)
    return int(found.group(1))


def test_a_call_on_a_paused_server_fails_after_one_socket_timeout(unique_name):
    with testing.RedisServer() as server:
        store = RedisStore(server.config_dict(), unique_name, DIM, manage_ttl=False)
        keys = np.arange(100, dtype=np.int64)
        store.insert(keys, np.ones((100, DIM), np.float32))
        with server.pausing():
            for call in (lambda: store.find(keys), lambda: store.size()):
                started = time.monotonic()
                with pytest.raises(tfra_redis.RedisTimeoutError) as info:
                    call()
                took = time.monotonic() - started
                # One wait of the default 1000 ms socket timeout; 1 s of margin for a loaded
                # machine.
                assert 0.9 <= took < 2.0, took
                assert 1000 <= waited_ms(info.value) <= took * 1000 + 50
        np.testing.assert_array_equal(store.find(keys), np.ones((100, DIM)))


def test_the_message_reports_the_whole_wait_when_it_exceeds_the_timeout(unique_name):
    # One pooled connection and two calls at once: the second waits for the first's timeout,
    # then for its own. The message said "after 1000 ms" after two seconds.
    with testing.RedisServer() as server:
        config = {**server.config_dict(), "redis_conn_pool_size": 1}
        store = RedisStore(config, unique_name, DIM, manage_ttl=False)
        keys = np.arange(100, dtype=np.int64)
        store.insert(keys, np.ones((100, DIM), np.float32))
        outcomes: list[tuple[float, Exception]] = []

        def call() -> None:
            started = time.monotonic()
            try:
                store.find(keys)
            except tfra_redis.RedisTimeoutError as e:
                outcomes.append((time.monotonic() - started, e))

        with server.pausing():
            threads = [threading.Thread(target=call) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=30)
        assert len(outcomes) == 2, outcomes
        longest = max(took for took, _ in outcomes)
        assert longest >= 1.8, outcomes  # one waited for the other: two socket timeouts
        for took, err in outcomes:
            # The reported time is the call's own, less what Python adds around it.
            assert took * 1000 - 250 <= waited_ms(err) <= took * 1000 + 50, (took, str(err))


# --------------------------------------------------------------------------------------------
# Durable writes: WAIT with its default timeout (1000 ms) on a socket with its default timeout
# (1000 ms). The socket timeout must not race the WAIT.


def durable_config(server: testing.RedisServer) -> dict:
    # Only the durable-write switch: every timeout keeps its default.
    return {**server.config_dict(), "redis_durable_write_replicas": 1}


def test_unconfirmed_durable_accum_says_so_and_is_not_a_socket_timeout(unique_name):
    with testing.RedisServer() as master:  # no replica at all
        store = RedisStore(durable_config(master), unique_name, DIM, manage_ttl=False)
        keys = np.arange(10, dtype=np.int64)
        for _ in range(3):
            with pytest.raises(tfra_redis.RedisConnectionError) as info:
                store.accum(keys, np.ones((10, DIM), np.float32), np.zeros(10, np.bool_))
            assert not isinstance(info.value, tfra_redis.RedisTimeoutError), str(info.value)
            assert "durable write not confirmed" in str(info.value)


def test_unconfirmed_durable_insert_is_retried_until_the_replica_confirms(unique_name):
    with testing.RedisServer() as master, testing.RedisServer(replica_of=master) as replica:
        deadline = time.monotonic() + 10
        while master.info("replication").get("connected_slaves") != "1":
            assert time.monotonic() < deadline, "the replica never connected"
            time.sleep(0.05)
        store = RedisStore(durable_config(master), unique_name, DIM, manage_ttl=False)
        keys = np.arange(10, dtype=np.int64)
        replica.pause()
        # The replica comes back while the insert is being retried (default deadline 30 s).
        resume = threading.Timer(2.5, replica.resume)
        resume.start()
        try:
            store.insert(keys, np.ones((10, DIM), np.float32))
        finally:
            resume.cancel()
            replica.resume()
        assert store.size() == 10
