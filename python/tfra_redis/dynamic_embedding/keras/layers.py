"""``de.keras.layers.Embedding``: a Keras 3 layer over a Redis-backed :class:`Variable`."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfra_redis.dynamic_embedding.variable import Variable, lookup_rows

__all__ = ["BasicEmbedding", "Embedding", "SquashedEmbedding"]

# TFRA's layer takes these keyword arguments for its other backends; they mean nothing here.
_IGNORED_KWARGS = ("distribute_strategy", "keep_distribution", "short_file_name")


def _serialize_initializer(initializer: Any) -> Any:
    if initializer is None or isinstance(initializer, (int, float)):
        return initializer
    if isinstance(initializer, keras.initializers.Initializer):
        return keras.initializers.serialize(initializer)
    if isinstance(initializer, (list, tuple, np.ndarray)):
        return np.asarray(initializer).tolist()
    return None


@keras.saving.register_keras_serializable(package="tfra_redis")
class Embedding(keras.layers.Layer):
    """Looks ids (any shape) up in a Redis-backed embedding: output ``ids.shape +
    [embedding_size]`` (TFRA's ``de.keras.layers.Embedding``).

    Trainable like any Keras layer once the model's optimizer is a
    ``de.DynamicEmbeddingOptimizer``: the layer's trainable wrapper ``shadow`` (the rows a
    training step looked up) is in ``layer.trainable_weights`` and
    ``model.trainable_variables``; ``model.fit`` and custom loops
    (``tape.gradient(loss, model.trainable_variables)`` then ``optimizer.apply_gradients``)
    train it, and the optimizer writes rows and slots back to Redis. Called with
    ``training=False`` (``predict``, ``evaluate``) or outside a recording ``GradientTape``, the
    layer only reads Redis.

    The variable is named ``<name>-parameter``, the wrapper ``DynamicEmbedding/<name>-shadow``
    and the optimizer slots ``<name>-parameter_DynamicEmbedding_<name>-shadow_<slot>``, as in
    TFRA.

    ``model.save_weights``/``load_weights`` and ``.keras`` files save the rows as the config's
    ``table_store_mode`` says: 0 the rows (restored as an upsert), 2 only a manifest, 1 DUMP
    files.

    Args:
        embedding_size: the row size (``dim``).
        key_dtype, value_dtype: ``tf.int64``/``tf.int32`` ids; value dtype of the rows (the
            layer computes in it, whatever the global mixed-precision policy, as in TFRA).
        combiner: how ``SquashedEmbedding`` reduces rows (``sum``, ``mean``, ...); unused by
            this layer, as in TFRA.
        initializer: rows of ids never seen: a number, ``dim`` values, or an initializer
            (random ones draw one row per id).
        devices, init_capacity, restrict_policy, bp_v2: as in ``de.get_variable``.
        name: the layer name.
        with_unique: accepted for TFRA compatibility; each distinct id is always looked up
            once and its gradients summed (what TFRA's ``with_unique=False`` loses).
        kv_creator: the table creator, e.g. ``de.RedisTableCreator(config)``.
        checkpoint: whether checkpoints include the rows.
    """

    def __init__(
        self,
        embedding_size: int,
        key_dtype: Any = tf.int64,
        value_dtype: Any = tf.float32,
        combiner: str = "sum",
        initializer: Any = None,
        devices: Any = None,
        name: str = "DynamicEmbeddingLayer",
        with_unique: bool = True,
        kv_creator: Any = None,
        restrict_policy: Any = None,
        init_capacity: int = 0,
        checkpoint: bool = True,
        bp_v2: bool = False,
        trainable: bool = True,
        **kwargs: Any,
    ) -> None:
        for key in _IGNORED_KWARGS:
            kwargs.pop(key, None)
        value_dtype = tf.as_dtype(value_dtype)
        kwargs.setdefault("dtype", value_dtype.name)
        super().__init__(name=name, trainable=trainable, **kwargs)
        self.embedding_size = int(embedding_size)
        self.key_dtype = tf.as_dtype(key_dtype)
        self.value_dtype = value_dtype
        self.combiner = combiner
        self.initializer = initializer
        self.with_unique = bool(with_unique)
        self.init_capacity = init_capacity
        # numpy_function ops cannot be XLA-compiled; Keras turns jit_compile off for us.
        self.supports_jit = False
        shadow_name = f"DynamicEmbedding/{name}-shadow"
        self.params = Variable(
            key_dtype=self.key_dtype,
            value_dtype=self.value_dtype,
            dim=self.embedding_size,
            devices=devices,
            name=f"{name}-parameter",
            initializer=initializer,
            trainable=trainable,
            checkpoint=checkpoint,
            init_size=init_capacity,
            kv_creator=kv_creator,
            restrict_policy=restrict_policy,
            bp_v2=bp_v2,
            shadow_name=shadow_name,
        )
        # Made now, not at the first call, so that the model lists it before the optimizer
        # is built (TFRA's layers make their shadow in __init__ too).
        self.shadow = self.params.trainable_wrapper(shadow_name)
        self.built = True

    def call(self, ids: Any, training: Any = None) -> tf.Tensor:
        ids = tf.convert_to_tensor(ids)
        if ids.dtype != self.key_dtype:
            if not ids.dtype.is_integer:
                raise TypeError(
                    f"{self.name}: ids must be integers ({self.key_dtype.name}), got "
                    f"{ids.dtype.name}"
                )
            ids = tf.cast(ids, self.key_dtype)
        return lookup_rows(
            self.params,
            ids,
            wrapper_name=None,
            training=training if self.trainable else False,
            wrapper=self.shadow,
        )

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return tuple(input_shape) + (self.embedding_size,)

    def compute_output_spec(self, ids: Any, training: Any = None) -> keras.KerasTensor:
        return keras.KerasTensor(self.compute_output_shape(ids.shape), dtype=self.value_dtype.name)

    # -- Keras weights files ------------------------------------------------------------------

    def save_own_variables(self, store: Any) -> None:
        if not self.params.checkpoint:
            return
        keys, values, manifest = self.params.table.save_rows()
        store["keys"] = keys
        store["values"] = values
        store["manifest"] = np.frombuffer(manifest, dtype=np.uint8)
        generator = self.params.initializer_generator
        if generator is not None:
            store["initializer_state"] = generator.state.numpy()

    def load_own_variables(self, store: Any) -> None:
        if not self.params.checkpoint or "manifest" not in store:
            return
        self.params.table.restore_rows(
            np.asarray(store["keys"]),
            np.asarray(store["values"]),
            np.asarray(store["manifest"], dtype=np.uint8).tobytes(),
        )
        generator = self.params.initializer_generator
        if generator is not None and "initializer_state" in store:
            generator.state.assign(np.asarray(store["initializer_state"]))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("dtype", None)
        config.update(
            {
                "embedding_size": self.embedding_size,
                "key_dtype": self.key_dtype.name,
                "value_dtype": self.value_dtype.name,
                "combiner": self.combiner,
                "initializer": _serialize_initializer(self.initializer),
                "with_unique": self.with_unique,
                "init_capacity": self.init_capacity,
                "checkpoint": self.params.checkpoint,
                "bp_v2": self.params.bp_v2,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Embedding:
        config = dict(config)
        initializer = config.get("initializer")
        if isinstance(initializer, dict):
            config["initializer"] = keras.initializers.deserialize(initializer)
        return cls(**config)


#: TFRA's other name for :class:`Embedding`.
BasicEmbedding = Embedding


def _squash(rows: tf.Tensor, combiner: str) -> tf.Tensor:
    reduce = getattr(tf.math, f"reduce_{combiner}", None)
    if reduce is None:
        raise ValueError(f"combiner {combiner!r} names no tf.math.reduce_* function")
    rank = rows.shape.rank
    if rank is None or rank < 2:
        raise ValueError(f"SquashedEmbedding needs ids of rank >= 1, got rows of rank {rank}")
    if rank == 2:
        return reduce(rows, axis=0)
    while rows.shape.rank > 2:
        rows = reduce(rows, axis=1)
    return rows


@keras.saving.register_keras_serializable(package="tfra_redis")
class SquashedEmbedding(Embedding):
    """:class:`Embedding` whose rows are reduced with ``combiner`` down to ``(batch,
    embedding_size)`` (TFRA's ``de.keras.layers.SquashedEmbedding``): ids of shape ``(b, n,
    ...)`` give ``(b, embedding_size)``, ids of shape ``(n,)`` give ``(embedding_size,)``."""

    def call(self, ids: Any, training: Any = None) -> tf.Tensor:
        return _squash(super().call(ids, training=training), self.combiner)

    def compute_output_shape(self, input_shape: Any) -> tuple:
        if len(input_shape) == 1:
            return (self.embedding_size,)
        return (input_shape[0], self.embedding_size)
