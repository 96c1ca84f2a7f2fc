"""Training Redis-backed embeddings: the sparse optimizer step and a Keras model that uses it.

The dense weights are trained by the Keras optimizer as usual. The embedding rows are not Keras
variables: the forward pass looks them up (recorded by :func:`record_lookups`), the tape gives
the gradient of the loss with respect to them, and :class:`EmbeddingOptimizer` applies it in Rust
(``tfra_redis.optimizers``), reading and writing the rows and their optimizer slot rows in Redis.
Slot tables are named as TFRA names them (``<params>_<shadow>_<slot>``), so TFRA's slots are
picked up and ours can be read by TFRA.
"""

from __future__ import annotations

import functools
import warnings
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfra_redis import optimizers
from tfra_redis.dynamic_embedding.recording import LookupRecord, record_lookups
from tfra_redis.dynamic_embedding.variable import Variable
from tfra_redis.prefetch import run_concurrently
from tfra_redis.table import collecting_lookup_keys

__all__ = ["DynamicEmbeddingModel", "DynamicEmbeddingTrainer", "EmbeddingOptimizer"]


def _dense_rows(grad: Any, rows: tf.Tensor) -> tf.Tensor:
    """``[U, dim]`` from the gradient of looked-up rows (an ``IndexedSlices``); rows that
    appear several times in the forward pass have their gradients summed."""
    if isinstance(grad, tf.IndexedSlices):
        # Not tf.convert_to_tensor: with an unknown dense shape it warns about memory use.
        return tf.math.unsorted_segment_sum(grad.values, grad.indices, tf.shape(rows)[0])
    return tf.convert_to_tensor(grad)


