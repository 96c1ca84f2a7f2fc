"""Recording embedding lookups for training.

Rows come out of Redis through a ``numpy_function``, which has no gradient; what can be
differentiated is the loss with respect to the looked-up rows themselves. While a recorder is
active, every ``embedding_lookup`` of a trainable ``Variable`` (and so every call of the Keras
``Embedding`` layer) watches its unique rows on the recorder's tape and records
``(variable, unique ids, rows)``. After the forward pass, ``tape.gradient(loss, recorder.rows)``
gives one ``IndexedSlices`` per lookup, which ``EmbeddingOptimizer.apply`` writes to Redis.

A custom training loop::

    with tf.GradientTape() as tape, de.record_lookups(tape) as lookups:
        loss = loss_fn(model(x, training=True), y)
    grads = tape.gradient(loss, model.trainable_variables + lookups.rows)
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

__all__ = ["LookupRecord", "LookupRecorder", "current_recorder", "record_lookups"]


@dataclass(frozen=True)
class LookupRecord:
    """One lookup: ``rows[i]`` is the row of ``ids[i]`` (the ids are unique)."""

    variable: Any
    ids: tf.Tensor
    rows: tf.Tensor


class LookupRecorder:
    """Collects the lookups made while it is active (see :func:`record_lookups`)."""

    def __init__(self, tape: tf.GradientTape | None = None) -> None:
        self.tape = tape
        self.records: list[LookupRecord] = []

    def record(self, variable: Any, ids: tf.Tensor, rows: tf.Tensor) -> None:
        if self.tape is not None:
            self.tape.watch(rows)
        self.records.append(LookupRecord(variable, ids, rows))

    @property
    def rows(self) -> list[tf.Tensor]:
        """The looked-up rows of each record, to differentiate the loss with respect to."""
        return [record.rows for record in self.records]

    def __len__(self) -> int:
        return len(self.records)


# Tracing and eager execution of one step happen on the calling thread, so a per-thread stack
# keeps concurrent training loops (e.g. in tests) apart.
_local = threading.local()


def _stack() -> list[LookupRecorder]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def current_recorder() -> LookupRecorder | None:
    """The innermost active recorder of this thread, if any."""
    stack = _stack()
    return stack[-1] if stack else None


@contextlib.contextmanager
def record_lookups(tape: tf.GradientTape | None = None) -> Iterator[LookupRecorder]:
    """Records the lookups of trainable variables made inside the block, watching their rows
    on ``tape`` (which must be recording)."""
    recorder = LookupRecorder(tape)
    stack = _stack()
    stack.append(recorder)
    try:
        yield recorder
    finally:
        stack.remove(recorder)
