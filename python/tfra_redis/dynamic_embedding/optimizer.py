"""``de.DynamicEmbeddingOptimizer``: any built-in Keras 3 optimizer, training Redis-backed rows too.

TFRA's ``DynamicEmbeddingOptimizer(opt)`` patches the optimizer instance and returns it; so does
this one (the instance's class becomes a subclass of its own class, so ``isinstance`` and
``get_config`` are unchanged and ``.keras`` files record it as ``DynamicEmbedding<Name>``).

What it does with a step's gradients:

* Dense variables go to the wrapped optimizer unchanged.
* A trainable wrapper (the rows the step looked up, see ``trainable``) has its repeated ids
  merged (gradients summed), and its optimizer slot rows are read from Redis into slot buffers
  (one pipeline per table group). Then **the wrapped optimizer's own ``apply``** runs on dense
  variables and buffers together: learning-rate schedules, ``iterations``, ``clipnorm`` /
  ``clipvalue`` / ``global_clipnorm``, ``weight_decay``, loss scaling and the update math are
  Keras' own code, so the touched rows and slots end up exactly as Keras would leave a dense
  variable holding just those rows. Last, rows and slots are written back (one pipeline).

The update is lazy, as TFRA's: rows absent from a step keep their value and their slots (no
momentum decay, no weight decay). ``clipnorm`` clips each wrapper's gradient over the step's
rows; ``global_clipnorm`` includes them in the global norm.

With ``redis_fused_row`` there are no slot tables: an id's slots follow its row in the
embedding's own field, the lookup reads both and keeps the slots for the step, and the
write-back stores row and slots as one value (see ``fused_row``).

Building the optimizer refuses (``ConfigError``) a slot layout (per-slot tables,
``redis_fused_slots``, ``redis_fused_row``) that holds none of an embedding's slots while another
layout holds some: ``tfra-redis convert-slots`` moves them first.

Slot tables are named as TFRA names them: ``<params>/<wrapper>/<slot>`` with ``/`` turned into
``_`` and Keras 3's slot names mapped to tf_keras' (Adam's ``momentum``/``velocity`` are
``m``/``v``), so slots written by TFRA continue training here and the other way round.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf

from tfra_redis import _native
from tfra_redis._types import InitializerLike
from tfra_redis.dynamic_embedding._fused_row import FusedRowSlots, RowSlots
from tfra_redis.dynamic_embedding.trainable import (
    DynamicRows,
    TrainableWrapper,
    applied_steps,
    update_dtype,
    updating_buffers,
    wrapper_of,
)
from tfra_redis.dynamic_embedding.variable import Variable
from tfra_redis.prefetch import run_concurrently
from tfra_redis.store import find_together, insert_together
from tfra_redis.table import run_numpy

__all__ = ["SUPPORTED_OPTIMIZERS", "DynamicEmbeddingOptimizer"]

#: The Keras optimizers (and their subclasses) whose update is row by row, so that updating the
#: looked-up rows alone is what Keras computes on a variable holding just those rows.
SUPPORTED_OPTIMIZERS = (
    "SGD",
    "Adam",
    "AdamW",
    "Adamax",
    "Nadam",
    "Adagrad",
    "Adadelta",
    "RMSprop",
    "Ftrl",
    "Lion",
)

# Keras 3 names slots differently from tf_keras, whose names TFRA's tables carry.
_ADAM_SLOTS = {"momentum": "m", "velocity": "v", "velocity_hat": "vhat"}
_TFRA_SLOT_NAMES: dict[str, dict[str, str]] = {
    "SGD": {"momentum": "m"},
    "Adam": _ADAM_SLOTS,
    "AdamW": _ADAM_SLOTS,
    "Nadam": {"momentum": "m", "velocity": "v"},
    "Adamax": {"momentum": "m", "norm": "u"},
    "Lion": {"momentum": "m"},
}


def _keras_base(cls: type) -> str | None:
    """The built-in Keras optimizer ``cls`` is or derives from, if a supported one."""
    for klass in cls.__mro__:
        if klass.__name__ in SUPPORTED_OPTIMIZERS and klass.__module__.startswith("keras."):
            return klass.__name__
    return None


@dataclass
class _Slot:
    """One optimizer slot of one wrapper: its buffer (what Keras' math updates), the row a
    never-updated id starts from, and TFRA's name for it."""

    keras_name: str
    tfra_name: str
    buffer: DynamicRows
    default: np.ndarray


@dataclass
class _SlotTable:
    """A table holding slots of one wrapper: one slot (TFRA's layout), all of them side by
    side in each row (``redis_fused_slots``), or the view of the embedding's own values that
    holds them after each row (``redis_fused_row``, a ``FusedRowSlots``)."""

    variable: Variable | FusedRowSlots
    slots: list[_Slot]

    @property
    def default(self) -> np.ndarray:
        return np.concatenate([slot.default for slot in self.slots])


class _State:
    """What the mixin adds to an optimizer instance (kept out of Keras' attribute tracking)."""

    def __init__(self) -> None:
        self.slots: dict[int, list[_Slot]] = {}  # by id of the wrapper
        self.tables: dict[int, list[_SlotTable]] = {}  # by id of the wrapper
        self.wrappers: dict[int, TrainableWrapper] = {}  # the wrappers it was built with


def _state(optimizer: Any) -> _State:
    state: _State | None = optimizer.__dict__.get("_tfra_state")
    if state is None:
        state = _State()
        # object.__setattr__: Keras' optimizer tracking must not see it.
        object.__setattr__(optimizer, "_tfra_state", state)
    return state


def _check_no_strategy() -> None:
    if tf.distribute.has_strategy():
        raise NotImplementedError(
            "Training Redis-backed dynamic embeddings under a tf.distribute strategy is not "
            "supported yet; train one process per worker (each with its own optimizer) "
            "against the shared Redis tables"
        )


def _slot_variable_name(params: Variable, wrapper: TrainableWrapper, slot: str) -> str:
    """TFRA's name of a slot variable: ``<params>/<wrapper>/<slot>``, or ``<params>/<slot>``
    with ``short_file_name`` (then two optimizers with the same slot share it, as in TFRA)."""
    if params.short_file_name:
        return f"{params.name}/{slot}"
    return f"{params.name}/{wrapper.wrapper_name}/{slot}"


def _fused_slots(params: Variable) -> bool:
    """Whether the config of ``params`` keeps all its optimizer slots in one table."""
    return params.table.store.slot_layout == "fused"


def _check_slot_layout(wrapper: TrainableWrapper, slots: list[_Slot]) -> None:
    """Raises ``ConfigError`` when the slot layout the config picks (per-slot tables,
    ``redis_fused_slots`` or ``redis_fused_row``) holds none of this embedding's slots while
    another layout holds some (or a conversion is unfinished): training would silently restart
    the optimizer from fresh slots. One ``HLEN`` per bucket of each slot table and a one-page
    ``HSCAN`` per bucket of the embedding's table, once per embedding when the optimizer
    builds, never per step."""
    params = wrapper.params
    _native.check_slot_layout(
        params.table.store.config,
        params.name,
        None if params.short_file_name else wrapper.wrapper_name,
        [slot.tfra_name for slot in slots],
        params.table.store.slot_layout,
        params.table.store.key_dtype,
        params.table.store.value_dtype,
        params.dim,
    )


def _fused_row(params: Variable) -> bool:
    """Whether the config of ``params`` keeps an id's optimizer slots in its row's field."""
    return params.table.store.fused_row


def _table_identity(variable: Variable) -> tuple[str, str]:
    store = variable.table.store
    return store.config.to_json(), store.name


# The mixin goes in front of a Keras optimizer class; to mypy, give it the optimizer's attributes.
if TYPE_CHECKING:
    from keras.optimizers import Optimizer as _MixinBase
else:
    _MixinBase = object


class _DynamicEmbeddingMixin(_MixinBase):
    """Mixed into the class of an optimizer by :func:`DynamicEmbeddingOptimizer`."""

    built: bool  # keras.optimizers.Optimizer's

    # -- slots --------------------------------------------------------------------------------

    def add_variable_from_reference(
        self,
        reference_variable: Any,
        name: str | None = None,
        initializer: InitializerLike = "zeros",
    ) -> Any:
        wrapper = wrapper_of(reference_variable)
        if wrapper is None:
            return super().add_variable_from_reference(
                reference_variable, name=name, initializer=initializer
            )
        return self._tfra_add_slot(wrapper, name or "var", initializer)

    def _tfra_add_slot(
        self, wrapper: TrainableWrapper, name: str, initializer: InitializerLike
    ) -> Any:
        if name == "gradient_accumulator":
            raise NotImplementedError(
                "gradient_accumulation_steps is not supported with dynamic embeddings: each "
                "step looks up different rows, so their gradients cannot be accumulated"
            )
        params = wrapper.params
        base = _keras_base(type(self)) or ""
        slot_name = _TFRA_SLOT_NAMES.get(base, {}).get(name, name)
        init = keras.initializers.get(initializer)
        with tf.init_scope():  # build may run while a step is traced: make these eagerly
            default = np.asarray(
                keras.ops.convert_to_numpy(init(shape=(params.dim,), dtype="float32")),
                dtype=np.float32,
            )
            buffer = DynamicRows(
                params.dim,
                update_dtype(params.value_dtype),
                name=f"{wrapper.name}_{name}",
                trainable=False,
                guarded=False,
            )
        slot = _Slot(name, slot_name, buffer, default)
        _state(self).slots.setdefault(id(wrapper), []).append(slot)
        if not (_fused_slots(params) or _fused_row(params)):
            variable = self._tfra_slot_table(
                params, _slot_variable_name(params, wrapper, slot_name), default
            )
            _state(self).tables.setdefault(id(wrapper), []).append(_SlotTable(variable, [slot]))
        return buffer

    def _tfra_slot_table(self, params: Variable, name: str, default: np.ndarray) -> Variable:
        """A slot table of ``params`` whose rows start as ``default`` (one or more slots side
        by side), in the embedding's dtype (TFRA's slot tables hold it; staged in float32)."""
        with tf.init_scope():
            variable = Variable(
                key_dtype=params.key_dtype,
                value_dtype=params.value_dtype,
                dim=default.shape[0],
                initializer=default,
                name=name,
                trainable=False,
                checkpoint=params.checkpoint,
                kv_creator=params.kv_creator,
            )
        # A checkpoint dependency of the optimizer, as TFRA's optimizer tracks its slot tables:
        # tf.train.Checkpoint(optimizer=...) saves and restores them (per table_store_mode),
        # also when the restore ran before this slot existed.
        self._track_trackable(
            variable, name=f"tfra_slot:{variable.table.store.name}", overwrite=True
        )
        if params.restrict_policy is not None:
            params.restrict_policy.track_slot(variable)
        return variable

    def _tfra_row_slots(
        self, wrapper: TrainableWrapper, name: str, default: np.ndarray
    ) -> FusedRowSlots:
        """The slots of ``wrapper`` kept in its embedding's rows (``redis_fused_row``): a
        checkpoint dependency as a slot table is, and where the wrapper's lookups keep the
        slots they read. No restrict policy needs them: they go with the row."""
        params = wrapper.params
        with tf.init_scope():
            view = FusedRowSlots(params.table, name, default)
        self._track_trackable(
            view, name=f"tfra_slot:{params.table.store.name}:row_slots", overwrite=True
        )
        wrapper.row_slots = RowSlots(params.table.store, default)
        return view

    def slot_variables(self, wrapper: Any) -> dict[str, Variable]:
        """The slot tables of a wrapper (or of the layer or ``de.Variable`` owning one
        wrapper), by TFRA's slot name; with ``redis_fused_slots`` the one table ``slots``."""
        wrapper = _as_wrapper(wrapper)
        return {
            table.variable.name.rsplit("/", 1)[-1]: table.variable
            for table in _state(self).tables.get(id(wrapper), [])
        }

    # -- building -----------------------------------------------------------------------------

    def build(self, variables: Any) -> None:
        mapped = [_as_model_variable(v) for v in variables]
        wrappers = [v for v in mapped if isinstance(v, TrainableWrapper)]
        if wrappers:
            _check_no_strategy()
            self._tfra_check_wrappers(wrappers)
            state = _state(self)
            state.wrappers.update((id(w), w) for w in wrappers)
        super().build(mapped)
        state = _state(self)
        for wrapper in wrappers:
            slots = state.slots.get(id(wrapper), [])
            if not slots:
                continue
            # Per-slot tables were made with their slots (add_variable_from_reference); the
            # check runs for them too, so it must not hide behind "tables already made".
            if id(wrapper) not in state.tables:
                name = _slot_variable_name(wrapper.params, wrapper, "slots")
                default = np.concatenate([slot.default for slot in slots])
                if _fused_slots(wrapper.params):
                    variable = self._tfra_slot_table(wrapper.params, name, default)
                    state.tables[id(wrapper)] = [_SlotTable(variable, list(slots))]
                elif _fused_row(wrapper.params):
                    view = self._tfra_row_slots(wrapper, name, default)
                    state.tables[id(wrapper)] = [_SlotTable(view, list(slots))]
            _check_slot_layout(wrapper, slots)

    def _tfra_check_wrappers(self, wrappers: list[TrainableWrapper]) -> None:
        owners: dict[tuple[str, str], TrainableWrapper] = {}
        for wrapper in wrappers:
            params = wrapper.params
            if not params.value_dtype.is_floating:
                raise TypeError(
                    f"{params.name!r} holds {params.value_dtype.name} rows; only floating-point "
                    "embeddings (float16, bfloat16, float32, float64) can be trained"
                )
            if params.bp_v2:
                raise NotImplementedError(
                    f"{params.name!r} has bp_v2=True: training with accumulated (bp_v2) "
                    "writes is not supported yet"
                )
            key = _table_identity(params)
            other = owners.setdefault(key, wrapper)
            if other is not wrapper and other.params is not params:
                raise ValueError(
                    f"two embeddings would train the same Redis table {key[1]!r}: "
                    f"{other.wrapper_name!r} and {wrapper.wrapper_name!r} (give the layers "
                    "different names)"
                )
            if other is not wrapper and _fused_row(params):
                # Each wrapper has slots of its own, but a fused row has room for one set.
                raise ValueError(
                    f"two trainable wrappers of {params.name!r} ({other.wrapper_name!r} and "
                    f"{wrapper.wrapper_name!r}) would keep their optimizer slots in the same "
                    "redis_fused_row values; train one wrapper per embedding, or use "
                    "redis_fused_slots"
                )

    # -- a step -------------------------------------------------------------------------------

    def apply(self, grads: Any, trainable_variables: Any = None) -> Any:
        grads = list(grads)
        if trainable_variables is None:
            if not self.built:
                return super().apply(grads)  # Keras' own error
            variables = list(self._trainable_variables)
        else:
            variables = [_as_model_variable(v) for v in trainable_variables]
        staged = [
            i
            for i, (g, v) in enumerate(zip(grads, variables, strict=False))
            if g is not None and isinstance(v, TrainableWrapper)
        ]
        if not staged:
            return super().apply(grads, variables)
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(variables)
            self.built = True
        _check_no_strategy()
        state = _state(self)
        wrappers = [variables[i] for i in staged]
        unknown = [w.wrapper_name for w in wrappers if id(w) not in state.wrappers]
        if unknown:
            raise ValueError(
                f"the optimizer was built before the embedding lookups {unknown} existed; "
                "Keras optimizers cannot add variables once built. Make every lookup before "
                "the first step (the Keras layers create theirs in __init__), or use a new "
                "optimizer"
            )
        for i in staged:
            grads[i] = variables[i].merged_gradient(grads[i])
        self._tfra_read_slots(wrappers)
        with updating_buffers():
            result = super().apply(grads, variables)
        self._tfra_write_back(wrappers)
        applied_steps().assign_add(1)
        return result

    def _tfra_read_slots(self, wrappers: list[TrainableWrapper]) -> None:
        state = _state(self)
        groups = [(w, state.tables.get(id(w), [])) for w in wrappers]
        groups = [(w, tables) for w, tables in groups if tables]
        if not groups:
            return
        stores = [[t.variable.table.store for t in tables] for _, tables in groups]
        defaults = [[t.default for t in tables] for _, tables in groups]
        # redis_fused_row: the slots the step's lookups read with the rows.
        row_slots = [w.row_slots if _fused_row(w.params) else None for w, _ in groups]
        # One array per slot, in table order: fused tables are split into their slots.
        layout = [len(t.slots) for _, tables in groups for t in tables]
        slots = [s for _, tables in groups for t in tables for s in t.slots]
        dtypes = [s.buffer.value.dtype for s in slots]

        def read(*inputs: np.ndarray) -> list[np.ndarray]:
            *key_sets, step = inputs
            calls = [
                functools.partial(find_together, stores[i], keys, defaults[i])
                if row_slots[i] is None
                else functools.partial(_take_row_slots, row_slots[i], keys, int(step))
                for i, keys in enumerate(key_sets)
            ]
            found = [rows for result in run_concurrently(calls) for rows in result]
            split = [
                part
                for rows, k in zip(found, layout, strict=True)
                for part in np.split(rows, k, axis=1)
            ]
            return [
                np.ascontiguousarray(r, dtype=d.as_numpy_dtype)
                for r, d in zip(split, dtypes, strict=True)
            ]

        inputs = [w.ids for w, _ in groups] + [applied_steps().read_value()]
        rows = run_numpy(read, inputs, dtypes, "tfra_read_slots")
        for slot, value in zip(slots, rows, strict=True):
            slot.buffer.stage(tf.reshape(value, [-1, slot.buffer.dim]))

    def _tfra_write_back(self, wrappers: list[TrainableWrapper]) -> None:
        state = _state(self)
        layout = []
        policies = []
        inputs: list[Any] = []
        fused = []
        for wrapper in wrappers:
            tables = state.tables.get(id(wrapper), [])
            fused.append(_fused_row(wrapper.params))
            if fused[-1]:  # one value per id: the row, then its slots
                stores = [wrapper.params.table.store] * (1 + len(tables))
            else:
                stores = [wrapper.params.table.store] + [t.variable.table.store for t in tables]
            layout.append(stores)
            policies.append(wrapper.params.restrict_policy)
            inputs.append(wrapper.ids)
            inputs.append(wrapper.value)
            for table in tables:
                if len(table.slots) == 1:
                    inputs.append(table.slots[0].buffer.value)
                else:  # a fused row: every slot side by side
                    inputs.append(tf.concat([s.buffer.value for s in table.slots], axis=1))

        def write(*arrays: np.ndarray) -> np.int64:
            calls = []
            at = written = 0
            updated = []
            for stores, policy, whole in zip(layout, policies, fused, strict=True):
                keys = arrays[at]
                rows = arrays[at + 1 : at + 1 + len(stores)]
                at += 1 + len(stores)
                written += keys.size
                if not keys.size:
                    continue
                if whole:
                    slots = rows[1] if len(rows) > 1 else np.zeros((keys.size, 0), rows[0].dtype)
                    calls.append(
                        functools.partial(stores[0].insert_with_slots, keys, rows[0], slots)
                    )
                else:
                    calls.append(functools.partial(insert_together, stores, keys, rows))
                if policy is not None:
                    updated.append((policy, keys))
            run_concurrently(calls)
            # TFRA updates the restrict status after the write-back, for the params only.
            for policy, keys in updated:
                policy.apply_update(keys)
            return np.int64(written)

        run_numpy(write, inputs, tf.int64, "tfra_write_rows")

    # -- .keras files -------------------------------------------------------------------------

    def _tfra_slot_tables(self) -> list[_SlotTable]:
        state = _state(self)
        return [table for tables in state.tables.values() for table in tables]

    def save_own_variables(self, store: Any) -> None:
        super().save_own_variables(store)
        for slot in self._tfra_slot_tables():
            if not slot.variable.checkpoint:
                continue
            slot.variable.table.save_rows_to(store, _file_prefix(slot))

    def load_own_variables(self, store: Any) -> None:
        super().load_own_variables(_WithoutSlotTables(store))
        for slot in self._tfra_slot_tables():
            if slot.variable.checkpoint:
                slot.variable.table.restore_rows_from(store, _file_prefix(slot))


_SLOT_FILE_PREFIX = "tfra_slot:"


def _take_row_slots(row_slots: RowSlots | None, keys: np.ndarray, step: int) -> list[np.ndarray]:
    """The slots of a ``redis_fused_row`` wrapper's merged ids (as ``find_together`` returns
    rows: one array per table)."""
    assert row_slots is not None
    return [row_slots.take(keys, step)]


def _file_prefix(slot: _SlotTable) -> str:
    return f"{_SLOT_FILE_PREFIX}{slot.variable.table.store.name}:"


class _WithoutSlotTables:
    """A view of a Keras weights store without our slot-table entries (Keras counts the
    entries against its own variables)."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def keys(self) -> list[str]:
        return [k for k in self._store.keys() if not str(k).startswith(_SLOT_FILE_PREFIX)]

    def __getitem__(self, key: str) -> Any:
        return self._store[key]

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def __len__(self) -> int:
        return len(self.keys())


def _as_model_variable(variable: Any) -> Any:
    """The wrapper a watched buffer belongs to, else ``variable`` itself."""
    wrapper = wrapper_of(variable)
    return variable if wrapper is None else wrapper


def _as_wrapper(thing: Any) -> TrainableWrapper:
    wrapper = wrapper_of(thing)
    if wrapper is not None:
        return wrapper
    shadow = getattr(thing, "shadow", None)
    if isinstance(shadow, TrainableWrapper):
        return shadow
    store = getattr(thing, "trainable_store", None)
    if isinstance(store, dict) and len(store) == 1:
        (only,) = store.values()
        if isinstance(only, TrainableWrapper):
            return only
    raise TypeError(f"{thing!r} is not a trainable wrapper, a layer or a de.Variable with one")


_DE_CLASSES: dict[type, type] = {}


def _dynamic_embedding_class(cls: type) -> type:
    de_cls = _DE_CLASSES.get(cls)
    if de_cls is None:
        de_cls = type(
            f"DynamicEmbedding{cls.__name__}",
            (_DynamicEmbeddingMixin, cls),
            {
                "__module__": __name__,
                "__doc__": f"{cls.__name__} that also trains Redis-backed dynamic embeddings "
                "(made by de.DynamicEmbeddingOptimizer).",
            },
        )
        # Registered so that keras.models.load_model finds it without custom_objects.
        keras.saving.register_keras_serializable(package="tfra_redis")(de_cls)
        _DE_CLASSES[cls] = de_cls
    return de_cls


def DynamicEmbeddingOptimizer(  # noqa: N802 - TFRA's name for a function
    self: keras.optimizers.Optimizer,
    bp_v2: bool = False,
    synchronous: bool = False,
    **kwargs: Any,
) -> keras.optimizers.Optimizer:
    """Makes a Keras 3 optimizer train Redis-backed dynamic embeddings too; returns the same
    object (as TFRA does).

    Args:
        self: a ``keras.optimizers`` instance of one of :data:`SUPPORTED_OPTIMIZERS` (or a
            subclass of one), a ``keras.optimizers.LossScaleOptimizer`` around one, or a name
            ``keras.optimizers.get`` knows (``"adam"``).
        bp_v2: TFRA's accumulated writes for slot tables; not supported yet (``ValueError``).
        synchronous: TFRA's Horovod path; not supported (``ValueError``).

    Raises:
        TypeError: the optimizer is not a Keras 3 optimizer, or is of a kind whose update is
            not row by row (the message lists the supported ones).
        ValueError: the optimizer was already built, or an unsupported option was given.
    """
    if bp_v2:
        raise ValueError("DynamicEmbeddingOptimizer(bp_v2=True) is not supported yet")
    if synchronous:
        raise ValueError(
            "DynamicEmbeddingOptimizer(synchronous=True) is TFRA's Horovod path, which "
            "tfra-redis does not support"
        )
    if kwargs:
        raise TypeError(f"unexpected arguments {sorted(kwargs)}")
    optimizer = self
    if isinstance(optimizer, str):
        optimizer = keras.optimizers.get(optimizer)
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        DynamicEmbeddingOptimizer(optimizer.inner_optimizer)
        return optimizer
    if isinstance(optimizer, _DynamicEmbeddingMixin):
        return optimizer
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(
            "DynamicEmbeddingOptimizer takes a Keras 3 optimizer (keras.optimizers.*), got "
            f"{type(optimizer).__module__}.{type(optimizer).__name__}; tf_keras and legacy "
            "optimizers are not supported"
        )
    if _keras_base(type(optimizer)) is None:
        raise TypeError(
            f"{type(optimizer).__name__} is not supported by DynamicEmbeddingOptimizer: only "
            "optimizers that update each row on its own can train rows looked up from Redis. "
            f"Supported: {', '.join(SUPPORTED_OPTIMIZERS)} (and their subclasses)"
        )
    if optimizer.built:
        raise ValueError(
            f"optimizer {optimizer.name!r} is already built; wrap it with "
            "DynamicEmbeddingOptimizer before its first step"
        )
    optimizer.__class__ = _dynamic_embedding_class(type(optimizer))
    return optimizer


for _name in SUPPORTED_OPTIMIZERS:
    _dynamic_embedding_class(getattr(keras.optimizers, _name))
