"""What the package declares matches what it imports, and its version has one source.

The installed-wheel checks (a fresh venv with the declared dependencies only, no Rust toolchain)
are in ``scripts/package_check``; these run in the development environment.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

import tfra_redis

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "python" / "tfra_redis"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# The wheel's smoke test is a script run in fresh venvs, not a module of a package: load it.
_spec = importlib.util.spec_from_file_location("smoke_wheel", ROOT / "tests/smoke/smoke_wheel.py")
assert _spec is not None and _spec.loader is not None
smoke_wheel = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(smoke_wheel)

# Modules that need TensorFlow (and Keras), because they or the package they are in import it:
# they need the [tf] extra (or a TensorFlow the user installed) and must say so when it is
# missing. Every other public module imports without it.
TF_MODULES = {
    "tfra_redis.creator",
    "tfra_redis.dynamic_embedding",
    "tfra_redis.dynamic_embedding.keras",
    "tfra_redis.dynamic_embedding.keras.layers",
    "tfra_redis.dynamic_embedding.keras.models",
    "tfra_redis.dynamic_embedding.lookups",
    "tfra_redis.dynamic_embedding.optimizer",
    "tfra_redis.dynamic_embedding.restrict",
    "tfra_redis.dynamic_embedding.trainable",
    "tfra_redis.dynamic_embedding.training",
    "tfra_redis.dynamic_embedding.variable",
    "tfra_redis.serving",
    "tfra_redis.table",
}


def public_modules() -> list[str]:
    """The package's public modules, by the rule the wheel's smoke test applies to the installed
    copy (``tests/smoke/smoke_wheel.py``, which runs on its own in fresh venvs)."""
    return smoke_wheel.public_modules(PACKAGE)


def _requirement_name(requirement: str) -> str:
    name = re.match(r"[A-Za-z0-9._-]+", requirement)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_top_level_modules() -> set[str]:
    """Top-level names of every import statement in the package's source, ours excluded."""
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - {"tfra_redis"} - set(sys.stdlib_module_names)


def test_version_comes_from_cargo_toml():
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    assert tfra_redis.__version__ == cargo["workspace"]["package"]["version"]
    assert tfra_redis._native.__version__ == tfra_redis.__version__
    # pyproject leaves the version to maturin, which reads it from the same Cargo.toml.
    assert "version" in PYPROJECT["project"]["dynamic"]
    assert "version" not in PYPROJECT["project"]


def test_every_imported_distribution_is_declared():
    # The distribution that provides each third-party module the package imports: the base
    # dependencies, or the [tf] extra for TensorFlow and Keras (optional: their modules raise a
    # clear ImportError without them, see the test below).
    provided_by = {
        "numpy": "numpy",
        "ml_dtypes": "ml-dtypes",
        "tensorflow": "tensorflow",
        "keras": "keras",
    }
    imported = _imported_top_level_modules()
    assert imported <= provided_by.keys(), f"undeclared imports: {imported - provided_by.keys()}"
    base = {_requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}
    tf_extra = {_requirement_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["tf"]}
    assert {"numpy", "ml-dtypes"} <= base
    assert {"tensorflow", "keras"} <= tf_extra
    # The extra names the `tensorflow` distribution: a CPU-only user installs tensorflow-cpu and
    # the package without the extra (README "Install"), which would otherwise pull both.
    assert "tensorflow-cpu" not in tf_extra
    for module in imported:
        assert provided_by[module] in base | tf_extra, module


def test_the_list_of_tensorflow_modules_is_complete():
    # A module that imports tensorflow or keras at its top must be in TF_MODULES, so the test
    # below checks its message; one that does not must import without TensorFlow.
    direct = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom, ast.Try))]
        text = "\n".join(ast.unparse(n) for n in top)
        if re.search(r"^\s*(import|from) (tensorflow|keras)\b", text, re.MULTILINE):
            relative = path.relative_to(PACKAGE.parent).with_suffix("")
            name = ".".join(relative.parts).removesuffix(".__init__")
            direct.add(name)
    public_direct = {m for m in direct if not any(p.startswith("_") for p in m.split("."))}
    assert public_direct <= TF_MODULES
    assert TF_MODULES <= set(public_modules())


@pytest.mark.parametrize("module", public_modules())
def test_each_public_module_without_tensorflow(module):
    # TensorFlow and Keras made unimportable, as in an install without the [tf] extra.
    code = (
        "import sys\n"
        "sys.modules['tensorflow'] = None\n"
        "sys.modules['keras'] = None\n"
        "import importlib\n"
        "try:\n"
        f"    importlib.import_module({module!r})\n"
        "except ImportError as err:\n"
        "    print('ImportError:', err)\n"
        "else:\n"
        "    print('imported')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    if module in TF_MODULES:
        message = result.stdout
        assert message.startswith("ImportError:"), message
        # Named: the module itself, or the package whose import failed first.
        named = re.search(r"(tfra_redis[\w.]*) needs TensorFlow", message)
        assert named and module.startswith(named[1]), message
        assert "pip install 'tfra-redis[tf]'" in message, message
        assert "tensorflow-cpu" in message, message
    else:
        assert result.stdout.strip() == "imported", result.stdout + result.stderr


@pytest.mark.parametrize("module", sorted(TF_MODULES))
def test_each_tensorflow_module_imports_first(module):
    # Imported first in a fresh interpreter, as a user's script may: an import cycle between
    # the package's modules only shows when the cycle's other end is not loaded yet.
    code = f"import importlib\nimportlib.import_module({module!r})\nprint('imported')\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.stdout.strip() == "imported", result.stderr[-3000:]
