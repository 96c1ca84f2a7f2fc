"""A new model version (model_tag_runtime v2) starts from the rows of the old one (v1) when its
checkpoint is restored, as TFRA does, and the old rows stay in place."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

import tfra_redis as tfra

de = tfra.dynamic_embedding


@pytest.mark.parametrize("store_mode", [0, 2])
def test_restore_under_a_new_model_tag_copies_the_old_rows(
    standalone_server, make_config, tmp_path, unique_name, store_mode
):
    v1 = make_config(
        tmp_path,
        standalone_server,
        model_tag_runtime="v1",
        model_tag_import="v1",
        storage_slice=2,
        table_store_mode=2,
    )
    old = de.RedisTable(tf.int64, tf.float32, [-1.0, -1.0], name=unique_name, config=v1)
    keys = np.arange(500, dtype=np.int64)
    rows = np.stack([keys * 1.0, -keys * 1.0], axis=1).astype(np.float32)
    old.insert(keys, rows)

    v2 = make_config(
        tmp_path,
        standalone_server,
        model_tag_runtime="v2",
        model_tag_import="v1",
        storage_slice=3,
        storage_slice_import=2,
        table_store_mode=store_mode,
    )
    new = de.RedisTable(
        tf.int64, tf.float32, [-1.0, -1.0], name=unique_name, config=v2, checkpoint=True
    )
    assert int(new.size()) == 0
    # A checkpoint of the new version with no rows in it (mode 2 never holds rows; mode 0 of
    # a table still empty), then restored: the old version's rows come over.
    path = tf.train.Checkpoint(table=new).save(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(table=new).restore(path)
    assert int(new.size()) == 500
    np.testing.assert_array_equal(new.lookup(keys).numpy(), rows)
    assert int(old.size()) == 500, "the old tag's rows stay"
    # Restoring again is harmless.
    tf.train.Checkpoint(table=new).restore(path)
    assert int(new.size()) == 500
    new.clear()
    old.clear()
