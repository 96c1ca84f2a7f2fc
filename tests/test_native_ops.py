"""The native lookup op (``tfra_redis.native_ops``): built once per session (about a minute),
then checked against the ``numpy_function`` path it replaces inside ``tf.function``, and for its
failure modes: a dropped table, a handle of another process, Redis down, no compiler, not built.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gc  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfra_redis as tfra  # noqa: E402
from tfra_redis import native_ops, testing  # noqa: E402

de = tfra.dynamic_embedding
pytestmark = pytest.mark.usefixtures("collect_tables_at_module_end", "native_on")

ROOT = Path(__file__).resolve().parent.parent
DIM = 4
VALUE_DTYPES = [tf.float32, tf.float64, tf.float16, tf.bfloat16, tf.int32, tf.int64, tf.int8]


@pytest.fixture
def native_on(native_library: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # conftest turns the native op off for the rest of the suite.
    monkeypatch.setenv(native_ops.ENABLE_ENV, "1")


def _table(config: Path, name: str, key_dtype=tf.int64, value_dtype=tf.float32, default=-1):
    return de.RedisTable(
        key_dtype,
        value_dtype,
        tf.cast(tf.fill([DIM], default), value_dtype),
        name=name,
        config=de.RedisTableConfig(redis_config_abs_dir=str(config)),
    )


def _op_types(fn: Any, *specs: tf.TensorSpec) -> set[str]:
    return {op.type for op in fn.get_concrete_function(*specs).graph.get_operations()}


def _traced(monkeypatch: pytest.MonkeyPatch, setting: str, body: Any, *specs: tf.TensorSpec):
    """``body`` as a ``tf.function`` traced with ``TFRA_REDIS_NATIVE_OPS=setting``."""
    monkeypatch.setenv(native_ops.ENABLE_ENV, setting)
    fn = tf.function(body, input_signature=list(specs))
    types = _op_types(fn, *specs)
    monkeypatch.setenv(native_ops.ENABLE_ENV, "1")
    return fn, types


def _assert_same(got: Any, want: Any) -> None:
    if isinstance(want, (tuple, list)):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            _assert_same(g, w)
        return
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(
        np.asarray(got.numpy(), dtype=np.float64), np.asarray(want.numpy(), dtype=np.float64)
    )


@pytest.mark.parametrize("value_dtype", VALUE_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("key_dtype", [tf.int64, tf.int32], ids=lambda d: d.name)
def test_native_lookups_equal_the_numpy_function_path(
    tmp_path, standalone_server, make_config, unique_name, monkeypatch, key_dtype, value_dtype
):
    config = make_config(tmp_path, standalone_server, table_store_mode=2)
    table = _table(config, f"{unique_name}_mht_1of1", key_dtype, value_dtype, default=-3)
    stored = np.arange(0, 40, 2)
    rows = tf.cast(tf.reshape(tf.range(stored.size * DIM) % 100 - 50, [-1, DIM]), value_dtype)
    table.insert(tf.constant(stored, key_dtype), rows)
    # Ids stored and missing, repeated, negative; in a [3, 4] shape too.
    ids = tf.constant([[0, 1, 2, 3], [38, 39, 40, -2], [2, 2, 7, 0]], key_dtype)
    shared = tf.cast(tf.fill([DIM], 9), value_dtype)
    per_key = tf.cast(tf.reshape(tf.range(12 * DIM), [3, 4, DIM]) - 7, value_dtype)

    def body(keys):
        return (
            table.lookup(keys),
            table.lookup(keys, dynamic_default_values=shared),
            table.lookup(keys, dynamic_default_values=per_key, return_exists=True),
            table.lookup(keys, return_exists=True),
            table.lookup(keys, dynamic_default_values=tf.cast(5, value_dtype)),
            table.lookup(keys, dynamic_default_values=tf.cast([6], value_dtype)),
        )

    spec = tf.TensorSpec([3, 4], key_dtype)
    native, native_types = _traced(monkeypatch, "1", body, spec)
    numpy, numpy_types = _traced(monkeypatch, "0", body, spec)
    assert "TfraRedisLookup" in native_types and "PyFunc" not in native_types
    assert "PyFunc" in numpy_types and "TfraRedisLookup" not in numpy_types
    got, want = native(ids), numpy(ids)
    _assert_same(got, want)
    # And both equal what the store returns eagerly.
    _assert_same(got[0], table.lookup(ids))
    values, exists = got[2]
    assert exists.numpy().tolist() == [
        [True, False, True, False],
        [True, False, False, False],
        [True, True, False, True],
    ]
    assert values.shape == [3, 4, DIM]
    assert values.numpy()[0, 1].tolist() == per_key.numpy()[0, 1].tolist()


def test_unknown_batch_sizes_and_empty_batches(
    tmp_path, standalone_server, make_config, unique_name
):
    config = make_config(tmp_path, standalone_server, table_store_mode=2)
    table = _table(config, f"{unique_name}_mht_1of1")
    table.insert(tf.constant([5], tf.int64), tf.ones([1, DIM]))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def serve(ids):
        values, exists = table.lookup(ids, return_exists=True)
        return values, exists

    assert "TfraRedisLookup" in _op_types(serve)
    values, exists = serve(tf.constant([5, 6], tf.int64))
    assert values.shape.as_list() == [None, DIM] or values.shape == [2, DIM]
    assert values.numpy().tolist() == [[1.0] * DIM, [-1.0] * DIM]
    assert exists.numpy().tolist() == [True, False]
    values, exists = serve(tf.zeros([0], tf.int64))
    assert values.shape == [0, DIM] and exists.shape == [0]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def serve_per_key(ids):
        defaults = tf.fill(tf.concat([tf.shape(ids), [DIM]], 0), 4.0)
        return table.lookup(ids, dynamic_default_values=defaults)

    assert "TfraRedisLookup" in _op_types(serve_per_key)
    assert serve_per_key(tf.zeros([0], tf.int64)).shape == [0, DIM]
    assert serve_per_key(tf.constant([6], tf.int64)).numpy().tolist() == [[4.0] * DIM]
    # The static shape is set as on the numpy_function path.
    assert serve.get_concrete_function().structured_outputs[0].shape.as_list() == [None, DIM]


def test_concurrent_callers_get_exact_rows(tmp_path, standalone_server, make_config, unique_name):
    config = make_config(tmp_path, standalone_server, table_store_mode=2)
    table = _table(config, f"{unique_name}_mht_1of1")
    count = 3000
    rows = np.random.default_rng(1).standard_normal((count, DIM)).astype(np.float32)
    table.insert(np.arange(count, dtype=np.int64), rows)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def serve(ids):
        return table.lookup(ids, return_exists=True)

    assert "TfraRedisLookup" in _op_types(serve)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            rng = np.random.default_rng(10 + t)
            for _ in range(20):
                ids = rng.integers(0, count * 4 // 3, size=int(rng.integers(1, 500)))
                values, exists = serve(tf.constant(ids))
                found = ids < count
                want = np.where(found[:, None], rows[np.minimum(ids, count - 1)], -1.0)
                np.testing.assert_array_equal(values.numpy(), want)
                np.testing.assert_array_equal(exists.numpy(), found)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    if errors:
        raise errors[0]


def _clients(server: testing.RedisServer) -> int:
    """Connections the server holds, not counting the one that asks."""
    return len(server.execute("CLIENT", "LIST").splitlines()) - 1


def test_lookups_in_flight_are_not_capped_by_tensorflows_inter_op_threads(
    tmp_path, make_config, unique_name
):
    # A synchronous kernel holds one of TensorFlow's inter-op threads (one per core: 2 here)
    # for its whole round trip, so at most 2 lookups reach Redis at once, whatever the number
    # of callers. The server is paused while 8 callers start: each lookup in flight then holds
    # its own pooled connection (the pool opens one only when all are busy), so the server's
    # connections after the pause count the lookups that were in flight together. A fresh
    # server, so no connection of another test's table is in the count.
    callers = 8
    with testing.standalone() as server:
        config = make_config(tmp_path, server, table_store_mode=2)
        table = _table(config, f"{unique_name}_mht_1of1")
        rows = np.random.default_rng(3).standard_normal((1000, DIM)).astype(np.float32)
        table.insert(np.arange(1000, dtype=np.int64), rows)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
        def serve(ids):
            return table.lookup(ids, return_exists=True)

        assert "TfraRedisLookup" in _op_types(serve)
        before = _clients(server)
        results: dict[int, Any] = {}
        errors: list[BaseException] = []

        def work(t: int) -> None:
            try:
                ids = np.arange(t * 150, t * 150 + 150, dtype=np.int64)  # the last ones missing
                results[t] = (ids, *(x.numpy() for x in serve(tf.constant(ids))))
            except BaseException as error:
                errors.append(error)

        server.execute("CLIENT", "PAUSE", 500, "ALL")
        threads = [threading.Thread(target=work, args=(t,)) for t in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)
        if errors:
            raise errors[0]
        in_flight = _clients(server) - before
        assert in_flight > 2, f"only {in_flight} lookups reached Redis at once"
        for ids, values, exists in results.values():
            found = ids < 1000
            want = np.where(found[:, None], rows[np.minimum(ids, 999)], -1.0)
            np.testing.assert_array_equal(values, want)
            np.testing.assert_array_equal(exists, found)
        assert len(results) == callers


def _raw_lookup(handle: int, token: int, keys: Any = (1, 2)) -> Any:
    return native_ops.load().tfra_redis_lookup(
        keys=tf.constant(keys, tf.int64),
        defaults=tf.zeros([DIM]),
        table_handle=handle,
        process_token=token,
        table_name="t",
        dim=DIM,
    )


def test_a_dropped_tables_handle_fails_cleanly_and_is_not_reused(
    tmp_path, standalone_server, make_config, unique_name
):
    config = make_config(tmp_path, standalone_server, table_store_mode=2)
    table = _table(config, f"{unique_name}_mht_1of1")
    table.insert(tf.constant([1], tf.int64), tf.ones([1, DIM]))
    handle, token = table.store._table.native_handle()
    assert table.store._table.native_handle() == (handle, token)
    values, _ = _raw_lookup(handle, token)
    assert values.numpy()[0].tolist() == [1.0] * DIM
    del table
    gc.collect()
    with pytest.raises(tf.errors.FailedPreconditionError, match="has been dropped"):
        _raw_lookup(handle, token)
    other = _table(config, f"{unique_name}_2_mht_1of1")
    assert other.store._table.native_handle()[0] != handle


def test_a_graph_keeps_its_table_alive(tmp_path, standalone_server, make_config, unique_name):
    """As a numpy_function's graph keeps its Python function: the graph holds the store, so a
    traced function works after the caller dropped its table."""
    config = make_config(tmp_path, standalone_server, table_store_mode=2)

    def make() -> Any:
        table = _table(config, f"{unique_name}_mht_1of1")
        table.insert(tf.constant([3], tf.int64), tf.fill([1, DIM], 2.0))

        def serve(ids):
            # Inside a branch too: its graph is not the function's own.
            return tf.cond(
                tf.size(ids) > 0, lambda: table.lookup(ids), lambda: table.lookup(ids[:0])
            )

        return tf.function(serve).get_concrete_function(tf.TensorSpec([None], tf.int64))

    serve = make()
    gc.collect()
    assert "TfraRedisLookup" in {
        node.op for f in serve.graph.as_graph_def().library.function for node in f.node_def
    }
    assert serve(tf.constant([3, 4], tf.int64)).numpy().tolist() == [[2.0] * DIM, [-1.0] * DIM]


def test_a_handle_of_another_process_is_refused(
    tmp_path, standalone_server, make_config, unique_name
):
    config = make_config(tmp_path, standalone_server, table_store_mode=2)
    table = _table(config, f"{unique_name}_mht_1of1")
    handle, token = table.store._table.native_handle()
    forged = token ^ 0x5A5A
    with pytest.raises(tf.errors.FailedPreconditionError, match="another process"):
        _raw_lookup(handle, forged)


def test_a_graph_traced_in_another_process_is_refused(
    tmp_path, standalone_server, make_config, unique_name
):
    """A GraphDef traced here (handle and token baked into it), run in a new process with a
    table of its own open under the same handle number: refused, not read from that table."""
    config = make_config(tmp_path, standalone_server, table_store_mode=2)
    table = _table(config, f"{unique_name}_mht_1of1")
    serve = tf.function(table.lookup).get_concrete_function(tf.TensorSpec([None], tf.int64))
    graph_file = tmp_path / "graph.pb"
    graph_file.write_bytes(serve.graph.as_graph_def().SerializeToString())
    (out,) = serve.outputs
    script = f"""