class EmbeddingOptimizer(tf.__internal__.tracking.AutoTrackable):
    """Applies gradients of looked-up rows to their :class:`Variable` with a sparse optimizer.

    Owns the optimizer's slot variables (one Redis table per slot and embedding, named as TFRA
    names them) and its step counter ``iterations`` (Adam's bias correction), a ``tf.Variable``
    that persists across ``fit`` calls and goes into checkpoints with the slots.

    Args:
        optimizer: a ``tfra_redis.optimizers`` optimizer (``SGD``, ``Adagrad``, ``Adam``,
            ``Ftrl``) or a Keras optimizer of one of those kinds (converted with
            ``optimizers.from_keras``: same hyper-parameters, learning rate as of now).
    """

    def __init__(self, optimizer: Any, name: str = "embedding_optimizer") -> None:
        if isinstance(optimizer, EmbeddingOptimizer):
            raise TypeError("optimizer is already an EmbeddingOptimizer")
        source = optimizer
        if not isinstance(optimizer, optimizers.SparseOptimizer):
            optimizer = optimizers.from_keras(optimizer)
        self._sparse = optimizer
        # What it was made from, to reuse it (and its step count) when a model is compiled
        # again with the same optimizer; weak, so that it is not a checkpoint dependency.
        self._source = weakref.ref(source) if source is not None else None
        self._name = name
        with tf.init_scope():
            self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
        self._slot_variables: dict[str, Variable] = {}

    def made_from(self, optimizer: Any) -> bool:
        """Whether this was made from ``optimizer`` (a Keras or sparse optimizer)."""
        return self._source is not None and self._source() is optimizer

    @property
    def sparse_optimizer(self) -> optimizers.SparseOptimizer:
        return self._sparse

    @property
    def slot_names(self) -> tuple[str, ...]:
        return self._sparse.slot_names

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"EmbeddingOptimizer({self._sparse!r})"

    def slot_variables(self, variable: Variable) -> dict[str, Variable]:
        """The slot variables of ``variable`` by slot name, created on first use.

        Each is a float32 :class:`Variable` on the same creator (so the same Redis config),
        named ``<params>/<shadow>/<slot>``, i.e. the Redis table
        ``optimizers.slot_table_name(params, slot, shadow)``.
        """
        if variable.value_dtype != tf.float32:
            raise TypeError(
                f"sparse optimizers train float32 embeddings; {variable.name!r} holds "
                f"{variable.value_dtype.name}"
            )
        slots = {}
        # Eagerly even while a train step is traced: a checkpoint restore deferred until the
        # slot exists must run once, not become part of the step.
        with tf.init_scope():
            for slot in self._sparse.slot_names:
                key = optimizers.slot_table_name(variable.name, slot, variable.shadow_name)
                slot_variable = self._slot_variables.get(key)
                if slot_variable is None:
                    slot_variable = Variable(
                        key_dtype=variable.key_dtype,
                        value_dtype=tf.float32,
                        dim=variable.dim,
                        devices=None,
                        name=f"{variable.name}/{variable.shadow_name}/{slot}",
                        initializer=self._sparse.initial_slot_value(slot),
                        trainable=False,
                        checkpoint=variable.checkpoint,
                        kv_creator=variable.kv_creator,
                    )
                    self._slot_variables[key] = slot_variable
                slots[slot] = slot_variable
        return slots

    def create_slots(self, variables: Iterable[Variable]) -> None:
        """Creates the slot variables of ``variables`` now (so checkpoints can restore them)."""
        for variable in variables:
            if variable.trainable:
                self.slot_variables(variable)

    def apply(self, records: Sequence[LookupRecord], grads: Sequence[Any]) -> Any:
        """Applies ``grads[i]`` (the gradient of the loss w.r.t. ``records[i].rows``) as one
        optimizer step. Lookups of the same variable are merged first, so an id looked up
        twice gets one update with the summed gradient. Returns ``None`` eagerly, else an op.
        """
        if len(records) != len(grads):
            raise ValueError(f"{len(records)} lookups but {len(grads)} gradients")
        groups: dict[int, tuple[Variable, list[tuple[tf.Tensor, tf.Tensor, tf.Tensor]]]] = {}
        for record, grad in zip(records, grads, strict=True):
            if grad is None or not record.variable.trainable:
                continue
            entry = groups.setdefault(id(record.variable), (record.variable, []))
            entry[1].append((record.ids, record.rows, _dense_rows(grad, record.rows)))
        if not groups:
            return None if tf.executing_eagerly() else tf.no_op()
        step = self.iterations.assign_add(1)
        return self._apply_all(
            [(variable, *self._merge(items)) for variable, items in groups.values()], step
        )

    @staticmethod
    def _merge(
        items: list[tuple[tf.Tensor, tf.Tensor, tf.Tensor]],
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        if len(items) == 1:
            return items[0][0], items[0][2], items[0][1]
        ids = tf.concat([i for i, _, _ in items], 0)
        rows = tf.concat([r for _, r, _ in items], 0)
        grads = tf.concat([g for _, _, g in items], 0)
        unique_ids, index = tf.unique(ids)
        count = tf.size(unique_ids)
        summed = tf.math.unsorted_segment_sum(grads, index, count)
        first = tf.math.unsorted_segment_min(tf.range(tf.size(ids)), index, count)
        return unique_ids, summed, tf.gather(rows, first)

    def _apply_all(
        self, updates: list[tuple[Variable, tf.Tensor, tf.Tensor, tf.Tensor]], step: Any
    ) -> Any:
        """One op updating every variable at once. Separate ops would run one after the other:
        a ``tf.function`` chains its stateful ops in program order. The variables' tables are
        distinct, so updating them concurrently gives the same rows."""
        sparse = self._sparse
        tables = []
        inputs: list[Any] = [step]
        for variable, ids, grads, init_rows in updates:
            slots = self.slot_variables(variable)
            tables.append(
                (variable.table.store, {name: slot.table.store for name, slot in slots.items()})
            )
            inputs += [ids, tf.cast(grads, tf.float32), tf.cast(init_rows, tf.float32)]

        def apply_fn(s: np.ndarray, *arrays: np.ndarray) -> np.ndarray:
            calls = []
            for i, (params, slot_stores) in enumerate(tables):
                k, g, init = arrays[3 * i : 3 * i + 3]
                if k.size:
                    calls.append(
                        functools.partial(sparse.apply, params, slot_stores, k, g, init, int(s))
                    )
            run_concurrently(calls)
            return np.int64(sum(a.size for a in arrays[::3]))

        if tf.executing_eagerly():
            apply_fn(*(np.asarray(x.numpy()) for x in inputs))
            return None
        return tf.numpy_function(
            apply_fn, inputs, tf.int64, stateful=True, name="redis_sparse_apply"
        )


class _PrefetchingTrainFunction:
    """Keras' train function, one batch ahead: before step N runs, the ids batch N+1 will look
    up are computed (the model's forward pass traced with :func:`collecting_lookup_keys`, so
    that only the id computations remain) and their rows are read in the background
    (``RedisStore.prefetch``) while step N runs. Step N+1's lookups take those rows, ids that
    step N wrote read again, so training gives the same results as without prefetching.

    Used by ``DynamicEmbeddingTrainer`` in graph mode with ``steps_per_execution=1`` and no
    distribution strategy; ``keras_function`` is what Keras' ``make_train_function`` made.
    """

    def __init__(self, model: keras.Model, keras_function: Any) -> None:
        self._model = model
        self._keras_function = keras_function
        self._collect = tf.function(self._collect_keys, reduce_retracing=True)
        self._stores: list[Any] = []  # the store of each key tensor _collect returns
        self._prefetched: list[Any] = []  # stores with a pending prefetch
        self._iterator: Any = None
        self._ahead: Any = None  # the next batch of self._iterator, already taken from it
        self._started = False

    def _collect_keys(self, x: Any) -> list[tf.Tensor]:
        graph = tf.compat.v1.get_default_graph()
        with collecting_lookup_keys() as collected:
            if getattr(self._model, "_call_has_training_arg", True):
                self._model(x, training=False)
            else:
                self._model(x)
        # Keras may also trace the call in scratch graphs (shape inference); not ours.
        collected = [(store, keys) for store, keys in collected if keys.graph is graph]
        self._stores = [store for store, _ in collected]
        return [keys for _, keys in collected]

    def __call__(self, iterator: Any) -> Any:
        if not isinstance(iterator, (tf.data.Iterator, tf.distribute.DistributedIterator)):
            return self._keras_function(iterator)
        if iterator is self._iterator and self._ahead is not None:
            data = self._ahead
        else:
            data = self._next(iterator)
            if data is None:
                self.discard()
                raise StopIteration
        self._iterator = iterator
        self._ahead = self._next(iterator)
        # Not before the first step has run: the model is built by its first call, which
        # must be the step's, as without prefetching.
        self._prefetch(self._ahead if self._started else None)
        # Keras' function runs its compiled step on each element of a list.
        outputs = self._keras_function([data])
        self._started = True
        return outputs

    @staticmethod
    def _next(iterator: Any) -> Any:
        element = iterator.get_next_as_optional()
        return element.get_value() if bool(element.has_value()) else None

    def _prefetch(self, data: Any) -> None:
        """Prefetches the rows ``data`` (a batch, or ``None`` at the end) will look up."""
        by_store: dict[int, tuple[Any, list[np.ndarray]]] = {}
        if data is not None:
            x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
            keys = self._collect(x)
            for store, k in zip(self._stores, keys, strict=True):
                by_store.setdefault(id(store), (store, []))[1].append(k.numpy())
        for store in self._prefetched:
            if id(store) not in by_store:  # let go of older batches' prefetches
                by_store[id(store)] = (store, [])
        for store, key_sets in by_store.values():
            store.prefetch(key_sets)
        self._prefetched = [store for store, key_sets in by_store.values() if key_sets]

    def discard(self) -> None:
        """Forgets the batch taken ahead and drops pending prefetches."""
        for store in self._prefetched:
            store.discard_prefetch()
        self._prefetched = []
        self._iterator = self._ahead = None


def _find_embedding_variables(model: keras.Model) -> list[Variable]:
    from tfra_redis.dynamic_embedding.keras.layers import Embedding

    found: dict[int, Variable] = {}
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, Embedding) and layer.trainable:
            found.setdefault(id(layer.params), layer.params)
    return list(found.values())


