"""``de.keras.layers.Embedding``: a Keras 3 layer over a Redis-backed :class:`Variable`."""

from __future__ import annotations

import warnings
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfra_redis._types import DevicesLike, DTypeLike, InitializerLike, TensorLike
from tfra_redis.dynamic_embedding.restrict import FrequencyRestrictPolicy, TimestampRestrictPolicy
from tfra_redis.dynamic_embedding.variable import Variable, lookup_rows

__all__ = [
    "BasicEmbedding",
    "Embedding",
    "FieldWiseEmbedding",
    "HvdAllToAllEmbedding",
    "SquashedEmbedding",
]

# TFRA's keyword arguments beyond the positional ones, with TFRA's defaults.
_TFRA_KWARGS: dict[str, Any] = {
    "trainable": True,
    "max_norm": None,
    "keep_distribution": False,
    "partitioner": None,
    "checkpoint": True,
    "init_capacity": 0,
    "kv_creator": None,
    "restrict_policy": None,
    "bp_v2": False,
    "distribute_strategy": None,
}

# Warned about once per process each: TFRA options that mean nothing for Redis tables.
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, UserWarning, stacklevel=4)


def _serialize_initializer(initializer: InitializerLike) -> Any:
    if initializer is None or isinstance(initializer, (int, float)):
        return initializer
    if isinstance(initializer, keras.initializers.Initializer):
        return keras.initializers.serialize(initializer)
    if isinstance(initializer, (list, tuple, np.ndarray)):
        return np.asarray(initializer).tolist()
    return None


def _serialize_max_norm(max_norm: Any) -> Any:
    if max_norm is None or isinstance(max_norm, (int, float)):
        return max_norm
    if isinstance(max_norm, keras.constraints.Constraint):
        return keras.constraints.serialize(max_norm)
    raise TypeError(f"max_norm must be a number or a keras Constraint, got {max_norm!r}")


_POLICIES = {cls.__name__: cls for cls in (TimestampRestrictPolicy, FrequencyRestrictPolicy)}


def _restrict_policy_name(policy: Any) -> str | None:
    return None if policy is None else getattr(policy, "__name__", type(policy).__name__)


