"""Trainable wrappers: the rows a training step looked up, held in a variable Keras can train.

Rows come out of Redis through a ``numpy_function``, which has no gradient. As in TFRA, a lookup
made during a training step (a ``GradientTape`` recording, model mode TRAIN, a trainable
embedding) therefore copies the unique rows it read into a buffer variable, the
:class:`TrainableWrapper`, and returns rows gathered from a read of that buffer. The tape watches
the buffer like any trainable variable: ``model.trainable_variables`` and
``layer.trainable_weights`` list it, ``tape.gradient`` gives its gradient (a dense ``[rows,
dim]`` tensor, the gradients of repeated ids summed), and ``de.DynamicEmbeddingOptimizer``
applies it: the wrapped Keras optimizer updates the buffer rows with its own math, and the rows
and their optimizer slots are written back to Redis.

Lookups made in one step accumulate in the buffer: a layer called twice in a step (users and
items through one embedding) keeps both calls' rows, and the optimizer merges repeated ids. The
buffer starts over at the first lookup after an optimizer step. Lookups outside a recording
tape (evaluation, ``predict``, Keras' symbolic build) or with ``training=False`` read Redis and
leave the buffer alone.

The buffer is not a copy of the table: it is saved empty in checkpoints and weights files (as
TFRA's ShadowVariable is); the rows live in Redis.
"""

from __future__ import annotations

import contextlib
import enum
import os
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfra_redis.dynamic_embedding import _internals

__all__ = [
    "ModelMode",
    "NotDynamicEmbeddingOptimizerError",
    "TrainableWrapper",
    "enable_inference_mode",
    "enable_train_mode",
    "get_model_mode",
]


class ModelMode(str, enum.Enum):
    """TFRA's process-wide mode: ``TRAIN`` stages looked-up rows for the optimizer,
    ``INFERENCE`` never does (lookups only read)."""

    TRAIN = "train"
    INFERENCE = "inference"


_mode = ModelMode.TRAIN


def enable_inference_mode() -> None:
    """Lookups stop staging rows for training (TFRA's ``de.enable_inference_mode``). Like TFRA,
    call it before building or tracing the serving model: traced functions keep the mode they
    were traced in."""
    global _mode
    _mode = ModelMode.INFERENCE


def enable_train_mode() -> None:
    """The default mode: lookups in a training step stage their rows for the optimizer."""
    global _mode
    _mode = ModelMode.TRAIN


def get_model_mode() -> ModelMode:
    """The current :class:`ModelMode`."""
    return _mode


class NotDynamicEmbeddingOptimizerError(TypeError):
    """An optimizer that does not write rows back to Redis tried to train a dynamic embedding."""


_local = threading.local()


@contextlib.contextmanager
def updating_buffers() -> Iterator[None]:
    """Lets the code inside update wrapper buffers (``DynamicEmbeddingOptimizer.apply`` runs the
    wrapped Keras optimizer in it). Anything else that updates a buffer gets
    :class:`NotDynamicEmbeddingOptimizerError`."""
    depth = getattr(_local, "depth", 0)
    _local.depth = depth + 1
    try:
        yield
    finally:
        _local.depth = depth


def _refuse(owner: str) -> NotDynamicEmbeddingOptimizerError:
    return NotDynamicEmbeddingOptimizerError(
        f"{owner} holds rows of a Redis-backed dynamic embedding; only "
        "de.DynamicEmbeddingOptimizer writes their updates back to Redis. Wrap the optimizer, "
        "e.g. optimizer=de.DynamicEmbeddingOptimizer(keras.optimizers.Adam(1e-3)) (or use "
        "de.DynamicEmbeddingModel, which does it in compile)"
    )


class _RowBuffer(_internals.ResourceVariable):
    """A ``[None, dim]`` resource variable that only ``updating_buffers`` code may update."""

    def __init__(self, *args: Any, owner: str, guarded: bool, **kwargs: Any) -> None:
        self._owner_name = owner
        self._guarded = guarded
        self._owner_ref: Any = None
        super().__init__(*args, **kwargs)

    def _check(self) -> None:
        if self._guarded and not getattr(_local, "depth", 0):
            raise _refuse(self._owner_name)

    def stage(self, value: Any) -> Any:
        """Assigns rows of any count (staging; never refused)."""
        return _internals.ResourceVariable.assign(self, value)


