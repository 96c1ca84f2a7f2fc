"""Sparse optimizers that update embedding rows stored in Redis, with the Keras 3 optimizers' math.

This is the numpy API, for training loops without TensorFlow (or feeding gradients computed
elsewhere). TensorFlow/Keras models use ``de.DynamicEmbeddingOptimizer``, which runs the wrapped
Keras optimizer's own update on the looked-up rows and supports every built-in optimizer.

The update runs in Rust (``tfra_redis._native.apply_gradients``, the GIL released): it reads the
rows of the ids in the batch and their optimizer slot rows, applies one step, and writes both
back. Each slot (Adam's ``m`` and ``v``, Adagrad's ``accumulator``, ...) is a table of its own,
named as TFRA names it (:func:`slot_table_name`), so slots written by TFRA are picked up here.

The update is lazy: only the rows in the batch change. Keras does the same for ``IndexedSlices``
gradients with SGD and Adagrad; its Adam and FTRL densify them and also decay (or recompute)
the rows that got no gradient. When every row gets a gradient every step the results are equal.

Training loop sketch (no TensorFlow needed here)::

    opt = Adam(learning_rate=0.01)
    slots = opt.slot_stores(params)              # tables <name>_<name>_shadow_m / _v
    keys, grads, first = sum_duplicates(ids, row_grads)
    opt.apply(params, slots, keys, grads, init_rows[first], step=iteration + 1)
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from tfra_redis import _native
from tfra_redis.store import RedisStore

__all__ = [
    "SGD",
    "Adagrad",
    "Adam",
    "Ftrl",
    "SparseOptimizer",
    "from_keras",
    "keras_layer_slot_table_name",
    "slot_table_name",
    "sum_duplicates",
]


def slot_table_name(params_name: str, slot: str, shadow_name: str | None = None) -> str:
    """The name TFRA gives the table of optimizer slot ``slot`` of embedding ``params_name``.

    TFRA's rule is ``<params name>/<shadow name>/<slot>`` with ``/`` turned into ``_``. For
    ``de.get_variable(name="user_emb")`` the shadow is ``user_emb_shadow``, so Adam's slots are
    ``user_emb_user_emb_shadow_m`` and ``user_emb_user_emb_shadow_v`` (the default here). The Keras
    layer ``de.keras.layers.Embedding(name="user_emb")`` names its variable ``user_emb-parameter``
    and its shadow ``DynamicEmbedding/user_emb-shadow``: see :func:`keras_layer_slot_table_name`.
    A TF1 optimizer op puts its own name in the middle: ``emb/Adam/m`` gives ``emb_Adam_m``.
    """
    if shadow_name is None:
        shadow_name = f"{params_name}_shadow"
    return f"{params_name}/{shadow_name}/{slot}".replace("/", "_")


def keras_layer_slot_table_name(layer_name: str, slot: str) -> str:
    """The slot table name TFRA uses for ``de.keras.layers.Embedding(name=layer_name)``.

    For example ``user_emb-parameter_DynamicEmbedding_user_emb-shadow_m``; the embedding itself is
    the table ``f"{layer_name}-parameter"``.
    """
    return slot_table_name(f"{layer_name}-parameter", slot, f"DynamicEmbedding/{layer_name}-shadow")


def sum_duplicates(keys: Any, grads: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sums the gradient rows of repeated ids, as an optimizer step needs unique ids.

    Returns ``(unique_keys, summed_grads, first)``: ``first[i]`` is the position of the first
    occurrence of ``unique_keys[i]`` in ``keys``, so ``init_rows[first]`` picks the matching
    initializer rows. ``grads`` has shape ``[len(keys), dim]``.
    """
    keys = np.asarray(keys).reshape(-1)
    grads = np.asarray(grads, dtype=np.float32)
    if grads.ndim != 2 or grads.shape[0] != keys.shape[0]:
        raise ValueError(
            f"Expected shape [{keys.shape[0]}, dim] for grads, got {list(grads.shape)}"
        )
    unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    summed = np.zeros((unique.shape[0], grads.shape[1]), dtype=np.float32)
    np.add.at(summed, inverse.reshape(-1), grads)
    return unique, summed, first


