"""Typed stubs of the Rust extension `tfra_redis._native` (rust/tfra-redis-py)."""

from collections.abc import Callable, Sequence
from typing import Any, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "__version__",
    "Config",
    "Table",
    "resolve_path",
    "apply_gradients",
    "find_together",
    "restrict",
    "insert_together",
    "flush_deferred_writes",
    "check_slot_layout",
    "convert_slots",
    "_panic_for_tests",
    "native_op_entry",
    "RowBuffer",
    "row_buffer",
    "_row_buffer_pool",
    "RedisTableError",
    "ConfigError",
    "RedisConnectionError",
    "RedisTimeoutError",
    "RedisAuthError",
    "RedisCommandError",
    "RedisDataError",
]

# Ids: an int64 array for int64/int32 tables; for string tables a sequence of bytes or str (a
# numpy object array, as tf.numpy_function gives for tf.string, or a list), str as UTF-8.
_Keys = npt.NDArray[np.int64] | npt.NDArray[np.object_] | Sequence[bytes | str]
# Exported ids: int64, or an object array of bytes for string tables.
_KeysOut = npt.NDArray[np.int64] | npt.NDArray[np.object_]
__version__: str

class RedisTableError(Exception): ...
class ConfigError(RedisTableError): ...
class RedisConnectionError(RedisTableError): ...
class RedisTimeoutError(RedisConnectionError): ...
class RedisAuthError(RedisTableError): ...
class RedisCommandError(RedisTableError): ...
class RedisDataError(RedisTableError): ...

@final
class Config:
    @staticmethod
    def from_json(text: str, source: str = "<string>") -> Config: ...
    @staticmethod
    def from_path(path: str) -> Config: ...
    @property
    def path(self) -> str | None: ...
    @property
    def warnings(self) -> list[str]: ...
    def to_json(self) -> str: ...

def resolve_path(env_name: str | None = None, abs_dir: str | None = None) -> str: ...

@final
class Table:
    def __new__(
        cls,
        config: Config,
        name: str,
        key_dtype: str,
        value_dtype: str,
        dim: int,
        manage_ttl: bool = True,
    ) -> Table:
        """``manage_ttl=False`` leaves the buckets' TTL alone on open and close (the CLI's
        read-only commands)."""
    @property
    def row_bytes(self) -> int: ...
    @property
    def bucket_keys(self) -> list[bytes]: ...
    @property
    def notes(self) -> list[str]: ...
    def find(
        self,
        keys: _Keys,
        default: npt.NDArray[np.uint8],
        out: npt.NDArray[np.uint8],
        exists: npt.NDArray[np.bool_] | None = None,
    ) -> None:
        """Rows of ``keys`` into ``out``. ``out`` and ``exists`` must be writeable and share no
        memory with each other or the inputs (``ValueError``); no array may be changed by
        another thread during the call, which runs without the GIL."""
    def find_with_slots(
        self,
        keys: _Keys,
        default: npt.NDArray[np.uint8],
        out: npt.NDArray[np.uint8],
        slot_default: npt.NDArray[np.uint8],
        slots: npt.NDArray[np.uint8],
    ) -> None:
        """``redis_fused_row`` tables only: rows into ``out`` as :meth:`find` gives them, and
        what each id stores after its row into ``slots`` (``len(keys)`` groups the size of
        ``slot_default``, which ids stored without slots or missing get)."""
    def insert_with_slots(
        self, keys: _Keys, rows: npt.NDArray[np.uint8], slots: npt.NDArray[np.uint8]
    ) -> None:
        """``redis_fused_row`` tables only: stores each id's row followed by its slots as one
        value, replacing what was stored."""
    def insert(self, keys: _Keys, values: npt.NDArray[np.uint8]) -> None: ...
    def remove(self, keys: _Keys) -> None: ...
    def accum(
        self,
        keys: _Keys,
        deltas: npt.NDArray[np.uint8],
        exists: npt.NDArray[np.bool_],
    ) -> None:
        """BP-v2 accumulate. ``exists`` bytes other than 0 and 1 (an integer array viewed as
        bool) are a ``ValueError``."""
    def size(self) -> int: ...
    def clear(self) -> None: ...
    def export(self) -> tuple[_KeysOut, npt.NDArray[np.uint8]]:
        """Every pair; string ids come as an object array of ``bytes``."""
    def export_pages(
        self,
        page: int,
        sink: Callable[[_KeysOut, npt.NDArray[np.uint8]], object],
    ) -> None: ...
    def save_files(self) -> list[str]: ...
    def restore_files(self) -> int: ...
    def import_model_tag(self) -> int: ...
    def rebucket(self) -> tuple[list[str], int]: ...
    def persist(self) -> None: ...
    def expire(self, seconds: int) -> None: ...
    def close(self) -> None: ...
    def native_handle(self) -> tuple[int, int]:
        """``(handle, process token)`` naming this table to the native lookup op."""

def apply_gradients(
    optimizer: str,
    hyper: dict[str, float],
    params: Table,
    slots: list[Table],
    keys: _Keys,
    grads: npt.NDArray[np.float32],
    init_rows: npt.NDArray[np.float32],
    step: int,
) -> None: ...
def find_together(
    tables: list[Table],
    keys: _Keys,
    defaults: list[npt.NDArray[np.uint8]],
    outs: list[npt.NDArray[np.uint8]],
) -> None: ...
def insert_together(
    tables: list[Table],
    keys: _Keys,
    values: list[npt.NDArray[np.uint8]],
) -> None: ...
def flush_deferred_writes(at_exit: bool = False) -> None: ...
def _panic_for_tests() -> None: ...
def native_op_entry() -> tuple[int, int]:
    """``(address, ABI version)`` of the C entry point the native lookup op calls."""

def restrict(
    status: Table, tables: list[Table], num_reserved: int, page: int
) -> tuple[int, int]: ...
def check_slot_layout(
    config: Config,
    params: str,
    wrapper: str | None,
    slots: list[str],
    layout: str,
    key_dtype: str,
    value_dtype: str,
    dim: int,
) -> None: ...
def convert_slots(
    config: Config,
    params: str,
    wrapper: str | None,
    slots: list[str],
    from_layout: str | None,
    to_layout: str,
    key_dtype: str,
    value_dtype: str,
    dim: int,
    initial: list[bytes],
    keep_source: bool,
    overwrite: bool,
    dry_run: bool,
    page: int,
    progress: Callable[[str, int, int, int, int], None] | None = None,
) -> dict[str, Any]: ...

@final
class RowBuffer:
    """The owner of a pooled block: the base of the array ``row_buffer`` returns."""

    @property
    def capacity(self) -> int: ...

def row_buffer(nbytes: int) -> npt.NDArray[np.uint8]:
    """A writable, 64-byte aligned ``uint8`` array of ``nbytes`` over recycled memory."""

def _row_buffer_pool() -> tuple[int, int, int]:
    """``(free blocks, their bytes, the cap)`` of ``row_buffer``'s pool (for tests)."""
