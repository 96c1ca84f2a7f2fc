"""``de.Variable``, ``de.get_variable`` and ``de.embedding_lookup`` over Redis tables."""

from __future__ import annotations

import logging
import numbers
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf

if TYPE_CHECKING:
    import keras

from tfra_redis._types import DevicesLike, DTypeLike, InitializerLike, TensorLike
from tfra_redis.creator import RedisTableCreator
from tfra_redis.dynamic_embedding.restrict import RestrictPolicy
from tfra_redis.dynamic_embedding.trainable import TrainableWrapper, applied_steps, stages_rows
from tfra_redis.table import RedisTable, is_collecting_lookup_keys

__all__ = ["Variable", "embedding_lookup", "get_variable"]

# TFRA's de.Variable accepts these (key, value) pairs (its valid_dtype_list), less its int64 ->
# string and string -> bool tables, whose values the store does not hold.
_VALUE_DTYPES = {
    tf.int64: (tf.float32, tf.float16, tf.bfloat16, tf.int32, tf.int8, tf.int64, tf.float64),
    tf.int32: (tf.float32, tf.int32, tf.float64, tf.bfloat16),
    tf.string: (tf.float32, tf.float16, tf.bfloat16, tf.int32, tf.int8, tf.int64, tf.float64),
}


def _keras_initializers() -> Any:
    try:
        import keras

        return keras.initializers
    except ImportError:  # pragma: no cover - keras ships with TensorFlow 2.16+
        return None


class _RowInitializer:
    """Turns any of TFRA's initializer spellings into default rows.

    A number, a list of ``dim`` values, a tensor or a constant initializer give one row shared
    by every missing key. A random initializer gives one row per key (TFRA's "full default"):
    Keras' ``RandomNormal``/``RandomUniform``/``TruncatedNormal`` draw from a
    ``tf.random.Generator`` (seeded from the initializer's seed), because Keras 3 initializers
    return the same values on every call; other callables are called with ``shape=[n, dim]``.
    """

    def __init__(self, initializer: InitializerLike, dim: int, value_dtype: tf.DType) -> None:
        self.dim = dim
        self.value_dtype = value_dtype
        self.initializer = initializer
        self._generator: tf.random.Generator | None = None
        self._draw: Callable[[Any], Any] | None = None
        self.per_key = False
        row = self._constant_row(initializer)
        if row is None:
            self.per_key = True
            self._draw = self._random_draw(initializer)
            row = np.zeros((dim,), dtype=value_dtype.as_numpy_dtype)
        self.default_row: np.ndarray = row

    def _constant_row(self, init: Any) -> np.ndarray | None:
        keras_init = _keras_initializers()
        if init is None:
            value: Any = 0
        elif keras_init is not None and isinstance(init, keras_init.Zeros):
            value = 0
        elif keras_init is not None and isinstance(init, keras_init.Ones):
            value = 1
        elif keras_init is not None and isinstance(init, keras_init.Constant):
            value = np.asarray(init.get_config()["value"])
        elif isinstance(init, (tf.zeros_initializer, tf.ones_initializer, tf.constant_initializer)):
            value = init(shape=[self.dim], dtype=tf.float32).numpy()
        elif isinstance(init, (numbers.Number, list, tuple, np.ndarray, np.generic)):
            value = np.asarray(init)
        elif tf.is_tensor(init):
            with tf.init_scope():
                value = np.asarray(init.numpy() if hasattr(init, "numpy") else init)
        else:
            return None
        value = np.asarray(value)
        if value.size == self.dim:
            row = value.reshape(self.dim)
        elif value.size >= 1:
            row = np.full((self.dim,), value.reshape(-1)[0])
        else:
            raise ValueError(f"initializer {init!r} gives no value for rows of dim {self.dim}")
        out: np.ndarray = row.astype(self.value_dtype.as_numpy_dtype)
        return out

    def _random_draw(self, init: Any) -> Any:
        keras_init = _keras_initializers()
        draw_dtype = self.value_dtype if self.value_dtype.is_floating else tf.float32
        if keras_init is not None and isinstance(
            init, (keras_init.RandomNormal, keras_init.RandomUniform, keras_init.TruncatedNormal)
        ):
            config = init.get_config()
            # An unseeded Keras initializer draws its seed from Python's `random` when made,
            # so keras.utils.set_random_seed makes these rows reproducible too.
            seed = getattr(init, "seed", None)
            if seed is not None and not isinstance(seed, numbers.Integral):
                # A keras.random.SeedGenerator advances on every call: call the initializer.
                return lambda shape: init(shape=shape, dtype=draw_dtype)
            with tf.init_scope():
                self._generator = (
                    tf.random.Generator.from_seed(int(seed))
                    if seed is not None
                    else tf.random.Generator.from_non_deterministic_state()
                )
            generator = self._generator
            if isinstance(init, keras_init.RandomNormal):
                return lambda shape: generator.normal(
                    shape, config["mean"], config["stddev"], dtype=draw_dtype
                )
            if isinstance(init, keras_init.TruncatedNormal):
                return lambda shape: generator.truncated_normal(
                    shape, config["mean"], config["stddev"], dtype=draw_dtype
                )
            return lambda shape: generator.uniform(
                shape, config["minval"], config["maxval"], dtype=draw_dtype
            )
        if not callable(init):
            raise TypeError(
                f"initializer must be a number, a list of dim values, a tensor or a callable "
                f"initializer, got {type(init).__name__}"
            )

        def draw(shape: Any) -> tf.Tensor:
            try:
                return init(shape=shape, dtype=draw_dtype)
            except TypeError:
                return init(shape)

        return draw

    @property
    def generator(self) -> tf.random.Generator | None:
        """The generator random default rows are drawn from, if any."""
        return self._generator

    def rows(self, n: Any) -> tf.Tensor:
        """``[n, dim]`` default rows (one per key); ``n`` may be a scalar tensor."""
        shape = tf.stack([tf.cast(n, tf.int32), tf.constant(self.dim, tf.int32)])
        assert self._draw is not None, "rows() is for per-key initializers"
        rows = tf.convert_to_tensor(self._draw(shape))
        rows = tf.reshape(tf.cast(rows, self.value_dtype), shape)
        if isinstance(n, int):
            rows.set_shape([n, self.dim])
        else:
            rows.set_shape([None, self.dim])
        return rows


