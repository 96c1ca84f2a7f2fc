"""Resuming training from a checkpoint is exact: an interrupted run (N epochs, a save, a restore in
a fresh process, N more) ends with the same embedding rows, slot rows, dense weights and step
count as an uninterrupted run of 2N epochs. Against a real redis-server.

Each run is a fresh Python process (`python -c RUN_SCRIPT '<json>'`). Every epoch sees the same
batches in the same order, so both runs see the same data. The embedding's initializer is random
(RandomNormal with a seed): rows of ids first seen after the restore come from the initializer's
generator, whose state the checkpoint carries.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

VOCAB = 60
DIM = 4
BATCH = 16
BATCHES = 3
RUN_TIMEOUT = 180

RUN_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_tf_resume import run
run(sys.argv[1])
"""


def _data(part: int) -> tuple[np.ndarray, np.ndarray]:
    """BATCHES batches of part 0 or 1; part 1 brings ids part 0 does not have, so that rows
    are drawn from the initializer after the restore too."""
    rng = np.random.default_rng(11 + part)
    high = VOCAB // 2 * (part + 1)
    ids = rng.integers(0, high, size=(BATCH * BATCHES, 2)).astype(np.int64)
    score = np.random.default_rng(5).normal(size=VOCAB)
    labels = (score[ids[:, 0]] - score[ids[:, 1]] > 0).astype(np.float32)[:, None]
    return ids, labels


def _build(name: str):
    import keras

    import tfra_redis as tfra

    de = tfra.dynamic_embedding
    ids = keras.Input(shape=(2,), dtype="int64")
    embedding = de.keras.layers.Embedding(
        DIM, name=name, initializer=keras.initializers.RandomNormal(0.0, 0.1, seed=3)
    )
    x = keras.layers.Flatten()(embedding(ids))
    x = keras.layers.Dense(
        8, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(1)
    )(x)
    out = keras.layers.Dense(
        1, activation="sigmoid", kernel_initializer=keras.initializers.GlorotUniform(2)
    )(x)
    model = keras.Model(ids, out)
    model.compile(
        optimizer=de.DynamicEmbeddingOptimizer(keras.optimizers.Adam(0.02)),
        loss="binary_crossentropy",
    )
    return model, embedding


def run(arguments: str) -> None:
    """One training process: trains ``epochs`` epochs on each of ``parts``, after restoring
    from ``dir`` if ``restore``, saving there if ``save``; writes the state to ``out``. The
    Redis config comes from ``TFRA_REDIS_CONFIG_PATH``."""
    args = json.loads(arguments)
    import keras
    import tensorflow as tf

    checkpoint_dir = args["dir"]
    fmt = args["format"]
    model, embedding = _build(args["name"])
    if args["restore"]:
        if fmt == "checkpoint":
            # Before the optimizer is built, as a script would: the slots' restore waits
            # until fit builds them.
            checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
            checkpoint.restore(tf.train.latest_checkpoint(checkpoint_dir))
        else:
            model = keras.models.load_model(os.path.join(checkpoint_dir, "model.keras"))
            (embedding,) = [layer for layer in model.layers if hasattr(layer, "params")]
    batches_here = []
    callbacks = [
        keras.callbacks.LambdaCallback(on_train_batch_end=lambda *_, **__: batches_here.append(1))
    ]
    if fmt == "backup":
        callbacks.append(keras.callbacks.BackupAndRestore(os.path.join(checkpoint_dir, "backup")))
        if args.get("stop_after"):
            callbacks.append(_StopAfter(keras, args["stop_after"]))
    for part in args["parts"]:
        ids, labels = _data(part)
        try:
            model.fit(
                ids,
                labels,
                batch_size=BATCH,
                shuffle=False,
                epochs=args["epochs"],
                verbose=0,
                callbacks=callbacks,
            )
        except _Interrupted:
            pass
    if args["save"]:
        if fmt == "checkpoint":
            tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(
                os.path.join(checkpoint_dir, "ckpt")
            )
        elif fmt == "keras":
            model.save(os.path.join(checkpoint_dir, "model.keras"))
    if args.get("clear"):
        # Proves the restore comes from the checkpoint: the tables are gone from Redis.
        embedding.params.clear()
        for slot in model.optimizer.slot_variables(embedding).values():
            slot.clear()
    if args["out"]:
        _write_state(args["out"], model, embedding, batches_here=len(batches_here))


class _Interrupted(Exception):
    """What a crash in the middle of fit looks like to BackupAndRestore."""


