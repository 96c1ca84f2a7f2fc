"""Many threads looking rows up at once, as an online server does: the rows are exact, the
lookups run in parallel down to Redis, and the ``tf.function`` op body does no more Python than
it must (it runs with the GIL held, one thread at a time)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.ops import script_ops  # noqa: E402

import tfra_redis as tfra  # noqa: E402
from tfra_redis import testing  # noqa: E402

de = tfra.dynamic_embedding
pytestmark = pytest.mark.usefixtures("collect_tables_at_module_end")

DIM = 8
ROWS = 5_000


def _stored_rows() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((ROWS, DIM)).astype(np.float32)


def _table(config: Path, name: str, default: float = -1.0) -> de.RedisTable:
    return de.RedisTable(
        tf.int64,
        tf.float32,
        tf.fill([DIM], default),
        name=name,
        config=de.RedisTableConfig(redis_config_abs_dir=str(config)),
    )


def _run_threads(count: int, work) -> None:
    errors: list[BaseException] = []

    def guarded(t: int) -> None:
        try:
            work(t)
        except BaseException as error:  # re-raised below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a lookup thread hung"
    if errors:
        raise errors[0]


def test_concurrent_tf_function_lookups_return_exact_rows(
    tmp_path, standalone_server, make_config, unique_name
):
    config = make_config(tmp_path, standalone_server, table_store_mode=2)
    table = _table(config, f"{unique_name}_mht_1of1")
    rows = _stored_rows()
    table.insert(np.arange(ROWS, dtype=np.int64), rows)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def serve(ids):
        return table.lookup(ids)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def serve_with_exists(ids):
        return table.lookup(ids, dynamic_default_values=tf.fill([DIM], 7.0), return_exists=True)

    def work(t: int) -> None:
        rng = np.random.default_rng(100 + t)
        for call in range(25):
            # A quarter of the ids are missing (past the stored range); sizes vary per call.
            ids = rng.integers(0, ROWS * 4 // 3, size=int(rng.integers(1, 600)))
            found = ids < ROWS
            if call % 2:
                got = serve(tf.constant(ids)).numpy()
                want = np.where(found[:, None], rows[np.minimum(ids, ROWS - 1)], -1.0)
                np.testing.assert_array_equal(got, want)
            else:
                got, exists = serve_with_exists(tf.constant(ids))
                want = np.where(found[:, None], rows[np.minimum(ids, ROWS - 1)], 7.0)
                np.testing.assert_array_equal(got.numpy(), want)
                np.testing.assert_array_equal(exists.numpy(), found)

    _run_threads(16, work)


def test_lookup_op_gets_only_the_keys_and_runs_a_plain_method(
    tmp_path, standalone_server, make_config, unique_name, monkeypatch
):
    """The op body is the table's own method: a closure defined inside ``lookup`` was rewritten
    by autograph whenever a ``tf.function`` called ``lookup``, and the rewritten body ran its
    ``if`` statements through autograph's operators on every call. With the table's default,
    the op's only input is the keys: the default row was converted to numpy on every call."""
    monkeypatch.setenv("TFRA_REDIS_NATIVE_OPS", "0")  # the numpy_function path's op body
    config = make_config(tmp_path, standalone_server, table_store_mode=2)
    table = _table(config, f"{unique_name}_mht_1of1")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def serve(ids):
        return table.lookup(ids)

    graph = serve.get_concrete_function().graph
    (op,) = [op for op in graph.get_operations() if op.type == "PyFunc"]
    assert [t.dtype for t in op.inputs] == [tf.int64]
    registered = script_ops._py_funcs.get(op.get_attr("token").decode())
    body = getattr(registered, "__wrapped__", registered)
    assert "autograph_generated" not in body.__code__.co_filename
    assert body.__func__ is type(table)._find_np

    # The same body serves lookups with a default of the call's own.
    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def serve_default(ids):
        return table.lookup(ids, dynamic_default_values=tf.ones([DIM]))

    graph = serve_default.get_concrete_function().graph
    (op,) = [op for op in graph.get_operations() if op.type == "PyFunc"]
    assert len(op.inputs) == 2
    body = script_ops._py_funcs.get(op.get_attr("token").decode())
    assert "autograph_generated" not in getattr(body, "__wrapped__", body).__code__.co_filename
    assert serve_default(tf.constant([1, 2], tf.int64)).numpy().tolist() == [[1.0] * DIM] * 2


def _pending_requests(port: int) -> int:
    """Server-side TCP connections of ``port`` holding bytes the server has not read yet."""
    pending = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local_port = int(fields[1].split(":")[1], 16)
            state = fields[3]
            rx_queue = int(fields[4].split(":")[1], 16)
            if local_port == port and state == "01" and rx_queue > 0:
                pending += 1
    return pending


def test_concurrent_finds_are_in_flight_at_once_on_their_own_connections(tmp_path, unique_name):
    """Two threads' lookups reach the server at the same time, each on a connection of its own:
    no lock of the table or pool is held across a round trip. The server is paused (SIGSTOP),
    so a request that reached it stays unread in its socket, where the kernel shows it."""
    with testing.standalone() as server:
        config = testing.write_config_file(
            tmp_path / "config.json",
            server,
            expire_model_tag_in_seconds=-1,
            # The pause must not look like a dead server.
            redis_socket_timeout=30_000,
        )
        store = tfra.RedisStore(str(config), unique_name, DIM)
        rows = _stored_rows()
        store.insert(np.arange(ROWS, dtype=np.int64), rows)
        ids = [np.arange(t, ROWS, 7, dtype=np.int64) for t in range(2)]
        results: dict[int, np.ndarray] = {}
        seen = 0
        with server.pausing():
            threads = [
                threading.Thread(target=lambda t=t: results.__setitem__(t, store.find(ids[t])))
                for t in range(2)
            ]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                seen = max(seen, _pending_requests(server.port))
                if seen >= 2:
                    break
                time.sleep(0.01)
        for thread in threads:
            thread.join(timeout=60)
        assert seen == 2, f"requests waiting at the server at once: {seen}"
        for t in range(2):
            np.testing.assert_array_equal(results[t], rows[ids[t]])