class SparseOptimizer:
    """A sparse optimizer for Redis-backed embeddings; use :class:`SGD`, :class:`Adagrad`,
    :class:`Adam` or :class:`Ftrl`.

    Hyper-parameters keep Keras' argument names and defaults, and are kept as Python floats:
    Keras combines some of them in double precision before rounding to float32, and so does the
    Rust update, which makes the results match Keras to the last bit where the operations allow.
    """

    #: The Keras class name, which is also the native optimizer name (lower-cased).
    keras_name: ClassVar[str]
    _slot_names: ClassVar[tuple[str, ...]] = ()
    _accumulator_slot: ClassVar[str | None] = None

    def __init__(self, **hyper: float) -> None:
        self._hyper: dict[str, float] = {}
        for key, value in hyper.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise TypeError(f"{key} must be a float, got {value!r}")
            self._hyper[key] = float(value)
        lr = self._hyper["learning_rate"]
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"learning_rate must be a positive number, got {lr}")

    @property
    def slot_names(self) -> tuple[str, ...]:
        """The slots of each row, in the order the native update takes them."""
        return self._slot_names

    def get_config(self) -> dict[str, float]:
        """The hyper-parameters, by their Keras argument names."""
        return dict(self._hyper)

    def initial_slot_value(self, slot: str) -> float:
        """The value a slot row of a never-updated id starts from (Keras' slot initializer)."""
        if slot not in self._slot_names:
            raise ValueError(
                f"{self.keras_name} has no slot {slot!r}; its slots: {self._slot_names}"
            )
        if slot == self._accumulator_slot:
            return self._hyper["initial_accumulator_value"]
        return 0.0

    def slot_stores(
        self, params: RedisStore, shadow_name: str | None = None
    ) -> dict[str, RedisStore]:
        """Opens the slot tables of ``params`` with TFRA's names (:func:`slot_table_name`), on
        the same Redis config, with the same key dtype and dim, as float32 tables."""
        return {
            slot: RedisStore(
                params.config,
                slot_table_name(params.name, slot, shadow_name),
                params.dim,
                key_dtype=params.key_dtype,
                value_dtype="float32",
            )
            for slot in self._slot_names
        }

    def apply(
        self,
        params: RedisStore,
        slots: Mapping[str, RedisStore],
        keys: Any,
        grads: Any,
        init_rows: Any,
        step: int,
    ) -> None:
        """Applies one step to the rows of ``keys`` in ``params`` and their slot rows.

        Args:
            params: the embedding table (float32).
            slots: one float32 table per name in :attr:`slot_names`, of the same dim.
            keys: unique ids, shape ``[n]`` (see :func:`sum_duplicates` for repeated ids).
            grads: the gradient rows of ``keys``, shape ``[n, dim]``.
            init_rows: the rows the forward pass used for ids missing from ``params`` (the
                initializer's values), shape ``[n, dim]``; a missing row starts from these.
            step: the 1-based count of this update (Keras' ``optimizer.iterations + 1``); Adam's
                bias correction depends on it.

        Raises:
            TypeError: a table is not float32, or keys or grads are not numeric.
            ValueError: shapes, dims, slot names or ``step`` do not fit, or keys repeat.
        """
        if not isinstance(params, RedisStore):
            raise TypeError(f"params must be a RedisStore, got {type(params).__name__}")
        missing = [s for s in self._slot_names if s not in slots]
        extra = sorted(set(slots) - set(self._slot_names))
        if missing or extra:
            raise ValueError(
                f"{self.keras_name} needs slot tables for {list(self._slot_names)}; "
                f"missing {missing}, unexpected {extra}"
            )
        tables = [params, *(slots[s] for s in self._slot_names)]
        for table in tables:
            if not isinstance(table, RedisStore):
                raise TypeError(f"slot tables must be RedisStore, got {type(table).__name__}")
            if table.value_dtype != "float32":
                raise TypeError(
                    f"optimizers update float32 tables only, but table {table.name!r} holds "
                    f"{table.value_dtype}"
                )
            if table.dim != params.dim:
                raise ValueError(
                    f"slot table {table.name!r} has dim {table.dim}, but its params table "
                    f"{params.name!r} has dim {params.dim}"
                )
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
            raise ValueError(f"step is the 1-based update count and must be >= 1, got {step!r}")
        keys = np.asarray(keys)
        if keys.ndim != 1:
            raise ValueError(f"Expected shape [n] for keys, got {list(keys.shape)}")
        flat_keys = params._keys(keys)
        want = [keys.shape[0], params.dim]
        rows = []
        for what, value in (("grads", grads), ("init_rows", init_rows)):
            value = np.asarray(value)
            if value.dtype.kind not in "fiu":
                raise TypeError(f"{what} must be floating point, got {value.dtype}")
            if list(value.shape) != want:
                raise ValueError(f"Expected shape {want} for {what}, got {list(value.shape)}")
            rows.append(np.ascontiguousarray(value, dtype=np.float32).reshape(-1))
        with contextlib.ExitStack() as writes:
            for table in tables:
                writes.enter_context(table.writing(flat_keys))
            _native.apply_gradients(
                self.keras_name.lower(),
                self._hyper,
                params._table,
                [t._table for t in tables[1:]],
                flat_keys,
                rows[0],
                rows[1],
                int(step),
            )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._hyper.items())
        return f"{type(self).__name__}({args})"