def _guard(method_name: str) -> Any:
    base = getattr(_internals.ResourceVariable, method_name)

    def guarded(self: _RowBuffer, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return base(self, *args, **kwargs)

    guarded.__name__ = method_name
    guarded.__doc__ = base.__doc__
    return guarded


for _name in (
    "assign",
    "assign_add",
    "assign_sub",
    "scatter_add",
    "scatter_sub",
    "scatter_update",
    "scatter_max",
    "scatter_min",
    "scatter_mul",
    "scatter_div",
    "scatter_nd_add",
    "scatter_nd_sub",
    "scatter_nd_update",
    "batch_scatter_update",
):
    setattr(_RowBuffer, _name, _guard(_name))


class DynamicRows(keras.Variable):
    """A Keras variable of ``[n, dim]`` rows whose ``n`` changes every step (TFRA reports its
    shape as ``(0, dim)``, and so does this class). The trainable wrapper and the optimizer's
    slot buffers are instances."""

    def __init__(self, dim: int, dtype: Any, *, name: str, trainable: bool, guarded: bool) -> None:
        self._rows_dim = int(dim)
        self._guarded_rows = guarded
        super().__init__(
            initializer=np.zeros((0, self._rows_dim), dtype=tf.as_dtype(dtype).as_numpy_dtype),
            dtype=tf.as_dtype(dtype).name,
            trainable=trainable,
            autocast=False,
            name=name,
        )
        self._value._owner_ref = weakref.ref(self)

    # -- Keras hooks (listed in _internals.KERAS_VARIABLE_HOOKS) --------------------------------

    def _initialize(self, value: Any) -> None:
        self._value = _RowBuffer(
            value,
            dtype=self._dtype,
            shape=tf.TensorShape([None, self._rows_dim]),
            trainable=self.trainable,
            name=self.name,
            owner=f"{type(self).__name__} {self.name!r}",
            guarded=self._guarded_rows,
        )

    def _validate_shape(self, shape: Any) -> tuple[int, int]:
        return (0, self._rows_dim)

    @property
    def _layout(self) -> None:
        # Only Optimizer.add_variable_from_reference reads this on the TensorFlow backend:
        # DynamicEmbeddingOptimizer never lets it see a wrapper, so another optimizer does.
        if self._guarded_rows:
            raise _refuse(f"{type(self).__name__} {self.name!r}")
        return None

    @_layout.setter
    def _layout(self, value: Any) -> None:
        if value is not None:
            raise ValueError("dynamic embedding rows take no distribution layout")

    def _serialize_to_tensors(self) -> dict[str, Any]:
        return {"VARIABLE_VALUE": tf.zeros([0, self._rows_dim], dtype=self._dtype)}

    def _restore_from_tensors(self, restored_tensors: Any) -> Any:
        return tf.no_op()

    # -- values -------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._rows_dim

    def assign(self, value: Any) -> Any:
        """Replaces the rows (any count), e.g. by ``set_weights``. Only the buffer changes:
        rows reach Redis through an optimizer step. (Optimizers update the backing
        ``tf.Variable``, where anything but ``DynamicEmbeddingOptimizer`` is refused.)"""
        value = tf.convert_to_tensor(value, dtype=self._dtype)
        self._value.stage(value)
        return value

    def stage(self, value: Any) -> Any:
        """Replaces the rows; for lookups and the optimizer's slot staging."""
        return self._value.stage(value)


# Counts optimizer steps that applied dynamic-embedding gradients in this process; a wrapper
# whose rows were staged before the latest step starts over at its next lookup.
_steps: tf.Variable | None = None
_steps_lock = threading.Lock()


def _new_lock_in_child() -> None:
    # A fork while another thread held the lock would leave the child's copy locked forever.
    global _steps_lock
    _steps_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)


def applied_steps() -> tf.Variable:
    global _steps
    with _steps_lock:
        if _steps is None:
            with tf.init_scope():
                _steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="tfra_redis_steps")
        return _steps


