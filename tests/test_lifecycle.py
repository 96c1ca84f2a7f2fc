"""Model lifecycle: TTL on close and PERSIST on open, model-tag import, re-bucketing when
``storage_slice`` changes (including a re-bucketing process killed mid-way), and the
``table_store_mode`` 1 DUMP files."""

from __future__ import annotations

import gc
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tfra_redis import RedisStore, testing

TOPOLOGIES = ["standalone", "cluster"]


def topology_of(request: pytest.FixtureRequest, kind: str):
    return request.getfixturevalue({"standalone": "standalone_server", "cluster": "cluster"}[kind])


def node_of(topology, key: bytes) -> testing.RedisServer:
    """The server that holds ``key``: the cluster master of its slot, or the server itself."""
    if isinstance(topology, testing.ClusterTopology):
        slot = topology.masters()[0].execute("CLUSTER", "KEYSLOT", key)
        return topology.node_for_slot(slot)
    return topology


def ttl(topology, key: bytes) -> int:
    with node_of(topology, key).client() as conn:
        return conn.execute("TTL", key)


def exists(topology, key: bytes) -> bool:
    with node_of(topology, key).client() as conn:
        return conn.execute("EXISTS", key) == 1


def keys_like(topology, pattern: str) -> list[bytes]:
    """Every key matching ``pattern`` on every master."""
    masters = topology.masters() if isinstance(topology, testing.ClusterTopology) else [topology]
    return sorted(key for master in masters for key in master.scan_keys(pattern))


def rows(keys: Any, dim: int, scale: float = 1.0) -> np.ndarray:
    keys = np.asarray(keys, dtype=np.float64)
    return ((keys[..., None] * scale) + np.arange(dim)).astype(np.float32)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(
        np.ascontiguousarray(a).view(np.uint32), np.ascontiguousarray(b).view(np.uint32)
    )


def sorted_export(store: RedisStore) -> tuple[np.ndarray, np.ndarray]:
    keys, values = store.export()
    order = np.argsort(keys, kind="stable")
    return keys[order], values[order]


def data_buckets(store: RedisStore, topology) -> list[bytes]:
    return [key for key in store.bucket_keys if exists(topology, key)]


# --------------------------------------------------------------------------------------------
# TTL: EXPIRE on close, PERSIST on open


@pytest.mark.parametrize("kind", TOPOLOGIES)
def test_close_sets_the_ttl_and_reopening_clears_it(request, kind, unique_name):
    topology = topology_of(request, kind)
    config = {**topology.config_dict(), "storage_slice": 3, "expire_model_tag_in_seconds": 1000}
    store = RedisStore(config, unique_name, 2)
    store.insert(np.arange(30), rows(np.arange(30), 2))
    buckets = data_buckets(store, topology)
    assert len(buckets) == (3 if kind == "cluster" else 1)
    assert [ttl(topology, b) for b in buckets] == [-1] * len(buckets)

    store.close()
    assert all(990 <= ttl(topology, b) <= 1000 for b in buckets)
    store.close()  # idempotent

    # A tool that only looks (manage_ttl=False) leaves the TTL alone ...
    RedisStore(config, unique_name, 2, manage_ttl=False)
    assert all(990 <= ttl(topology, b) <= 1000 for b in buckets)
    # ... while opening the table for use clears it, as TFRA does.
    reopened = RedisStore(config, unique_name, 2)
    assert [ttl(topology, b) for b in buckets] == [-1] * len(buckets)
    assert reopened.size() == 30
    reopened.clear()


@pytest.mark.parametrize("kind", TOPOLOGIES)
def test_garbage_collection_closes_the_table(request, kind, unique_name):
    topology = topology_of(request, kind)
    config = {**topology.config_dict(), "expire_model_tag_in_seconds": 500}
    store = RedisStore(config, unique_name, 1)
    store.insert([1, 2], [[1], [2]])
    buckets = data_buckets(store, topology)
    del store
    gc.collect()
    assert all(490 <= ttl(topology, b) <= 500 for b in buckets)
    RedisStore(config, unique_name, 1, manage_ttl=False).clear()


