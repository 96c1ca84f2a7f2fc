"""The native lookup op: ``RedisTable.lookup`` without Python in the op, for serving.

By default a lookup inside a ``tf.function`` is a ``tf.numpy_function``, whose body runs with
the GIL held: concurrent callers take turns in it. The native op (``TfraRedisLookup``, source in
``tfra_redis/_ops/lookup_op.cc``) is a TensorFlow kernel that calls the Rust core directly, so
concurrent lookups run in parallel down to Redis.

TensorFlow has no stable C++ ABI, so the op is compiled on the machine against the installed
TensorFlow, once, with ``g++`` and TensorFlow's headers (about a minute)::

    tfra-redis build-ops        # or, in Python: tfra_redis.native_ops.build()

The library goes into ``$TFRA_REDIS_OPS_DIR`` (default ``~/.cache/tfra_redis/ops``), named by
TensorFlow's version and a digest of the source and compiler flags, so a TensorFlow upgrade
simply finds no library until it is built again. Nothing is ever compiled implicitly.

When a ``tf.function`` traces ``RedisTable.lookup`` with int32 or int64 keys and the library for
this TensorFlow is built, the lookup uses the native op; otherwise the ``numpy_function`` as
before, with the same results. ``TFRA_REDIS_NATIVE_OPS=0`` turns the native op off;
``TFRA_REDIS_NATIVE_OPS=1`` makes a missing library an error instead of a quiet fallback. Eager
lookups call the store directly either way (no op is involved).

A graph names its table by a handle that is valid in the process that traced it while the table
is open: a graph whose table was dropped fails with ``FailedPreconditionError``, and so does a
graph traced in another process (a SavedModel loaded elsewhere). Redis errors surface as
TensorFlow errors: ``UnavailableError`` for transient ones (unreachable, timeouts),
``InvalidArgumentError``, ``PermissionDeniedError`` (ACL) and ``InternalError`` for the rest.

The kernel is asynchronous: the Redis round trip runs on a thread pool of the op library
(``$TFRA_REDIS_OPS_THREADS`` threads, default 16, read once per process), so the lookups in
flight are not capped by TensorFlow's inter-op threads (one per core). ``TFRA_REDIS_OPS_THREADS=0``
runs it on the inter-op thread instead, which is cheaper with Redis on the same host.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tfra_redis import _native

__all__ = [
    "NativeOpsError",
    "build",
    "cache_dir",
    "disabled",
    "is_built",
    "library_path",
    "load",
    "source_path",
]

#: The directory the compiled library goes into (default ``~/.cache/tfra_redis/ops``).
OPS_DIR_ENV = "TFRA_REDIS_OPS_DIR"
#: ``0``: never use the native op; ``1``: always, failing when it is not built; unset: when built.
ENABLE_ENV = "TFRA_REDIS_NATIVE_OPS"
#: Threads of the op's lookup pool (default 16); ``0``: look up on TensorFlow's inter-op thread.
THREADS_ENV = "TFRA_REDIS_OPS_THREADS"


class NativeOpsError(RuntimeError):
    """The native op library cannot be built or loaded (no compiler, no TensorFlow headers, a
    compile error, a library of another ABI version)."""

    # Raised while a tf.function is traced: autograph must re-raise it as it is (it would
    # otherwise turn it into a StagingError).
    ag_pass_through = True


def source_path() -> Path:
    """The op library's C++ source, shipped in the package."""
    return Path(__file__).resolve().parent / "_ops" / "lookup_op.cc"


