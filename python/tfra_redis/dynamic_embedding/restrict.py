"""TFRA's restrict policies: keep an embedding to its newest or most used ids.

``de.get_variable(..., restrict_policy=de.TimestampRestrictPolicy)`` (or
``FrequencyRestrictPolicy``, or a layer's ``restrict_policy=``) gives the variable a *status*
table, ``<name>/timestamp`` or ``<name>/frequency`` (Redis table ``<name>_timestamp`` ...), with
one int32 per id. ``de.DynamicEmbeddingOptimizer`` updates it with every optimizer step that
writes the id (never a lookup, as in TFRA): the step's Unix time, or the count of steps that
updated the id. ``variable.restrict(num_reserved, trigger=...)`` then removes the ids with the
oldest times (or smallest counts) from the variable, its status table and its optimizer slot
tables, until ``num_reserved`` ids remain, if the variable holds more than ``trigger``
(default ``num_reserved``) ids. The selection runs in the Rust core against Redis, streaming
pages of ids: the table is never loaded into memory.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np

from tfra_redis import _native
from tfra_redis.store import RedisStore

__all__ = ["FrequencyRestrictPolicy", "RestrictPolicy", "TimestampRestrictPolicy"]

#: Ids per HSCAN page while restricting: client memory is about this many rows.
PAGE = 4096


def _now() -> int:
    """The status of a timestamp update (Unix seconds, as TFRA's int32(tf.timestamp()))."""
    return int(time.time())


class RestrictPolicy:
    """The base of TFRA's restrict policies; pass a subclass (the class, not an instance) as a
    variable's ``restrict_policy``. ``status_name`` is the suffix of the status table."""

    status_name = ""

    def __init__(self, var: Any) -> None:
        if not self.status_name:
            raise TypeError("use TimestampRestrictPolicy or FrequencyRestrictPolicy")
        from tfra_redis.dynamic_embedding.variable import Variable

        self.var = var
        self.status_var = Variable(
            key_dtype=var.key_dtype,
            value_dtype="int32",
            dim=1,
            name=f"{var.name}/{self.status_name}",
            initializer=0,
            trainable=False,
            checkpoint=var.checkpoint,
            kv_creator=var.kv_creator,
        )
        # The optimizer slot variables of `var`, trimmed with it (TFRA's params_in_slots).
        self.params_in_slots: list[Any] = []

    @property
    def status_store(self) -> RedisStore:
        return self.status_var.table.store

    def track_slot(self, slot_variable: Any) -> None:
        """Registers an optimizer slot variable of ``var`` (its rows are removed with var's)."""
        if all(slot is not slot_variable for slot in self.params_in_slots):
            self.params_in_slots.append(slot_variable)

    def apply_update(self, ids: Any) -> None:
        """Records that an optimizer step wrote ``ids`` (unique int ids, numpy)."""
        raise NotImplementedError

    def apply_restriction(self, num_reserved: int, **kwargs: Any) -> int:
        """Removes ids until ``num_reserved`` remain, if more than ``trigger`` (keyword, default
        ``num_reserved``) are stored; returns how many were removed."""
        trigger = kwargs.pop("trigger", None)
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        if isinstance(num_reserved, bool) or not isinstance(num_reserved, (int, np.integer)):
            raise TypeError(f"num_reserved must be an int, got {num_reserved!r}")
        if num_reserved < 0:
            raise ValueError(f"num_reserved must be >= 0, got {num_reserved}")
        trigger = num_reserved if trigger is None else trigger
        if isinstance(trigger, bool) or not isinstance(trigger, (int, np.integer)):
            raise TypeError(f"trigger must be an int, got {trigger!r}")
        if self.var.table.store.size() <= trigger:
            return 0
        stores = [self.var.table.store] + [slot.table.store for slot in self.params_in_slots]
        with contextlib.ExitStack() as writes:
            # Removals are writes: prefetched rows of these tables are read again.
            for store in [self.status_store, *stores]:
                writes.enter_context(store.writing(None))
            _, removed = _native.restrict(
                self.status_store._table, [s._table for s in stores], int(num_reserved), PAGE
            )
        return int(removed)


class TimestampRestrictPolicy(RestrictPolicy):
    """Keeps the ids updated most recently (status: the Unix time of the last update)."""

    status_name = "timestamp"

    def apply_update(self, ids: Any) -> None:
        ids = np.asarray(ids).reshape(-1)
        if ids.size:
            stamp = np.full((ids.size, 1), _now(), dtype=np.int32)
            self.status_store.insert(ids, stamp)


class FrequencyRestrictPolicy(RestrictPolicy):
    """Keeps the ids updated most often (status: the number of steps that updated the id)."""

    status_name = "frequency"

    def apply_update(self, ids: Any) -> None:
        ids = np.asarray(ids).reshape(-1)
        if ids.size:
            counts = np.asarray(self.status_store.find(ids, default=0))
            self.status_store.insert(ids, counts + 1)
