"""``DynamicEmbeddingModel``: a ``keras.Model`` that wraps its optimizer for dynamic embeddings
and can read the next batch's rows ahead of time.

Nothing requires it: a plain ``keras.Model`` (functional, ``Sequential`` or subclassed) whose
optimizer is ``de.DynamicEmbeddingOptimizer(...)`` trains Redis-backed embeddings through Keras'
own ``train_step``. This class adds what is sugar on top of that: ``compile`` wraps a plain
optimizer for you, turns off ``jit_compile=True`` with a warning, and offers
``prefetch_embeddings=True``.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf

from tfra_redis import native_ops
from tfra_redis.dynamic_embedding import _internals
from tfra_redis.dynamic_embedding.optimizer import DynamicEmbeddingOptimizer
from tfra_redis.table import collecting_lookup_keys

__all__ = ["DynamicEmbeddingModel", "DynamicEmbeddingTrainer"]


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
        # Keras' function runs its compiled step on each element of a list. It is traced on its
        # first call, here: its lookups must be numpy_function ops, the path that takes the
        # prefetched rows (the native op reads Redis itself).
        with native_ops.disabled():
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


# The trainer is a mixin for keras.Model subclasses; to mypy, give it keras.Model's attributes.
if TYPE_CHECKING:
    from keras import Model as _TrainerBase
else:
    _TrainerBase = object


class DynamicEmbeddingTrainer(_TrainerBase):
    """A mixin for ``keras.Model``: ``compile`` makes the optimizer a
    ``de.DynamicEmbeddingOptimizer`` (TFRA scripts do that themselves; both work).

    ``jit_compile=True`` is turned off with a warning: lookups are ``numpy_function`` ops,
    which XLA cannot compile.

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

    train_function: Any  # keras.Model's, set by make_train_function

    def compile(
        self,
        optimizer: Any = "rmsprop",
        *args: Any,
        prefetch_embeddings: bool = False,
        **kwargs: Any,
    ) -> None:
        if "embedding_optimizer" in kwargs:
            raise TypeError(
                "compile(embedding_optimizer=...) is gone: the model's optimizer trains the "
                "embeddings too (through de.DynamicEmbeddingOptimizer)"
            )
        if kwargs.get("jit_compile") is True:
            warnings.warn(
                "jit_compile=True is not supported with Redis-backed embeddings (their lookups "
                "are numpy_function ops, which XLA cannot compile); using jit_compile=False",
                UserWarning,
                stacklevel=2,
            )
        kwargs["jit_compile"] = False
        if optimizer is not None:
            optimizer = DynamicEmbeddingOptimizer(keras.optimizers.get(optimizer))
        super().compile(optimizer, *args, **kwargs)
        self.prefetch_embeddings = bool(prefetch_embeddings)

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


_Functional = _internals.Functional
_functional_init_arguments = _internals.functional_init_arguments
_functional_classes: dict[type, type] = {}


def _are_keras_tensors(inputs: Any) -> bool:
    # A subclass's own constructor may take two positional arguments too.
    flat = tf.nest.flatten(inputs)
    return bool(flat) and all(isinstance(x, keras.KerasTensor) for x in flat)


class DynamicEmbeddingModel(DynamicEmbeddingTrainer, keras.Model):
    """``keras.Model`` with :class:`DynamicEmbeddingTrainer`'s ``compile`` (and prefetching):
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
            made: DynamicEmbeddingModel = functional.__new__(functional, *args, **kwargs)
            return made
        instance: DynamicEmbeddingModel = super().__new__(cls, *args, **kwargs)
        return instance
