"""The error raised when a module needing TensorFlow is imported without it.

TensorFlow and Keras are optional: ``import tfra_redis`` (``RedisStore``, ``RedisTableConfig``),
``tfra_redis.testing`` and the ``tfra-redis`` command work without them. The modules that need
them (``tfra_redis.dynamic_embedding``, ``tfra_redis.table``, ``tfra_redis.creator``,
``tfra_redis.serving``) import them inside ``try`` and raise this instead of a bare "No module
named 'tensorflow'", so the message says which install provides them.
"""

from __future__ import annotations


def tensorflow_missing(module: str, err: ImportError) -> ModuleNotFoundError:
    """A ``ModuleNotFoundError`` (an ``ImportError``) for ``module``, saying how to install TF.

    ``err`` is the failed import of ``tensorflow`` or ``keras``; its module name is kept, so
    ``except ModuleNotFoundError`` and ``err.name`` behave as they would without this module.
    """
    missing = err.name or "tensorflow"
    return ModuleNotFoundError(
        f"{module} needs TensorFlow (2.16 or later, with Keras 3), but {missing!r} cannot be "
        f"imported ({err}). Install it with the package's extra: pip install 'tfra-redis[tf]' "
        "(the standard `tensorflow` package), or for the smaller CPU-only build: pip install "
        "tensorflow-cpu (tfra-redis works with either; install one, not both). "
        "tfra_redis.RedisStore and the tfra-redis command need neither.",
        name=missing,
    )
