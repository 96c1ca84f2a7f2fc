"""``RedisTable``: TFRA's ``de.RedisTable`` as TensorFlow ops over a :class:`RedisStore`.

Each op is a ``tf.numpy_function(..., stateful=True)`` around the store, so it runs eagerly and
inside ``tf.function`` (never under XLA: ``numpy_function`` cannot be compiled). Eagerly the store
is called directly, which saves the op's overhead. Outputs get static shapes (``keys.shape +
[dim]``, ``[None, dim]`` for export) because ``numpy_function`` loses them. In a graph, ``lookup``
with int32/int64 keys is the native op instead when its library is built
(:mod:`tfra_redis.native_ops`): same results, no Python in the op.

Checkpoints follow the config's ``table_store_mode`` (TFRA's rule):

* 0: the rows go into the checkpoint as ``-keys``/``-values`` and are upserted on restore;
* 1: the buckets are DUMPed to files under ``model_lib_abs_dir`` and RESTOREd from the
  ``model_tag_import`` files;
* 2: the rows stay in Redis; the checkpoint holds empty tensors. Restoring (in mode 2, or in
  mode 0 from an empty checkpoint) copies the rows of ``model_tag_import`` into
  ``model_tag_runtime`` when they differ, leaving the old tag's rows in place.

In every mode the checkpoint also holds ``-manifest``, a small JSON document naming the table.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

try:
    import tensorflow as tf
    from tensorflow.python.training.saving import saveable_object
except ModuleNotFoundError as err:  # no TensorFlow: say how to install it
    from tfra_redis._optional import tensorflow_missing

    raise tensorflow_missing(__name__, err) from err

from tfra_redis import native_ops
from tfra_redis.store import RedisStore, load_config

__all__ = [
    "ExpectedShapeError",
    "KeyDtypeError",
    "RedisTable",
    "STORE_MODES",
    "collecting_lookup_keys",
    "is_collecting_lookup_keys",
]

#: ``table_store_mode`` values: what a checkpoint holds for a table.
STORE_MODES = {0: "tensors", 1: "files", 2: "nothing"}

_MANIFEST_FORMAT = "tfra-redis-table/1"


class KeyDtypeError(TypeError, ValueError):
    """Keys (or values) of the wrong dtype; both a ``TypeError`` and a ``ValueError``, since TFRA
    raises one or the other depending on the op."""

    # Raised while a tf.function is traced: autograph must re-raise it as it is (it would
    # otherwise turn it into a StagingError).
    ag_pass_through = True


class ExpectedShapeError(tf.errors.InvalidArgumentError, ValueError):
    """Values whose shape is not ``keys.shape + [dim]``; TFRA's "Expected shape" op error."""

    ag_pass_through = True

    def __init__(self, message: str) -> None:
        super().__init__(None, None, message)


def _shape_list(shape: tf.TensorShape) -> str:
    if shape.rank is None:
        return "<unknown>"
    return "[" + ",".join("?" if d is None else str(d) for d in shape.as_list()) + "]"


_collector = threading.local()


@contextlib.contextmanager
def collecting_lookup_keys() -> Iterator[list[tuple[RedisStore, tf.Tensor]]]:
    """Inside the block, :meth:`RedisTable.lookup` reads nothing: it appends ``(store, keys)``
    to the yielded list and returns zero rows (and no key as existing).

    Tracing a model's forward pass in this mode gives a graph that computes which ids each
    table would be asked for, which is what prefetching the next batch needs; the model's
    dense layers fall out of that graph, as nothing uses their outputs.
    """
    previous = getattr(_collector, "keys", None)
    collected: list[tf.Tensor] = []
    _collector.keys = collected
    try:
        yield collected
    finally:
        _collector.keys = previous


def is_collecting_lookup_keys() -> bool:
    """Whether lookups on this thread only collect their keys (:func:`collecting_lookup_keys`)."""
    return getattr(_collector, "keys", None) is not None


def _scalar_op(result: Any) -> Any:
    """What a write op returns: ``None`` eagerly, else the op (for control dependencies)."""
    return None if tf.executing_eagerly() else result.op


