"""Reliability and security against real servers: failover, resharding, restarts, timeouts,
partial failures, TLS, password hygiene, threads and fork, and memory of huge lookups.

Every test that kills, pauses, restarts or reshards a server starts its own topology and stops
it by PID at the end; the session fixtures are only read and written, never disturbed.

Measured figures (recovery time, rows lost, error latency, RSS ratio) are printed with the
prefix ``RELIABILITY`` (run with ``-s`` to see them) and also attached to the test report
(``record_property``), so CI logs keep them.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tfra_redis
from tfra_redis import RedisStore, _native, testing

DIM = 4


def open_store(config: dict[str, Any], name: str, dim: int = DIM, **kwargs: Any) -> RedisStore:
    # manage_ttl=False: these tests kill servers, and a TTL set at garbage collection would
    # then warn from a finalizer long after the test that caused it.
    return RedisStore(config, name, dim, manage_ttl=False, **kwargs)


def rows_for(keys: np.ndarray, dim: int = DIM, salt: float = 0.0) -> np.ndarray:
    """Distinct, exactly representable rows derived from the keys."""
    base = (keys.astype(np.float64) % 1_000_000).astype(np.float32)[:, None]
    return base + np.arange(dim, dtype=np.float32)[None, :] * 0.25 + np.float32(salt)


def report(record_property: Callable[[str, Any], None], name: str, value: Any) -> None:
    record_property(name, value)
    print(f"RELIABILITY {name} = {value}", flush=True)


def missing_or_wrong(store: RedisStore, keys: np.ndarray, dim: int = DIM) -> int:
    """How many of ``keys`` do not read back as `rows_for` them."""
    if keys.size == 0:
        return 0
    got, exists = store.find(keys, default=-1.0, return_exists=True)
    good = exists & np.all(got == rows_for(keys, dim), axis=1)
    return int((~good).sum())


@dataclass
class Batch:
    first_key: int
    size: int
    started: float  # insert called
    acked: float  # insert returned: the rows count as acknowledged
    ended: float  # the find that reads them back returned
    read_back_ok: bool

    @property
    def keys(self) -> np.ndarray:
        return np.arange(self.first_key, self.first_key + self.size, dtype=np.int64)


@dataclass
class BatchLoop:
    """Runs insert + find batches of fresh keys in a thread until stopped.

    A batch counts as acknowledged once its insert returned. Its find must read every row back;
    a mismatch is recorded (``read_back_ok``), not raised, because losing rows during a
    failover is what some tests measure. Any exception ends the loop and is kept in ``error``.
    """

    store: RedisStore
    batch: int = 2000
    first_key: int = 1_000_000
    batches: list[Batch] = field(default_factory=list)
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> BatchLoop:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        next_key = self.first_key
        try:
            while not self._stop.is_set():
                keys = np.arange(next_key, next_key + self.batch, dtype=np.int64)
                started = time.monotonic()
                self.store.insert(keys, rows_for(keys))
                acked = time.monotonic()
                got = self.store.find(keys, default=-1.0)
                ok = bool(np.array_equal(got, rows_for(keys)))
                ended = time.monotonic()
                self.batches.append(Batch(next_key, self.batch, started, acked, ended, ok))
                next_key += self.batch
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def wait_for_batches(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.batches) < count:
            if self.error is not None:
                raise AssertionError(f"the batch loop failed: {self.error!r}") from self.error
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(self.batches)} of {count} batches in {timeout}s")
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(120)
            assert not self._thread.is_alive(), "the batch loop hangs"

    def acked_keys(self, *, before: float | None = None, after: float | None = None) -> np.ndarray:
        chosen = [
            b.keys
            for b in self.batches
            if (before is None or b.acked < before) and (after is None or b.started > after)
        ]
        return np.concatenate(chosen) if chosen else np.empty(0, np.int64)


def recovery_after(loop: BatchLoop, event: float) -> float:
    """Seconds from ``event`` until the batch (insert and find) that was stalled longest after
    it completed: the outage the caller saw."""
    waits = [(b.ended - max(b.started, event), b.ended) for b in loop.batches if b.ended > event]
    assert waits, "no batch finished after the event"
    _, ended = max(waits, key=lambda wait: wait[0])
    return ended - event


# --------------------------------------------------------------------------------------------
# 1. Cluster failover


def _cluster_failover(
    topology: testing.ClusterTopology, config: dict[str, Any], name: str
) -> dict[str, Any]:
    store = open_store(config, name)
    loop = BatchLoop(store).start()
    try:
        loop.wait_for_batches(5)
        victim = topology.node_for_slot(0)
        victim_buckets = [
            key
            for key in store.bucket_keys
            if topology.node_for_slot(int(victim.execute("CLUSTER", "KEYSLOT", key))) is victim
        ]
        # Otherwise the kill would not touch the table at all.
        assert victim_buckets, "the killed master holds none of the table's buckets"
        killed_at = time.monotonic()
        victim.kill()
        # Let the loop run through detection (node timeout), election and some batches after.
        deadline = time.monotonic() + 40
        while not any(b.started > killed_at + 1.0 for b in loop.batches if b.read_back_ok):
            assert loop.error is None, f"the batch loop failed: {loop.error!r}"
            assert time.monotonic() < deadline, "no batch succeeded within 40 s of the kill"
            time.sleep(0.05)
        promoted_at = time.monotonic()
        loop.wait_for_batches(len(loop.batches) + 5)
    finally:
        loop.stop()
    assert loop.error is None, f"an error reached the caller: {loop.error!r}"
    # Rows acknowledged after the new master took over must all be there.
    after = loop.acked_keys(after=promoted_at)
    assert after.size > 0
    assert missing_or_wrong(store, after) == 0
    before = loop.acked_keys(before=killed_at)
    return {
        "recovery_s": round(recovery_after(loop, killed_at), 2),
        "lost_before_kill": missing_or_wrong(store, before),
        "acked_before_kill": int(before.size),
        "lost_overall": missing_or_wrong(store, loop.acked_keys()),
        "acked_overall": int(loop.acked_keys().size),
        "read_back_failures": sum(not b.read_back_ok for b in loop.batches),
    }


@pytest.mark.slow
def test_cluster_failover_is_transparent(unique_name, record_property):
    with testing.ClusterTopology(node_timeout=2000) as topology:
        config = {**topology.config_dict(), "storage_slice": 6}
        figures = _cluster_failover(topology, config, unique_name)
    report(record_property, "cluster_failover_recovery_s", figures["recovery_s"])
    report(record_property, "cluster_failover_rows_lost_async", figures["lost_before_kill"])
    report(record_property, "cluster_failover_figures_async", figures)
    # Transparent: no error reached the caller (checked above) and every batch read back
    # exactly what it wrote, including the ones the failover stalled.
    assert figures["read_back_failures"] == 0, figures


@pytest.mark.slow
def test_cluster_failover_with_durable_writes_loses_no_acknowledged_row(
    unique_name, record_property
):
    # Two replicas per master: after the promotion the new master still has a replica, so
    # WAIT 1 can succeed again (with one replica it would fail until a replica is added).
    with testing.ClusterTopology(node_timeout=2000, replicas_per_master=2) as topology:
        config = {
            **topology.config_dict(),
            "storage_slice": 6,
            "redis_durable_write_replicas": 1,
            "redis_durable_write_timeout_ms": 1000,
        }
        figures = _cluster_failover(topology, config, unique_name)
    report(record_property, "cluster_failover_recovery_s_durable", figures["recovery_s"])
    report(record_property, "cluster_failover_rows_lost_durable", figures["lost_overall"])
    report(record_property, "cluster_failover_figures_durable", figures)
    assert figures["lost_overall"] == 0
    assert figures["read_back_failures"] == 0


def test_durable_write_fails_when_no_replica_acknowledges(unique_name):
    # A standalone server has no replica: WAIT 1 answers 0, so every write must raise, and
    # the retry deadline bounds how long it tries.
    with testing.standalone() as server:
        config = {
            **server.config_dict(),
            "redis_durable_write_replicas": 1,
            "redis_durable_write_timeout_ms": 50,
            "redis_retry_deadline_ms": 300,
        }
        keys = np.arange(10, dtype=np.int64)
        # Opening only reads (it scans the buckets on the master): no WAIT, no error.
        store = open_store(config, unique_name)
        started = time.monotonic()
        with pytest.raises(tfra_redis.RedisConnectionError, match="redis_durable_write_replicas"):
            store.insert(keys, rows_for(keys))
        assert time.monotonic() - started < 3
        # Reads need no replica (the rows did reach the master; the caller was told they are
        # not safe yet).
        assert store.find(keys, return_exists=True)[1].all()
        assert store.size() == 10


# --------------------------------------------------------------------------------------------
# 2. Resharding


def _node_id(node: testing.RedisServer) -> str:
    return node.execute("CLUSTER", "MYID")


@pytest.mark.slow
def test_resharding_under_load_is_transparent(unique_name, record_property):
    with testing.ClusterTopology(node_timeout=5000) as topology:
        config = {**topology.config_dict(), "storage_slice": 6}
        store = open_store(config, unique_name)
        loop = BatchLoop(store).start()
        moves = 0
        try:
            loop.wait_for_batches(3)
            slots = sorted(
                {
                    int(topology.masters()[0].execute("CLUSTER", "KEYSLOT", key))
                    for key in store.bucket_keys
                }
            )
            for _round in range(2):
                for slot in slots:
                    source = topology.node_for_slot(slot)
                    masters = topology.masters()
                    target = masters[(masters.index(source) + 1) % len(masters)]
                    # A pause between steps keeps the slot in the MIGRATING state long enough
                    # for the client to meet ASK redirects.
                    topology.migrate_slot(slot, target, step_delay=0.05)
                    moves += 1
                    loop.wait_for_batches(len(loop.batches) + 1)
            loop.wait_for_batches(len(loop.batches) + 3)
        finally:
            loop.stop()
        assert loop.error is None, f"an error reached the caller: {loop.error!r}"
        assert all(b.read_back_ok for b in loop.batches)
        assert missing_or_wrong(store, loop.acked_keys()) == 0
        report(record_property, "reshard_slot_moves", moves)
        report(record_property, "reshard_batches", len(loop.batches))

        # redis-cli's own resharding (whole slot ranges) as well.
        masters = topology.masters()
        loop = BatchLoop(store, first_key=50_000_000).start()
        try:
            loop.wait_for_batches(2)
            subprocess.run(
                [
                    testing.require_binary("redis-cli"),
                    "--cluster",
                    "reshard",
                    f"{masters[0].host}:{masters[0].port}",
                    "--cluster-from",
                    _node_id(masters[0]),
                    "--cluster-to",
                    _node_id(masters[1]),
                    "--cluster-slots",
                    "2000",
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
            loop.wait_for_batches(len(loop.batches) + 3)
        finally:
            loop.stop()
        assert loop.error is None, f"an error reached the caller: {loop.error!r}"
        assert missing_or_wrong(store, loop.acked_keys()) == 0


# --------------------------------------------------------------------------------------------
# 3. Sentinel failover


# Sentinels demote a master that comes back after a failover only once it has reported
# itself master for 8 s (4 publish periods), and they ask a replica for INFO every 10 s: 10 to
# 20 s on an idle machine. A 30 s wait was seen to run out on a loaded one.
DEMOTION_WAIT_S = 60


@pytest.mark.slow
def test_sentinel_failover_follows_the_new_master_and_never_writes_the_old(
    unique_name, record_property
):
    with testing.SentinelTopology() as topology:
        store = open_store(topology.config_dict(), unique_name)
        bucket = store.bucket_keys[0]
        loop = BatchLoop(store).start()
        try:
            loop.wait_for_batches(5)
            old = topology.master()
            old_addr = old.address
            killed_at = time.monotonic()
            old.kill()
            topology.wait_for_failover(old_addr, timeout=30)
            loop.wait_for_batches(len(loop.batches) + 3)
            # The old master comes back empty (no persistence) and believes it is a master
            # until the sentinels demote it. Any row of ours on it while it is a master can
            # only be a write we sent there.
            old.restart()
            rows_on_old_master = 0
            deadline = time.monotonic() + DEMOTION_WAIT_S
            while True:
                try:
                    replication = old.info("replication")
                    if replication["role"] == "master":
                        rows = old.execute("HLEN", bucket)
                        # Rows synced from the new master only arrive after a demotion, so
                        # count them only if the node is still a master after the HLEN.
                        if rows and old.info("replication")["role"] == "master":
                            rows_on_old_master = max(rows_on_old_master, rows)
                    elif replication.get("master_link_status") == "up":
                        break
                except ConnectionError:
                    # The sentinels demote the node with CLIENT KILL TYPE normal, which may
                    # hit this probe's own connection: look again.
                    pass
                assert time.monotonic() < deadline, "the sentinels did not demote the old master"
                time.sleep(0.01)
            loop.wait_for_batches(len(loop.batches) + 3)
        finally:
            loop.stop()
        assert loop.error is None, f"an error reached the caller: {loop.error!r}"
        assert rows_on_old_master == 0, "a write went to the demoted master"
        after = loop.acked_keys(after=killed_at + 0.5)
        assert missing_or_wrong(store, after) == 0
        report(
            record_property,
            "sentinel_failover_recovery_s",
            round(recovery_after(loop, killed_at), 2),
        )
        report(
            record_property,
            "sentinel_failover_rows_lost_async",
            missing_or_wrong(store, loop.acked_keys(before=killed_at)),
        )


@pytest.mark.slow
def test_sentinel_failover_with_durable_writes_loses_no_acknowledged_row(unique_name):
    """With ``redis_durable_write_replicas`` 1 an insert is acknowledged only once the replica
    has it: while the replica is stopped, inserts fail; after the master dies the promoted
    replica holds every acknowledged row; and writes wait for a replica again until the old
    master comes back as one."""
    with testing.SentinelTopology() as topology:
        config = {
            **topology.config_dict(),
            "redis_durable_write_replicas": 1,
            "redis_durable_write_timeout_ms": 300,
            "redis_retry_deadline_ms": 1000,
        }
        store = open_store(config, unique_name)
        old, replica = topology.master(), topology.replica()
        acked: list[np.ndarray] = []

        def insert(keys: np.ndarray) -> bool:
            """Inserts; True (and the keys count as acknowledged) unless it raised."""
            try:
                store.insert(keys, rows_for(keys))
            except tfra_redis.RedisConnectionError as err:
                assert "redis_durable_write_replicas" in str(err)
                return False
            acked.append(keys)
            return True

        before = np.arange(0, 5000, dtype=np.int64)
        assert insert(before)
        with replica.pausing():
            # The replica cannot acknowledge: the caller must hear that the rows are not safe.
            unsafe = np.arange(5000, 6000, dtype=np.int64)
            assert not insert(unsafe), "an insert no replica acknowledged returned normally"
            old_addr = old.address
            old.kill()
        topology.wait_for_failover(old_addr, timeout=30)
        assert topology.master() is replica
        assert missing_or_wrong(store, np.concatenate(acked)) == 0
        # The new master has no replica yet: durable writes fail rather than lose rows ...
        after = np.arange(10_000, 12_000, dtype=np.int64)
        assert not insert(after)
        # ... until the old master is back, demoted to a replica of the new one.
        old.restart()
        deadline = time.monotonic() + DEMOTION_WAIT_S
        while not insert(after):
            assert time.monotonic() < deadline, "durable writes never succeeded again"
        assert old.info("replication")["role"] == "slave"
        assert missing_or_wrong(store, np.concatenate(acked)) == 0
        # The acknowledged rows are on the replica too, not only on the master.
        bucket = store.bucket_keys[0]
        assert old.execute("HEXISTS", bucket, after[-1].tobytes()) == 1


# --------------------------------------------------------------------------------------------
# 4. Standalone restart


def test_standalone_restart_replaces_broken_pooled_connections(unique_name):
    with testing.RedisServer(save="3600 1") as server:
        store = open_store(server.config_dict(), unique_name)
        keys = np.arange(5000, dtype=np.int64)
        store.insert(keys, rows_for(keys))
        # Fill the pool with several connections, all of which the restart breaks.
        threads = [threading.Thread(target=store.find, args=(keys,)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        server.restart()  # SIGTERM saves the RDB, so the rows survive
        errors: list[BaseException] = []

        def work(offset: int) -> None:
            try:
                more = keys + 10_000 * (offset + 1)
                store.insert(more, rows_for(more))
                assert missing_or_wrong(store, more) == 0
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert missing_or_wrong(store, keys) == 0


def test_accum_after_restart_is_not_refused_by_a_stale_connection(unique_name):
    # accum is never blindly retried (a delta applied twice would be wrong), so a pooled
    # connection that the restart closed must be noticed before the deltas are sent.
    with testing.RedisServer(save="3600 1") as server:
        store = open_store(server.config_dict(), unique_name)
        keys = np.arange(100, dtype=np.int64)
        store.insert(keys, np.ones((100, DIM), np.float32))
        server.restart()
        store.accum(keys, np.ones((100, DIM), np.float32), np.ones(100, bool))
        np.testing.assert_array_equal(store.find(keys), np.full((100, DIM), 2, np.float32))


# --------------------------------------------------------------------------------------------
# 5. Timeouts


@pytest.mark.slow
def test_paused_server_times_out_within_the_socket_timeout(unique_name, record_property):
    timeout_ms = 500
    with testing.RedisServer() as server:
        config = {
            **server.config_dict(),
            "redis_socket_timeout": timeout_ms,
            "redis_connect_timeout": timeout_ms,
        }
        store = open_store(config, unique_name)
        # 100k keys: 98 commands in 2 pipelines; every command must not cost its own timeout.
        keys = np.arange(100_000, dtype=np.int64)
        store.insert(keys, rows_for(keys))
        latencies = {}
        with server.pausing():
            # First with pooled connections, then (they are dropped after the timeout) with
            # connections opened to the paused server, then a write.
            for what, call in [
                ("find_pooled", lambda: store.find(keys)),
                ("find_new_connection", lambda: store.find(keys)),
                ("insert", lambda: store.insert(keys, rows_for(keys))),
            ]:
                started = time.monotonic()
                with pytest.raises(tfra_redis.RedisTimeoutError) as info:
                    call()
                latencies[what] = round(time.monotonic() - started, 3)
                assert f"{server.port}" in str(info.value)
                assert latencies[what] < 2.0, (what, latencies[what])
        assert missing_or_wrong(store, keys) == 0
        report(record_property, "timeout_error_latency_s", latencies)


def test_threads_get_an_error_not_a_hang_when_the_server_dies(unique_name):
    # The pool wait (redis_wait_timeout) defaults to TFRA's ~28 hours; a thread waiting for a
    # connection must still hear about a dead server within the retry deadline.
    with testing.RedisServer() as server:
        config = {
            **server.config_dict(),
            "redis_conn_pool_size": 2,
            "redis_retry_deadline_ms": 1500,
        }
        store = open_store(config, unique_name)
        keys = np.arange(2000, dtype=np.int64)
        store.insert(keys, rows_for(keys))
        server.kill()
        outcomes: list[tuple[str, float]] = []

        def work() -> None:
            started = time.monotonic()
            try:
                store.find(keys)
                outcomes.append(("ok", time.monotonic() - started))
            except tfra_redis.RedisTableError as exc:
                outcomes.append((type(exc).__name__, time.monotonic() - started))

        threads = [threading.Thread(target=work, daemon=True) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert not any(t.is_alive() for t in threads), f"threads hang: {outcomes}"
        assert len(outcomes) == 6
        assert all(kind == "RedisConnectionError" for kind, _ in outcomes), outcomes
        assert max(seconds for _, seconds in outcomes) < 6, outcomes


# --------------------------------------------------------------------------------------------
# 6. Partial failure in a cluster


@pytest.mark.slow
def test_paused_cluster_master_fails_the_batch_and_names_node_and_bucket(unique_name):
    # A long node timeout: the pause must not turn into a failover.
    with testing.ClusterTopology(node_timeout=30_000) as topology:
        config = {
            **topology.config_dict(),
            "storage_slice": 6,
            "redis_socket_timeout": 500,
            "redis_connect_timeout": 500,
        }
        store = open_store(config, unique_name)
        keys = np.arange(30_000, dtype=np.int64)
        store.insert(keys, rows_for(keys))
        victim = topology.masters()[1]
        victim_buckets = [
            key.decode()
            for key in store.bucket_keys
            if topology.node_for_slot(int(victim.execute("CLUSTER", "KEYSLOT", key))) is victim
        ]
        assert victim_buckets and len(victim_buckets) < len(store.bucket_keys)
        with victim.pausing():
            for call in (
                lambda: store.find(keys),
                lambda: store.insert(keys, rows_for(keys, salt=1)),
                lambda: store.remove(keys),
            ):
                started = time.monotonic()
                with pytest.raises(tfra_redis.RedisTimeoutError) as info:
                    call()
                message = str(info.value)
                assert time.monotonic() - started < 2.0
                assert f"127.0.0.1:{victim.port}" in message, message
                assert any(bucket in message for bucket in victim_buckets), message
        # The failed insert and remove may have reached the other masters (a batch is not
        # atomic across nodes), and the paused master runs what it had received once it
        # resumes; the caller was told the batch failed. Afterwards everything works again.
        store.find(keys)
        store.insert(keys, rows_for(keys))
        assert missing_or_wrong(store, keys) == 0


# --------------------------------------------------------------------------------------------
# 7. redis_lookup_defaults_on_error


def test_lookup_defaults_on_error_returns_defaults_only_when_asked(unique_name, caplog):
    with testing.RedisServer() as server:
        base = {**server.config_dict(), "redis_retry_deadline_ms": 300}
        tolerant = open_store({**base, "redis_lookup_defaults_on_error": True}, unique_name)
        strict = open_store(base, unique_name)
        keys = np.arange(50, dtype=np.int64)
        strict.insert(keys, rows_for(keys))
        server.kill()
        got, exists = tolerant.find(keys, default=7.0, return_exists=True)
        np.testing.assert_array_equal(got, np.full((50, DIM), 7.0, np.float32))
        assert not exists.any()
        assert "redis_lookup_defaults_on_error" in caplog.text  # logger tfra_redis.table
        with pytest.raises(tfra_redis.RedisConnectionError):
            strict.find(keys)
        # Writes never fall back to anything.
        with pytest.raises(tfra_redis.RedisConnectionError):
            tolerant.insert(keys, rows_for(keys))


# --------------------------------------------------------------------------------------------
# 8. TLS


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(directory: Path, name: str) -> dict[str, Path]:
    """A CA, a server certificate for IP 127.0.0.1 and a client certificate, signed by it."""
    d = directory / name
    d.mkdir()
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN=tfra-test-ca-{name}",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        cwd=d,
    )
    (d / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    for who in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN=tfra-test-{who}",
            "-keyout",
            f"{who}.key",
            "-out",
            f"{who}.csr",
            cwd=d,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{who}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            f"{who}.crt",
            cwd=d,
        )
    return {p.stem + p.suffix.replace(".", "_"): p for p in d.iterdir()}


def test_tls_with_client_certificates(tmp_path, unique_name):
    pki = make_pki(tmp_path, "good")
    other = make_pki(tmp_path, "other")
    tls_port = testing.find_free_port()
    server = testing.RedisServer(
        extra_args=[
            # The plain port stays open for the harness (PING, INFO); the client uses TLS.
            "--tls-port",
            str(tls_port),
            "--tls-cert-file",
            str(pki["server_crt"]),
            "--tls-key-file",
            str(pki["server_key"]),
            "--tls-ca-cert-file",
            str(pki["ca_crt"]),
            "--tls-auth-clients",
            "yes",
        ]
    )
    with server:
        base = {
            "redis_connection_mode": 2,
            "redis_host_ip": ["127.0.0.1"],
            "redis_host_port": [tls_port],
            "redis_retry_deadline_ms": 500,
            "redis_connect_timeout": 2000,
        }
        good = {
            **base,
            "redis_tls": True,
            "redis_tls_ca_cert": str(pki["ca_crt"]),
            "redis_tls_cert": str(pki["client_crt"]),
            "redis_tls_key": str(pki["client_key"]),
        }
        store = open_store(good, unique_name)
        keys = np.arange(3000, dtype=np.int64)
        store.insert(keys, rows_for(keys))
        assert missing_or_wrong(store, keys) == 0
        # The rows really went over the TLS port into this server.
        assert server.execute("HLEN", store.bucket_keys[0]) == 3000

        # A CA that did not sign the server certificate: fail closed.
        with pytest.raises(tfra_redis.RedisConnectionError):
            open_store({**good, "redis_tls_ca_cert": str(other["ca_crt"])}, unique_name)
        # A client certificate the server's CA did not sign.
        with pytest.raises(tfra_redis.RedisConnectionError):
            open_store(
                {
                    **good,
                    "redis_tls_cert": str(other["client_crt"]),
                    "redis_tls_key": str(other["client_key"]),
                },
                unique_name,
            )
        # No client certificate while the server requires one.
        no_client = {k: v for k, v in good.items() if k not in ("redis_tls_cert", "redis_tls_key")}
        with pytest.raises(tfra_redis.RedisConnectionError):
            open_store(no_client, unique_name)
        # Plain TCP to the TLS port is no way around it either.
        with pytest.raises((tfra_redis.RedisConnectionError, tfra_redis.RedisTimeoutError)):
            open_store(base, unique_name)
        # A CA file that does not exist is a config error, named as such.
        with pytest.raises(tfra_redis.ConfigError, match="redis_tls_ca_cert"):
            open_store({**good, "redis_tls_ca_cert": str(tmp_path / "nope.crt")}, unique_name)


# --------------------------------------------------------------------------------------------
# 9. Password hygiene

SECRET = "Sup3r-Secret-PW-4711"
SENTINEL_SECRET = "Sentinel-PW-0815"


def _assert_clean(text: str) -> None:
    assert SECRET not in text, text
    assert SENTINEL_SECRET not in text, text
    assert "Wrong-PW-1234" not in text, text


def test_passwords_never_leak_into_errors_reprs_or_warnings(unique_name, capfd, caplog):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with testing.RedisServer(password=SECRET) as server:
            good = {
                **server.config_dict(),
                "redis_retry_deadline_ms": 200,
                "redis_sentinel_password": SENTINEL_SECRET,
                "an_unknown_field": SECRET,
            }
            config = _native.Config.from_json(json.dumps(good))
            _assert_clean(repr(config))
            store = open_store(good, unique_name)
            _assert_clean(repr(store))
            store.insert(np.arange(3), np.zeros((3, DIM), np.float32))

            messages = []
            for bad in (
                {**good, "redis_password": "Wrong-PW-1234"},
                {**good, "redis_user": "nobody"},
                {**good, "redis_password": ""},
                {**good, "redis_host_port": [testing.find_free_port()]},
                {**good, "redis_connection_mode": 0},
            ):
                with pytest.raises(tfra_redis.RedisTableError) as info:
                    open_store(bad, unique_name)
                messages.append(f"{type(info.value).__name__}: {info.value}")
            for text in messages:
                _assert_clean(text)
            # TFRA's default mode (Sentinel) pointed at this plain, password-protected server:
            # the probe's sentinel credentials are refused, the data password is accepted, and
            # the table falls back to the server with a warning (logger tfra_redis).
            no_sentinel_pw = {k: v for k, v in good.items() if k != "redis_sentinel_password"}
            for sentinel_mode in (
                {**good, "redis_connection_mode": 1},
                {**no_sentinel_pw, "redis_connection_mode": 1},
            ):
                fallback = open_store(sentinel_mode, unique_name)
                assert fallback.find(np.arange(3), return_exists=True)[1].all()
            assert "plain Redis server" in caplog.text
            _assert_clean(caplog.text)
    for warning in caught:
        _assert_clean(str(warning.message))
    out, err = capfd.readouterr()
    _assert_clean(out)
    _assert_clean(err)


def test_world_readable_config_file_with_password_warns(tmp_path):
    path = tmp_path / "redis_config.json"
    path.write_text(json.dumps({"redis_connection_mode": 2, "redis_password": SECRET}))
    path.chmod(0o644)
    with pytest.warns(UserWarning, match="(?i)readable|permission|chmod") as caught:
        tfra_redis.RedisTableConfig(redis_config_abs_dir=str(path)).load()
    for warning in caught:
        _assert_clean(str(warning.message))


def test_private_config_file_with_password_does_not_warn(tmp_path):
    path = tmp_path / "redis_config.json"
    path.write_text(json.dumps({"redis_connection_mode": 2, "redis_password": SECRET}))
    path.chmod(0o600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tfra_redis.RedisTableConfig(redis_config_abs_dir=str(path)).load()


# --------------------------------------------------------------------------------------------
# 10. Threads and fork


@pytest.mark.slow
@pytest.mark.parametrize("topology_name", ["standalone_server", "cluster"])
def test_threads_on_one_table_match_a_sequential_model(topology_name, request, unique_name):
    topology = request.getfixturevalue(topology_name)
    config = {**topology.config_dict(), "storage_slice": 3}
    store = open_store(config, unique_name)
    threads_n, span, seconds = 8, 400, 4.0
    models: list[dict[int, np.ndarray]] = [{} for _ in range(threads_n)]
    errors: list[BaseException] = []
    ops = [0] * threads_n
    deadline = time.monotonic() + seconds

    def work(t: int) -> None:
        rng = np.random.default_rng(t)
        model = models[t]
        base = t * 1_000_000
        try:
            while time.monotonic() < deadline:
                keys = base + rng.choice(span, size=int(rng.integers(1, 200)), replace=False)
                keys = keys.astype(np.int64)
                op = rng.integers(3)
                if op == 0:
                    values = rng.standard_normal((keys.size, DIM)).astype(np.float32)
                    store.insert(keys, values)
                    model.update(zip(keys.tolist(), values, strict=True))
                elif op == 1:
                    store.remove(keys)
                    for k in keys.tolist():
                        model.pop(k, None)
                else:
                    got, exists = store.find(keys, default=np.nan, return_exists=True)
                    for k, row, present in zip(keys.tolist(), got, exists, strict=True):
                        assert present == (k in model), k
                        if present:
                            np.testing.assert_array_equal(row, model[k])
                ops[t] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    assert not any(t.is_alive() for t in threads), "deadlock: a thread never finished"
    assert errors == []
    assert min(ops) > 0
    for t, model in enumerate(models):
        keys = np.arange(t * 1_000_000, t * 1_000_000 + span, dtype=np.int64)
        got, exists = store.find(keys, return_exists=True)
        for k, row, present in zip(keys.tolist(), got, exists, strict=True):
            assert present == (k in model)
            if present:
                np.testing.assert_array_equal(row, model[k])
    store.clear()


def _child_uses_table(config: dict[str, Any], name: str, index: int, queue: Any) -> None:
    try:
        store = _FORK_STORES[name]  # inherited from the parent, pools and all
        keys = np.arange(100, dtype=np.int64)
        ok_old = missing_or_wrong(store, keys) == 0
        more = keys + 1000 * (index + 1)
        store.insert(more, rows_for(more))
        # A fresh table in the child works too.
        fresh = open_store(config, name)
        ok_fresh = missing_or_wrong(fresh, more) == 0
        queue.put((ok_old, ok_fresh, more.tolist()))
    except BaseException as exc:  # noqa: BLE001
        queue.put(repr(exc))


_FORK_STORES: dict[str, RedisStore] = {}


@pytest.mark.parametrize("topology_name", ["standalone_server", "cluster"])
def test_forked_child_works_with_the_table(topology_name, request, unique_name):
    topology = request.getfixturevalue(topology_name)
    config = {**topology.config_dict(), "storage_slice": 3}
    store = open_store(config, unique_name)
    keys = np.arange(100, dtype=np.int64)
    store.insert(keys, rows_for(keys))
    assert missing_or_wrong(store, keys) == 0  # the pools now hold live connections
    _FORK_STORES[unique_name] = store
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns about fork() in a process with threads (ours: pool threads);
            # fork safety is exactly what this test checks.
            warnings.simplefilter("ignore", DeprecationWarning)
            children = [
                context.Process(target=_child_uses_table, args=(config, unique_name, index, queue))
                for index in range(2)
            ]
            for child in children:
                child.start()
        results = [queue.get(timeout=60) for _ in children]
        for child in children:
            child.join(30)
            assert child.exitcode == 0
    finally:
        _FORK_STORES.pop(unique_name, None)
    for result in results:
        assert isinstance(result, tuple), result
        ok_old, ok_fresh, more = result
        assert ok_old and ok_fresh
        # The parent sees the child's rows and its own connections still work.
        assert missing_or_wrong(store, np.array(more, dtype=np.int64)) == 0
    assert missing_or_wrong(store, keys) == 0
    store.clear()


# --------------------------------------------------------------------------------------------
# 12. Memory of a huge lookup

_RSS_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    from tfra_redis import RedisStore

    def status(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024

    config, name, n, dim = json.loads(sys.argv[1])
    store = RedisStore(config, name, dim, manage_ttl=False)
    keys = np.arange(n, dtype=np.int64)
    store.find(keys[:1000])  # connections and code paths warm
    # ru_maxrss is not reset by exec: the child starts with the parent's (pytest's) peak. The
    # kernel's own high-water mark of this process (VmHWM) can be reset, so measure with it.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = store.find(keys)
    peak = status("VmHWM")
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # Every value, not two: row k is k in each of its dim columns (exact in float32).
    chunk = 1 << 20
    ok = out.shape == (n, dim) and all(
        np.array_equal(out[i : i + chunk], np.broadcast_to(
            keys[i : i + chunk].astype(np.float32)[:, None], out[i : i + chunk].shape))
        for i in range(0, n, chunk)
    )
    print(json.dumps({"before": before, "peak": peak, "out_bytes": out.nbytes, "ok": ok,
                      "ru_maxrss_before": maxrss_before, "ru_maxrss_after": maxrss_after}))
    """
)


