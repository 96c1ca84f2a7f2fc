"""The ``tfra-redis`` export file: writing, reading and verifying it.

Export file format (``TFRAREDIS1``), everything little-endian::

    b"TFRAREDIS1\\n"                       magic and version, 11 bytes
    <JSON metadata>  b"\\n"                 one UTF-8 line: format, version, table, key_dtype,
                                          value_dtype, dim, key_bytes, row_bytes, byteorder,
                                          model_tag, rows_expected, created_utc, buckets, mode
                                          (spaces may pad it before the newline)
    then pages, each:
      b"PAGE" <u32 n> <u32 crc32>         crc32 (zlib) of the n keys' bytes then the rows' bytes
      n keys   (key_bytes each: int64 or int32, two's complement)
      n rows   (row_bytes each: dim values of value_dtype, as stored in Redis)
    and the trailer:
      b"END!" <u64 total rows>

String-key tables (``key_dtype`` ``string``) write ``version`` 2 with ``key_bytes`` 0 (keys of
any length), and their pages carry the size of their key section::

      b"PAGE" <u32 n> <u32 crc32> <u64 K>  crc32 of the K key-section bytes then the rows' bytes
      n keys   (each <u32 length> then that many bytes: the Redis hash field as it is)
      n rows

Files of int tables keep version 1, byte for byte as before; a reader that only knows version 1
refuses a version-2 file by its ``key_dtype``.

Keys and rows are the very bytes TFRA keeps in Redis (README, *Layout in Redis*), so a file can
be read with numpy alone (``np.frombuffer``). A key may appear twice if Redis rehashed a bucket
while it was exported (HSCAN's guarantee); both copies hold the same row, and import is an upsert.

``rows_expected`` is the number of rows in the pages, as the trailer's total: export writes the
table's size first and, once the pages are written, the count it wrote in its place (the line is
padded so that it keeps its length), because a table written to during an export, or a bucket
rehashed meanwhile, gives a different count. Import checks the whole file (metadata, every
page's size and CRC, the trailer, both counts) before it writes the first row, so a damaged file
changes nothing.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

from tfra_redis.cli._errors import UsageError

MAGIC = b"TFRAREDIS1\n"
PAGE_TAG = b"PAGE"
END_TAG = b"END!"
_PAGE_HEADER = struct.Struct("<4sII")
_END_BODY = struct.Struct("<Q")
_MAX_META_BYTES = 1 << 20
# Room left in the metadata line for rows_expected to grow into when export rewrites it.
_META_PADDING = 24
# Pages are checked in pieces of this size: a page's length comes from the file.
_CRC_CHUNK = 16 << 20

VALUE_DTYPES = ("float32", "float64", "float16", "bfloat16", "int32", "int64", "int8")
KEY_DTYPES = ("int64", "int32", "string")
# 0: string keys have any length (each page holds the size of its key section).
_KEY_BYTES = {"int64": 8, "int32": 4, "string": 0}
_KEY_SECTION = struct.Struct("<Q")
_KEY_LENGTH = struct.Struct("<I")


def _string_key_section(keys: Any) -> bytes:
    return b"".join(_KEY_LENGTH.pack(len(k)) + bytes(k) for k in keys)


def _write_page(stream: BinaryIO, keys: Any, rows: Any, key_dtype: str) -> int:
    import numpy as np

    if key_dtype == "string":
        key_bytes = _string_key_section(keys)
    else:
        key_bytes = np.ascontiguousarray(
            keys, dtype=np.dtype(key_dtype).newbyteorder("<")
        ).tobytes()
    row_bytes = np.ascontiguousarray(rows).view(np.uint8).tobytes()
    crc = zlib.crc32(row_bytes, zlib.crc32(key_bytes))
    stream.write(_PAGE_HEADER.pack(PAGE_TAG, len(keys), crc))
    if key_dtype == "string":
        stream.write(_KEY_SECTION.pack(len(key_bytes)))
    stream.write(key_bytes)
    stream.write(row_bytes)
    return len(keys)


def _read_exact(stream: BinaryIO, size: int, what: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise UsageError(f"the file ends inside {what} (truncated?)")
    return data


def read_export_header(stream: BinaryIO) -> dict[str, Any]:
    """Checks the magic and returns the metadata of a ``TFRAREDIS1`` file."""
    magic = stream.read(len(MAGIC))
    if magic != MAGIC:
        raise UsageError(f"not a tfra-redis export file (expected it to start with {MAGIC!r})")
    line = stream.readline(_MAX_META_BYTES)
    if not line.endswith(b"\n"):
        raise UsageError("the metadata line of the export file is cut off")
    try:
        meta = json.loads(line)
    except ValueError as err:
        raise UsageError(f"the metadata line of the export file is not JSON: {err}") from None
    for field in ("key_dtype", "value_dtype", "dim", "row_bytes", "key_bytes"):
        if field not in meta:
            raise UsageError(f"the export file's metadata has no {field!r}")
    if meta["key_dtype"] not in KEY_DTYPES or meta["value_dtype"] not in VALUE_DTYPES:
        raise UsageError(
            f"the export file holds {meta['key_dtype']} -> {meta['value_dtype']}, "
            "which this version cannot import"
        )
    from tfra_redis.store import numpy_dtype

    # Page sizes are computed from these: each must be what the dtypes and dim imply, or a
    # damaged line could ask for any amount of memory.
    dim = _meta_int(meta, "dim", 1)
    key_bytes = _meta_int(meta, "key_bytes", 0)
    row_bytes = _meta_int(meta, "row_bytes", 1)
    if key_bytes != _KEY_BYTES[meta["key_dtype"]]:
        raise UsageError(
            f"the export file's metadata says key_bytes {key_bytes}, but {meta['key_dtype']} "
            f"keys take {_KEY_BYTES[meta['key_dtype']]} (corrupt metadata)"
        )
    want_version = 2 if meta["key_dtype"] == "string" else 1
    if meta.get("version", 1) != want_version:
        raise UsageError(
            f"the export file is version {meta.get('version')!r}, but {meta['key_dtype']} "
            f"keys are written as version {want_version} (corrupt metadata)"
        )
    want_row_bytes = dim * numpy_dtype(meta["value_dtype"]).itemsize
    if row_bytes != want_row_bytes:
        raise UsageError(
            f"the export file's metadata says row_bytes {row_bytes}, but {dim} "
            f"{meta['value_dtype']} values take {want_row_bytes} (corrupt metadata)"
        )
    if "rows_expected" in meta:
        _meta_int(meta, "rows_expected", 0)
    checked: dict[str, Any] = meta
    return checked


def _meta_int(meta: dict[str, Any], field: str, minimum: int) -> int:
    value = meta[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(
            f"the export file's metadata has {field} {value!r}; expected an integer "
            f">= {minimum} (corrupt metadata)"
        )
    return value


def _page_header(
    stream: BinaryIO, meta: dict[str, Any], file_size: int, total: int
) -> tuple[int, int, int] | None:
    """Reads the next page header: ``(rows, crc, key section bytes)``, or ``None`` at a valid
    trailer (then the stream is at the end of the file). Checks the page fits in what is left
    of the file before anything of that size is read."""
    tag = _read_exact(stream, 4, "a page header")
    if tag == END_TAG:
        (count,) = _END_BODY.unpack(_read_exact(stream, _END_BODY.size, "the trailer"))
        if count != total:
            raise UsageError(f"the trailer says {count} rows but the pages hold {total}")
        if stream.read(1):
            raise UsageError("the export file has bytes after its trailer")
        return None
    if tag != PAGE_TAG:
        raise UsageError(f"expected a page header at row {total}, found {tag!r}")
    n, crc = struct.unpack("<II", _read_exact(stream, 8, "a page header"))
    if meta["key_dtype"] == "string":
        (keys_size,) = _KEY_SECTION.unpack(_read_exact(stream, _KEY_SECTION.size, "a page header"))
        if keys_size < n * _KEY_LENGTH.size:
            raise UsageError(
                f"the page starting at row {total} says its {n} keys take {keys_size} bytes, "
                "less than their lengths alone (corrupt)"
            )
    else:
        keys_size = n * meta["key_bytes"]
    size = keys_size + n * meta["row_bytes"]
    left = file_size - stream.tell()
    if size > left:
        raise UsageError(
            f"the page starting at row {total} says it holds {n} rows ({size} bytes), but only "
            f"{left} bytes are left in the file (truncated or corrupt)"
        )
    return n, crc, keys_size


def verify_export(stream: BinaryIO, meta: dict[str, Any], file_size: int) -> int:
    """Reads the pages from the stream's position to the end, checking each page's size and
    CRC, the trailer and ``rows_expected``, without keeping any of them; returns the row
    count."""
    total = 0
    while (page := _page_header(stream, meta, file_size, total)) is not None:
        n, crc, keys_size = page
        left = keys_size + n * meta["row_bytes"]
        computed = 0
        while left:
            chunk = _read_exact(stream, min(left, _CRC_CHUNK), "a page")
            computed = zlib.crc32(chunk, computed)
            left -= len(chunk)
        if computed != crc:
            raise UsageError(f"the page starting at row {total} fails its CRC check (corrupt)")
        total += n
    expected = meta.get("rows_expected", total)
    if expected != total:
        raise UsageError(
            f"the export file's metadata says rows_expected is {expected}, but its pages hold "
            f"{total} rows (an incomplete file, or not the file its metadata describes)"
        )
    return total


def read_export_pages(
    stream: BinaryIO, meta: dict[str, Any], file_size: int
) -> Iterator[tuple[Any, Any]]:
    """Yields (keys, rows) numpy arrays page by page; checks sizes, CRCs and the trailer (run
    :func:`verify_export` first to know the whole file is good before using any page)."""
    import numpy as np

    from tfra_redis.store import numpy_dtype

    strings = meta["key_dtype"] == "string"
    key_dtype = None if strings else np.dtype(meta["key_dtype"]).newbyteorder("<")
    value_dtype = numpy_dtype(meta["value_dtype"])
    row_bytes, dim = meta["row_bytes"], meta["dim"]
    total = 0
    while (page := _page_header(stream, meta, file_size, total)) is not None:
        n, crc, keys_size = page
        keys_raw = _read_exact(stream, keys_size, "a page's keys")
        rows_raw = _read_exact(stream, n * row_bytes, "a page's rows")
        if zlib.crc32(rows_raw, zlib.crc32(keys_raw)) != crc:
            raise UsageError(f"the page starting at row {total} fails its CRC check (corrupt)")
        if strings:
            keys = _split_string_keys(keys_raw, n, total)
        else:
            keys = np.frombuffer(keys_raw, dtype=key_dtype).astype(meta["key_dtype"])
        rows = np.frombuffer(rows_raw, dtype=value_dtype).reshape(n, dim)
        total += n
        yield keys, rows


def _split_string_keys(section: bytes, n: int, first_row: int) -> Any:
    """The ``n`` length-prefixed keys of a page's key section, as an object array of bytes;
    the lengths must add up to the section exactly."""
    import numpy as np

    keys = np.empty((n,), dtype=object)
    at = 0
    for i in range(n):
        if at + _KEY_LENGTH.size > len(section):
            raise UsageError(f"the keys of the page starting at row {first_row} are cut off")
        (length,) = _KEY_LENGTH.unpack_from(section, at)
        at += _KEY_LENGTH.size
        if at + length > len(section):
            raise UsageError(f"the keys of the page starting at row {first_row} are cut off")
        keys[i] = section[at : at + length]
        at += length
    if at != len(section):
        raise UsageError(
            f"the keys of the page starting at row {first_row} leave {len(section) - at} bytes "
            "over (corrupt)"
        )
    return keys