import tensorflow as tf, tfra_redis as tfra
from tfra_redis import native_ops
native_ops.load()
tables = [tfra.dynamic_embedding.RedisTable(tf.int64, tf.float32, tf.zeros([{DIM}]),
          name="other{{}}_mht_1of1".format(i), config={str(config)!r}) for i in range(3)]
for t in tables:
    t.store._table.native_handle()
graph_def = tf.compat.v1.GraphDef.FromString(open({str(graph_file)!r}, "rb").read())
run = tf.compat.v1.wrap_function(lambda: tf.graph_util.import_graph_def(graph_def,
    input_map={{{serve.inputs[0].name!r}: tf.constant([1], tf.int64)}},
    return_elements=[{out.name!r}]), [])
try:
    run()
except tf.errors.FailedPreconditionError as err:
    print("REFUSED", err.message)
"""
    done = _python(script, tmp_path)
    assert "REFUSED" in done.stdout and "another process" in done.stdout, done.stderr[-3000:]


def _python(script: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "python"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=environ,
        timeout=300,
        cwd=tmp_path,
    )


@pytest.mark.parametrize("threads", ["-1", "lots", "100000"])
def test_a_bad_lookup_thread_count_is_named(tmp_path, standalone_server, make_config, threads):
    """TFRA_REDIS_OPS_THREADS sizes the op's thread pool once per process: a value that is
    not a thread count fails the lookup with an error naming the variable, not a crash."""
    config = make_config(tmp_path, standalone_server, table_store_mode=2)
    script = f"""