def _StopAfter(keras, epochs: int):  # noqa: N802 - a callback class made after keras loads
    class StopAfter(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == epochs:
                raise _Interrupted()

    return StopAfter()


def _write_state(path: str, model, embedding, batches_here: int) -> None:
    import tensorflow as tf

    state = {
        "iterations": np.asarray(int(model.optimizer.iterations.numpy())),
        "batches_here": np.asarray(batches_here),
    }
    keys, rows = (t.numpy() for t in embedding.params.export())
    order = np.argsort(keys)
    state["keys"], state["rows"] = keys[order], rows[order]
    for slot, variable in model.optimizer.slot_variables(embedding).items():
        found = variable.lookup(tf.constant(state["keys"])).numpy()
        state[f"slot_{slot}"] = found
    for i, weight in enumerate(w for w in model.weights if w.name in ("kernel", "bias")):
        state[f"dense_{i}"] = weight.numpy()
    np.savez(path, **state)


def _run(config: Path, **args) -> None:
    env = dict(os.environ, TFRA_REDIS_CONFIG_PATH=str(config))
    tests = str(Path(__file__).parent)
    process = subprocess.run(
        [sys.executable, "-c", RUN_SCRIPT.format(tests=tests), json.dumps(args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert process.returncode == 0, process.stderr[-6000:]


def _compare(a: Path, b: Path) -> None:
    want, got = np.load(a), np.load(b)
    assert sorted(want.files) == sorted(got.files)
    skip = {"batches_here"}  # how many steps the last process ran: differs by design
    assert {"slot_m", "slot_v"} <= set(want.files) or "slot_slots" in want.files
    np.testing.assert_array_equal(got["keys"], want["keys"])
    for key in set(want.files) - skip:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-7, err_msg=key)


@pytest.mark.parametrize(
    ("store_mode", "fmt", "fused"),
    [
        (0, "checkpoint", ""),
        (2, "checkpoint", ""),
        (0, "keras", ""),
        (0, "keras", "slots"),
        (0, "checkpoint", "row"),
        (0, "keras", "row"),
        (1, "checkpoint", "row"),
        (2, "checkpoint", "row"),
        (0, "checkpoint", "behind"),
        (2, "checkpoint", "row+behind"),
    ],
    ids=[
        "mode0-checkpoint",
        "mode2-checkpoint",
        "mode0-keras-file",
        "mode0-keras-fused-slots",
        "mode0-checkpoint-fused-row",
        "mode0-keras-fused-row",
        "mode1-checkpoint-fused-row",
        "mode2-checkpoint-fused-row",
        # redis_write_behind_ms: the last step's write waits in the client; mode 2 keeps the
        # rows only in Redis, so the resumed run needs the saving process to send it at exit.
        "mode0-checkpoint-write-behind",
        "mode2-checkpoint-fused-row-write-behind",
    ],
)
def test_an_interrupted_run_resumes_exactly(
    tmp_path, standalone_server, make_config, unique_name, store_mode, fmt, fused
):
    config = make_config(
        tmp_path,
        standalone_server,
        table_store_mode=store_mode,
        redis_fused_slots=fused == "slots",
        redis_fused_row=fused.startswith("row"),
        redis_write_behind_ms=600_000 if fused.endswith("behind") else 0,
        model_lib_abs_dir=str(tmp_path / "files"),
    )
    epochs = 2
    whole, resumed = tmp_path / "whole.npz", tmp_path / "resumed.npz"
    common = {"format": fmt, "epochs": epochs}
    _run(
        config,
        **common,
        name=f"{unique_name}_whole",
        parts=[0, 1],
        restore=False,
        save=False,
        dir=str(tmp_path / "whole"),
        out=str(whole),
    )
    _run(
        config,
        **common,
        name=f"{unique_name}_cut",
        parts=[0],
        restore=False,
        save=True,
        dir=str(tmp_path),
        out="",
        clear=store_mode in (0, 1),
    )
    _run(
        config,
        **common,
        name=f"{unique_name}_cut",
        parts=[1],
        restore=True,
        save=False,
        dir=str(tmp_path),
        out=str(resumed),
    )
    _compare(whole, resumed)
    assert int(np.load(resumed)["iterations"]) == 2 * epochs * BATCHES
    assert len(np.load(resumed)["keys"]) > VOCAB // 2  # part 1 brought new ids


def test_backup_and_restore_resumes_exactly(tmp_path, standalone_server, make_config, unique_name):
    """keras.callbacks.BackupAndRestore (weights files, which carry the optimizer in Keras 3):
    fit stopped by a crash after 2 of 4 epochs, then fit again in a fresh process."""
    config = make_config(tmp_path, standalone_server, table_store_mode=0)
    whole, resumed = tmp_path / "whole.npz", tmp_path / "resumed.npz"
    common = {"format": "backup", "epochs": 4, "parts": [0], "restore": False, "save": False}
    _run(config, **common, name=f"{unique_name}_whole", dir=str(tmp_path / "w"), out=str(whole))
    cut = {**common, "name": f"{unique_name}_cut", "dir": str(tmp_path)}
    _run(config, **cut, stop_after=2, out="", clear=True)
    _run(config, **cut, out=str(resumed))
    _compare(whole, resumed)
    assert int(np.load(resumed)["iterations"]) == 4 * BATCHES
    assert int(np.load(resumed)["batches_here"]) == 2 * BATCHES  # it resumed, not restarted
