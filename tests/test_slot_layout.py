"""Optimizer slot layouts: TFRA's one table per slot ("per-slot"), ``redis_fused_slots``'
one table holding every slot ("fused") and ``redis_fused_row``'s slots after each row in the
embedding's own table ("fused-row"), against real servers.

* Switching ``redis_fused_slots`` or ``redis_fused_row`` on an embedding that already trained
  used to restart the optimizer from fresh slots without a word; now the optimizer refuses,
  naming both layouts, the tables and the command that converts them.
* ``tfra-redis convert-slots`` converts them; killed mid-run (a test hook ``os._exit``s the
  process, as ``kill -9`` would) nothing is lost and the rerun finishes.
* Training N steps, converting, and resuming in the other layout gives what an uninterrupted
  run gives (rows, slots and losses, rtol 1e-5), in both directions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfra_redis as tfra  # noqa: E402
from tfra_redis import RedisStore, _native  # noqa: E402
from tfra_redis.cli._slots import CRASH_HOOK  # noqa: E402

de = tfra.dynamic_embedding

pytestmark = pytest.mark.usefixtures("collect_tables_at_module_end")

DIM = 3
INIT_ROW = np.array([0.1, -0.2, 0.3], np.float32)


def cli(*args: Any, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "TFRA_REDIS_CONFIG_PATH"}
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "tfra_redis.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=clean,
        timeout=300,
    )


def ok_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _batches(steps: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        (
            rng.integers(0, 20, size=(6, 2)).astype(np.int64),
            rng.normal(size=(6, 2, DIM)).astype(np.float32),
        )
        for _ in range(steps)
    ]


class _Job:
    """One training process's state: a layer and its Adam, on a config."""

    def __init__(self, config: Path, name: str) -> None:
        creator = de.RedisTableCreator(de.RedisTableConfig(redis_config_abs_dir=str(config)))
        self.layer = de.keras.layers.Embedding(
            DIM, name=name, kv_creator=creator, initializer=INIT_ROW
        )
        self.optimizer = de.DynamicEmbeddingOptimizer(keras.optimizers.Adam(0.05))

    @property
    def names(self) -> tuple[str, str]:
        return self.layer.params.name, self.layer.shadow.wrapper_name

    def build(self, iterations: int = 0) -> None:
        self.optimizer.build(self.layer.trainable_weights)
        self.optimizer.iterations.assign(iterations)

    def train(self, batches: list[tuple[np.ndarray, np.ndarray]]) -> list[float]:
        losses = []
        for ids, target in batches:
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(self.layer(tf.constant(ids)) - target))
            grads = tape.gradient(loss, self.layer.trainable_weights)
            self.optimizer.apply_gradients(zip(grads, self.layer.trainable_weights, strict=True))
            losses.append(float(loss))
        return losses

    def rows(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """The params rows and each slot's rows (split from a fused table or fused rows)."""
        out = {"params": self.layer.params.lookup(tf.constant(ids)).numpy()}
        for name, table in self.optimizer.slot_variables(self.layer).items():
            rows = table.lookup(tf.constant(ids)).numpy()
            if name == "slots":
                out["m"], out["v"] = rows[:, :DIM], rows[:, DIM:]
            else:
                out[name] = rows
        return out


#: The config fields selecting each slot layout.
LAYOUTS = {
    "per-slot": {},
    "fused": {"redis_fused_slots": True},
    "fused-row": {"redis_fused_row": True},
}


def _configs(tmp_path: Path, topology: Any, make_config: Any, **extra: Any) -> dict[str, Path]:
    return {
        layout: make_config(tmp_path, topology, table_store_mode=0, **fields, **extra)
        for layout, fields in LAYOUTS.items()
    }


def _layout_text(layout: str, params: str, wrapper: str) -> list[str]:
    """What the refusal says about a layout's tables."""
    prefix = f"{params}_{wrapper}".replace("/", "_")
    if layout == "fused-row":
        return [f"the embedding's table {params.replace('/', '_')} ("]
    if layout == "fused":
        return [f"{prefix}_slots ("]
    return [f"{prefix}_m (", f"{prefix}_v ("]


@pytest.mark.parametrize(
    ("trained", "chosen", "where"),
    [
        ("per-slot", "fused", "standalone_server"),
        ("fused", "per-slot", "standalone_server"),
        ("per-slot", "fused-row", "standalone_server"),
        ("per-slot", "fused-row", "cluster"),
        ("fused-row", "per-slot", "standalone_server"),
        ("fused-row", "fused", "standalone_server"),
        ("fused-row", "fused", "cluster"),
        ("fused", "fused-row", "standalone_server"),
    ],
)
def test_switching_the_slot_layout_without_converting_is_refused(
    request, tmp_path, make_config, unique_name, trained, chosen, where
):
    configs = _configs(tmp_path, request.getfixturevalue(where), make_config)
    first = _Job(configs[trained], unique_name)
    first.train(_batches(2))
    params, wrapper = first.names
    ids = np.arange(20, dtype=np.int64)
    before = first.rows(ids)
    assert np.abs(before["v"]).max() > 0

    second = _Job(configs[chosen], unique_name)
    if trained == "fused-row":
        # Without redis_fused_row the lookup already cannot read a row and its slots (a data
        # error naming the way out); building the optimizer gives the whole story.
        with pytest.raises(tfra.RedisDataError, match="convert-slots --from fused-row"):
            second.train(_batches(1, seed=1))
        with pytest.raises(tfra.ConfigError) as caught:
            second.build()
    else:
        with pytest.raises(tfra.ConfigError) as caught:
            second.train(_batches(1, seed=1))
    message = str(caught.value)
    field = "redis_fused_row" if "fused-row" in (trained, chosen) else "redis_fused_slots"
    assert message.startswith(f"{field} does not match the stored optimizer slots"), message
    for layout in (trained, chosen):
        for text in _layout_text(layout, params, wrapper):
            assert text in message, message
    assert (
        f"tfra-redis convert-slots --params {params} --wrapper {wrapper} --slots m,v "
        f"--dim {DIM} --from {trained} --to {chosen}`"
    ) in message
    # Nothing was written: the slots are where they were, unchanged.
    after = _Job(configs[trained], unique_name)
    after.build(int(first.optimizer.iterations.numpy()))
    for key, want in before.items():
        np.testing.assert_array_equal(after.rows(ids)[key], want, err_msg=key)


@pytest.mark.parametrize(
    ("start", "to", "where"),
    [
        ("per-slot", "fused", "standalone_server"),
        ("fused", "per-slot", "standalone_server"),
        ("per-slot", "fused-row", "standalone_server"),
        ("per-slot", "fused-row", "cluster"),
        ("fused-row", "fused", "standalone_server"),
        ("fused-row", "fused", "cluster"),
        ("fused-row", "per-slot", "standalone_server"),
    ],
)
def test_train_convert_resume_matches_an_uninterrupted_run(
    request, tmp_path, make_config, unique_name, start, to, where
):
    configs = _configs(tmp_path, request.getfixturevalue(where), make_config)
    batches = _batches(6)
    ids = np.arange(20, dtype=np.int64)

    whole = _Job(configs[start], f"{unique_name}_whole")
    want_losses = whole.train(batches)
    want = whole.rows(ids)

    cut = _Job(configs[start], f"{unique_name}_cut")
    losses = cut.train(batches[:3])
    iterations = int(cut.optimizer.iterations.numpy())
    params, wrapper = cut.names
    data = ok_json(
        cli(
            "--config",
            configs[start],
            "--json",
            "convert-slots",
            "--params",
            params,
            "--wrapper",
            wrapper,
            "--slots",
            "m,v",
            "--dim",
            DIM,
            "--to",
            to,
        )
    )
    assert data["source_deleted"] and not data["resumed"]
    assert (data["from"], data["to"]) == (start, to)
    if to != "fused-row":  # the embedding's own table holds its rows
        assert all(e["rows"] == 0 for e in data["destination_before"])
    assert all(e["rows"] > 0 for e in data["destination_after"])

    resumed = _Job(configs[to], f"{unique_name}_cut")
    resumed.build(iterations)
    losses += resumed.train(batches[3:])
    got = resumed.rows(ids)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    for key in ("params", "m", "v"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-7, err_msg=key)


# -- the converter on its own: crash safety, refusals, cluster ------------------------------

SLOTS = ["m", "v"]
IDS = 6000


def _slot_rows(ids: np.ndarray, slot: int) -> np.ndarray:
    return (ids[:, None] * 10.0 + slot + np.arange(DIM) / 10).astype(np.float32)


def _fill_per_slot(config: dict[str, Any], params: str, wrapper: str) -> dict[str, RedisStore]:
    """Per-slot tables as TFRA leaves them; ids 0-9 have an m row but no v row."""
    ids = np.arange(IDS, dtype=np.int64)
    stores = {}
    for s, slot in enumerate(SLOTS):
        store = RedisStore(config, f"{params}_{wrapper}_{slot}", DIM, manage_ttl=False)
        keys = ids if slot == "m" else ids[10:]
        store.insert(keys, _slot_rows(keys, s))
        stores[slot] = store
    return stores


def _convert(config_file: Path, *extra: Any, env: dict[str, str] | None = None, **names: str):
    return cli(
        "--config",
        config_file,
        "--json",
        "convert-slots",
        "--params",
        names["params"],
        "--wrapper",
        names["wrapper"],
        "--slots",
        ",".join(SLOTS),
        "--dim",
        DIM,
        "--page",
        500,
        *extra,
        env=env,
    )


@pytest.fixture(params=["standalone", "cluster"])
def topology(request):
    return request.getfixturevalue(
        {"standalone": "standalone_server", "cluster": "cluster"}[request.param]
    )


@pytest.mark.parametrize("crash_at", ["2500", "deleting"])
def test_a_killed_conversion_loses_nothing_and_the_rerun_finishes(
    tmp_path, topology, make_config, unique_name, crash_at
):
    config_file = make_config(tmp_path, topology, storage_slice=3)
    config = json.loads(config_file.read_text())
    names = {"params": f"{unique_name}-parameter", "wrapper": "w"}
    stores = _fill_per_slot(config, **names)
    ids = np.arange(IDS, dtype=np.int64)
    fused = RedisStore(config, f"{names['params']}_w_slots", 2 * DIM, manage_ttl=False)

    dry = ok_json(_convert(config_file, "--to", "fused", "--dry-run", **names))
    assert dry["dry_run"] and [e["rows"] for e in dry["source"]] == [IDS, IDS - 10]
    assert fused.size() == 0

    killed = _convert(config_file, "--to", "fused", env={CRASH_HOOK: crash_at}, **names)
    assert killed.returncode == 137, killed.stderr
    # Every id still has all its slots, in the source (copying) or the destination (deleting).
    if crash_at == "deleting":
        assert fused.size() == IDS
    else:
        assert 0 < fused.size() < IDS
        np.testing.assert_array_equal(stores["m"].find(ids), _slot_rows(ids, 0))
        np.testing.assert_array_equal(stores["v"].find(ids[10:]), _slot_rows(ids[10:], 1))
    # Training refuses the slots until the conversion finished, in either layout.
    for chosen in LAYOUTS:
        with pytest.raises(tfra.ConfigError, match="a conversion of their layout is unfinished"):
            _native.check_slot_layout(
                fused.config, names["params"], "w", SLOTS, chosen, "int64", "float32", DIM
            )

    done = ok_json(_convert(config_file, "--to", "fused", **names))
    assert done["resumed"] and done["source_deleted"]
    assert stores["m"].size() == 0 and stores["v"].size() == 0
    got = fused.find(ids)
    np.testing.assert_array_equal(got[:, :DIM], _slot_rows(ids, 0))
    np.testing.assert_array_equal(got[10:, DIM:], _slot_rows(ids[10:], 1))
    np.testing.assert_array_equal(got[:10, DIM:], 0)  # v's initial value for ids without one
    _native.check_slot_layout(
        fused.config, names["params"], "w", SLOTS, "fused", "int64", "float32", DIM
    )

    # And back, keeping the source this time.
    back = ok_json(_convert(config_file, "--to", "per-slot", "--keep-source", **names))
    assert not back["source_deleted"] and back["ids_copied"] >= IDS
    np.testing.assert_array_equal(stores["m"].find(ids), _slot_rows(ids, 0))
    assert fused.size() == IDS
    fused.clear()
    for store in stores.values():
        store.clear()


@pytest.mark.parametrize("crash_at", ["2500", "deleting"])
def test_a_killed_conversion_into_fused_rows_loses_nothing_and_the_rerun_finishes(
    tmp_path, topology, make_config, unique_name, crash_at
):
    config_file = make_config(tmp_path, topology, storage_slice=3)
    config = json.loads(config_file.read_text())
    names = {"params": f"{unique_name}-parameter", "wrapper": "w"}
    stores = _fill_per_slot(config, **names)
    ids = np.arange(IDS, dtype=np.int64)
    # The embedding's rows, for all ids but the last 5 (their slots have no row to go to).
    embedding = RedisStore(
        {**config, "redis_fused_row": True}, names["params"], DIM, manage_ttl=False
    )
    rows = -_slot_rows(ids, 7)
    embedding.insert(ids[:-5], rows[:-5])
    no_slots = np.full(2 * DIM, 99.0, np.float32)

    killed = _convert(config_file, "--to", "fused-row", env={CRASH_HOOK: crash_at}, **names)
    assert killed.returncode == 137, killed.stderr
    got_rows, got_slots = embedding.find_with_slots(ids[:-5], 0, no_slots)
    np.testing.assert_array_equal(got_rows, rows[:-5])  # the rows are never touched
    if crash_at == "deleting":
        assert (got_slots != no_slots).any(axis=1).all()
    else:
        assert 0 < (got_slots != no_slots).any(axis=1).sum() < IDS - 5
    np.testing.assert_array_equal(stores["m"].find(ids), _slot_rows(ids, 0))
    np.testing.assert_array_equal(stores["v"].find(ids[10:]), _slot_rows(ids[10:], 1))
    for chosen in LAYOUTS:
        with pytest.raises(tfra.ConfigError, match="a conversion of their layout is unfinished"):
            _native.check_slot_layout(
                embedding.config, names["params"], "w", SLOTS, chosen, "int64", "float32", DIM
            )

    done = ok_json(_convert(config_file, "--to", "fused-row", **names))
    assert done["resumed"] and done["source_deleted"] and done["from"] == "per-slot"
    assert stores["m"].size() == 0 and stores["v"].size() == 0
    got_rows, got_slots = embedding.find_with_slots(ids, 0, no_slots)
    np.testing.assert_array_equal(got_rows[:-5], rows[:-5])
    np.testing.assert_array_equal(got_slots[:, :DIM][:-5], _slot_rows(ids, 0)[:-5])
    np.testing.assert_array_equal(got_slots[10:-5, DIM:], _slot_rows(ids[10:-5], 1))
    np.testing.assert_array_equal(got_slots[:10, DIM:], 0)  # v's initial value
    np.testing.assert_array_equal(got_slots[-5:], np.tile(no_slots, (5, 1)))  # no row made up
    assert embedding.size() == IDS - 5
    _native.check_slot_layout(
        embedding.config, names["params"], "w", SLOTS, "fused-row", "int64", "float32", DIM
    )
    embedding.clear()


@pytest.mark.parametrize("crash_at", ["2500", "deleting"])
def test_a_killed_conversion_out_of_fused_rows_loses_nothing_and_the_rerun_finishes(
    tmp_path, topology, make_config, unique_name, crash_at
):
    config_file = make_config(tmp_path, topology, storage_slice=3)
    config = json.loads(config_file.read_text())
    names = {"params": f"{unique_name}-parameter", "wrapper": "w"}
    ids = np.arange(IDS, dtype=np.int64)
    embedding = RedisStore(
        {**config, "redis_fused_row": True}, names["params"], DIM, manage_ttl=False
    )
    rows = -_slot_rows(ids, 7)
    slots = np.concatenate([_slot_rows(ids, 0), _slot_rows(ids, 1)], axis=1)
    # Ids 0-9 were looked up but never trained: their row stands alone.
    embedding.insert(ids[:10], rows[:10])
    embedding.insert_with_slots(ids[10:], rows[10:], slots[10:])
    no_slots = np.full(2 * DIM, 99.0, np.float32)
    fused = RedisStore(config, f"{names['params']}_w_slots", 2 * DIM, manage_ttl=False)

    killed = _convert(config_file, "--to", "fused", env={CRASH_HOOK: crash_at}, **names)
    assert killed.returncode == 137, killed.stderr
    got_rows, got_slots = embedding.find_with_slots(ids, 0, no_slots)
    np.testing.assert_array_equal(got_rows, rows)
    np.testing.assert_array_equal(got_slots[10:], slots[10:])  # still in the rows
    assert (fused.size() == IDS - 10) if crash_at == "deleting" else (0 < fused.size() < IDS - 10)
    with pytest.raises(tfra.ConfigError, match="a conversion of their layout is unfinished"):
        _native.check_slot_layout(
            fused.config, names["params"], "w", SLOTS, "fused", "int64", "float32", DIM
        )

    done = ok_json(_convert(config_file, "--to", "fused", **names))
    assert done["resumed"] and done["source_deleted"] and done["from"] == "fused-row"
    got_rows, got_slots = embedding.find_with_slots(ids, 0, no_slots)
    np.testing.assert_array_equal(got_rows, rows)  # the rows stay, the slots are stripped
    np.testing.assert_array_equal(got_slots, np.tile(no_slots, (IDS, 1)))
    assert embedding.size() == IDS and fused.size() == IDS - 10
    got, exists = fused.find(ids, 0, return_exists=True)
    assert not exists[:10].any()  # never trained: nothing made up for them
    np.testing.assert_array_equal(got[10:], slots[10:])
    _native.check_slot_layout(
        fused.config, names["params"], "w", SLOTS, "fused", "int64", "float32", DIM
    )
    fused.clear()
    embedding.clear()


def test_conflicting_destination_is_refused_unless_overwrite(
    tmp_path, standalone_server, make_config, unique_name
):
    config_file = make_config(tmp_path, standalone_server)
    config = json.loads(config_file.read_text())
    names = {"params": f"{unique_name}-parameter", "wrapper": "w"}
    stores = _fill_per_slot(config, **names)
    fused = RedisStore(config, f"{names['params']}_w_slots", 2 * DIM, manage_ttl=False)
    fused.insert(np.array([10**9], np.int64), np.ones((1, 2 * DIM), np.float32))

    refused = _convert(config_file, "--to", "fused", **names)
    assert refused.returncode == 2, refused.stderr
    assert "already holds rows" in refused.stderr and "_w_slots (1 rows)" in refused.stderr
    assert stores["m"].size() == IDS and fused.size() == 1  # nothing moved

    done = ok_json(_convert(config_file, "--to", "fused", "--overwrite", **names))
    assert done["source_deleted"] and fused.size() == IDS + 1

    nothing = ok_json(_convert(config_file, "--to", "fused", **names))
    assert nothing["ids_copied"] == 0 and not nothing["source_deleted"]
    assert [e["rows"] for e in nothing["destination_after"]] == [IDS + 1]
    fused.clear()


def test_progress_lines_and_usage_errors(tmp_path, standalone_server, make_config, unique_name):
    config_file = make_config(tmp_path, standalone_server)
    config = json.loads(config_file.read_text())
    names = {"params": f"{unique_name}-parameter", "wrapper": "w"}
    stores = _fill_per_slot(config, **names)
    result = cli(
        "--config",
        config_file,
        "convert-slots",
        "--params",
        names["params"],
        "--wrapper",
        "w",
        "--slots",
        "m,v",
        "--dim",
        DIM,
        "--to",
        "fused",
        "--progress",
    )
    assert result.returncode == 0, result.stderr
    assert "convert-slots" in result.stderr and f"{IDS}/{IDS} rows" in result.stderr
    assert "copied" in result.stdout and "source tables deleted" in result.stdout
    assert stores["m"].size() == 0

    neither = cli(
        *("--config", config_file, "convert-slots", "--params", "p", "--slots", "m"),
        *("--dim", 2, "--to", "fused"),
    )
    assert neither.returncode == 2 and "give --wrapper NAME" in neither.stderr
    initial = cli(
        *("--config", config_file, "convert-slots", "--params", "p", "--wrapper", "w"),
        *("--slots", "m,v", "--dim", 2, "--to", "fused", "--initial", "0.1"),
    )
    assert initial.returncode == 2 and "--initial has 1 values" in initial.stderr
    RedisStore(config, f"{names['params']}_w_slots", 2 * DIM, manage_ttl=False).clear()
