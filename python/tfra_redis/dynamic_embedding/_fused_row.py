"""``redis_fused_row``: an id's optimizer slots stored after its row, in the row's own field.

The stored value is ``row || slot1 || slot2 ...`` (each ``dim`` values of the table's dtype),
so a training step reads and writes one hash field per id instead of one per table:

* a lookup that stages rows for the optimizer reads whole values once, hands the rows to the
  model and keeps the slots here (:class:`RowSlots`) for the optimizer step that follows;
* the optimizer takes its slots from there (reading Redis only for ids it did not see, e.g.
  on the first step, before it knew its slots) and writes rows and slots back as one value.

Checkpoints: the slots are saved by :class:`FusedRowSlots`, the optimizer's stand-in for a
slot table. In store mode 0 it saves whole values (row and slots) so that restoring it and the
embedding in either order gives the saved values (the embedding's own restore keeps the
slots); in modes 1 and 2 the embedding's buckets already hold the slots, so it saves nothing.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import tensorflow as tf

from tfra_redis.store import RedisStore
from tfra_redis.table import RedisTable


class RowSlots:
    """The slots that this step's staging lookups of one wrapper read with its rows.

    Kept in Python, not in a TF variable, because their width is only known once the optimizer
    has made its slots, after the lookup of the first step was traced.
    """

    def __init__(self, store: RedisStore, default: np.ndarray) -> None:
        self.store = store
        #: One id's slots for ids never trained (every slot's initial row, side by side).
        self.default = np.ascontiguousarray(default, dtype=store.np_value_dtype).reshape(-1)
        self._step = -1
        self._ids: list[np.ndarray] = []
        self._slots: list[np.ndarray] = []

    def lookup(self, keys: np.ndarray, step: int, default: Any) -> np.ndarray:
        """Rows of ``keys`` (unique, flat) read with their slots, which are kept for the
        optimizer step numbered ``step``; lookups of an earlier step are dropped, as the
        wrapper drops their rows."""
        if step != self._step:
            self._step, self._ids, self._slots = step, [], []
        rows, slots = self.store.find_with_slots(keys, default, self.default)
        self._ids.append(self.store._keys(keys))
        self._slots.append(slots)
        return rows

    def take(self, ids: np.ndarray, step: int) -> np.ndarray:
        """The slots of ``ids`` (the step's merged ids) as the lookups of step ``step`` read
        them, else read from Redis; forgets what it kept."""
        ids = self.store._keys(ids)
        kept_ids, kept_slots = self._ids, self._slots
        fresh = step == self._step and kept_ids
        self._step, self._ids, self._slots = -1, [], []
        if fresh and len(kept_ids) == 1 and np.array_equal(kept_ids[0], ids):
            return kept_slots[0]  # one lookup this step: its unique ids are the merged ones
        if fresh:
            staged = np.concatenate(kept_ids) if len(kept_ids) > 1 else kept_ids[0]
            # The wrapper merges its staged ids keeping each one's first row, in order of
            # first appearance: the same selection of the kept slots fits it.
            _, first = np.unique(staged, return_index=True)
            first.sort()
            if first.shape == ids.shape and np.array_equal(staged[first], ids):
                slots = np.concatenate(kept_slots) if len(kept_slots) > 1 else kept_slots[0]
                return slots[first]
        _, slots = self.store.find_with_slots(ids, 0, self.default)
        return slots


class FusedRowSlots(RedisTable):
    """The optimizer's slot "table" of one wrapper under ``redis_fused_row``: a view of the
    embedding's table that checkpoints (``tf.train.Checkpoint``, ``.keras`` files) save and
    restore the slots through. Its rows are the whole stored values, ``(1 + k) * dim`` wide.
    """

    def __init__(self, params_table: RedisTable, name: str, slot_default: np.ndarray) -> None:
        # Not RedisTable.__init__: the view opens no table of its own.
        self._params_table = params_table
        self._store = params_table.store
        self._key_dtype = params_table.key_dtype
        self._value_dtype = params_table.value_dtype
        self._slot_default = np.ascontiguousarray(
            slot_default, dtype=self._store.np_value_dtype
        ).reshape(-1)
        self._row_dim = params_table.dim
        self._dim = self._row_dim + self._slot_default.shape[0]
        self._name = name
        self._checkpoint = params_table.checkpoint
        self._device = params_table.device
        self._shard_saveable_object_fn = None
        self._config = params_table.config
        self._store_mode = params_table._store_mode
        self._model_tag = params_table._model_tag
        self._np_default = np.concatenate(
            [np.asarray(params_table._np_default, self._store.np_value_dtype), self._slot_default]
        )
        self._default_value = tf.constant(self._np_default)
        self._value_shape = tf.TensorShape([self._dim])
        self._default_bytes = self._np_default.view(np.uint8)

    @property
    def table(self) -> FusedRowSlots:
        """Itself: the optimizer treats it as a slot variable whose ``table`` is saved."""
        return self

    @property
    def slot_dim(self) -> int:
        """Values of all slots of one id."""
        return int(self._slot_default.shape[0])

    @property
    def dim(self) -> int:
        """Values of all slots of one id (what :meth:`lookup` gives per id)."""
        return self.slot_dim

    def lookup_slots(self, keys: Any) -> np.ndarray:
        """The slots of ``keys`` (flat), ``[n, slot_dim]``, defaults for ids without any."""
        _, slots = self._store.find_with_slots(keys, 0, self._slot_default)
        return slots

    def lookup(
        self,
        keys: Any,
        dynamic_default_values: Any = None,
        return_exists: bool = False,
        name: str | None = None,
    ) -> Any:
        """The slots of ``keys`` (any shape) as a tensor shaped ``keys.shape + [slot_dim]``, as
        a slot table's lookup gives them (the slots' initial values for ids without any)."""
        if dynamic_default_values is not None or return_exists:
            raise NotImplementedError(
                "the fused optimizer slots of a redis_fused_row table are looked up with their "
                "initial values as defaults, without exists flags"
            )
        keys = self._convert_keys(keys, "lookup")

        def find(k: np.ndarray) -> np.ndarray:
            return self.lookup_slots(k.reshape(-1)).reshape(*k.shape, self.slot_dim)

        values = self._call(find, [keys], self._value_dtype, name or f"{self._op_prefix}_slots")
        values.set_shape(keys.shape.concatenate([self.slot_dim]))
        return values

    def manifest(self) -> dict[str, Any]:
        manifest = super().manifest()
        manifest["fused_row"] = {"row_dim": self._row_dim, "slot_dim": self.slot_dim}
        return manifest

    def save_rows(self) -> tuple[np.ndarray, np.ndarray, bytes]:
        """Mode 0: every id's row and slots; modes 1 and 2 save nothing (the embedding's
        buckets, saved or left in Redis by the embedding's own checkpoint, hold the slots)."""
        manifest = self.manifest()
        keys = np.zeros((0,), dtype=self._key_dtype.as_numpy_dtype)
        values = np.zeros((0, self._dim), dtype=self._store.np_value_dtype)
        if self._store_mode == 0:
            keys, _ = self._store.export()
            keys = keys.astype(self._key_dtype.as_numpy_dtype, copy=False)
            rows, slots = self._store.find_with_slots(keys, 0, self._slot_default)
            values = np.concatenate([rows, slots], axis=1)
        manifest["rows"] = int(keys.shape[0])
        return keys, values, json.dumps(manifest, sort_keys=True).encode()

    def restore_rows(self, keys: np.ndarray, values: np.ndarray, manifest: bytes) -> None:
        if manifest:
            saved = json.loads(bytes(manifest).decode())
            if saved.get("dim") not in (None, self._dim):
                raise ValueError(
                    f"the checkpoint of the fused optimizer slots {saved.get('name')!r} holds "
                    f"{saved['dim']} values per id, but {self._name!r} keeps {self._dim} (row "
                    "and slots): was it trained with another optimizer?"
                )
        if self._store_mode == 0 and keys.size:
            values = np.asarray(values).reshape(keys.shape[0], self._dim)
            self._store.insert_with_slots(
                keys, values[:, : self._row_dim], values[:, self._row_dim :]
            )