class Variable(tf.__internal__.tracking.Trackable):
    """A dynamic embedding: int or string ids to rows of ``dim`` values, stored in Redis (TFRA's
    ``de.Variable``). Ids never seen get rows from ``initializer``.

    Normally created with :func:`get_variable`. All shards of a TFRA variable share one Redis
    hash, so one table is created whatever ``devices`` says.
    """

    def __init__(
        self,
        key_dtype: DTypeLike = tf.int64,
        value_dtype: DTypeLike = tf.float32,
        dim: int = 1,
        devices: DevicesLike = None,
        partitioner: object = None,
        shared_name: str | None = None,
        name: str = "DynamicEmbedding_Variable",
        initializer: InitializerLike = None,
        trainable: bool = True,
        checkpoint: bool = True,
        init_size: int = 0,
        kv_creator: RedisTableCreator | None = None,
        restrict_policy: type[RestrictPolicy] | None = None,
        bp_v2: bool = False,
        short_file_name: bool = False,
        shadow_name: str | None = None,
    ) -> None:
        self._key_dtype = tf.as_dtype(key_dtype)
        self._value_dtype = tf.as_dtype(value_dtype)
        if self._key_dtype not in _VALUE_DTYPES:
            raise TypeError(
                f"key_dtype of a Redis-backed Variable must be int64, int32 or string, got "
                f"{self._key_dtype.name}"
            )
        if self._value_dtype not in _VALUE_DTYPES[self._key_dtype]:
            raise TypeError(
                f"value_dtype {self._value_dtype.name} is not supported with "
                f"{self._key_dtype.name} keys; supported: "
                f"{[d.name for d in _VALUE_DTYPES[self._key_dtype]]}"
            )
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if restrict_policy is not None and not (
            isinstance(restrict_policy, type) and issubclass(restrict_policy, RestrictPolicy)
        ):
            raise TypeError(
                "restrict_policy must be a RestrictPolicy subclass (the class, e.g. "
                f"de.TimestampRestrictPolicy), got {restrict_policy!r}"
            )
        self._dim: int = int(dim)
        self._name: str = name
        self._devices: list[str] = list(devices) if devices else ["/CPU:0"]
        self._partitioner = partitioner
        self._shared_name = shared_name
        self._trainable: bool = bool(trainable)
        self._checkpoint: bool = bool(checkpoint)
        self._init_size = init_size
        self._kv_creator: RedisTableCreator = (
            kv_creator if kv_creator is not None else RedisTableCreator()
        )
        self._restrict_policy: RestrictPolicy | None = None
        self._bp_v2: bool = bool(bp_v2)
        self._short_file_name: bool = bool(short_file_name)
        self._shadow_name: str | None = shadow_name
        self._row_init: _RowInitializer = _RowInitializer(initializer, self._dim, self._value_dtype)
        self._initializer: Any = initializer
        table = self._kv_creator.create(
            key_dtype=self._key_dtype,
            value_dtype=self._value_dtype,
            default_value=self._row_init.default_row,
            name=self._table_name(0, 1),
            checkpoint=self._checkpoint,
            init_size=init_size,
            device=self._devices[0] if devices else "",
        )
        self._tables: list[RedisTable] = [table]
        self._track_trackable(table, name="table", overwrite=True)
        if self._row_init.generator is not None:
            # Where random default rows come from next: saved with the rows, so that a run
            # resumed from a checkpoint draws the same rows for new ids as an uninterrupted one.
            self._track_trackable(
                self._row_init.generator, name="initializer_generator", overwrite=True
            )
        # TFRA's _trainable_store: the wrappers of this variable's lookups, by name.
        self._trainable_store: dict[str, TrainableWrapper] = {}
        if restrict_policy is not None:
            self._restrict_policy = restrict_policy(self)
            # Saved and restored with the variable, as TFRA tracks its status variable.
            self._track_trackable(
                self._restrict_policy.status_var, name="restrict_status", overwrite=True
            )

    def _table_name(self, index: int, count: int) -> str:
        # TFRA: <name with / as _>_mht_<i>of<N>; Redis keys use the part before _mht_.
        return f"{self._name.replace('/', '_')}_mht_{index + 1}of{count}"

    # -- properties ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def key_dtype(self) -> tf.DType:
        return self._key_dtype

    @property
    def value_dtype(self) -> tf.DType:
        return self._value_dtype

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def devices(self) -> list[str]:
        return list(self._devices)

    @property
    def tables(self) -> list[RedisTable]:
        return list(self._tables)

    @property
    def table(self) -> RedisTable:
        """The Redis table (TFRA keeps one per device; they share one Redis hash)."""
        return self._tables[0]

    @property
    def trainable(self) -> bool:
        return self._trainable

    @property
    def checkpoint(self) -> bool:
        return self._checkpoint

    @property
    def initializer(self) -> InitializerLike:
        return self._initializer

    @property
    def kv_creator(self) -> RedisTableCreator:
        return self._kv_creator

    @property
    def restrict_policy(self) -> RestrictPolicy | None:
        return self._restrict_policy

    @property
    def bp_v2(self) -> bool:
        return self._bp_v2

    @property
    def short_file_name(self) -> bool:
        """TFRA's flag: optimizer slot tables are named ``<params>_<slot>`` (without the
        wrapper's name in the middle)."""
        return self._short_file_name

    @property
    def shadow_name(self) -> str:
        """The name of this variable's default trainable wrapper (the one lookups without a
        name use); its optimizer slot tables carry it."""
        return self._shadow_name if self._shadow_name is not None else f"{self._name}_shadow"

    # -- trainable wrappers -------------------------------------------------------------------

    def trainable_wrapper(self, name: str | None = None) -> TrainableWrapper:
        """The trainable wrapper named ``name`` (default :attr:`shadow_name`), created on first
        use: what a lookup by that name stages its rows in during a training step."""
        name = self.shadow_name if name is None else name
        wrapper = self._trainable_store.get(name)
        if wrapper is None:
            wrapper = TrainableWrapper(self, name, trainable=self._trainable)
            self._trainable_store[name] = wrapper
        return wrapper

    @property
    def trainable_store(self) -> dict[str, TrainableWrapper]:
        """The trainable wrappers of this variable, by name (TFRA's ``trainable_store``)."""
        return dict(self._trainable_store)

    def get_trainable_by_name(self, name: str) -> TrainableWrapper | None:
        """The trainable wrapper called ``name``, if a lookup made one."""
        return self._trainable_store.get(name)

    def get_slot_variables(self, optimizer: keras.optimizers.Optimizer) -> list[Variable]:
        """The optimizer slot variables (Redis tables) ``optimizer`` made for this variable's
        wrappers."""
        slots: list[Variable] = []
        for wrapper in self._trainable_store.values():
            slot_variables = getattr(optimizer, "slot_variables", None)
            if slot_variables is None and hasattr(optimizer, "inner_optimizer"):
                slot_variables = getattr(optimizer.inner_optimizer, "slot_variables", None)
            if slot_variables is not None:
                slots.extend(slot_variables(wrapper).values())
        return slots

    @property
    def initializer_generator(self) -> tf.random.Generator | None:
        """The ``tf.random.Generator`` random default rows come from (``None`` for constant
        initializers and initializers seeded by a ``keras.random.SeedGenerator``)."""
        return self._row_init.generator

    @property
    def default_value(self) -> np.ndarray:
        """The shared default row (used when the initializer is a constant)."""
        return self._row_init.default_row

    def __repr__(self) -> str:
        return (
            f"de.Variable(name={self._name!r}, dim={self._dim}, key_dtype={self._key_dtype.name}, "
            f"value_dtype={self._value_dtype.name}, table={self.table.store.name!r})"
        )

    # -- defaults -----------------------------------------------------------------------------

    def default_rows(self, keys: tf.Tensor) -> tf.Tensor | None:
        """Per-key default rows shaped ``keys.shape + [dim]``, or ``None`` when every missing
        key shares :attr:`default_value`."""
        if not self._row_init.per_key:
            return None
        count = keys.shape.num_elements()
        rows = self._row_init.rows(count if count is not None else tf.size(keys))
        if keys.shape.rank == 1:
            return rows
        out = tf.reshape(rows, tf.concat([tf.shape(keys), [self._dim]], 0))
        out.set_shape(keys.shape.concatenate([self._dim]))
        return out

    # -- ops ----------------------------------------------------------------------------------

    def lookup(self, keys: TensorLike, return_exists: bool = False, name: str | None = None) -> Any:
        """Rows for ``keys`` (any shape): ``keys.shape + [dim]``; missing keys get initializer
        rows. With ``return_exists`` also a bool tensor saying which keys were stored."""
        keys = self.table._convert_keys(keys, "lookup")
        # Drawing default rows advances the initializer's generator: a pass that only collects
        # keys (for prefetching) must not draw, or training would not be reproducible.
        defaults = None if is_collecting_lookup_keys() else self.default_rows(keys)
        return self.table.lookup(
            keys,
            dynamic_default_values=defaults,
            return_exists=return_exists,
            name=name,
        )

    def upsert(self, keys: TensorLike, values: TensorLike, name: str | None = None) -> Any:
        """Inserts or updates rows; ``values`` has shape ``keys.shape + [dim]``."""
        return self.table.insert(keys, values, name=name)

    def accum(
        self,
        keys: TensorLike,
        old_values: TensorLike,
        new_values: TensorLike,
        exists: TensorLike,
        name: str | None = None,
    ) -> Any:
        """TFRA's BP-v2 write: adds ``new - old`` to keys that existed at lookup time and still
        do, and inserts ``new`` for keys that did not exist and still do not."""
        keys = self.table._convert_keys(keys, "accum")
        old = self.table._convert_values(old_values, keys, "old_values", "accum")
        new = self.table._convert_values(new_values, keys, "new_values", "accum")
        exists = tf.convert_to_tensor(exists, dtype=tf.bool)
        flags = tf.reshape(exists, tf.concat([tf.shape(exists), [1]], 0))
        deltas = tf.where(flags, new - old, new)
        return self.table.accum(keys, deltas, exists, name=name)

    def remove(self, keys: TensorLike, name: str | None = None) -> Any:
        """Removes keys; missing ones are ignored."""
        return self.table.remove(keys, name=name)

    def clear(self, name: str | None = None) -> Any:
        """Removes every row."""
        return self.table.clear(name=name)

    def size(self, index: int | None = None, name: str | None = None) -> tf.Tensor:
        """The number of ids stored (an int64 scalar)."""
        return self.table.size(name=name)

    def export(self, name: str | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """All ``(ids, rows)``; the table must fit in memory."""
        return self.table.export(name=name)

    def restrict(self, num_reserved: int, **kwargs: Any) -> int | None:
        """Keeps the ``num_reserved`` newest or most used ids (per the restrict policy) if more
        than ``trigger`` (default ``num_reserved``) are stored, removing the others from this
        variable, its status table and its optimizer slot tables; returns how many were
        removed. Runs now (eagerly), streaming the status table from Redis. Without a policy
        it logs TFRA's warning and returns ``None``."""
        if self._restrict_policy is None:
            logging.getLogger("tfra_redis").warning(
                "Call restrict without setting restrict policy."
            )
            return None
        return self._restrict_policy.apply_restriction(num_reserved, **kwargs)


# Variables by full name, like TF1's variable store; weak, so a dropped variable frees its name.
_VARIABLES: weakref.WeakValueDictionary[str, Variable] = weakref.WeakValueDictionary()


def get_variable(
    name: str,
    key_dtype: DTypeLike = tf.int64,
    value_dtype: DTypeLike = tf.float32,
    dim: int = 1,
    devices: DevicesLike = None,
    partitioner: object = None,
    shared_name: str | None = "get_variable",
    initializer: InitializerLike = None,
    trainable: bool = True,
    checkpoint: bool = True,
    init_size: int = 0,
    kv_creator: RedisTableCreator | None = None,
    restrict_policy: type[RestrictPolicy] | None = None,
    bp_v2: bool = False,
    KVCreator: RedisTableCreator | None = None,  # noqa: N803 - the spelling of the seed design note
    reuse: object = None,
    short_file_name: bool = False,
    shadow_name: str | None = None,
) -> Variable:
    """Gets an existing :class:`Variable` with this name (prefixed by the current
    ``tf.compat.v1.variable_scope``) or creates one (TFRA's ``de.get_variable``).

    ``KVCreator=`` is accepted as an alias of ``kv_creator=``. ``reuse=False`` (or a TF1 graph
    variable scope with ``reuse=False``) refuses an existing name with ``ValueError``;
    ``reuse=True`` requires one.
    """
    if KVCreator is not None:
        if kv_creator is not None and kv_creator is not KVCreator:
            raise ValueError("pass kv_creator or KVCreator, not both")
        kv_creator = KVCreator
    scope = tf.compat.v1.get_variable_scope()
    full_name = f"{scope.name}/{name}" if scope.name and not short_file_name else name
    if reuse is None and not tf.executing_eagerly() and not tf.inside_function():
        reuse = scope.reuse  # TF1 graph mode: the scope decides
    existing = _VARIABLES.get(full_name)
    if existing is not None:
        if reuse is False:
            raise ValueError(
                f"Variable {full_name} already exists, disallowed. Did you mean to set "
                "reuse=True or reuse=tf.AUTO_REUSE in VarScope?"
            )
        return existing
    if reuse is True:
        raise ValueError(
            f"Variable {full_name} does not exist, or was not created with "
            "tf.get_variable(). Did you mean to set reuse=tf.AUTO_REUSE in VarScope?"
        )
    variable = Variable(
        key_dtype=key_dtype,
        value_dtype=value_dtype,
        dim=dim,
        devices=devices,
        partitioner=partitioner,
        shared_name=shared_name,
        name=full_name,
        initializer=initializer,
        trainable=trainable,
        checkpoint=checkpoint,
        init_size=init_size,
        kv_creator=kv_creator,
        restrict_policy=restrict_policy,
        bp_v2=bp_v2,
        short_file_name=short_file_name,
        shadow_name=shadow_name,
    )
    _VARIABLES[full_name] = variable
    return variable


def one_variable(params: Any) -> Variable:
    """``params`` as the one ``de.Variable`` a lookup takes (TFRA also accepts a list of one)."""
    if isinstance(params, (list, tuple)):
        if len(params) != 1:
            raise ValueError(f"params must be one de.Variable, got a list of {len(params)}")
        params = params[0]
    if not isinstance(params, Variable):
        raise TypeError(f"params must be a de.Variable, got {type(params).__name__}")
    return params


def embedding_lookup(
    params: Variable,
    ids: TensorLike,
    partition_strategy: object = None,
    name: str | None = None,
    validate_indices: object = None,
    max_norm: float | None = None,
    return_trainable: bool = False,
) -> Any:
    """Rows of ``ids`` (any rank): shape ``ids.shape + [dim]`` (TFRA's ``de.embedding_lookup``).

    Duplicate ids are looked up once; RaggedTensor ids give a RaggedTensor. During a
    training step (a ``GradientTape`` recording, model mode TRAIN, ``params`` trainable) the
    rows are staged in the trainable wrapper
    ``name`` (default ``params.shadow_name``), which the tape watches and
    ``de.DynamicEmbeddingOptimizer`` applies gradients to; ``tape.watched_variables()`` lists
    it. With ``return_trainable`` also returns that wrapper (TFRA returns it eagerly only; here
    inside ``tf.function`` too). ``partition_strategy`` and ``validate_indices`` are accepted
    for TFRA compatibility and ignored.
    """
    params = one_variable(params)
    wrapper = params.trainable_wrapper(name) if return_trainable else None
    embeddings = lookup_rows(params, ids, wrapper_name=name, training=None, max_norm=max_norm)
    if return_trainable:
        return embeddings, wrapper
    return embeddings


def lookup_rows(
    params: Variable,
    ids: TensorLike,
    *,
    wrapper_name: str | None,
    training: Any,
    max_norm: float | None = None,
    wrapper: TrainableWrapper | None = None,
) -> tf.Tensor:
    """The lookup behind ``embedding_lookup`` and the Keras layers: unique ids read once, rows
    staged in the wrapper when a training step is recording (see :mod:`.trainable`); ragged
    ids give ragged rows."""
    if isinstance(ids, tf.RaggedTensor):
        rows = lookup_rows(
            params,
            ids.flat_values,
            wrapper_name=wrapper_name,
            training=training,
            max_norm=max_norm,
            wrapper=wrapper,
        )
        return ids.with_flat_values(rows)
    ids = params.table._convert_keys(ids, "embedding_lookup")
    out_shape = ids.shape.concatenate([params.dim])
    flat = tf.reshape(ids, [-1])
    unique_ids, index = tf.unique(flat)
    staging = stages_rows(params, training) and not is_collecting_lookup_keys()
    if staging and wrapper is None:
        wrapper = params.trainable_wrapper(wrapper_name)
    if wrapper is not None and staging and params.table.store.fused_row:
        rows = _lookup_with_slots(params, wrapper, unique_ids)
    else:
        rows = params.lookup(unique_ids)
    if wrapper is not None and staging:
        offset = wrapper.stage_rows(unique_ids, rows)
        embeddings = wrapper.gather(offset + index)
    else:
        embeddings = tf.gather(rows, index)
    if ids.shape.rank != 1:
        embeddings = tf.reshape(embeddings, tf.concat([tf.shape(ids), [params.dim]], 0))
    embeddings.set_shape(out_shape)
    # Half-precision rows are staged (and trained) in float32; the lookup gives the table's
    # dtype either way.
    embeddings = tf.cast(embeddings, params.value_dtype)
    if max_norm is not None:
        embeddings = tf.clip_by_norm(embeddings, max_norm, axes=[-1])
    return embeddings


def _lookup_with_slots(params: Variable, wrapper: TrainableWrapper, ids: tf.Tensor) -> tf.Tensor:
    """A staging lookup of a ``redis_fused_row`` table: reads each id's row and optimizer
    slots in one field and keeps the slots for the optimizer step (see :mod:`._fused_row`).
    Until the optimizer has made its slots (the first step) it reads rows only."""
    table = params.table
    defaults = params.default_rows(ids)
    inputs = [ids, applied_steps().read_value()]
    if defaults is not None:
        inputs.append(tf.convert_to_tensor(defaults, dtype=params.value_dtype))

    def find(keys: np.ndarray, step: np.int64, default: np.ndarray | None = None) -> np.ndarray:
        store = table.store
        if default is None:
            default = table._np_default
        row_slots = wrapper.row_slots
        if keys.size == 0:
            return np.zeros((0, params.dim), dtype=store.np_value_dtype)
        # Prefetched rows hold no slots: the optimizer then reads them itself.
        if row_slots is None or store._prefetcher.pending:
            rows: np.ndarray = store.find(keys, default)
            return rows
        found: np.ndarray = row_slots.lookup(keys, int(step), default)
        return found

    rows = table._call(find, inputs, params.value_dtype, f"{table._op_prefix}_lookup_with_slots")
    rows.set_shape(ids.shape.concatenate([params.dim]))
    return rows