class TrainableWrapper(DynamicRows):
    """The rows of one embedding lookup (TFRA's ``TrainableWrapper``/``ShadowVariable``).

    ``ids`` holds the ids of the staged rows, in buffer order; ``params`` is the
    ``de.Variable`` they belong to. Created by ``Variable.trainable_wrapper(name)`` (the Keras
    layers make theirs in ``__init__``, so models list it before the first step).
    """

    def __init__(self, params: Any, name: str, trainable: bool = True) -> None:
        self._params_ref = weakref.ref(params)
        self._wrapper_name = name
        #: With ``redis_fused_row``: where staging lookups keep the optimizer slots they read
        #: with the rows (a ``fused_row.RowSlots``, set by the optimizer when it makes them).
        self.row_slots: Any = None
        keras_name = name.rsplit("/", 1)[-1] or "ShadowVariable"
        with tf.init_scope():
            super().__init__(
                params.dim,
                update_dtype(params.value_dtype),
                name=keras_name,
                trainable=trainable,
                guarded=True,
            )
            self.ids = tf.Variable(
                tf.zeros([0], dtype=params.key_dtype),
                shape=tf.TensorShape([None]),
                trainable=False,
                name=f"{keras_name}-ids",
            )
            self.generation = tf.Variable(
                -1, dtype=tf.int64, trainable=False, name=f"{keras_name}-generation"
            )
            # Made now rather than at the first lookup: a tf.function may only create
            # variables on its first trace, and the first staging may come in a later one.
            applied_steps()

    @property
    def params(self) -> Any:
        """The ``de.Variable`` whose rows this holds."""
        params = self._params_ref()
        if params is None:
            raise RuntimeError(f"the de.Variable of wrapper {self._wrapper_name!r} is gone")
        return params

    @property
    def wrapper_name(self) -> str:
        """TFRA's name of the wrapper (``DynamicEmbedding/<layer>-shadow`` for a Keras layer);
        its optimizer slot tables are named after it."""
        return self._wrapper_name

    def __repr__(self) -> str:
        return (
            f"<de.TrainableWrapper {self._wrapper_name!r} of {self.params.name!r}, dim={self.dim}>"
        )

    def stage_rows(self, unique_ids: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
        """Appends a lookup's unique ids and rows to this step's buffer (the first lookup after
        an optimizer step starts a new buffer); returns the position of the first appended
        row."""
        step = applied_steps()
        current = tf.equal(self.generation, step)
        keep = tf.where(current, tf.shape(self.ids, out_type=tf.int32)[0], 0)
        ids = tf.concat([self.ids[:keep], unique_ids], 0)
        # Reading the buffer to extend it is not part of the model: no gradient through it.
        earlier = tf.stop_gradient(self._value.read_value()[:keep])
        buffer = tf.concat([earlier, tf.cast(rows, self._value.dtype)], 0)
        self.ids.assign(ids)
        self.stage(buffer)
        self.generation.assign(step.read_value())
        return keep

    def gather(self, positions: tf.Tensor) -> tf.Tensor:
        """Rows at ``positions`` of the buffer, read so that the tape sees the buffer: the
        gradient of the buffer is dense, ``[rows staged this step, dim]``."""
        value = self._value.read_value()
        ids = self.ids

        # positions is an input, not a capture: custom_gradient would otherwise trace back
        # through it to the ids variable and ask for a gradient of it.
        @tf.custom_gradient  # type: ignore[untyped-decorator]  # TensorFlow has no types
        def gather_rows(buffer: tf.Tensor, where: tf.Tensor) -> Any:
            def grad(upstream: tf.Tensor) -> tuple[tf.Tensor, None]:
                # The buffer's size when the gradient is taken: a later lookup in the same
                # step may have appended rows, and every read's gradient must agree in shape.
                count = tf.shape(ids, out_type=tf.int32)[0]
                return tf.math.unsorted_segment_sum(upstream, where, count), None

            return tf.gather(buffer, where), grad

        return gather_rows(value, positions)

    def merged_gradient(self, grad: Any) -> tf.Tensor:
        """Makes the staged ids unique (summing the gradients of repeated ones, keeping the
        first row of each) and returns the gradient of the merged buffer."""
        ids = self.ids.read_value()
        count = tf.shape(ids)[0]
        if isinstance(grad, tf.IndexedSlices):
            grad = tf.math.unsorted_segment_sum(grad.values, grad.indices, count)
        grad = tf.convert_to_tensor(grad)
        unique_ids, index = tf.unique(ids)
        n = tf.shape(unique_ids)[0]
        merged = tf.math.unsorted_segment_sum(grad, index, n)
        first = tf.math.unsorted_segment_min(tf.range(count), index, n)
        rows = tf.gather(self._value.read_value(), first)
        self.ids.assign(unique_ids)
        self.stage(rows)
        merged = tf.reshape(merged, [-1, self.dim])
        return merged


def update_dtype(value_dtype: tf.DType) -> tf.DType:
    """The dtype rows of ``value_dtype`` are trained in: float32 for float16 and bfloat16 rows
    (TFRA's rule: half-precision tables are updated in float32 and stored in their dtype)."""
    value_dtype = tf.as_dtype(value_dtype)
    if value_dtype in (tf.float16, tf.bfloat16):
        return tf.float32
    return value_dtype


def wrapper_of(variable: Any) -> TrainableWrapper | None:
    """The wrapper ``variable`` is, or whose buffer it is (``tape.watched_variables()`` lists
    the buffer), else ``None``."""
    if isinstance(variable, TrainableWrapper):
        return variable
    if isinstance(variable, _RowBuffer) and variable._owner_ref is not None:
        owner = variable._owner_ref()
        if isinstance(owner, TrainableWrapper):
            return owner
    return None


def stages_rows(params: Any, training: Any) -> bool:
    """Whether a lookup of ``params`` now stages its rows for the optimizer."""
    if training is not None and not _is_true(training):
        return False
    return bool(_mode is ModelMode.TRAIN and params.trainable and _internals.tape_is_recording())


def _is_true(training: Any) -> bool:
    if isinstance(training, (bool, np.bool_, int)):
        return bool(training)
    if tf.is_tensor(training):
        value = tf.get_static_value(training)
        if value is None:
            raise ValueError(
                "training must be a Python bool (or a constant) for dynamic embedding lookups, "
                "got a tensor whose value is only known at run time"
            )
        return bool(value)
    return bool(training)
