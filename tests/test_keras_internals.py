"""Every private TensorFlow and Keras name tfra-redis relies on (listed, with the reasons, in
``tfra_redis.dynamic_embedding._internals``) still exists. A Keras or TensorFlow upgrade that
moves one fails here, naming it."""

from __future__ import annotations

import inspect
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfra_redis.dynamic_embedding import _internals  # noqa: E402


def test_private_imports_resolved():
    missing = [name for name in _internals.__all__ if getattr(_internals, name, None) is None]
    assert not missing, f"private TensorFlow/Keras names gone: {missing}"
    assert issubclass(_internals.ResourceVariable, tf.Variable)
    assert issubclass(_internals.Functional, keras.Model)
    assert _internals.tape_is_recording() is False
    with tf.GradientTape():
        assert _internals.tape_is_recording() is True


@pytest.mark.parametrize("hook", _internals.KERAS_VARIABLE_HOOKS)
def test_keras_variable_hooks_exist(hook):
    if hook == "_layout":
        # Read by the optimizer when it makes a slot from a reference variable: the wrapper
        # notices optimizers that are not DynamicEmbeddingOptimizer there.
        source = inspect.getsource(keras.optimizers.Optimizer.add_variable_from_reference)
        source += inspect.getsource(
            keras.src.optimizers.base_optimizer.BaseOptimizer.add_variable_from_reference
        )
        assert '"_layout"' in source, "add_variable_from_reference no longer reads _layout"
        assert "_layout" in vars(keras.Variable(np.zeros(1, np.float32)))
    else:
        assert callable(getattr(keras.Variable, hook, None)), f"keras.Variable.{hook} is gone"


@pytest.mark.parametrize("hook", _internals.KERAS_OPTIMIZER_HOOKS)
def test_keras_optimizer_hooks_exist(hook):
    optimizer = keras.optimizers.SGD()
    if hook == "_trainable_variables":
        optimizer.build([keras.Variable(np.zeros(1, np.float32))])
        assert isinstance(getattr(optimizer, hook, None), list), f"Optimizer.{hook} is gone"
        return
    assert callable(getattr(optimizer, hook, None)), f"Optimizer.{hook} is gone"
    if hook.startswith("assign"):
        # Updates reach the backing tf.Variable, where a wrapper's buffer refuses them.
        assert "variable.value" in inspect.getsource(getattr(type(optimizer), hook))