@keras.saving.register_keras_serializable(package="tfra_redis")
class Embedding(keras.layers.Layer):
    """Looks ids (any shape) up in a Redis-backed embedding: output ``ids.shape +
    [embedding_size]`` (TFRA's ``de.keras.layers.Embedding``, same signature and defaults).

    Trainable like any Keras layer once the model's optimizer is a
    ``de.DynamicEmbeddingOptimizer``: the layer's trainable wrapper ``shadow`` (the rows a
    training step looked up) is in ``layer.trainable_weights`` and
    ``model.trainable_variables``; ``model.fit`` and custom loops
    (``tape.gradient(loss, model.trainable_variables)`` then ``optimizer.apply_gradients``)
    train it, and the optimizer writes rows and slots back to Redis. Called with
    ``training=False`` (``predict``, ``evaluate``) or outside a recording ``GradientTape``, the
    layer only reads Redis. RaggedTensor ids give a RaggedTensor.

    The variable is named ``<name>-parameter``, the wrapper ``DynamicEmbedding/<name>-shadow``
    and the optimizer slots ``<name>-parameter_DynamicEmbedding_<name>-shadow_<slot>``
    (``<name>-parameter_<slot>`` with ``short_file_name=True``), as in TFRA.

    ``model.save_weights``/``load_weights`` and ``.keras`` files save the rows as the config's
    ``table_store_mode`` says: 0 the rows (restored as an upsert), 2 only a manifest, 1 DUMP
    files.

    Args:
        embedding_size: the row size (``dim``).
        key_dtype: the ids' dtype, ``tf.int64``, ``tf.int32`` or ``tf.string``.
        value_dtype: the dtype of the rows (the layer computes in it, whatever the global
            mixed-precision policy, as in TFRA).
        combiner: how :class:`SquashedEmbedding` and :class:`FieldWiseEmbedding` reduce rows;
            unused by this layer, as in TFRA.
        initializer: rows of ids never seen: a number, ``dim`` values, or an initializer
            (random ones draw one row per id); default ``keras.initializers.RandomNormal()``
            (mean 0, stddev 0.05), as in TFRA.
        devices: accepted; Redis tables live on the CPU whatever it says (TFRA's Redis kernels
            are CPU-only too), with a warning for a GPU device.
        name: the layer name; the Redis tables are named after it.
        with_unique: accepted for TFRA compatibility; each distinct id is always looked up
            once and its gradients summed (what TFRA's ``with_unique=False`` loses).
        short_file_name: name slot tables ``<name>-parameter_<slot>``.

    Keyword arguments (TFRA's): ``trainable``, ``max_norm`` (a number: rows are clipped to
    this L2 norm on lookup), ``checkpoint``, ``init_capacity``, ``kv_creator`` (the table
    creator, e.g. ``de.RedisTableCreator(config)``), ``restrict_policy``, ``bp_v2``;
    ``partitioner``, ``keep_distribution`` and ``distribute_strategy`` are accepted and have
    no effect on Redis tables (a warning says so once). Other keyword arguments go to
    ``keras.layers.Layer``.
    """

    def __init__(
        self,
        embedding_size: int,
        key_dtype: DTypeLike = tf.int64,
        value_dtype: DTypeLike = tf.float32,
        combiner: str = "sum",
        initializer: InitializerLike = None,
        devices: DevicesLike = None,
        name: str = "DynamicEmbeddingLayer",
        with_unique: bool = True,
        short_file_name: bool = False,
        **kwargs: Any,
    ) -> None:
        options = {key: kwargs.pop(key, default) for key, default in _TFRA_KWARGS.items()}
        try:
            size = int(embedding_size)
        except (TypeError, ValueError) as err:
            raise TypeError(f"embedding_size must be an int, got {embedding_size!r}") from err
        for key in ("partitioner", "keep_distribution", "distribute_strategy"):
            if options[key] not in (None, False):
                _warn_once(key, f"de.keras.layers: {key} has no effect on Redis-backed tables")
        if devices and any("GPU" in str(d).upper() for d in devices):
            _warn_once(
                "devices",
                "de.keras.layers: Redis-backed tables are looked up on the CPU; devices "
                f"{list(devices)} only place nothing here",
            )
        value_dtype = tf.as_dtype(value_dtype)
        kwargs.setdefault("dtype", value_dtype.name)
        trainable = bool(options["trainable"])
        super().__init__(name=name, trainable=trainable, **kwargs)
        if initializer is None:
            initializer = keras.initializers.RandomNormal()
        self.embedding_size = size
        self.key_dtype = tf.as_dtype(key_dtype)
        self.value_dtype = value_dtype
        self.combiner = combiner
        self.initializer = initializer
        self.with_unique = bool(with_unique)
        self.short_file_name = bool(short_file_name)
        self.init_capacity = options["init_capacity"]
        self.devices = devices
        self.max_norm = options["max_norm"]
        self.restrict_policy = options["restrict_policy"]
        self.kv_creator = options["kv_creator"]
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
            checkpoint=options["checkpoint"],
            init_size=self.init_capacity,
            kv_creator=self.kv_creator,
            restrict_policy=self.restrict_policy,
            bp_v2=options["bp_v2"],
            short_file_name=self.short_file_name,
            shadow_name=shadow_name,
        )
        # Made now, not at the first call, so that the model lists it before the optimizer
        # is built (TFRA's layers make their shadow in __init__ too).
        self.shadow = self.params.trainable_wrapper(shadow_name)
        self.built = True

    def call(self, ids: TensorLike, training: Any = None) -> tf.Tensor:
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.convert_to_tensor(ids)
        if ids.dtype != self.key_dtype:
            if self.key_dtype == tf.string or not ids.dtype.is_integer:
                kind = "strings" if self.key_dtype == tf.string else "integers"
                raise TypeError(
                    f"{self.name}: ids must be {kind} ({self.key_dtype.name}), got {ids.dtype.name}"
                )
            ids = tf.cast(ids, self.key_dtype)
        max_norm = self.max_norm if isinstance(self.max_norm, (int, float)) else None
        rows = lookup_rows(
            self.params,
            ids,
            wrapper_name=None,
            training=training if self.trainable else False,
            wrapper=self.shadow,
            max_norm=max_norm,
        )
        if isinstance(self.max_norm, keras.constraints.Constraint):
            if isinstance(rows, tf.RaggedTensor):
                return rows.with_flat_values(self.max_norm(rows.flat_values))
            rows = self.max_norm(rows)
        return rows

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        return tuple(input_shape) + (self.embedding_size,)

    def compute_output_spec(self, ids: Any, training: Any = None) -> keras.KerasTensor:
        return keras.KerasTensor(self.compute_output_shape(ids.shape), dtype=self.value_dtype.name)

    # -- Keras weights files ------------------------------------------------------------------

    def save_own_variables(self, store: Any) -> None:
        if not self.params.checkpoint:
            return
        self.params.table.save_rows_to(store)
        generator = self.params.initializer_generator
        if generator is not None:
            store["initializer_state"] = generator.state.numpy()

    def load_own_variables(self, store: Any) -> None:
        if not self.params.checkpoint or not self.params.table.restore_rows_from(store):
            return
        generator = self.params.initializer_generator
        if generator is not None and "initializer_state" in store:
            generator.state.assign(np.asarray(store["initializer_state"]))

    def get_config(self) -> dict[str, Any]:
        """TFRA's keys (the creator and restrict policy are not serialized: a loaded layer
        takes its Redis config from ``TFRA_REDIS_CONFIG_PATH``, see ``tfra_redis.serving``)."""
        config: dict[str, Any] = super().get_config()
        config.pop("dtype", None)
        config.update(
            {
                "embedding_size": self.embedding_size,
                "key_dtype": self.key_dtype.name,
                "value_dtype": self.value_dtype.name,
                "combiner": self.combiner,
                "initializer": _serialize_initializer(self.initializer),
                "devices": list(self.devices) if self.devices else None,
                "with_unique": self.with_unique,
                "short_file_name": self.short_file_name,
                "init_capacity": self.init_capacity,
                "checkpoint": self.params.checkpoint,
                "bp_v2": self.params.bp_v2,
                "max_norm": _serialize_max_norm(self.max_norm),
            }
        )
        # By name: a policy class is code, which a config cannot carry.
        config["restrict_policy"] = _restrict_policy_name(self.restrict_policy)
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Embedding:
        config = dict(config)
        policy = config.get("restrict_policy")
        if isinstance(policy, str):
            if policy not in _POLICIES:
                raise ValueError(f"unknown restrict_policy {policy!r}; known: {sorted(_POLICIES)}")
            config["restrict_policy"] = _POLICIES[policy]
        initializer = config.get("initializer")
        if isinstance(initializer, dict):
            config["initializer"] = keras.initializers.deserialize(initializer)
        if isinstance(config.get("max_norm"), dict):
            config["max_norm"] = keras.constraints.deserialize(config["max_norm"])
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

    def call(self, ids: TensorLike, training: Any = None) -> tf.Tensor:
        return _squash(super().call(ids, training=training), self.combiner)

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        if len(input_shape) == 1:
            return (self.embedding_size,)
        return (input_shape[0], self.embedding_size)