def run_numpy(fn: Callable[..., Any], inputs: Sequence[Any], tout: Any, name: str) -> Any:
    """Runs ``fn`` on the inputs' numpy values: directly when eager (so that its errors reach
    the caller as the tfra_redis exceptions they are), as a stateful ``numpy_function`` in a
    graph."""
    if tf.executing_eagerly():
        result = fn(*(tf.convert_to_tensor(x).numpy() for x in inputs))
        if isinstance(tout, (list, tuple)):
            return [tf.convert_to_tensor(r, dtype=t) for r, t in zip(result, tout, strict=True)]
        return tf.convert_to_tensor(result, dtype=tout)
    return tf.numpy_function(fn, list(inputs), tout, stateful=True, name=name)


class RedisTable(tf.__internal__.tracking.Trackable):
    """A mutable hash table whose rows live in Redis, with TFRA's ``RedisTable`` API.

    Args:
        key_dtype: ``tf.int64``, ``tf.int32`` or ``tf.string`` (ids are the strings' bytes).
        value_dtype: ``tf.float32``, ``float64``, ``float16``, ``bfloat16``, ``int32``,
            ``int64`` or ``int8``.
        default_value: the row for missing keys; its shape is the value shape (``[dim]``).
        name: the table name; Redis uses the part before ``_mht_`` (TFRA's rule).
        checkpoint: whether ``tf.train.Checkpoint`` saves and restores this table.
        config: a :class:`~tfra_redis.RedisTableConfig` (``None`` means
            ``RedisTableConfig()``), or a config dict or JSON file path.
        device: the device the ops are placed on ('' leaves it to TensorFlow; they run on CPU).
        shard_saveable_object_fn: accepted for TFRA compatibility and ignored.
    """

    #: TFRA documents the config fields with this dict; it is documentation only.
    default_redis_params = {
        "redis_connection_mode": 1,
        "redis_master_name": "master",
        "redis_host_ip": ["127.0.0.1"],
        "redis_host_port": [6379],
        "redis_password": "",
        "redis_db": 0,
        "storage_slice": 1,
        "keys_sending_size": 1024,
        "using_md5_prefix_name": False,
        "model_tag_import": "test",
        "model_tag_runtime": "test",
        "expire_model_tag_in_seconds": 604800,
        "table_store_mode": 1,
        "model_lib_abs_dir": "/tmp/",
    }

    def __init__(
        self,
        key_dtype: Any,
        value_dtype: Any,
        default_value: Any,
        name: str = "RedisTable",
        checkpoint: bool = False,
        config: Any = None,
        device: str = "",
        shard_saveable_object_fn: Any = None,
    ) -> None:
        self._key_dtype = tf.as_dtype(key_dtype)
        self._value_dtype = tf.as_dtype(value_dtype)
        with tf.init_scope():
            default = tf.convert_to_tensor(default_value, dtype=self._value_dtype)
        self._default_value = default
        self._value_shape = default.shape
        dim = self._value_shape.num_elements()
        if dim is None or self._value_shape.rank > 1:
            raise ValueError(
                f"Default value must be a vector, got a tensor of shape {default.shape}"
            )
        self._dim = max(int(dim), 1)
        self._name = name
        self._checkpoint = bool(checkpoint)
        self._device = device or ""
        self._shard_saveable_object_fn = shard_saveable_object_fn
        self._config = config
        self._store = RedisStore(
            load_config(config), name, self._dim, self._key_dtype.name, self._value_dtype.name
        )
        settings = json.loads(self._store.config.to_json())
        self._store_mode = int(settings.get("table_store_mode", 1))
        self._model_tag = settings.get("model_tag_runtime", "")
        self._np_default = np.broadcast_to(
            np.asarray(self._default_numpy(), dtype=self._store.np_value_dtype).reshape(-1),
            (self._dim,),
        ).copy()
        # The bytes every lookup with the table's default passes to Rust, made once: the op
        # body then does no conversion of its own (see `_find_np`).
        self._default_bytes = self._np_default.view(np.uint8)
        self._default_bytes.flags.writeable = False

    def _default_numpy(self) -> np.ndarray:
        with tf.init_scope():
            value: np.ndarray = self._default_value.numpy()
            return value

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
    def default_value(self) -> tf.Tensor:
        return self._default_value

    @property
    def dim(self) -> int:
        """Values per row (``value_shape.num_elements()``)."""
        return self._dim

    @property
    def store(self) -> RedisStore:
        """The numpy-level table the ops call."""
        return self._store

    @property
    def store_mode(self) -> int:
        """``table_store_mode`` from the config: 0 tensors, 1 files, 2 nothing."""
        return self._store_mode

    @property
    def checkpoint(self) -> bool:
        return self._checkpoint

    @property
    def config(self) -> Any:
        return self._config

    @property
    def device(self) -> str:
        return self._device

    def __repr__(self) -> str:
        return (
            f"RedisTable(name={self._name!r}, key_dtype={self._key_dtype.name}, "
            f"value_dtype={self._value_dtype.name}, dim={self._dim}, "
            f"buckets={[b.decode(errors='replace') for b in self._store.bucket_keys]})"
        )

    # -- conversions (all before any Redis call) ----------------------------------------------

    def _convert_keys(self, keys: Any, op: str) -> tf.Tensor:
        if isinstance(keys, (tf.SparseTensor, tf.RaggedTensor)):
            raise KeyDtypeError(f"{op}: keys of {self._name!r} must be a dense tensor")
        if tf.is_tensor(keys) and keys.dtype != self._key_dtype:
            raise KeyDtypeError(
                f"{op}: keys of table {self._name!r} must be {self._key_dtype.name}, "
                f"got {keys.dtype.name}"
            )
        try:
            return tf.convert_to_tensor(keys, dtype=self._key_dtype)
        except (TypeError, ValueError) as error:
            raise KeyDtypeError(
                f"{op}: keys of table {self._name!r} must be {self._key_dtype.name}: {error}"
            ) from None

    def _convert_values(self, values: Any, keys: tf.Tensor, what: str, op: str) -> tf.Tensor:
        if tf.is_tensor(values) and values.dtype != self._value_dtype:
            raise KeyDtypeError(
                f"{op}: {what} of table {self._name!r} must be {self._value_dtype.name}, "
                f"got {values.dtype.name}"
            )
        try:
            values = tf.convert_to_tensor(values, dtype=self._value_dtype)
        except (TypeError, ValueError) as error:
            raise KeyDtypeError(
                f"{op}: {what} of table {self._name!r} must be {self._value_dtype.name}: {error}"
            ) from None
        expected = keys.shape.concatenate([self._dim])
        if not values.shape.is_compatible_with(expected):
            raise ExpectedShapeError(
                f"Expected shape {_shape_list(expected)} for {what}, got "
                f"{_shape_list(values.shape)}"
            )
        return values

    @staticmethod
    def _empty(keys: tf.Tensor) -> bool:
        return bool(keys.shape.num_elements() == 0)

    def _call(
        self,
        fn: Callable[..., Any],
        inputs: Sequence[tf.Tensor],
        tout: Any,
        name: str,
    ) -> Any:
        with tf.device(self._device):
            return run_numpy(fn, inputs, tout, name)

    # -- ops ----------------------------------------------------------------------------------

    def size(self, name: str | None = None) -> tf.Tensor:
        """The number of keys stored (an int64 scalar)."""

        def size_fn() -> np.int64:
            return np.int64(self._store.size())

        out = self._call(size_fn, [], tf.int64, name or f"{self._op_prefix}_size")
        out.set_shape([])
        return out

    def lookup(
        self,
        keys: Any,
        dynamic_default_values: Any = None,
        return_exists: bool = False,
        name: str | None = None,
    ) -> Any:
        """Rows for ``keys`` (any shape), shaped ``keys.shape + [dim]``.

        Missing keys get ``dynamic_default_values`` when given (one row per key, shape
        ``keys.shape + [dim]``, or one shared row), else the table's default. With
        ``return_exists`` also returns a bool tensor of ``keys.shape``.
        """
        keys = self._convert_keys(keys, "lookup")
        out_shape = keys.shape.concatenate([self._dim])
        collected = getattr(_collector, "keys", None)
        if self._empty(keys) or collected is not None:
            if collected is not None:
                collected.append((self._store, keys))
            shape = tf.concat([tf.shape(keys), [self._dim]], 0)
            values = tf.zeros(shape, dtype=self._value_dtype)
            values.set_shape(out_shape)
            return (values, tf.zeros_like(keys, tf.bool)) if return_exists else values

        op = name or f"{self._op_prefix}_lookup"
        if not tf.executing_eagerly() and self._key_dtype != tf.string:
            module = native_ops.lookup_module()
            if module is not None:
                return self._native_lookup(
                    module, keys, dynamic_default_values, return_exists, op, out_shape
                )

        # The table's own default is not an input of the op: converting a default tensor to
        # numpy on every call cost more than the lookup of a small batch.
        inputs = [keys]
        if dynamic_default_values is not None:
            inputs.append(tf.convert_to_tensor(dynamic_default_values, dtype=self._value_dtype))
        if return_exists:
            values, exists = self._call(
                self._find_exists_np, inputs, [self._value_dtype, tf.bool], op
            )
            values.set_shape(out_shape)
            exists.set_shape(keys.shape)
            return values, exists
        values = self._call(self._find_np, inputs, self._value_dtype, op)
        values.set_shape(out_shape)
        return values

    def _native_lookup(
        self,
        module: Any,
        keys: tf.Tensor,
        dynamic_default_values: Any,
        return_exists: bool,
        op: str,
        out_shape: tf.TensorShape,
    ) -> Any:
        """``lookup`` as the native op (``tfra_redis.native_ops``), in a graph."""
        if dynamic_default_values is None:
            defaults = tf.constant(self._np_default, dtype=self._value_dtype)
        else:
            defaults = tf.convert_to_tensor(dynamic_default_values, dtype=self._value_dtype)
            if defaults.shape.num_elements() == 1 and self._dim > 1:
                # One value (a scalar, or shape [1]): every value of the shared row, as the
                # numpy_function path takes it.
                defaults = tf.fill([self._dim], tf.reshape(defaults, []))
        handle, token = self._store._table.native_handle()
        # The op names the table by a handle only; the graph keeps the store alive, as a
        # numpy_function's graph keeps its Python function.
        graph = tf.compat.v1.get_default_graph()
        kept = getattr(graph, "_tfra_redis_stores", None)
        if kept is None:
            kept = []
            graph._tfra_redis_stores = kept
        if not any(s is self._store for s in kept):
            kept.append(self._store)
        with tf.device(self._device):
            values, exists = module.tfra_redis_lookup(
                keys=keys,
                defaults=defaults,
                table_handle=handle,
                process_token=token,
                table_name=self._name,
                dim=self._dim,
                return_exists=return_exists,
                name=op,
            )
        values.set_shape(out_shape)
        if return_exists:
            exists.set_shape(keys.shape)
            return values, exists
        return values

    # The op bodies of `lookup`. They are methods, not closures made inside `lookup`: autograph
    # converts a closure defined in code it converts (any `tf.function` calling `lookup`), and
    # the converted body ran its control flow through autograph's operators on every call. The
    # op runs with the GIL held, so whatever Python runs here runs one thread at a time.

    def _find_np(self, keys: np.ndarray, default: np.ndarray | None = None) -> np.ndarray:
        if default is None:
            return self._store.find_rows(keys, self._default_bytes)
        if keys.size == 0:
            return np.zeros((*keys.shape, self._dim), dtype=self._store.np_value_dtype)
        return self._store.find(keys, default)

    def _find_exists_np(
        self, keys: np.ndarray, default: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if keys.size == 0:
            values = np.zeros((*keys.shape, self._dim), dtype=self._store.np_value_dtype)
            return values, np.zeros(keys.shape, np.bool_)
        return self._store.find(
            keys, self._np_default if default is None else default, return_exists=True
        )

    def insert(self, keys: Any, values: Any, name: str | None = None) -> Any:
        """Upserts rows; ``values`` must have shape ``keys.shape + [dim]``."""
        keys = self._convert_keys(keys, "insert")
        values = self._convert_values(values, keys, "value", "insert")
        if self._empty(keys):
            return None if tf.executing_eagerly() else tf.no_op()

        def insert_fn(k: np.ndarray, v: np.ndarray) -> np.int64:
            if k.size:
                self._store.insert(k, v)
            return np.int64(k.size)

        out = self._call(insert_fn, [keys, values], tf.int64, name or f"{self._op_prefix}_insert")
        return _scalar_op(out)

    def accum(self, keys: Any, values_or_deltas: Any, exists: Any, name: str | None = None) -> Any:
        """TFRA's BP-v2 update: adds deltas to keys flagged in ``exists`` that are still stored,
        sets unflagged keys that are absent, leaves the rest alone."""
        keys = self._convert_keys(keys, "accum")
        values = self._convert_values(values_or_deltas, keys, "values_or_deltas", "accum")
        exists = tf.convert_to_tensor(exists, dtype=tf.bool)
        if not exists.shape.is_compatible_with(keys.shape):
            raise ExpectedShapeError(
                f"Expected shape {_shape_list(keys.shape)} for exists, got "
                f"{_shape_list(exists.shape)}"
            )
        if self._empty(keys):
            return None if tf.executing_eagerly() else tf.no_op()

        def accum_fn(k: np.ndarray, v: np.ndarray, e: np.ndarray) -> np.int64:
            if k.size:
                self._store.accum(k, v, e)
            return np.int64(k.size)

        out = self._call(
            accum_fn, [keys, values, exists], tf.int64, name or f"{self._op_prefix}_accum"
        )
        return _scalar_op(out)

    def remove(self, keys: Any, name: str | None = None) -> Any:
        """Removes keys; missing ones are ignored."""
        if tf.is_tensor(keys) and keys.dtype != self._key_dtype:
            raise TypeError(
                f"Signature mismatch. Keys must be dtype {self._key_dtype}, got {keys.dtype}."
            )
        keys = self._convert_keys(keys, "remove")
        if self._empty(keys):
            return None if tf.executing_eagerly() else tf.no_op()

        def remove_fn(k: np.ndarray) -> np.int64:
            if k.size:
                self._store.remove(k)
            return np.int64(k.size)

        out = self._call(remove_fn, [keys], tf.int64, name or f"{self._op_prefix}_remove")
        return _scalar_op(out)

    def clear(self, name: str | None = None) -> Any:
        """Deletes every row of the table."""

        def clear_fn() -> np.int64:
            self._store.clear()
            return np.int64(0)

        out = self._call(clear_fn, [], tf.int64, name or f"{self._op_prefix}_clear")
        return _scalar_op(out)

    def export(self, name: str | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """All ``(keys, values)``: shapes ``[n]`` and ``[n, dim]``."""

        def export_fn() -> tuple[np.ndarray, np.ndarray]:
            keys, values = self._store.export()
            return keys.astype(self._key_dtype.as_numpy_dtype, copy=False), values

        keys, values = self._call(
            export_fn, [], [self._key_dtype, self._value_dtype], name or f"{self._op_prefix}_export"
        )
        keys.set_shape([None])
        values.set_shape([None, self._dim])
        return keys, values

    @property
    def _op_prefix(self) -> str:
        # Op names allow [A-Za-z0-9_.\-/] only.
        return "".join(c if c.isalnum() or c in "_.-" else "_" for c in self._name) or "table"

    # -- checkpointing ------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        """What a checkpoint records about this table, whatever the store mode."""
        return {
            "format": _MANIFEST_FORMAT,
            "name": self._name,
            "buckets": [b.decode("latin-1") for b in self._store.bucket_keys],
            "model_tag_runtime": self._model_tag,
            "table_store_mode": self._store_mode,
            "dim": self._dim,
            "key_dtype": self._key_dtype.name,
            "value_dtype": self._value_dtype.name,
        }

    def save_rows(self) -> tuple[np.ndarray, np.ndarray, bytes]:
        """What a checkpoint of this table holds: ``(keys, values, manifest)`` as numpy.

        Mode 0 exports every row; mode 1 writes the DUMP files and returns no rows; mode 2
        returns no rows. The manifest records the mode and the row count.
        """
        manifest = self.manifest()
        keys = np.zeros((0,), dtype=self._key_dtype.as_numpy_dtype)
        values = np.zeros((0, self._dim), dtype=self._store.np_value_dtype)
        if self._store_mode == 0:
            keys, values = self._store.export()
            keys = keys.astype(self._key_dtype.as_numpy_dtype, copy=False)
        elif self._store_mode == 1:
            self._store.save_files()
        elif self._store_mode != 2:
            raise ValueError(f"invalid redis_connection_params.table_store_mode {self._store_mode}")
        manifest["rows"] = int(keys.shape[0]) if self._store_mode == 0 else self._store.size()
        return keys, values, json.dumps(manifest, sort_keys=True).encode()

    def restore_rows(self, keys: np.ndarray, values: np.ndarray, manifest: bytes) -> None:
        """Restores what :meth:`save_rows` saved, by this table's store mode: mode 0 upserts the
        rows (the table is not cleared first, as in TFRA), mode 1 RESTOREs the DUMP files, mode 2
        leaves Redis alone."""
        if manifest:
            saved = json.loads(bytes(manifest).decode())
            if saved.get("dim") not in (None, self._dim):
                raise ValueError(
                    f"the checkpoint of table {saved.get('name')!r} has dim {saved['dim']}, "
                    f"but table {self._name!r} has dim {self._dim}"
                )
        if self._store_mode == 0 and keys.size:
            self._store.insert(keys, values)
        elif self._store_mode == 1:
            self._store.restore_files()
        else:
            # TFRA's rule: with nothing in the checkpoint (mode 2, or mode 0 with no rows), a
            # new model tag starts from the rows of model_tag_import, which stay in place.
            self._store.import_model_tag()

    def save_rows_to(self, store: Any, prefix: str = "") -> None:
        """Writes :meth:`save_rows` into a Keras weights store (a ``.keras`` or
        ``.weights.h5`` file) under ``<prefix>keys``, ``values`` and ``manifest``.

        HDF5 holds no numpy object arrays, so string ids are written as their bytes one after
        the other (``keys``, uint8) plus the end offset of each (``key_ends``)."""
        keys, values, manifest = self.save_rows()
        if keys.dtype == object:
            store[f"{prefix}key_ends"] = np.cumsum([len(k) for k in keys], dtype=np.int64)
            keys = np.frombuffer(b"".join(keys), dtype=np.uint8)
        store[f"{prefix}keys"] = keys
        store[f"{prefix}values"] = values
        store[f"{prefix}manifest"] = np.frombuffer(manifest, dtype=np.uint8)

    def restore_rows_from(self, store: Any, prefix: str = "") -> bool:
        """Restores what :meth:`save_rows_to` wrote (see :meth:`restore_rows`); ``False`` when
        the store holds nothing for this table."""
        if f"{prefix}manifest" not in store:
            return False
        keys = np.asarray(store[f"{prefix}keys"])
        if f"{prefix}key_ends" in store:
            ends = np.asarray(store[f"{prefix}key_ends"], dtype=np.int64)
            data = keys.astype(np.uint8, copy=False).tobytes()
            starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
            if ends.size and (ends[-1] != len(data) or np.any(ends < starts)):
                raise ValueError(
                    f"the weights of table {self._name!r} are damaged: string id offsets do "
                    f"not fit {len(data)} bytes of ids"
                )
            keys = np.empty((ends.size,), dtype=object)
            keys[:] = [data[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
        self.restore_rows(
            keys,
            np.asarray(store[f"{prefix}values"]),
            np.asarray(store[f"{prefix}manifest"], dtype=np.uint8).tobytes(),
        )
        return True

    def _serialize_to_tensors(self) -> dict[str, Any]:
        if not self._checkpoint:
            return {}
        # Callables, so that a restore (which also calls this method, for the dtypes) does not
        # export the table; a save evaluates them, and the three share one export.
        cache: dict[str, tf.Tensor] = {}

        def saved(key: str) -> Callable[[], tf.Tensor]:
            def produce() -> tf.Tensor:
                if not cache:
                    keys, values, manifest = self._call(
                        self.save_rows,
                        [],
                        [self._key_dtype, self._value_dtype, tf.string],
                        f"{self._op_prefix}_save",
                    )
                    keys.set_shape([None])
                    values.set_shape([None, self._dim])
                    manifest.set_shape([])
                    cache.update({"-keys": keys, "-values": values, "-manifest": manifest})
                return cache[key]

            return produce

        dtypes = {"-keys": self._key_dtype, "-values": self._value_dtype, "-manifest": tf.string}
        return {
            key: saveable_object.SaveSpec(
                saved(key), "", key, dtype=dtype, device=self._device or "/CPU:0"
            )
            for key, dtype in dtypes.items()
        }

    def _restore_from_tensors(self, restored_tensors: dict[str, tf.Tensor]) -> Any:
        def restore_fn(keys: np.ndarray, values: np.ndarray, manifest: Any) -> np.int64:
            self.restore_rows(keys, values, manifest)
            return np.int64(keys.shape[0])

        return self._call(
            restore_fn,
            [
                restored_tensors["-keys"],
                restored_tensors["-values"],
                restored_tensors["-manifest"],
            ],
            tf.int64,
            f"{self._op_prefix}_restore",
        )
