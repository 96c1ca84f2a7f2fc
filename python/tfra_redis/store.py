"""``RedisStore``: a Redis-backed embedding table with a numpy API (no TensorFlow needed).

The TensorFlow classes (``RedisTable``, ``dynamic_embedding``) are built on this one.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, TypeAlias, overload

import numpy as np
import numpy.typing as npt

from tfra_redis import _native
from tfra_redis.config import RedisTableConfig
from tfra_redis.prefetch import PrefetchStats, RowPrefetcher, WriteLog

_VALUE_DTYPES = ("float32", "float64", "float16", "bfloat16", "int32", "int64", "int8")
# TFRA pairs string keys with every value dtype above (and bool, not stored here yet).
_KEY_DTYPES = ("int64", "int32", "string")


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype for a value dtype name; bfloat16 comes from ``ml_dtypes`` (a TF dep)."""
    if name == "bfloat16":
        import ml_dtypes

        bfloat16: np.dtype = np.dtype(ml_dtypes.bfloat16)
        return bfloat16
    return np.dtype(name)


# Results at least this large are made by `new_rows` over recycled memory.
_POOLED_BYTES = 1 << 20


def new_rows(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array, as ``np.empty(shape, dtype)`` makes; one of 1 MiB
    or more lives in a block that is recycled once the array and its views are gone.

    Without that, every large lookup result (32 MiB at 65,536 ids of dim 128) is a fresh
    ``mmap`` whose pages the kernel faults in and zeroes on first write, costing more client
    CPU than reading the rows (issue #13). The pool is ``_native.row_buffer``'s; its size is
    ``TFRA_REDIS_BUFFER_POOL_BYTES`` (default 64 MiB, 0 = off).
    """
    nbytes = dtype.itemsize * math.prod(shape)
    if nbytes < _POOLED_BYTES:
        return np.empty(shape, dtype)
    return _native.row_buffer(nbytes).view(dtype).reshape(shape)


def dtype_name(dtype: Any) -> str:
    """Normalises numpy, TF or string dtypes to our names (``float32``, ``int64``, ...)."""
    if hasattr(dtype, "as_numpy_dtype"):  # a tf.DType, without importing TensorFlow
        dtype = dtype.name
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    return {"float": "float32", "double": "float64", "half": "float16"}.get(name, name)


# What a table's config may be given as: a parsed config, TFRA's RedisTableConfig, a dict of
# the JSON keys, a path to the JSON file, or None for TFRA's lookup of the file.
ConfigSource: TypeAlias = (
    "_native.Config | RedisTableConfig | dict[str, Any] | str | os.PathLike[str] | None"
)


def load_config(config: ConfigSource) -> _native.Config:
    """Accepts a parsed config, a ``RedisTableConfig``, a dict, or a JSON file path."""
    if isinstance(config, _native.Config):
        return config
    if isinstance(config, RedisTableConfig):
        return config.load()
    if isinstance(config, dict):
        import json

        return _native.Config.from_json(json.dumps(config), "<dict>")
    if isinstance(config, (str, os.PathLike)):
        return RedisTableConfig(redis_config_abs_dir=config).load()
    if config is None:
        return RedisTableConfig().load()
    raise TypeError(
        "config must be a RedisTableConfig, a dict, a JSON file path or a parsed Config, "
        f"not {type(config).__name__}"
    )


class RedisStore:
    """An embedding table in Redis: ids (int64, int32 or string) to rows of ``dim`` values.

    Rows are laid out exactly as TFRA's Redis backend lays them out, so tables are shared with
    TFRA in both directions. Every method releases the GIL while it talks to Redis.

    String ids (``key_dtype="string"``, TF's ``tf.string``) are ``bytes`` (``str`` is encoded
    as UTF-8): a list, or a numpy object array as ``tf.numpy_function`` passes a ``tf.string``
    tensor. Their hash field in Redis is the string's bytes as they are. A numpy ``S`` array
    also works, but numpy itself drops trailing NUL bytes of its elements; use an object array
    for ids that may end in ``\0``. Exports return string ids as an object array of ``bytes``.
    """

    def __init__(
        self,
        config: ConfigSource,
        name: str,
        dim: int,
        key_dtype: npt.DTypeLike = "int64",
        value_dtype: npt.DTypeLike = "float32",
        manage_ttl: bool = True,
    ) -> None:
        """``manage_ttl=False`` opens the table without TFRA's TTL handling (no PERSIST on open,
        no EXPIRE on close): for tools that only look at a table."""
        self.key_dtype = dtype_name(key_dtype)
        self.value_dtype = dtype_name(value_dtype)
        if self.key_dtype not in _KEY_DTYPES:
            raise TypeError(f"key_dtype must be one of {_KEY_DTYPES}, got {self.key_dtype}")
        if self.value_dtype not in _VALUE_DTYPES:
            raise TypeError(f"value_dtype must be one of {_VALUE_DTYPES}, got {self.value_dtype}")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.name = name
        self.dim = int(dim)
        self.config = load_config(config)
        self.np_value_dtype = numpy_dtype(self.value_dtype)
        self._table = _native.Table(
            self.config, name, self.key_dtype, self.value_dtype, self.dim, manage_ttl
        )
        for note in self._table.notes:
            warnings.warn(f"tfra-redis: {note}", stacklevel=2)
        # TFRA clears the TTL when a table opens (done in Rust) and sets
        # expire_model_tag_in_seconds when it closes; here "closes" is close(), garbage
        # collection or interpreter exit, whichever comes first.
        self._closer = weakref.finalize(self, _close_quietly, self._table) if manage_ttl else None
        settings = json.loads(self.config.to_json())
        self._slot_layout = (
            "fused-row"
            if settings.get("redis_fused_row")
            else "fused"
            if settings.get("redis_fused_slots")
            else "per-slot"
        )
        self._writes = WriteLog()
        self._prefetcher = RowPrefetcher(self._read, self._writes)

    # -- conversions -------------------------------------------------------------------------

    def _key_array(self, keys: Any) -> np.ndarray:
        """``keys`` as a numpy array of their shape. For string tables an object array: a list
        of ``bytes`` goes to numpy as objects, since an ``S`` array would drop trailing NULs."""
        if self.key_dtype != "string" or isinstance(keys, np.ndarray):
            return np.asarray(keys)
        if hasattr(keys, "numpy"):  # an eager tf.string tensor
            return np.asarray(keys.numpy())
        return np.asarray(keys, dtype=object)

    def _string_keys(self, keys: np.ndarray) -> np.ndarray:
        if keys.dtype.kind == "O":
            flat = keys.reshape(-1)
            bad = next((k for k in flat if not isinstance(k, (bytes, str))), None)
            if bad is not None:
                raise TypeError(
                    f"keys of table {self.name!r} must be string (bytes or str), got "
                    f"{type(bad).__name__} {bad!r}"
                )
            if any(isinstance(k, str) for k in flat):
                flat = np.array(
                    [k.encode() if isinstance(k, str) else k for k in flat], dtype=object
                )
            return np.ascontiguousarray(flat)
        if keys.dtype.kind in "SU":
            flat = np.empty((keys.size,), dtype=object)
            flat[:] = [k.encode() if isinstance(k, str) else bytes(k) for k in keys.reshape(-1)]
            return flat
        raise TypeError(
            f"keys of table {self.name!r} must be string (bytes or str), got {keys.dtype}"
        )

    def _keys(self, keys: Any) -> np.ndarray:
        keys = self._key_array(keys)
        if self.key_dtype == "string":
            return self._string_keys(keys)
        if keys.dtype.kind not in "iu":
            raise TypeError(
                f"keys of table {self.name!r} must be {self.key_dtype}, got {keys.dtype}"
            )
        if self.key_dtype == "int32" and not np.can_cast(keys.dtype, np.int32):
            raise TypeError(f"keys of table {self.name!r} must be int32, got {keys.dtype}")
        if keys.dtype == np.uint64 and keys.size and keys.max() > np.iinfo(np.int64).max:
            raise ValueError("keys above 2**63-1 do not fit int64")
        return np.ascontiguousarray(keys.reshape(-1), dtype=np.int64)

    def _rows(self, values: Any, key_shape: tuple[int, ...], what: str) -> np.ndarray:
        values = np.asarray(values)
        want = (*key_shape, self.dim)
        if values.shape != want:
            raise ValueError(f"Expected shape {list(want)} for {what}, got {list(values.shape)}")
        if values.dtype.kind not in "fiub" and values.dtype != self.np_value_dtype:
            raise TypeError(f"{what} must be numeric, got {values.dtype}")
        return np.ascontiguousarray(values, dtype=self.np_value_dtype)

    def _default(self, default: Any, n: int) -> np.ndarray:
        """``default`` as contiguous rows of this table: one row for every id, or one per id
        of ``n``."""
        default = np.asarray(default, dtype=self.np_value_dtype)
        if default.size == 1:
            return np.full((self.dim,), default.reshape(()), dtype=self.np_value_dtype)
        if default.size == self.dim or default.size == n * self.dim:
            return np.ascontiguousarray(default).reshape(-1, self.dim)
        raise ValueError(
            f"default must be a scalar, {self.dim} values, or {n} rows of {self.dim} values "
            f"(table {self.name!r}); got shape {list(default.shape)}"
        )

    def _bytes(self, rows: np.ndarray) -> np.ndarray:
        return rows.reshape(-1).view(np.uint8)

    @contextlib.contextmanager
    def writing(self, keys: np.ndarray | None) -> Iterator[None]:
        """Wraps every write to this table made through this process (``keys``: the flat ids
        written, ``None`` for any), so that prefetched rows of those ids are read again."""
        seq = self._writes.begin(keys)
        try:
            yield
        finally:
            self._writes.end(seq)
            if self._prefetcher.pending:
                self._prefetcher.written(keys)

    def _read(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, exists)`` of flat ids (as ``_keys`` gives them); missing rows are zeros."""
        out = new_rows((flat.shape[0], self.dim), self.np_value_dtype)
        exists = np.empty((flat.shape[0],), dtype=np.bool_)
        zero = np.zeros((self.dim,), dtype=self.np_value_dtype).view(np.uint8)
        self._table.find(flat, zero, self._bytes(out), exists)
        return out, exists

    # -- prefetching -------------------------------------------------------------------------

    def prefetch(self, key_sets: Sequence[npt.ArrayLike]) -> None:
        """Starts reading the rows of each key set in the background (the GIL released); a
        later :meth:`find` of exactly one of these key sets uses them instead of reading.

        What that ``find`` returns is exactly what it would return without the prefetch, as
        far as writes made through this process go: ids written through this table since the
        prefetch started are read again (see ``tfra_redis.prefetch``). Prefetches of the
        previous call stay usable, older ones are dropped (``prefetch([])`` drops all but the
        previous call's). Errors of a prefetch are raised by the ``find`` that uses it.
        """
        self._prefetcher.issue([self._keys(keys) for keys in key_sets])

    @property
    def prefetch_stats(self) -> PrefetchStats:
        """How many prefetched keys ``find`` used, and how many of them it read again."""
        return self._prefetcher.stats

    def discard_prefetch(self) -> None:
        """Drops pending prefetches (for example at the end of training)."""
        self._prefetcher.discard()

    # -- operations --------------------------------------------------------------------------

    @overload
    def find(
        self,
        keys: npt.ArrayLike,
        default: npt.ArrayLike = 0,
        return_exists: Literal[False] = False,
        out: np.ndarray | None = None,
    ) -> np.ndarray: ...

    @overload
    def find(
        self,
        keys: npt.ArrayLike,
        default: npt.ArrayLike,
        return_exists: Literal[True],
        out: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]: ...

    @overload
    def find(
        self,
        keys: npt.ArrayLike,
        default: npt.ArrayLike = 0,
        *,
        return_exists: Literal[True],
        out: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def find(
        self,
        keys: npt.ArrayLike,
        default: npt.ArrayLike = 0,
        return_exists: bool = False,
        out: np.ndarray | None = None,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Rows for ``keys`` (any shape), shaped ``keys.shape + (dim,)``.

        Missing ids get ``default``: a scalar, one row of ``dim`` values, or one row per id
        (shape ``keys.shape + (dim,)``, TFRA's "full default" used by random initializers).

        ``out``: a C-contiguous, writable array of that shape and the table's dtype to write the
        rows into (and return), instead of a new one: a loop of large lookups then reuses its
        memory rather than having fresh pages zeroed by the kernel on every call.
        """
        keys_arr = self._key_array(keys)
        flat = self._keys(keys_arr)
        n = flat.shape[0]
        want = (*keys_arr.shape, self.dim)
        if out is not None:
            if not isinstance(out, np.ndarray):
                raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
            if out.shape != want or out.dtype != self.np_value_dtype:
                raise ValueError(
                    f"out must have shape {list(want)} and dtype {self.value_dtype}, got "
                    f"{list(out.shape)} {out.dtype}"
                )
            if not (out.flags.c_contiguous and out.flags.writeable):
                raise ValueError("out must be C-contiguous and writable")
        default = self._default(default, n)
        prefetched = self._prefetcher.take(flat) if self._prefetcher.pending else None
        exists: np.ndarray | None
        if prefetched is not None:
            rows, exists = prefetched
            defaults = default.reshape(-1, self.dim)
            rows = np.where(exists[:, None], rows, defaults)
            if out is not None:
                out.reshape(n, self.dim)[...] = rows
        else:
            rows = new_rows((n, self.dim), self.np_value_dtype) if out is None else out
            exists = np.empty((n,), dtype=np.bool_) if return_exists else None
            self._table.find(flat, self._bytes(default), self._bytes(rows), exists)
        # The caller's own array when given (rows is a flat view of it), else the new rows.
        out = rows.reshape(want) if out is None else out
        if return_exists:
            assert exists is not None
            return out, exists.reshape(keys_arr.shape)
        return out

    def find_rows(self, keys: np.ndarray, default_row: np.ndarray) -> np.ndarray:
        """:meth:`find` for callers that already hold checked inputs, such as the op body of
        ``RedisTable.lookup``: ``keys`` a numpy array of the table's key dtype (any shape;
        ``bytes`` objects for string tables, as ``tf.numpy_function`` gives ``tf.string``),
        ``default_row`` one row of the table's dtype viewed as ``uint8`` (one array made once
        and reused). Returns new rows shaped ``keys.shape + (dim,)``.

        Serving calls this from many threads at once, and everything here runs with the GIL
        held: it is the one new array and the Rust call, nothing more.
        """
        if self._prefetcher.pending:
            rows: np.ndarray = self.find(keys, default_row.view(self.np_value_dtype))
            return rows
        flat = self._keys(keys)
        out = new_rows((*keys.shape, self.dim), self.np_value_dtype)
        self._table.find(flat, default_row, out.reshape(-1).view(np.uint8), None)
        return out

    @property
    def slot_layout(self) -> str:
        """Where the config keeps optimizer slots, by ``tfra-redis convert-slots``' names:
        ``per-slot`` (TFRA's table per slot), ``fused`` (``redis_fused_slots``: one table,
        all slots side by side) or ``fused-row`` (``redis_fused_row``: after each row, in the
        row's own field)."""
        return self._slot_layout

    @property
    def fused_row(self) -> bool:
        """Whether the config sets ``redis_fused_row``: each id's optimizer slots are stored
        after its row, in the row's own field."""
        return self._slot_layout == "fused-row"

    def find_with_slots(
        self, keys: Any, default: Any, slot_default: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``redis_fused_row`` only: ``(rows, slots)`` of flat ``keys``, read in one field per
        id. ``default`` as :meth:`find` takes it; ``slot_default`` one id's slots (a whole
        number of rows of ``dim`` values), which ids stored without slots or missing get.
        Prefetched rows are not used (they hold no slots)."""
        flat = self._keys(keys)
        n = flat.shape[0]
        slot_default = np.ascontiguousarray(slot_default, dtype=self.np_value_dtype).reshape(-1)
        rows = new_rows((n, self.dim), self.np_value_dtype)
        slots = new_rows((n, slot_default.shape[0]), self.np_value_dtype)
        self._table.find_with_slots(
            flat,
            self._bytes(self._default(default, n)),
            self._bytes(rows),
            self._bytes(slot_default),
            self._bytes(slots),
        )
        return rows, slots

    def insert_with_slots(self, keys: Any, rows: Any, slots: Any) -> None:
        """``redis_fused_row`` only: stores each id's row (``[n, dim]``) followed by its slots
        (``[n, k * dim]``) as one value, replacing what was stored (slots included)."""
        flat = self._keys(keys)
        n = flat.shape[0]
        rows = self._rows(rows, (n,), "rows")
        slots = np.ascontiguousarray(slots, dtype=self.np_value_dtype)
        if n and slots.size % n:
            raise ValueError(f"slots of {n} ids must hold the same count each, got {slots.size}")
        slots = slots.reshape(n, slots.size // n if n else 0)
        with self.writing(flat):
            self._table.insert_with_slots(flat, self._bytes(rows), self._bytes(slots))

    def insert(self, keys: npt.ArrayLike, values: npt.ArrayLike) -> None:
        """Upserts rows; ``values`` must have shape ``keys.shape + (dim,)``. On a
        ``redis_fused_row`` table the slots stored after each row are kept (a server script,
        dearer than a plain ``HSET``)."""
        keys_arr = self._key_array(keys)
        flat = self._keys(keys_arr)
        rows = self._rows(values, keys_arr.shape, "value")
        with self.writing(flat):
            self._table.insert(flat, self._bytes(rows))

    def remove(self, keys: npt.ArrayLike) -> None:
        """Removes ids (missing ones are ignored)."""
        flat = self._keys(keys)
        with self.writing(flat):
            self._table.remove(flat)

    def accum(
        self, keys: npt.ArrayLike, values_or_deltas: npt.ArrayLike, exists: npt.ArrayLike
    ) -> None:
        """TFRA's BP-v2 update: adds deltas to ids flagged in ``exists`` that are still
        present; sets unflagged ids that are absent; leaves the rest alone."""
        keys_arr = self._key_array(keys)
        flat = self._keys(keys_arr)
        rows = self._rows(values_or_deltas, keys_arr.shape, "values_or_deltas")
        flags = np.asarray(exists)
        if flags.shape != keys_arr.shape:
            raise ValueError(
                f"Expected shape {list(keys_arr.shape)} for exists, got {list(flags.shape)}"
            )
        flags = np.ascontiguousarray(flags.reshape(-1), dtype=np.bool_)
        with self.writing(flat):
            self._table.accum(flat, self._bytes(rows), flags)

    def size(self) -> int:
        """Number of ids stored."""
        return int(self._table.size())

    def clear(self) -> None:
        """Deletes every row of this table (its buckets)."""
        with self.writing(None):
            self._table.clear()

    def _exported_keys(self, keys: np.ndarray) -> np.ndarray:
        if self.key_dtype == "string":
            return keys  # an object array of bytes
        return keys.astype(self.key_dtype, copy=False)

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        """All (ids, rows) at once; for tables that fit in memory. String ids come as an
        object array of ``bytes``."""
        keys, raw = self._table.export()
        values = raw.view(self.np_value_dtype).reshape(-1, self.dim)
        return self._exported_keys(keys), values

    def export_pages(
        self, sink: Callable[[np.ndarray, np.ndarray], None], page: int = 65536
    ) -> None:
        """Calls ``sink(ids, rows)`` page by page; memory stays bounded."""

        def forward(keys: np.ndarray, raw: np.ndarray) -> None:
            sink(
                self._exported_keys(keys),
                raw.view(self.np_value_dtype).reshape(-1, self.dim),
            )

        self._table.export_pages(page, forward)

    # -- persistence and lifecycle -----------------------------------------------------------

    def save_files(self) -> list[str]:
        """``table_store_mode`` 1: writes each bucket's DUMP payload to
        ``model_lib_abs_dir/<model_tag_runtime>/<bucket key>.rdb`` (fsynced, older file kept)."""
        return list(self._table.save_files())

    def restore_files(self) -> int:
        """``table_store_mode`` 1: restores the ``model_tag_import`` files into this table."""
        with self.writing(None):
            return int(self._table.restore_files())

    def import_model_tag(self) -> int:
        """Copies the rows stored under ``model_tag_import`` into this table (an upsert)."""
        with self.writing(None):
            return int(self._table.import_model_tag())

    def rebucket(self) -> tuple[list[str], int]:
        """Moves this table's rows found in other bucket layouts into the runtime layout."""
        with self.writing(None):
            old, copied = self._table.rebucket()
        return list(old), int(copied)

    def persist(self) -> None:
        """Removes any TTL from this table's buckets."""
        self._table.persist()

    def expire(self, seconds: int) -> None:
        """Sets a TTL on this table's buckets."""
        self._table.expire(int(seconds))

    def close(self) -> None:
        """Applies ``expire_model_tag_in_seconds`` to the buckets, as TFRA does when a table
        is destroyed (a negative setting disables it; 0 deletes the buckets). Idempotent."""
        if self._closer is not None:
            self._closer()

    @property
    def bucket_keys(self) -> list[bytes]:
        """The Redis keys of this table's buckets, in bucket order."""
        return list(self._table.bucket_keys)

    def __repr__(self) -> str:
        return (
            f"RedisStore(name={self.name!r}, dim={self.dim}, key_dtype={self.key_dtype}, "
            f"value_dtype={self.value_dtype}, buckets={self.bucket_keys!r})"
        )


def find_together(
    stores: Sequence[RedisStore], keys: Any, defaults: Sequence[Any]
) -> list[np.ndarray]:
    """Rows of the same ``keys`` in several tables (an embedding and its optimizer slot
    tables), read with one pipeline per Redis node instead of one per table.

    ``defaults[i]`` is what ``stores[i].find`` takes as ``default`` (a scalar, one row, or one
    row per key). Returns one ``[len(keys), dim]`` array per store. Prefetched rows are not
    used: this is for reads that must see every write made so far.
    """
    if len(defaults) != len(stores):
        raise ValueError(f"{len(stores)} tables but {len(defaults)} defaults")
    if not stores:
        return []
    flat = stores[0]._keys(keys)
    outs, default_bytes = [], []
    for store, default in zip(stores, defaults, strict=True):
        if store.key_dtype != stores[0].key_dtype:
            raise TypeError(
                f"tables read together must share a key dtype: {stores[0].name!r} has "
                f"{stores[0].key_dtype}, {store.name!r} has {store.key_dtype}"
            )
        default_bytes.append(store._bytes(store._default(default, flat.shape[0])))
        outs.append(new_rows((flat.shape[0], store.dim), store.np_value_dtype))
    _native.find_together(
        [s._table for s in stores],
        flat,
        default_bytes,
        [s._bytes(o) for s, o in zip(stores, outs, strict=True)],
    )
    return outs


def insert_together(stores: Sequence[RedisStore], keys: Any, rows: Sequence[Any]) -> None:
    """Upserts ``rows[i]`` (shape ``[len(keys), dim]``) into ``stores[i]`` for the same
    ``keys``, with one pipeline per Redis node. Not a transaction: a failure part-way may leave
    some tables written and others not, as separate writes would."""
    if len(rows) != len(stores):
        raise ValueError(f"{len(stores)} tables but {len(rows)} row arrays")
    if not stores:
        return
    flat = stores[0]._keys(keys)
    data = [
        store._bytes(store._rows(r, flat.shape, f"rows of {store.name!r}"))
        for store, r in zip(stores, rows, strict=True)
    ]
    with contextlib.ExitStack() as writes:
        for store in stores:
            writes.enter_context(store.writing(flat))
        _native.insert_together([s._table for s in stores], flat, data)


def flush_deferred_writes() -> None:
    """Sends the optimizer writes that ``redis_write_behind_ms`` lets wait in this process
    for the next lookup, and waits for those already on their way. Any command of this
    process on the same rows does this for them by itself, and a background thread sends
    what waited ``redis_write_behind_ms``; call this before another process must see the
    last step's rows at once. Runs at interpreter exit."""
    _native.flush_deferred_writes()


@atexit.register
def _flush_at_exit() -> None:
    try:
        # at_exit: the background flushers stop first; they must not log once the
        # interpreter finalizes (the logging bridge would need the GIL).
        _native.flush_deferred_writes(at_exit=True)
    except Exception as err:
        # Not raised: nothing could catch it at exit.
        warnings.warn(
            f"tfra-redis: the last optimizer writes deferred by redis_write_behind_ms could "
            f"not be sent at exit: {err}",
            stacklevel=1,
        )


def _close_quietly(table: _native.Table) -> None:
    try:
        table.close()
    except Exception as err:
        # Tables still open at interpreter exit are closed after the main thread has ended,
        # often after the servers they used are gone (a test's, a demo's): nothing to report
        # then. Earlier, a failed close is worth a warning, never an exception.
        if threading.main_thread().is_alive():
            warnings.warn(f"tfra-redis: could not set the TTL on close: {err}", stacklevel=1)
