"""Serving a model whose embeddings live in Redis, in another process.

A SavedModel that contains ``tf.numpy_function`` ops cannot run outside the Python process that
traced it (the op refers to a process-local callback), so TF Serving or a C++ runtime cannot
serve Redis lookups through one. Two supported paths instead:

1. **Keep the rows in Redis** (any table size; the rows the model was trained into are read at
   inference time): ``save_model(model, path)`` writes a ``.keras`` file, and
   ``load_model(path, config=...)`` in the serving process rebuilds the model with its Redis
   lookups re-attached to the Redis named by ``config`` (or by ``TFRA_REDIS_CONFIG_PATH``, the
   variable TFRA's design note tells inference deployments to set). Save with
   ``table_store_mode`` 2 in the config, or ``checkpoint=False`` on the layers, so the file
   holds no rows.
2. **Freeze the rows into the graph** (tables that fit in memory): ``freeze_embedding(layer)``
   exports a table into a TF-native ``StaticHashTable`` plus a row matrix; the resulting Keras
   layer (or ``StaticEmbedding`` module) saves into a plain SavedModel that any TensorFlow
   runtime serves without tfra-redis or Redis.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

try:
    import keras
    import tensorflow as tf
except ModuleNotFoundError as err:  # no TensorFlow: say how to install it
    from tfra_redis._optional import tensorflow_missing

    raise tensorflow_missing(__name__, err) from err

from tfra_redis.dynamic_embedding.keras.layers import Embedding, SquashedEmbedding
from tfra_redis.dynamic_embedding.training import DynamicEmbeddingModel

__all__ = ["StaticEmbedding", "custom_objects", "freeze_embedding", "load_model", "save_model"]


def custom_objects() -> dict[str, Any]:
    """The classes Keras needs to rebuild a model that uses Redis-backed embeddings."""
    return {
        "Embedding": Embedding,
        "SquashedEmbedding": SquashedEmbedding,
        "DynamicEmbeddingModel": DynamicEmbeddingModel,
    }


def save_model(model: keras.Model, path: str | os.PathLike[str]) -> Path:
    """Saves the model (architecture, dense weights, and whatever the tables' store mode puts in
    weight files) as a ``.keras`` file for :func:`load_model`."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"save_model writes a .keras file; got {path}")
    model.save(path)
    return path


def load_model(
    path: str | os.PathLike[str], config: str | os.PathLike[str] | None = None
) -> keras.Model:
    """Loads a model saved by :func:`save_model` and re-attaches its embeddings to Redis.

    ``config`` is the JSON config of the Redis to serve from; without it the layers use
    ``TFRA_REDIS_CONFIG_PATH``. The model's tables open under the config's ``model_tag_runtime``,
    so point it at the tag the model was trained under.
    """
    previous = os.environ.get("TFRA_REDIS_CONFIG_PATH")
    if config is not None:
        os.environ["TFRA_REDIS_CONFIG_PATH"] = os.fspath(config)
    elif previous is None:
        raise ValueError(
            "load_model needs the Redis config: pass config=... or set TFRA_REDIS_CONFIG_PATH"
        )
    try:
        return keras.models.load_model(path, custom_objects=custom_objects(), compile=False)
    finally:
        if config is not None:
            if previous is None:
                del os.environ["TFRA_REDIS_CONFIG_PATH"]
            else:
                os.environ["TFRA_REDIS_CONFIG_PATH"] = previous


class StaticEmbedding(keras.layers.Layer):
    """An embedding frozen from a Redis table: a ``StaticHashTable`` from id to row index and a
    row matrix, both plain TensorFlow, so a SavedModel holding it serves anywhere. Ids that were
    not in the table get ``default_row``."""

    def __init__(
        self,
        keys: np.ndarray,
        rows: np.ndarray,
        default_row: np.ndarray | None = None,
        key_dtype: Any = tf.int64,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        keys = np.asarray(keys)
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[0] != keys.shape[0]:
            raise ValueError(f"rows must have shape [{keys.shape[0]}, dim], got {list(rows.shape)}")
        dim = rows.shape[1]
        default = np.zeros((dim,), rows.dtype) if default_row is None else default_row
        default = np.asarray(default, rows.dtype).reshape(1, dim)
        self.embedding_size = dim
        self.key_dtype = tf.as_dtype(key_dtype)
        # The default row is the last row, so a miss (index -1 from the table) maps onto it.
        self._matrix = tf.Variable(
            np.concatenate([rows, default]), trainable=False, name="frozen_rows"
        )
        self._index = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(keys, self.key_dtype),
                tf.range(keys.shape[0], dtype=tf.int64),
                key_dtype=self.key_dtype,
                value_dtype=tf.int64,
            ),
            default_value=tf.constant(keys.shape[0], tf.int64),
        )

    def call(self, ids: Any) -> tf.Tensor:
        ids = tf.cast(tf.convert_to_tensor(ids), self.key_dtype)
        return tf.gather(self._matrix, self._index.lookup(ids))

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        return tuple(input_shape) + (self.embedding_size,)


def freeze_embedding(layer: Embedding, max_rows: int = 50_000_000) -> StaticEmbedding:
    """Exports a Redis-backed :class:`Embedding` into a :class:`StaticEmbedding`. Refuses tables
    with more than ``max_rows`` rows: they belong in Redis (path 1)."""
    table = layer.params.table
    size = int(table.store.size())
    if size > max_rows:
        raise ValueError(
            f"{layer.name} holds {size:,} rows, more than max_rows={max_rows:,}; serve it from "
            "Redis with save_model/load_model instead"
        )
    dim = layer.embedding_size
    keys, rows = table.store.export()
    if rows.size == 0:
        rows = np.zeros((0, dim), layer.value_dtype.as_numpy_dtype)
    # Unseen ids get the layer's constant default; a random initializer has none, so zeros.
    default = np.asarray(layer.params.default_value, dtype=rows.dtype).reshape(-1)
    if default.size != dim:
        default = np.zeros((dim,), rows.dtype)
    return StaticEmbedding(
        keys, rows, default_row=default, key_dtype=layer.key_dtype, name=f"{layer.name}_frozen"
    )