EXIT_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from tfra_redis import RedisStore
    config, name = json.loads(sys.argv[1]), sys.argv[2]
    store = RedisStore(config, name, 2)
    store.insert(np.arange(10), np.zeros((10, 2), np.float32))
    print(json.dumps([b.hex() for b in store.bucket_keys]), flush=True)
    # No close(), no del: the store is still referenced when the interpreter exits.
    """
)


@pytest.mark.parametrize("kind", TOPOLOGIES)
def test_interpreter_exit_sets_the_ttl(request, kind, unique_name):
    topology = topology_of(request, kind)
    config = {**topology.config_dict(), "storage_slice": 3, "expire_model_tag_in_seconds": 700}
    env = {k: v for k, v in os.environ.items() if k != "TFRA_REDIS_CONFIG_PATH"}
    done = subprocess.run(
        [sys.executable, "-c", EXIT_CHILD, json.dumps(config), unique_name],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    buckets = [bytes.fromhex(b) for b in json.loads(done.stdout.strip().splitlines()[-1])]
    stored = [b for b in buckets if exists(topology, b)]
    assert len(stored) == (3 if kind == "cluster" else 1)
    assert all(690 <= ttl(topology, b) <= 700 for b in stored), [ttl(topology, b) for b in stored]
    RedisStore(config, unique_name, 2, manage_ttl=False).clear()


@pytest.mark.parametrize("kind", TOPOLOGIES)
def test_negative_expire_setting_leaves_no_ttl(request, kind, unique_name):
    topology = topology_of(request, kind)
    config = {**topology.config_dict(), "storage_slice": 2, "expire_model_tag_in_seconds": -1}
    store = RedisStore(config, unique_name, 1)
    store.insert(np.arange(10), rows(np.arange(10), 1))
    buckets = data_buckets(store, topology)
    store.close()
    assert [ttl(topology, b) for b in buckets] == [-1] * len(buckets)
    store.clear()


@pytest.mark.parametrize("kind", TOPOLOGIES)
def test_expire_setting_zero_deletes_the_table_on_close(request, kind, unique_name):
    # Documented by test: TFRA sends EXPIRE 0, and Redis deletes the keys at once.
    topology = topology_of(request, kind)
    config = {**topology.config_dict(), "storage_slice": 2, "expire_model_tag_in_seconds": 0}
    store = RedisStore(config, unique_name, 1)
    store.insert(np.arange(10), rows(np.arange(10), 1))
    buckets = data_buckets(store, topology)
    assert buckets
    store.close()
    assert not any(exists(topology, b) for b in buckets)
    assert RedisStore(config, unique_name, 1, manage_ttl=False).size() == 0


@pytest.mark.parametrize("kind", TOPOLOGIES)
def test_ttl_touches_only_the_tables_own_buckets(request, kind, unique_name):
    """TFRA expired and persisted ``prefix*{digits}``, which also hit ``emb2`` and the slot
    tables of ``emb``; each table here owns exactly its buckets."""
    topology = topology_of(request, kind)
    config = {**topology.config_dict(), "storage_slice": 2, "expire_model_tag_in_seconds": 1000}
    keys = np.arange(20)
    neighbour = RedisStore(config, unique_name + "2", 2, manage_ttl=False)
    slot_table = RedisStore(config, unique_name + "_Adam_m", 2, manage_ttl=False)
    for other in (neighbour, slot_table):
        other.insert(keys, rows(keys, 2))
    neighbour.expire(500)  # a TTL of its own, which opening `emb` must not clear

    store = RedisStore(config, unique_name, 2)
    store.insert(keys, rows(keys, 2))
    assert all(490 <= ttl(topology, b) <= 500 for b in data_buckets(neighbour, topology))
    store.close()

    assert all(990 <= ttl(topology, b) <= 1000 for b in data_buckets(store, topology))
    assert all(490 <= ttl(topology, b) <= 500 for b in data_buckets(neighbour, topology))
    assert all(ttl(topology, b) == -1 for b in data_buckets(slot_table, topology))
    for table in (store, neighbour, slot_table):
        table.clear()


# --------------------------------------------------------------------------------------------
# Model tags


@pytest.mark.parametrize("kind", TOPOLOGIES)
def test_import_model_tag_copies_rows_and_keeps_the_old_tag(request, kind, unique_name):
    topology = topology_of(request, kind)
    base = topology.config_dict()
    v1_config = {**base, "model_tag_import": "v1", "model_tag_runtime": "v1", "storage_slice": 2}
    v2_config = {
        **base,
        "model_tag_import": "v1",
        "model_tag_runtime": "v2",
        "storage_slice_import": 2,
        "storage_slice": 3,
    }
    n = 5000
    keys = np.arange(n, dtype=np.int64) * 31 - 1000
    v1 = RedisStore(v1_config, unique_name, 4, manage_ttl=False)
    v1.insert(keys, rows(keys, 4, 0.5))

    v2 = RedisStore(v2_config, unique_name, 4, manage_ttl=False)
    assert all(b.startswith(b"v2:") for b in v2.bucket_keys)
    assert v2.size() == 0
    for attempt in range(2):  # running it twice is safe: the copy is an upsert
        assert v2.import_model_tag() == n
        assert v2.size() == n, f"attempt {attempt}"
        found, present = v2.find(keys, return_exists=True)
        assert present.all() and same_bits(found, rows(keys, 4, 0.5)), f"attempt {attempt}"

    assert v1.size() == n
    assert same_bits(v1.find(keys), rows(keys, 4, 0.5))
    assert set(v1.bucket_keys).isdisjoint(v2.bucket_keys)
    # Same tag for import and runtime: nothing to import.
    assert v1.import_model_tag() == 0
    v1.clear()
    v2.clear()


# --------------------------------------------------------------------------------------------
# Re-bucketing when storage_slice changes under the same model tag


REBUCKET_CASES = {
    # kind, extra config, old storage_slice, new storage_slice
    "standalone": ("standalone", {}, 1, 3),
    "cluster": ("cluster", {}, 2, 5),
    "cluster_hypodispersion": ("cluster", {"redis_hash_tags_hypodispersion": True}, 2, 5),
}


@pytest.mark.parametrize("case", sorted(REBUCKET_CASES))
def test_changing_storage_slice_rebuckets_every_row(request, case, unique_name):
    kind, extra, old_slices, new_slices = REBUCKET_CASES[case]
    topology = topology_of(request, kind)
    base = {**topology.config_dict(), **extra}
    old_config = {**base, "storage_slice": old_slices}
    new_config = {**base, "storage_slice": new_slices}
    n = 20_000
    keys = np.random.default_rng(3).permutation(n).astype(np.int64) * 7 + 11
    values = rows(keys, 3, 0.125)

    old = RedisStore(old_config, unique_name, 3, manage_ttl=False)
    old.insert(keys, values)
    old_buckets = data_buckets(old, topology)
    neighbours = {}
    for suffix in ("2", "_Adam_m"):  # tables that merely share the prefix
        table = RedisStore(old_config, unique_name + suffix, 3, manage_ttl=False)
        table.insert(keys[:100], values[:100] + 1)
        neighbours[suffix] = (table, data_buckets(table, topology), sorted_export(table))

    with pytest.warns(UserWarning, match=rf"moved \d+ rows of table {unique_name} "):
        new = RedisStore(new_config, unique_name, 3, manage_ttl=False)
        found, present = new.find(keys, return_exists=True)
        assert present.all(), (
            f"{int((~present).sum())} of {n} rows unreadable after storage_slice "
            f"{old_slices} -> {new_slices}: old buckets {old_buckets}, new {new.bucket_keys}"
        )
    assert same_bits(found, values)
    assert new.size() == n
    leftover = [b for b in old_buckets if b not in new.bucket_keys and exists(topology, b)]
    assert leftover == [], "old buckets must be deleted after the move"
    assert new.rebucket() == ([], 0)

    for table, buckets, (nkeys, nvalues) in neighbours.values():
        assert data_buckets(table, topology) == buckets
        got_keys, got_values = sorted_export(table)
        assert np.array_equal(got_keys, nkeys) and same_bits(got_values, nvalues)
        table.clear()
    new.clear()


def hypodispersion_configs(cluster, old: int, new: int) -> tuple[dict, dict]:
    # Fixed-spread tags: the layouts of 2 and 5 buckets share no bucket name, so every row of
    # the old layout has to move.
    base = {**cluster.config_dict(), "redis_hash_tags_hypodispersion": True}
    return {**base, "storage_slice": old}, {**base, "storage_slice": new}


def test_reopening_finishes_an_interrupted_rebucketing(cluster, unique_name):
    """A re-bucketing that died after copying part of the rows (old buckets still there, the new
    layout partly filled) must be finished when the table is opened again, as a restarted job
    does: otherwise the rows still in the old buckets are silently missing."""
    old_config, new_config = hypodispersion_configs(cluster, 2, 5)
    n = 4000
    keys = np.arange(n, dtype=np.int64)
    new = RedisStore(new_config, unique_name, 2, manage_ttl=False)  # nothing to move yet
    old = RedisStore(old_config, unique_name, 2, manage_ttl=False)
    old.insert(keys, rows(keys, 2))
    new.insert(keys[: n // 2], rows(keys[: n // 2], 2))  # the copy got half-way, then died

    old_buckets = data_buckets(old, cluster)
    assert len(old_buckets) == 2 and set(old_buckets).isdisjoint(new.bucket_keys)

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        reopened = RedisStore(new_config, unique_name, 2, manage_ttl=False)
    found, present = reopened.find(keys, return_exists=True)
    # No rebucket() here: opening alone must have finished the move.
    assert present.all(), (
        f"{int((~present).sum())} of {n} rows missing after reopening; old buckets "
        f"{data_buckets(old, cluster)} still hold them"
    )
    assert same_bits(found, rows(keys, 2))
    assert reopened.size() == n
    assert [b for b in old_buckets if exists(cluster, b)] == [], "old buckets left behind"
    assert reopened.rebucket() == ([], 0), "the reopening left rows to move"
    reopened.clear()


def test_rebucket_keeps_rows_written_to_the_new_layout_meanwhile(cluster, unique_name):
    """Rows updated in the new layout after an interrupted move (a restarted job trained on)
    must not be overwritten by the stale copies still in the old buckets."""
    old_config, new_config = hypodispersion_configs(cluster, 2, 5)
    keys = np.arange(1000, dtype=np.int64)
    new = RedisStore(new_config, unique_name, 2, manage_ttl=False)
    old = RedisStore(old_config, unique_name, 2, manage_ttl=False)
    old.insert(keys, rows(keys, 2))  # the old layout, never fully moved
    trained = rows(keys[:10], 2, scale=-1.0)
    new.insert(keys[:10], trained)  # newer values written under the new layout
    old_buckets = data_buckets(old, cluster)
    assert old_buckets
    moved_from, copied = new.rebucket()
    assert sorted(moved_from) == sorted(b.decode() for b in old_buckets)
    assert copied == len(keys)  # every row of the old buckets went through the copy
    found, present = new.find(keys, return_exists=True)
    assert present.all()
    assert same_bits(found[:10], trained), "rebucket overwrote newer rows"
    assert same_bits(found[10:], rows(keys[10:], 2)), "rows moved from the old layout differ"
    assert new.size() == len(keys)
    assert [b for b in old_buckets if exists(cluster, b)] == [], "old buckets left behind"
    new.clear()


KILL_CHILD = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.simplefilter("ignore")
    from tfra_redis import RedisStore
    config, name, dim = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    print("opening", flush=True)
    store = RedisStore(config, name, dim, manage_ttl=False)  # re-buckets while it opens
    store.rebucket()
    print("done", flush=True)
    """
)