class DynamicEmbeddingTrainer:
    """A mixin for ``keras.Model`` whose ``train_step`` also trains Redis-backed embeddings.

    ``compile(..., embedding_optimizer=None)``: the embeddings are trained with
    ``embedding_optimizer`` (a ``tfra_redis.optimizers`` optimizer, a Keras optimizer or an
    :class:`EmbeddingOptimizer`), by default the equivalent of the compiled Keras optimizer.
    ``jit_compile=True`` is turned off with a warning: lookups are ``numpy_function`` ops, which
    XLA cannot compile.

    ``compile(..., prefetch_embeddings=True)``: while step N runs, ``fit`` reads the embedding
    rows of batch N+1 in the background (see ``_PrefetchingTrainFunction``). The results are
    those of training without it: rows written by step N are read again before step N+1 uses
    them. It needs graph mode (not ``run_eagerly``), ``steps_per_execution=1`` and no
    distribution strategy; otherwise every step reads its rows when it needs them. The ids of
    batch N+1 come from calling the model on it with ``training=False`` inside a graph that
    keeps only what computes them. Off by default: it pays only when reading rows is a good
    part of a step (a distant Redis, wide rows); against a local server the reads take ~1 ms
    of a ~20-40 ms step and the background threads compete with TensorFlow's for the CPUs.
    """

    def compile(
        self,
        *args: Any,
        embedding_optimizer: Any = None,
        prefetch_embeddings: bool = False,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("jit_compile") is True:
            warnings.warn(
                "jit_compile=True is not supported with Redis-backed embeddings (their lookups "
                "are numpy_function ops, which XLA cannot compile); using jit_compile=False",
                UserWarning,
                stacklevel=2,
            )
        kwargs["jit_compile"] = False
        super().compile(*args, **kwargs)
        self.prefetch_embeddings = bool(prefetch_embeddings)
        if embedding_optimizer is None:
            embedding_optimizer = self.optimizer
        if embedding_optimizer is None:
            raise ValueError("compile() needs an optimizer to train the embeddings")
        if not isinstance(embedding_optimizer, EmbeddingOptimizer):
            previous = getattr(self, "embedding_optimizer", None)
            if isinstance(previous, EmbeddingOptimizer) and previous.made_from(embedding_optimizer):
                embedding_optimizer = previous  # compiled again: keep the step count
            else:
                embedding_optimizer = EmbeddingOptimizer(embedding_optimizer)
        self.embedding_optimizer = embedding_optimizer
        embedding_optimizer.create_slots(_find_embedding_variables(self))

    def make_train_function(self, force: bool = False) -> Any:
        if self.train_function is not None and not force:
            return self.train_function
        super().make_train_function(force=force)
        if (
            getattr(self, "prefetch_embeddings", False)
            and not self.run_eagerly
            and self.steps_per_execution == 1
            and not tf.distribute.has_strategy()
            and getattr(self, "_distribute_strategy", None) is None
        ):
            self.train_function = _PrefetchingTrainFunction(self, self.train_function)
        return self.train_function

    def fit(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().fit(*args, **kwargs)
        finally:
            # Stopped early, or by an error: the batch taken ahead belongs to this fit only.
            if isinstance(self.train_function, _PrefetchingTrainFunction):
                self.train_function.discard()

    def train_step(self, data: Any) -> Any:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape, record_lookups(tape) as lookups:
            if getattr(self, "_call_has_training_arg", True):
                y_pred = self(x, training=True)
            else:
                y_pred = self(x)
            compute_loss = getattr(self, "_compute_loss", self.compute_loss)
            loss = compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            loss_tracker = getattr(self, "_loss_tracker", None)
            if loss_tracker is not None:
                first = next(i for i in tf.nest.flatten(x) if i is not None)
                loss_tracker.update_state(loss, sample_weight=tf.shape(first)[0])
            if self.optimizer is not None:
                loss = self.optimizer.scale_loss(loss)

        dense = list(self.trainable_weights)
        grads = tape.gradient(loss, dense + lookups.rows)
        if dense:
            self.optimizer.apply_gradients(zip(grads[: len(dense)], dense, strict=True))
        if lookups.records:
            optimizer = getattr(self, "embedding_optimizer", None)
            if optimizer is None:
                with tf.init_scope():
                    optimizer = self.embedding_optimizer = EmbeddingOptimizer(self.optimizer)
            optimizer.apply(lookups.records, grads[len(dense) :])
        elif not dense:
            warnings.warn("The model does not have any trainable weights.", stacklevel=2)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


try:  # Keras' functional model class; public only as what keras.Model(inputs, outputs) returns
    from keras.src.models.functional import Functional as _Functional
    from keras.src.models.model import functional_init_arguments as _functional_init_arguments
except ImportError:  # pragma: no cover - a Keras that moved them: fall back to Keras' own way
    _Functional = None

_functional_classes: dict[type, type] = {}


def _are_keras_tensors(inputs: Any) -> bool:
    # A subclass's own constructor may take two positional arguments too.
    flat = tf.nest.flatten(inputs)
    return bool(flat) and all(isinstance(x, keras.KerasTensor) for x in flat)


class DynamicEmbeddingModel(DynamicEmbeddingTrainer, keras.Model):
    """``keras.Model`` with :class:`DynamicEmbeddingTrainer`'s ``compile`` and ``train_step``:
    subclass it, or build it functionally, ``DynamicEmbeddingModel(inputs, outputs)``."""

    def __new__(cls, *args: Any, **kwargs: Any) -> DynamicEmbeddingModel:
        # keras.Model makes a functional instance by rewriting the bases of the class itself
        # (for good), which would turn every later subclassed DynamicEmbeddingModel functional
        # too; a functional subclass made once per class keeps the class as it is.
        if (
            _Functional is not None
            and not issubclass(cls, _Functional)
            and _functional_init_arguments(args, kwargs)
            and _are_keras_tensors(args[0] if args else kwargs.get("inputs"))
        ):
            functional = _functional_classes.get(cls)
            if functional is None:
                functional = type(cls.__name__, (cls, _Functional), {"__module__": cls.__module__})
                _functional_classes[cls] = functional
            return functional.__new__(functional, *args, **kwargs)
        return super().__new__(cls, *args, **kwargs)
