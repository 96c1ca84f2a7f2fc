"""Type aliases of the public TensorFlow API's parameters.

TensorFlow and Keras ship no type information, so to a type checker their classes are ``Any``;
these aliases still say, in signatures and in the API reference, what a parameter takes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

# Only the type checker reads these imports: the aliases are strings, so importing this module
# imports nothing (the modules that use it may be imported before TensorFlow, or while
# tfra_redis.dynamic_embedding is still initializing).
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    import numpy as np
    import numpy.typing as npt
    import tensorflow as tf

#: Ids or rows: a tensor (dense, ragged or sparse where the function says so), a numpy array,
#: or a nested list.
TensorLike: TypeAlias = "tf.Tensor | tf.RaggedTensor | tf.SparseTensor | npt.ArrayLike"

#: A dtype: ``tf.int64``, ``"float32"``, ``np.float16``, ...
DTypeLike: TypeAlias = "tf.DType | npt.DTypeLike"

#: Rows of ids never seen: a number, ``dim`` values, a tensor, or a (Keras) initializer.
InitializerLike: TypeAlias = (
    "float | Sequence[float] | np.ndarray | tf.Tensor | Callable[..., Any] | None"
)

#: Devices as TFRA takes them; Redis tables live on the CPU whatever they say.
DevicesLike: TypeAlias = "str | Sequence[str] | None"
