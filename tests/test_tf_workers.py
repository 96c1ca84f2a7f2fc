"""Several worker processes training one model against one Redis at once (asynchronous updates).

Each worker builds the same model (same layer name, so the same Redis tables under the config's
model tag) and trains it with ``model.fit`` on its own shard of one dataset, all at the same time.
Nothing coordinates their writes: each optimizer step reads, updates and writes back the rows of
its batch (Hogwild-style; two workers updating one id at once may lose one of the updates).

Only the embedding is shared between the processes, so the model's head is fixed (not trainable)
and the same in every process: a model built afresh anywhere, looking up the shared rows, is the
model the workers trained together.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tfra_redis as tfra  # noqa: E402
from tfra_redis import (
    optimizers,  # noqa: E402
    testing,  # noqa: E402
)
from tfra_redis.store import RedisStore  # noqa: E402

de = tfra.dynamic_embedding

WORKERS = 3
VOCAB = 5000  # ids 0..4999
EXAMPLES = 6000  # pairs of ids, 2000 per worker
DIM = 8
BATCH = 100
EPOCHS = 4
SLOTS = ("m", "v")  # Adam's
WORKER_TIMEOUT = 90.0  # seconds, for starting up and for training

# A worker: `python -c WORKER_SCRIPT '{"config": ..., ...}'`. It imports this file as a module
# (not as a test) to build the very model the test builds.
WORKER_SCRIPT = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from {Path(__file__).stem} import worker_main
worker_main(sys.argv[1])
"""


pytestmark = pytest.mark.usefixtures("collect_tables_at_module_end")


def dataset() -> tuple[np.ndarray, np.ndarray]:
    """Pairs of ids labelled 1 when their hidden scores add up to more than 0.

    Learnable through the embedding alone: a row whose entries sum to the id's score solves it.
    Ids are drawn at random, so most appear in the shards of several workers.
    """
    rng = np.random.default_rng(2024)
    score = rng.normal(size=VOCAB)
    ids = rng.integers(0, VOCAB, size=(EXAMPLES, 2)).astype(np.int64)
    labels = (score[ids[:, 0]] + score[ids[:, 1]] > 0).astype(np.float32)[:, None]
    return ids, labels


def shard(index: int) -> tuple[np.ndarray, np.ndarray]:
    ids, labels = dataset()
    return ids[index::WORKERS], labels[index::WORKERS]


def build_model(config_path: str, name: str) -> de.DynamicEmbeddingModel:
    """The model every process builds: the Redis embedding ``name`` and a fixed head (the
    logit is the sum of the two rows' entries), compiled with Adam."""
    creator = de.RedisTableCreator(de.RedisTableConfig(redis_config_abs_dir=config_path))
    embedding = de.keras.layers.Embedding(
        DIM,
        initializer=keras.initializers.RandomNormal(0.0, 0.05, seed=5),
        name=name,
        kv_creator=creator,
    )
    ids = keras.Input(shape=(2,), dtype="int64", name="ids")
    x = keras.layers.Flatten()(embedding(ids))
    out = keras.layers.Dense(
        1,
        activation="sigmoid",
        use_bias=False,
        kernel_initializer="ones",
        trainable=False,
        name="fixed_head",
    )(x)
    model = de.DynamicEmbeddingModel(ids, out)
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _evaluate(model: keras.Model, ids: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    result = model.evaluate(ids, labels, batch_size=1000, verbose=0, return_dict=True)
    return {k: float(v) for k, v in result.items()}


def worker_main(arguments: str) -> None:
    """One worker: build the model, evaluate the untrained model on its shard, wait for the
    others, train, evaluate again, write what it saw to ``args["out"]``."""
    args = json.loads(arguments)
    ids, labels = shard(args["index"])
    model = build_model(args["config"], args["name"])
    before = _evaluate(model, ids, labels)  # lookups only: nothing is written to Redis yet

    Path(args["ready"]).touch()
    go = Path(args["go"])
    deadline = time.monotonic() + args["timeout"]
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"worker {args['index']}: no go signal")
        time.sleep(0.01)

    start = time.time()
    history = model.fit(
        ids, labels, batch_size=BATCH, epochs=EPOCHS, shuffle=True, verbose=0
    ).history
    end = time.time()
    after = _evaluate(model, ids, labels)
    Path(args["out"]).write_text(
        json.dumps(
            {
                "before": before,
                "after": after,
                "epoch_loss": [float(x) for x in history["loss"]],
                "start": start,
                "end": end,
                "steps": int(model.optimizer.iterations.numpy()),
            }
        )
    )


# -- the test --------------------------------------------------------------------------------


def _masters(topology) -> list[testing.RedisServer]:
    if isinstance(topology, testing.ClusterTopology):
        return topology.masters()
    return [topology]


def _node_of(topology, key: bytes) -> testing.RedisServer:
    if isinstance(topology, testing.ClusterTopology):
        return topology.node_for_slot(topology.masters()[0].execute("CLUSTER", "KEYSLOT", key))
    return topology


def _keys_like(topology, pattern: str) -> list[bytes]:
    return sorted(key for master in _masters(topology) for key in master.scan_keys(pattern))


