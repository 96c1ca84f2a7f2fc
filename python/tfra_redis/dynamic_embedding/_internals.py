"""Every private TensorFlow and Keras name tfra-redis relies on, in one place, each with why.

Training dynamic embeddings needs a few things neither TensorFlow nor Keras exposes publicly.
They are imported here and nowhere else, so that a TensorFlow or Keras upgrade that moves one
fails in this module (and in ``tests/test_keras_internals.py``, which names each of them),
not somewhere in the middle of a training step.

Keras hooks that are protected methods of public classes (``keras.Variable._initialize``,
``keras.Variable._validate_shape``, the ``_layout`` attribute read by
``Optimizer.add_variable_from_reference``) are listed in :data:`KERAS_VARIABLE_HOOKS` and checked
by the same test.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "KERAS_OPTIMIZER_HOOKS",
    "KERAS_VARIABLE_HOOKS",
    "Functional",
    "ResourceVariable",
    "functional_init_arguments",
    "tape_is_recording",
]

# Whether a GradientTape may be recording (could_possibly_record). A lookup stages its rows in
# the trainable wrapper only while a tape records (a training step); a forward pass outside any
# tape (evaluation, Keras' symbolic build) reads rows straight from Redis and leaves the wrapper
# alone. TensorFlow has no public equivalent (tf.GradientTape exposes no "is a tape active").
from tensorflow.python.eager.record import could_possibly_record as _could_possibly_record

# A tf.Variable class that can be subclassed (ResourceVariable). `tf.Variable(...)` is a factory
# whose metaclass returns a ResourceVariable; the wrapper's buffer subclasses ResourceVariable
# so that an optimizer that does not know about dynamic embeddings is stopped (with an error
# naming the fix) the moment it tries to update a buffer, instead of training rows that are
# never written to Redis. TFRA's TrainableWrapper subclasses the same class.
from tensorflow.python.ops.resource_variable_ops import ResourceVariable

# keras.Model(inputs, outputs) returns an instance of this class; DynamicEmbeddingModel needs a
# functional subclass of itself, which Keras only makes by rewriting the class's bases.
try:
    from keras.src.models.functional import Functional
    from keras.src.models.model import functional_init_arguments
except ImportError:  # pragma: no cover - checked by tests/test_keras_internals.py
    Functional = None

    def functional_init_arguments(args: Any, kwargs: Any) -> bool:
        return False


def tape_is_recording() -> bool:
    """Whether some GradientTape may record the ops run now (eagerly, or while tracing)."""
    return bool(_could_possibly_record())


#: Protected members of ``keras.Variable`` (TensorFlow backend) that the trainable wrapper
#: overrides, and why:
#:   _initialize: create the backing tf.Variable with a dynamic first dimension
#:       (``shape=[None, dim]``); Keras only creates fixed-shape variables.
#:   _validate_shape: Keras refuses shapes with None; the wrapper reports TFRA's ``(0, dim)``.
#:   _layout: read by ``Optimizer.add_variable_from_reference`` (and nothing else on the
#:       TensorFlow backend), so reading it is how the wrapper notices an optimizer that is not
#:       DynamicEmbeddingOptimizer building slots for it.
#:   _serialize_to_tensors / _restore_from_tensors: the buffer is saved empty, as TFRA's
#:       ShadowVariable is (the rows live in Redis).
KERAS_VARIABLE_HOOKS = (
    "_initialize",
    "_validate_shape",
    "_layout",
    "_serialize_to_tensors",
    "_restore_from_tensors",
)

#: Members of ``keras.optimizers.Optimizer`` (TensorFlow backend) that DynamicEmbeddingOptimizer
#: relies on beyond its public methods, and why:
#:   _trainable_variables: what ``apply(grads)`` without variables applies to.
#:   _track_trackable: TensorFlow's way to make the slot tables checkpoint dependencies of the
#:       optimizer under a fixed name (so a restore made before they exist reaches them).
#:   assign / assign_add / assign_sub: Keras' TensorFlow optimizer updates ``variable.value``
#:       (the backing tf.Variable) through these, which is where other optimizers are stopped.
KERAS_OPTIMIZER_HOOKS = (
    "_trainable_variables",
    "_track_trackable",
    "assign",
    "assign_add",
    "assign_sub",
)