def cache_dir() -> Path:
    """Where built libraries go: ``$TFRA_REDIS_OPS_DIR``, else ``~/.cache/tfra_redis/ops``
    (``$XDG_CACHE_HOME/tfra_redis/ops`` when that is set)."""
    explicit = os.environ.get(OPS_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tfra_redis" / "ops"


def _tensorflow() -> Any:
    try:
        import tensorflow as tf
    except ModuleNotFoundError as err:
        from tfra_redis._optional import tensorflow_missing

        raise tensorflow_missing(__name__, err) from err
    return tf


def _flags() -> tuple[str, list[str]]:
    """TensorFlow's version and the compile and link flags of this TensorFlow."""
    tf = _tensorflow()
    flags = list(tf.sysconfig.get_compile_flags()) + list(tf.sysconfig.get_link_flags())
    return str(tf.__version__), flags


def library_path() -> Path:
    """The library for the installed TensorFlow, built or not: named by TensorFlow's version
    and a digest of the source and flags (which include TensorFlow's install path)."""
    version, flags = _flags()
    digest = hashlib.sha256(source_path().read_bytes())
    digest.update("\0".join(flags).encode())
    safe_version = "".join(c if c.isalnum() or c in ".-" else "_" for c in version)
    return cache_dir() / f"tfra_redis_ops-tf{safe_version}-{digest.hexdigest()[:16]}.so"


def is_built() -> bool:
    """Whether the library for the installed TensorFlow is in the cache directory."""
    return library_path().is_file()


def _compiler() -> str:
    cxx = os.environ.get("CXX") or "g++"
    found = shutil.which(cxx)
    if found is None:
        raise NativeOpsError(
            f"cannot build the native lookup op: no C++ compiler, {cxx!r} is not on PATH. "
            "Install g++ (Debian/Ubuntu: apt-get install g++) or set CXX to a compiler; "
            "without the op, lookups use tf.numpy_function"
        )
    return found


def _check_headers(flags: list[str]) -> None:
    includes = [f[2:] for f in flags if f.startswith("-I")]
    if not any((Path(d) / "tensorflow/core/framework/op.h").is_file() for d in includes):
        raise NativeOpsError(
            "cannot build the native lookup op: TensorFlow's C++ headers "
            "(tensorflow/core/framework/op.h) are not under "
            f"{includes or 'any -I directory of tf.sysconfig.get_compile_flags()'}; "
            "this TensorFlow package was installed without its headers"
        )


def _stderr(message: str) -> None:
    print(f"tfra-redis: {message}", file=sys.stderr, flush=True)


def build(force: bool = False, log: Callable[[str], None] | None = _stderr) -> Path:
    """Compiles the op library for the installed TensorFlow into :func:`cache_dir` (about a
    minute) and returns its path; returns at once when it is already built, unless ``force``.

    Safe to run from several processes at once: one builds while the others wait for it (a
    file lock), and the library appears under its final name only when complete. ``log``
    receives progress lines (default: printed to stderr; ``None``: silent).

    Raises :class:`NativeOpsError` when no compiler or no TensorFlow headers are found or the
    compile fails (with the compiler's output).
    """
    say = log or (lambda _message: None)
    target = library_path()
    if target.is_file() and not force:
        return target
    version, flags = _flags()
    cxx = _compiler()
    _check_headers(flags)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file() and not force:  # built by another process while we waited
            return target
        fd, tmp = tempfile.mkstemp(prefix=".building-", suffix=".so", dir=target.parent)
        os.close(fd)
        # TensorFlow's own headers use APIs they deprecate: their warnings say nothing about ours.
        command = [
            cxx,
            "-O2",
            "-shared",
            "-fPIC",
            "-Wno-deprecated-declarations",
            str(source_path()),
            "-o",
            tmp,
            *flags,
        ]
        say(
            f"compiling the native lookup op against TensorFlow {version} "
            f"(about a minute) into {target}"
        )
        try:
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                output = "\n".join((done.stderr or done.stdout).splitlines()[-40:])
                raise NativeOpsError(
                    f"compiling the native lookup op failed (exit {done.returncode}):\n"
                    f"{' '.join(command)}\n{output}"
                )
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    say(f"built {target}")
    return target


_lock = threading.Lock()
_module: Any = None
_load_failure: str | None = None
_local = threading.local()


def load() -> Any:
    """Loads the built library into TensorFlow and binds it to ``tfra_redis._native``; returns
    the op module (``tf.load_op_library``'s), or ``None`` when the library is not built. Loading
    twice returns the same module.

    Raises :class:`NativeOpsError` when the library exists but cannot be loaded or bound.
    """
    global _module
    with _lock:
        if _module is not None:
            return _module
        path = library_path()
        if not path.is_file():
            return None
        tf = _tensorflow()
        try:
            module = tf.load_op_library(str(path))
            library = ctypes.CDLL(str(path))
        except Exception as err:
            raise NativeOpsError(
                f"cannot load the native lookup op {path}: {err}; build it again with "
                "`tfra-redis build-ops --force`"
            ) from err
        address, abi = _native.native_op_entry()
        library.tfra_redis_ops_bind.argtypes = [ctypes.c_uint64, ctypes.c_uint32]
        library.tfra_redis_ops_bind.restype = ctypes.c_int
        if library.tfra_redis_ops_bind(address, abi) != 0:
            library.tfra_redis_ops_abi_version.restype = ctypes.c_uint32
            raise NativeOpsError(
                f"the native lookup op {path} speaks ABI version "
                f"{library.tfra_redis_ops_abi_version()}, tfra_redis._native version {abi}; "
                "build it again with `tfra-redis build-ops --force`"
            )
        _module = module
        return module


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within the block, lookups traced on this thread use ``tf.numpy_function`` (for the
    prefetching trainer, whose prefetched rows only the Python path reads)."""
    previous = getattr(_local, "disabled", False)
    _local.disabled = True
    try:
        yield
    finally:
        _local.disabled = previous


def lookup_module() -> Any:
    """The op module for ``RedisTable.lookup`` to use now, or ``None`` for the
    ``numpy_function`` path: off (``TFRA_REDIS_NATIVE_OPS=0`` or :func:`disabled`), not
    built, or not loadable (warned once)."""
    global _load_failure
    setting = os.environ.get(ENABLE_ENV, "")
    if setting == "0" or getattr(_local, "disabled", False):
        return None
    if _module is not None:
        return _module
    if setting == "1":
        module = load()
        if module is None:
            raise NativeOpsError(
                f"{ENABLE_ENV}=1 but the native lookup op is not built for this TensorFlow "
                f"({library_path()}); build it with `tfra-redis build-ops`"
            )
        return module
    if _load_failure is not None:
        return None
    try:
        return load()
    except NativeOpsError as err:
        _load_failure = str(err)
        warnings.warn(f"tfra-redis: {err}; lookups use tf.numpy_function", stacklevel=3)
        return None