import tensorflow as tf, tfra_redis as tfra
table = tfra.dynamic_embedding.RedisTable(tf.int64, tf.float32, tf.zeros([{DIM}]),
    name="threads_mht_1of1", config={str(config)!r})
serve = tf.function(table.lookup, input_signature=[tf.TensorSpec([None], tf.int64)])
try:
    serve(tf.constant([1], tf.int64))
except tf.errors.InvalidArgumentError as err:
    print("REFUSED", err.message)
"""
    done = _python(script, tmp_path, TFRA_REDIS_OPS_THREADS=threads, **{native_ops.ENABLE_ENV: "1"})
    assert "REFUSED" in done.stdout, done.stderr[-3000:]
    want = "TFRA_REDIS_OPS_THREADS must be a whole number from 0 (no pool) to 1024"
    assert f"{want}, got '{threads}'" in done.stdout


def test_no_lookup_pool_runs_lookups_inline(tmp_path, standalone_server, make_config, unique_name):
    """TFRA_REDIS_OPS_THREADS=0: no pool, the lookup runs on TensorFlow's thread; same rows."""
    config = make_config(tmp_path, standalone_server, table_store_mode=2)
    script = f"""
import numpy as np, tensorflow as tf, tfra_redis as tfra
table = tfra.dynamic_embedding.RedisTable(tf.int64, tf.float32, tf.fill([{DIM}], -1.0),
    name="{unique_name}_mht_1of1", config={str(config)!r})
table.insert(tf.constant([1, 2], tf.int64), tf.constant([[1.0] * {DIM}, [2.0] * {DIM}]))
serve = tf.function(lambda ids: table.lookup(ids, return_exists=True),
    input_signature=[tf.TensorSpec([None], tf.int64)])
ops = {{op.type for op in serve.get_concrete_function().graph.get_operations()}}
values, exists = serve(tf.constant([2, 1, 3], tf.int64))
print("OPS", sorted(ops))
print("ROWS", values.numpy()[:, 0].tolist(), exists.numpy().tolist())
"""
    done = _python(script, tmp_path, TFRA_REDIS_OPS_THREADS="0", **{native_ops.ENABLE_ENV: "1"})
    assert "TfraRedisLookup" in done.stdout, done.stderr[-3000:]
    assert "ROWS [2.0, 1.0, -1.0] [True, True, False]" in done.stdout, done.stderr[-3000:]