def _raw_row_count(topology, store: RedisStore) -> int:
    """Rows of a table counted with HLEN on the server holding each bucket."""
    return sum(_node_of(topology, key).execute("HLEN", key) for key in store.bucket_keys)


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        TF_CPP_MIN_LOG_LEVEL="2",
        OMP_NUM_THREADS="1",
        TF_NUM_INTEROP_THREADS="1",
        TF_NUM_INTRAOP_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def _describe(process: subprocess.Popen, log: Path) -> str:
    return f"worker pid {process.pid} exited {process.returncode}:\n{log.read_text()[-4000:]}"


def _run_workers(tmp_path: Path, config: Path, name: str) -> list[dict]:
    """Starts the workers, lets them train together once all are ready, returns their reports."""
    go = tmp_path / "go"
    workers = []
    try:
        for index in range(WORKERS):
            log = tmp_path / f"worker-{index}.log"
            args = {
                "index": index,
                "config": str(config),
                "name": name,
                "ready": str(tmp_path / f"ready-{index}"),
                "go": str(go),
                "out": str(tmp_path / f"worker-{index}.json"),
                "timeout": WORKER_TIMEOUT,
            }
            with log.open("w") as out:
                process = subprocess.Popen(
                    [sys.executable, "-c", WORKER_SCRIPT, json.dumps(args)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=_worker_env(),
                )
            workers.append((process, log, args))

        # A barrier: training starts in every worker at once, after the slow start-up.
        deadline = time.monotonic() + WORKER_TIMEOUT
        while not all(Path(args["ready"]).exists() for _, _, args in workers):
            for process, log, _ in workers:
                assert process.poll() is None, _describe(process, log)
            assert time.monotonic() < deadline, "the workers did not get ready in time"
            time.sleep(0.05)
        go.touch()

        for process, log, _ in workers:
            try:
                process.wait(timeout=max(deadline + WORKER_TIMEOUT - time.monotonic(), 1.0))
            except subprocess.TimeoutExpired:
                pytest.fail(f"worker pid {process.pid} did not finish:\n{log.read_text()[-4000:]}")
        for process, log, _ in workers:
            assert process.returncode == 0, _describe(process, log)
        return [json.loads(Path(args["out"]).read_text()) for _, _, args in workers]
    finally:
        for process, _, _ in workers:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.mark.parametrize(
    ("topology_fixture", "overrides"),
    [("standalone_server", {}), ("cluster", {"storage_slice": 3})],
    ids=["standalone", "cluster-slice3"],
)
def test_workers_train_one_model_at_once(
    request, tmp_path, make_config, unique_name, topology_fixture, overrides
):
    topology = request.getfixturevalue(topology_fixture)
    tag = f"workers_{uuid.uuid4().hex[:8]}"
    config = make_config(
        tmp_path, topology, model_tag_runtime=tag, model_tag_import=tag, **overrides
    )
    ids, labels = dataset()
    seen = [np.unique(shard(i)[0]) for i in range(WORKERS)]
    expected_ids = np.unique(np.concatenate(seen))
    # The shards share most ids, so workers do update the same rows concurrently.
    in_several = np.bincount(np.concatenate(seen), minlength=VOCAB) > 1
    assert in_several.sum() > 0.5 * len(expected_ids)

    # The untrained model on the whole dataset (lookups write nothing).
    untrained = _evaluate(build_model(str(config), unique_name), ids, labels)
    assert _keys_like(topology, f"{tag}:*") == []
    assert untrained["loss"] > 0.6 and 0.35 < untrained["accuracy"] < 0.65

    reports = _run_workers(tmp_path, config, unique_name)

    steps_per_worker = EPOCHS * -(-len(shard(0)[0]) // BATCH)
    for index, report in enumerate(reports):
        losses = report["epoch_loss"]
        assert report["steps"] == steps_per_worker, (index, report)
        assert losses[-1] < 0.7 * losses[0], (index, losses)
        assert report["after"]["loss"] < 0.7 * report["before"]["loss"], (index, report)
    # They trained at the same time: every worker started before any had finished.
    assert max(r["start"] for r in reports) < min(r["end"] for r in reports), reports

    # A model built afresh from the shared tables does what the workers learned together: on
    # the whole dataset, and on each worker's shard (every worker's training reached Redis).
    fresh = build_model(str(config), unique_name)
    trained = _evaluate(fresh, ids, labels)
    assert trained["loss"] < 0.6 * untrained["loss"], (untrained, trained)
    assert trained["accuracy"] > 0.85, (untrained, trained)
    for index in range(WORKERS):
        on_shard = _evaluate(fresh, *shard(index))
        assert on_shard["accuracy"] > 0.85, (index, on_shard)

    # One row per id any worker saw, in the embedding and in each Adam slot table.
    slices = overrides.get("storage_slice", 1)
    params_name = f"{unique_name}-parameter"
    table_names = [params_name] + [
        optimizers.keras_layer_slot_table_name(unique_name, slot) for slot in SLOTS
    ]
    stores = [
        RedisStore(str(config), table_name, DIM, manage_ttl=False) for table_name in table_names
    ]
    assert len(_keys_like(topology, f"{tag}:*")) == len(table_names) * slices
    for store in stores:
        keys, rows = store.export()
        np.testing.assert_array_equal(np.sort(keys), expected_ids, err_msg=store.name)
        assert np.isfinite(rows).all(), store.name
        assert store.size() == len(expected_ids) == _raw_row_count(topology, store)
        assert len(store.bucket_keys) == slices
        store.close()