def test_killing_a_rebucketing_process_loses_nothing(cluster, unique_name, tmp_path):
    """A child process re-buckets 300k rows (storage_slice 2 -> 5, cluster) and is SIGKILLed
    at a seeded pseudo-random moment after it started copying; running the re-bucketing again
    here must give every row back, bit for bit. Three kill times."""
    old_config, new_config = hypodispersion_configs(cluster, 2, 5)
    n, dim = 300_000, 8
    keys = np.random.default_rng(11).permutation(n).astype(np.int64) * 104729 - 5
    values = np.random.default_rng(12).standard_normal((n, dim)).astype(np.float32)
    order = np.argsort(keys)
    script = tmp_path / "rebucket_child.py"
    script.write_text(KILL_CHILD)
    env = {k: v for k, v in os.environ.items() if k != "TFRA_REDIS_CONFIG_PATH"}
    # A fixed seed, so a failure reproduces; TFRA_TEST_KILL_SEED tries other kill times.
    seed = int(os.environ.get("TFRA_TEST_KILL_SEED", "4711"))
    chooser = random.Random(seed)
    delays = [chooser.uniform(0.05 + 0.18 * i, 0.05 + 0.18 * (i + 1)) for i in range(3)]
    report = []
    for attempt, delay in enumerate(delays):
        name = f"{unique_name}_{attempt}"
        new = RedisStore(new_config, name, dim, manage_ttl=False)  # learn the new bucket names
        old = RedisStore(old_config, name, dim, manage_ttl=False)
        old.insert(keys, values)
        assert old.size() == n
        old_buckets = list(old.bucket_keys)
        pollers = [(node_of(cluster, b).client(), b) for b in new.bucket_keys]
        try:
            child = subprocess.Popen(
                [sys.executable, str(script), json.dumps(new_config), name, str(dim)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            )
            deadline = time.monotonic() + 30
            copied = 0
            while copied == 0 and child.poll() is None and time.monotonic() < deadline:
                copied = sum(conn.execute("HLEN", b) for conn, b in pollers)
                time.sleep(0.002)
            assert copied > 0 or child.poll() is not None, "the child never started copying"
            time.sleep(delay)
            alive = child.poll() is None
            if alive:
                child.send_signal(signal.SIGKILL)
            _, stderr = child.communicate(timeout=30)
            assert not alive or child.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
            at_kill = sum(conn.execute("HLEN", b) for conn, b in pollers)
            old_left = [b for b in old_buckets if exists(cluster, b)]
        finally:
            for conn, _ in pollers:
                conn.close()

        started = time.monotonic()
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            rerun = RedisStore(new_config, name, dim, manage_ttl=False)
        moved_buckets, moved_rows = rerun.rebucket()
        rerun_seconds = time.monotonic() - started

        assert rerun.size() == n
        got_keys, got_values = sorted_export(rerun)
        assert np.array_equal(got_keys, keys[order])
        assert same_bits(got_values, values[order])
        found, present = rerun.find(keys, return_exists=True)
        assert present.all() and same_bits(found, values)
        assert not any(exists(cluster, b) for b in old_buckets)
        report.append(
            {
                "delay_s": round(delay, 3),
                "killed_mid_way": alive,
                "rows_in_new_layout_at_kill": at_kill,
                "old_buckets_left_at_kill": len(old_left),
                "rerun_rows_copied_by_explicit_rebucket": moved_rows,
                "rerun_seconds": round(rerun_seconds, 2),
            }
        )
        rerun.clear()
    print(f"kill test (seed {seed}):", json.dumps(report, indent=1))
    assert any(r["killed_mid_way"] for r in report), report


# --------------------------------------------------------------------------------------------
# table_store_mode 1: DUMP files under model_lib_abs_dir


STAMP = re.compile(r"\.rdb\.\d{4}-\d{2}-\d{2}-\d{2}:\d{2}:\d{2}$")


@pytest.mark.parametrize("kind", TOPOLOGIES)
def test_save_files_then_restore_into_an_emptied_redis(
    request, kind, unique_name, tmp_path, flushed
):
    topology = topology_of(request, kind)
    model_lib = tmp_path / "model_lib"
    config = {
        **topology.config_dict(),
        "storage_slice": 3,
        "table_store_mode": 1,
        "model_lib_abs_dir": str(model_lib),
    }
    keys = np.arange(3000, dtype=np.int64)
    store = RedisStore(config, unique_name, 4, manage_ttl=False)
    store.insert(keys, rows(keys, 4))

    paths = [Path(p) for p in store.save_files()]
    assert paths == [model_lib / "test" / (b.decode() + ".rdb") for b in store.bucket_keys]
    for path, bucket in zip(paths, store.bucket_keys, strict=True):
        if exists(topology, bucket):
            # The file is exactly Redis' DUMP payload of the bucket (TFRA's format).
            assert path.read_bytes() == node_of(topology, bucket).execute(
                "DUMP", bucket, decode=False
            )
        else:  # standalone keeps every row in bucket 0; TFRA wrote 0-byte files for the rest
            assert path.stat().st_size == 0
    first = {p: p.read_bytes() for p in paths}

    store.insert(keys, rows(keys, 4, scale=-1.0))  # the second save holds other rows
    assert [Path(p) for p in store.save_files()] == paths
    for path in paths:
        older = [p for p in path.parent.iterdir() if p.name.startswith(path.name + ".")]
        assert len(older) == 1 and STAMP.search(older[0].name), older
        assert older[0].read_bytes() == first[path]

    flushed(topology)
    restored = RedisStore(config, unique_name, 4, manage_ttl=False)
    assert restored.size() == 0
    assert restored.restore_files() == sum(1 for p in paths if p.stat().st_size)
    found, present = restored.find(keys, return_exists=True)
    assert present.all() and same_bits(found, rows(keys, 4, scale=-1.0))
    assert restored.size() == len(keys)
    restored.clear()


@pytest.mark.parametrize("kind", TOPOLOGIES)
def test_restore_files_across_a_storage_slice_change_rebuckets(
    request, kind, unique_name, tmp_path, flushed
):
    topology = topology_of(request, kind)
    base = {**topology.config_dict(), "table_store_mode": 1, "model_lib_abs_dir": str(tmp_path)}
    keys = np.arange(4000, dtype=np.int64) * 3
    saved = RedisStore({**base, "storage_slice": 2}, unique_name, 2, manage_ttl=False)
    saved.insert(keys, rows(keys, 2))
    files = [Path(p) for p in saved.save_files()]

    flushed(topology)
    config = {**base, "storage_slice": 3, "storage_slice_import": 2}
    store = RedisStore(config, unique_name, 2, manage_ttl=False)
    assert store.restore_files() == sum(1 for p in files if p.stat().st_size)
    assert store.size() == len(keys)
    found, present = store.find(keys, return_exists=True)
    assert present.all() and same_bits(found, rows(keys, 2))
    # Only the runtime layout holds the rows: no scratch keys, no buckets of the saved layout.
    stored = keys_like(topology, "*")
    assert set(stored) <= set(store.bucket_keys), stored
    assert store.rebucket() == ([], 0)
    store.clear()


@pytest.mark.parametrize("kind", ["standalone", "cluster"])
def test_rebucketing_keeps_fused_row_slots(request, kind, unique_name):
    """redis_fused_row: the move copies whole values (row and optimizer slots), also where
    ids with and without slots share a page."""
    topology = topology_of(request, kind)
    base = {**topology.config_dict(), "redis_fused_row": True}
    keys = np.arange(1, 301, dtype=np.int64) * 13
    trained = keys[::2]
    old = RedisStore({**base, "storage_slice": 1}, unique_name, 3, manage_ttl=False)
    old.insert(keys, rows(keys, 3, 0.5))
    slots = rows(trained, 6, 2.0)
    old.insert_with_slots(trained, rows(trained, 3, 0.25), slots)
    with pytest.warns(UserWarning, match=rf"moved \d+ rows of table {unique_name} "):
        new = RedisStore({**base, "storage_slice": 3}, unique_name, 3, manage_ttl=False)
    found, got_slots = new.find_with_slots(keys, 0.0, np.full(6, -1.0, np.float32))
    want = rows(keys, 3, 0.5)
    want[::2] = rows(trained, 3, 0.25)
    assert same_bits(found, want)
    want_slots = np.full((len(keys), 6), -1.0, np.float32)
    want_slots[::2] = slots
    assert same_bits(got_slots, want_slots)
    assert new.rebucket() == ([], 0)
    new.clear()
