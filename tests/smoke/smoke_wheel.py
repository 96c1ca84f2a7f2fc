"""Smoke test of an installed tfra-redis (a wheel or an sdist build) in a fresh venv.

Run by ``scripts/package_check`` with the venv's python, outside the checkout and with no Rust
toolchain on PATH::

    python smoke_wheel.py --version 0.1.0 base   # installed without extras: no TensorFlow
    python smoke_wheel.py --version 0.1.0 tf     # installed with [tf]: adds a short fit

Checks: the package is the installed one (not the checkout), its version is the expected one
(the wheel's file name) in ``__version__`` and the distribution metadata, every public module
imports (or, without TensorFlow, fails with the ImportError naming the extra), a find/insert
round trip against a private redis-server started by ``tfra_redis.testing``, bfloat16 rows
(``ml_dtypes``), ``tfra-redis --help``; with ``tf``, a two-epoch ``fit`` of a Keras model with
a Redis embedding layer that must lower its loss.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Modules that need TensorFlow (they, or the package they are in, import it); the same list as
# tests/test_packaging.py, which checks it is complete against the source.
TF_PREFIXES = (
    "tfra_redis.creator",
    "tfra_redis.dynamic_embedding",
    "tfra_redis.serving",
    "tfra_redis.table",
)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"smoke test FAILED: {message}")


def public_modules(package_dir: Path) -> list[str]:
    """Every module of the package whose name has no part starting with ``_``, found from the
    files (``pkgutil`` would have to import a package to list its modules)."""
    names = []
    for path in package_dir.rglob("*.py"):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not any(part.startswith("_") for part in parts):
            names.append(".".join(parts))
    return sorted(names)


def check_install(expected_version: str, with_tf: bool) -> Path:
    import tfra_redis

    package_dir = Path(tfra_redis.__file__).resolve().parent
    check("site-packages" in package_dir.parts, f"tfra_redis imported from {package_dir}")
    check(
        tfra_redis.__version__ == expected_version,
        f"__version__ {tfra_redis.__version__!r} != the wheel's {expected_version!r}",
    )
    metadata_version = importlib.metadata.version("tfra-redis")
    check(metadata_version == expected_version, f"metadata version {metadata_version!r}")
    check(shutil.which("cargo") is None and shutil.which("rustc") is None, "Rust is on PATH")

    has_tf = importlib.util.find_spec("tensorflow") is not None
    check(has_tf == with_tf, f"tensorflow importable: {has_tf}, expected {with_tf}")
    if not with_tf:
        # The base install must not pull TensorFlow in just by importing the package.
        check("tensorflow" not in sys.modules, "import tfra_redis imported tensorflow")

    modules = public_modules(package_dir)
    check(len(modules) > 10, f"only {modules} found")
    # tfra_redis.native_ops compiles this source on the user's machine (`tfra-redis build-ops`).
    check((package_dir / "_ops" / "lookup_op.cc").is_file(), "the wheel lacks _ops/lookup_op.cc")
    for name in modules:
        needs_tf = name.startswith(TF_PREFIXES)
        try:
            importlib.import_module(name)
        except ImportError as err:
            check(
                needs_tf and not with_tf and "pip install 'tfra-redis[tf]'" in str(err),
                f"import {name}: {err!r}",
            )
        else:
            check(with_tf or not needs_tf, f"{name} imported without TensorFlow")
    print(f"ok: {len(modules)} public modules, version {tfra_redis.__version__}")
    return package_dir


def check_store(config: Path) -> None:
    import numpy as np

    import tfra_redis

    store = tfra_redis.RedisStore(str(config), name="smoke", dim=4)
    store.insert(np.array([1, 2, 3]), np.arange(12, dtype=np.float32).reshape(3, 4))
    rows, found = store.find(np.array([2, 9]), default=-1.0, return_exists=True)
    np.testing.assert_array_equal(rows, [[4, 5, 6, 7], [-1, -1, -1, -1]])
    np.testing.assert_array_equal(found, [True, False])
    check(store.size() == 3, f"size {store.size()}")

    half = tfra_redis.RedisStore(str(config), name="smoke_bf16", dim=2, value_dtype="bfloat16")
    half.insert(np.array([7]), np.array([[1.5, -2.0]], np.float32))
    got = half.find(np.array([7]))
    check(got.dtype.name == "bfloat16", f"bfloat16 store returned {got.dtype}")
    np.testing.assert_array_equal(got.astype(np.float32), [[1.5, -2.0]])
    store.close()
    half.close()
    print("ok: find/insert against a private redis-server (float32 and bfloat16)")


def check_cli() -> None:
    exe = shutil.which("tfra-redis")
    check(exe is not None and Path(exe).parent == Path(sys.executable).parent, f"tfra-redis {exe}")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    check(
        result.returncode == 0 and "usage" in result.stdout.lower(), result.stdout + result.stderr
    )
    print("ok: tfra-redis --help")


def check_fit(config: Path) -> None:
    import keras
    import numpy as np

    import tfra_redis as tfra

    de = tfra.dynamic_embedding
    creator = de.RedisTableCreator(de.RedisTableConfig(redis_config_abs_dir=str(config)))
    keras.utils.set_random_seed(1)
    ids = keras.Input(shape=(2,), dtype="int64")
    layer = de.keras.layers.Embedding(
        4,
        name="smoke_emb",
        kv_creator=creator,
        initializer=keras.initializers.RandomNormal(0, 0.05),
    )
    rows = layer(ids)
    out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(rows))
    model = keras.Model(ids, out)
    model.compile(
        optimizer=de.DynamicEmbeddingOptimizer(keras.optimizers.Adam(0.05)),
        loss="binary_crossentropy",
    )
    x = np.random.default_rng(0).integers(0, 1000, size=(4096, 2))
    y = (x[:, :1] % 2).astype("float32")
    history = model.fit(x, y, batch_size=256, epochs=2, verbose=0)
    losses = history.history["loss"]
    check(losses[1] < losses[0], f"loss did not fall: {losses}")
    stored = int(layer.params.size().numpy())
    distinct = len(np.unique(x))
    check(stored == distinct, f"{stored} rows in Redis, {distinct} ids trained")
    print(f"ok: fit, loss {losses[0]:.4f} -> {losses[1]:.4f}, {stored} rows in Redis")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", required=True, help="the version the wheel's name carries")
    parser.add_argument("mode", choices=["base", "tf"])
    args = parser.parse_args()
    os.environ.pop("TFRA_REDIS_CONFIG_PATH", None)
    check_install(args.version, with_tf=args.mode == "tf")
    from tfra_redis import testing

    # One private server for every check; tables still open when it stops are closed at exit.
    with (
        tempfile.TemporaryDirectory(prefix="tfra-redis-smoke-") as tmp,
        testing.standalone() as server,
    ):
        config = testing.write_config_file(Path(tmp) / "redis.json", server)
        check_store(config)
        check_cli()
        if args.mode == "tf":
            check_fit(config)
    print(f"smoke test ({args.mode}) passed")


if __name__ == "__main__":
    main()