def test_redis_errors_become_tensorflow_error_classes(tmp_path, make_config, unique_name):
    with testing.standalone() as server:
        config = make_config(tmp_path, server, table_store_mode=2, redis_retry_deadline_ms=200)
        table = _table(config, f"{unique_name}_mht_1of1")

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
        def serve(ids):
            return table.lookup(ids, dynamic_default_values=tf.zeros([3, DIM]))

        with pytest.raises(tf.errors.InvalidArgumentError, match="one row per key"):
            serve(tf.constant([1, 2], tf.int64))
        assert serve(tf.constant([1, 2, 3], tf.int64)).shape == [3, DIM]
        server.stop()
        with pytest.raises(tf.errors.UnavailableError, match="cannot reach Redis"):
            serve(tf.constant([1, 2, 3], tf.int64))


def test_lookups_the_native_op_does_not_take_stay_on_numpy_function(
    tmp_path, standalone_server, make_config, unique_name
):
    config = make_config(tmp_path, standalone_server, table_store_mode=2)
    strings = _table(config, f"{unique_name}_s_mht_1of1", key_dtype=tf.string)
    strings.insert(tf.constant([b"a"]), tf.ones([1, DIM]))
    ints = _table(config, f"{unique_name}_i_mht_1of1")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve_strings(ids):
        return strings.lookup(ids)

    assert "PyFunc" in _op_types(serve_strings)
    assert serve_strings(tf.constant([b"a", b"b"])).numpy()[:, 0].tolist() == [1.0, -1.0]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def serve_ints(ids):
        with native_ops.disabled():
            return ints.lookup(ids)

    assert "TfraRedisLookup" not in _op_types(serve_ints)
    with tfra.table.collecting_lookup_keys() as collected:
        assert ints.lookup(tf.constant([1], tf.int64)).numpy().tolist() == [[0.0] * DIM]
    assert len(collected) == 1