@pytest.mark.slow
def test_huge_lookup_has_bounded_client_memory(unique_name, record_property):
    n, dim = 10_000_000, 8  # the size the core-hardening issue asks for
    with testing.RedisServer() as server:
        config = server.config_dict()
        store = open_store(config, unique_name, dim)
        chunk = 500_000
        for start in range(0, n, chunk):
            keys = np.arange(start, start + chunk, dtype=np.int64)
            store.insert(keys, np.repeat(keys.astype(np.float32)[:, None], dim, axis=1))
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", _RSS_SCRIPT, json.dumps([config, unique_name, n, dim])],
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        )
        seconds = time.monotonic() - started
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["ok"]
    growth = figures["peak"] - figures["before"]
    ratio = growth / figures["out_bytes"]
    report(record_property, "huge_lookup_rss_growth_ratio", round(ratio, 3))
    report(
        record_property,
        "huge_lookup_figures",
        {**figures, "growth": growth, "seconds_incl_startup": round(seconds, 1)},
    )
    # The output array itself is unavoidable; anything beyond it must be a bounded window
    # (65,536 ids per window, 8 MiB of replies in flight; about 20 MiB measured in all). A
    # second copy of the output, or all replies held at once (over 160 MB here), fails.
    assert growth < figures["out_bytes"] + 64 * 2**20, figures