class SGD(SparseOptimizer):
    """Plain SGD, ``p -= learning_rate * g`` (Keras ``SGD`` without momentum); no slots."""

    keras_name = "SGD"

    def __init__(self, learning_rate: float = 0.01) -> None:
        super().__init__(learning_rate=learning_rate)


class Adagrad(SparseOptimizer):
    """Keras Adagrad: ``acc += g²; p -= lr * g / sqrt(acc + epsilon)``; slot ``accumulator``."""

    keras_name = "Adagrad"
    _slot_names = ("accumulator",)
    _accumulator_slot = "accumulator"

    def __init__(
        self,
        learning_rate: float = 0.001,
        initial_accumulator_value: float = 0.1,
        epsilon: float = 1e-7,
    ) -> None:
        super().__init__(
            learning_rate=learning_rate,
            initial_accumulator_value=initial_accumulator_value,
            epsilon=epsilon,
        )


class Adam(SparseOptimizer):
    """Keras Adam (bias-corrected by ``step``), lazily applied; slots ``m`` and ``v``."""

    keras_name = "Adam"
    _slot_names = ("m", "v")

    def __init__(
        self,
        learning_rate: float = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
    ) -> None:
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon)


class Ftrl(SparseOptimizer):
    """Keras FTRL-Proximal, lazily applied; slots ``accumulator`` and ``linear``."""

    keras_name = "Ftrl"
    _slot_names = ("accumulator", "linear")
    _accumulator_slot = "accumulator"

    def __init__(
        self,
        learning_rate: float = 0.001,
        learning_rate_power: float = -0.5,
        initial_accumulator_value: float = 0.1,
        l1_regularization_strength: float = 0.0,
        l2_regularization_strength: float = 0.0,
        l2_shrinkage_regularization_strength: float = 0.0,
        beta: float = 0.0,
    ) -> None:
        super().__init__(
            learning_rate=learning_rate,
            learning_rate_power=learning_rate_power,
            initial_accumulator_value=initial_accumulator_value,
            l1_regularization_strength=l1_regularization_strength,
            l2_regularization_strength=l2_regularization_strength,
            l2_shrinkage_regularization_strength=l2_shrinkage_regularization_strength,
            beta=beta,
        )


_BY_KERAS_NAME: dict[str, type[SparseOptimizer]] = {
    cls.keras_name: cls for cls in (SGD, Adagrad, Adam, Ftrl)
}

# Keras options that change the update and that a lazy row update cannot honour: each with the
# value that means "off".
_UNSUPPORTED_OFF = {
    "weight_decay": None,
    "clipnorm": None,
    "clipvalue": None,
    "global_clipnorm": None,
    "use_ema": False,
    "loss_scale_factor": None,
    "gradient_accumulation_steps": None,
    "momentum": 0.0,
    "nesterov": False,
    "amsgrad": False,
}


def from_keras(optimizer: Any) -> SparseOptimizer:
    """The sparse optimizer equivalent to a ``keras.optimizers.SGD/Adagrad/Adam/Ftrl`` instance.

    Hyper-parameters come from its config; the learning rate is its current value as a float (a
    learning-rate schedule is not followed: call this again when the rate changes). Options the
    row update does not implement (momentum, amsgrad, weight decay, clipping, EMA, ...) raise
    ``ValueError`` naming them rather than being ignored.
    """
    cls = next(
        (
            _BY_KERAS_NAME[c.__name__]
            for c in type(optimizer).__mro__
            if c.__name__ in _BY_KERAS_NAME and c.__module__.startswith("keras")
        ),
        None,
    )
    if cls is None:
        raise TypeError(
            "from_keras takes a keras.optimizers.SGD, Adagrad, Adam or Ftrl instance, got "
            f"{type(optimizer).__module__}.{type(optimizer).__name__}"
        )
    config = optimizer.get_config()
    for option, off in _UNSUPPORTED_OFF.items():
        value = config.get(option, off)
        if value != off:
            raise ValueError(
                f"{cls.keras_name} option {option}={value!r} is not supported by the sparse "
                f"Redis optimizer"
            )
    accepted = inspect.signature(cls).parameters
    hyper = {key: value for key, value in config.items() if key in accepted}
    hyper["learning_rate"] = float(np.asarray(optimizer.learning_rate))
    return cls(**hyper)