def test_without_a_compiler_build_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv(native_ops.OPS_DIR_ENV, str(tmp_path / "ops"))
    monkeypatch.setenv("PATH", str(tmp_path))  # holds no g++
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(native_ops.NativeOpsError, match="no C\\+\\+ compiler, 'g\\+\\+'"):
        native_ops.build()
    assert not (tmp_path / "ops").exists() or not native_ops.is_built()


def test_a_failing_compile_says_why_and_leaves_no_partial_library(tmp_path, monkeypatch):
    ops = tmp_path / "ops"
    monkeypatch.setenv(native_ops.OPS_DIR_ENV, str(ops))
    monkeypatch.setenv("CXX", "false")  # a "compiler" that fails
    with pytest.raises(native_ops.NativeOpsError, match=r"compiling the native lookup op failed"):
        native_ops.build(log=None)
    assert not native_ops.is_built()
    assert [p.name for p in ops.iterdir()] == [".build.lock"]


def test_missing_tensorflow_headers_are_named():
    with pytest.raises(native_ops.NativeOpsError, match="C\\+\\+ headers .* not under"):
        native_ops._check_headers(["-I/nonexistent/include", "--std=c++17"])
    native_ops._check_headers(tf.sysconfig.get_compile_flags())


def test_build_ops_command_reports_the_library(native_library, capsys):
    from tfra_redis.cli import main

    assert main(["build-ops"]) == 0
    assert capsys.readouterr().out.strip() == f"{native_ops.library_path()} (already built)"
    assert main(["--json", "build-ops"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "library": str(native_ops.library_path()),
        "built": False,
    }


def test_build_ops_command_without_a_compiler_is_a_usage_error(tmp_path, monkeypatch, capsys):
    from tfra_redis.cli import main

    monkeypatch.setenv(native_ops.OPS_DIR_ENV, str(tmp_path / "ops"))
    monkeypatch.setenv("CXX", "no-such-compiler")
    assert main(["build-ops"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tfra-redis: error: cannot build the native lookup op: no C++ compiler")


def test_falls_back_to_numpy_function_when_not_built(tmp_path, standalone_server, make_config):
    config = make_config(tmp_path, standalone_server, table_store_mode=2)
    script = f"""
import json, tensorflow as tf, tfra_redis as tfra
table = tfra.dynamic_embedding.RedisTable(tf.int64, tf.float32, tf.fill([{DIM}], -1.0),
        name="fallback_mht_1of1", config={str(config)!r})
fn = tf.function(table.lookup).get_concrete_function(tf.TensorSpec([None], tf.int64))
types = sorted({{op.type for op in fn.graph.get_operations()}})
try:
    import os
    os.environ["TFRA_REDIS_NATIVE_OPS"] = "1"
    tf.function(table.lookup).get_concrete_function(tf.TensorSpec([None], tf.int64))
    required = "no error"
except Exception as err:
    required = f"{{type(err).__name__}}: {{err}}"
print(json.dumps({{"types": types, "values": fn(tf.constant([7], tf.int64)).numpy().tolist(),
                  "required": required}}))
"""
    done = _python(
        script, tmp_path, TFRA_REDIS_OPS_DIR=str(tmp_path / "empty"), TFRA_REDIS_NATIVE_OPS=""
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "PyFunc" in result["types"] and "TfraRedisLookup" not in result["types"]
    assert result["values"] == [[-1.0] * DIM]
    assert result["required"].startswith("NativeOpsError: TFRA_REDIS_NATIVE_OPS=1 but the native")
    assert "tfra-redis build-ops" in result["required"]