def _pool_by_fields(
    rows: tf.Tensor, fields: tf.Tensor, nslots: int, batch: tf.Tensor, combiner: str
) -> tf.Tensor:
    """``rows`` ``[b * l, dim]`` pooled per (example, field) with ``combiner``: ``[b, nslots,
    dim]``; a field with no id gives zeros."""
    batch = tf.cast(batch, tf.int64)
    segments = tf.reshape(tf.range(batch)[:, None] * nslots + fields, [-1])
    count = batch * nslots
    if combiner == "sum":
        pooled = tf.math.unsorted_segment_sum(rows, segments, count)
    elif combiner == "mean":
        pooled = tf.math.unsorted_segment_mean(rows, segments, count)
    elif combiner in ("sqrtn", "sqrt_n"):
        pooled = tf.math.unsorted_segment_sqrt_n(rows, segments, count)
    else:
        raise ValueError(
            f"FieldWiseEmbedding combiner must be sum, mean or sqrtn, got {combiner!r}"
        )
    return tf.reshape(pooled, tf.stack([tf.cast(batch, tf.int32), nslots, tf.shape(rows)[-1]]))


@keras.saving.register_keras_serializable(package="tfra_redis")
class FieldWiseEmbedding(Embedding):
    """Rows pooled per field (TFRA's ``de.keras.layers.FieldWiseEmbedding``): ids ``(batch,
    n)``, ``slot_map_fn(ids)`` gives each id's field in ``[0, nslots)``, the output is ``(batch,
    nslots, embedding_size)`` with the rows of each field reduced by ``combiner`` (``sum``,
    ``mean`` or ``sqrtn``); a field without ids is zeros."""

    def __init__(
        self,
        embedding_size: int,
        nslots: int,
        slot_map_fn: Any = None,
        key_dtype: DTypeLike = tf.int64,
        value_dtype: DTypeLike = tf.float32,
        combiner: str = "sum",
        initializer: InitializerLike = None,
        devices: DevicesLike = None,
        name: str = "SlotDynamicEmbeddingLayer",
        with_unique: bool = True,
        **kwargs: Any,
    ) -> None:
        if isinstance(slot_map_fn, dict):
            slot_map_fn = keras.saving.deserialize_keras_object(slot_map_fn)
        if not callable(slot_map_fn):
            raise ValueError(f"slot_map_fn must be callable, got {slot_map_fn!r}")
        try:
            self.nslots = int(nslots)
        except (TypeError, ValueError) as err:
            raise TypeError(f"nslots must be an int, got {nslots!r}") from err
        if combiner not in ("sum", "mean", "sqrtn", "sqrt_n"):
            raise ValueError(
                f"FieldWiseEmbedding combiner must be sum, mean or sqrtn, got {combiner!r}"
            )
        self.slot_map_fn = slot_map_fn
        super().__init__(
            embedding_size,
            key_dtype,
            value_dtype,
            combiner,
            initializer,
            devices,
            name,
            with_unique,
            **kwargs,
        )

    def call(self, ids: TensorLike, training: Any = None) -> tf.Tensor:
        ids = tf.convert_to_tensor(ids)
        if ids.shape.rank != 2:
            raise ValueError(
                f"{self.name}: FieldWiseEmbedding takes ids of shape (batch, n), got rank "
                f"{ids.shape.rank}"
            )
        batch = tf.shape(ids)[0]
        rows = tf.reshape(
            super().call(tf.reshape(ids, [-1]), training=training), [-1, self.embedding_size]
        )
        fields = tf.cast(self.slot_map_fn(ids), tf.int64)
        tf.debugging.assert_less(
            fields,
            tf.constant(self.nslots, tf.int64),
            message=f"{self.name}: slot_map_fn gave a field >= nslots",
        )
        tf.debugging.assert_non_negative(
            fields, message=f"{self.name}: slot_map_fn gave a negative field"
        )
        return _pool_by_fields(rows, fields, self.nslots, tf.cast(batch, tf.int64), self.combiner)

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        return (input_shape[0], self.nslots, self.embedding_size)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["nslots"] = self.nslots
        config["slot_map_fn"] = keras.saving.serialize_keras_object(self.slot_map_fn)
        return config


class HvdAllToAllEmbedding(Embedding):
    """TFRA's Horovod all-to-all layer. Not available: with Redis every worker reads and writes
    the same tables, so there is nothing to exchange between ranks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "HvdAllToAllEmbedding is not supported: Redis tables are shared by every worker, "
            "so use de.keras.layers.Embedding (one process per worker, each with its own "
            "DynamicEmbeddingOptimizer) instead"
        )
