"""``tfra_redis.dynamic_embedding``: TFRA's ``tfra.dynamic_embedding`` API for Redis tables.

Code written for TFRA's Redis backend runs with only its import changed::

    import tfra_redis as tfra

    creator = tfra.dynamic_embedding.RedisTableCreator(
        tfra.dynamic_embedding.RedisTableConfig(redis_config_abs_dir="/tmp/redis.json"))
    emb = tfra.dynamic_embedding.get_variable(
        name="user_embeddings", dim=8, kv_creator=creator,
        initializer=tf.keras.initializers.RandomNormal(-1, 1))
    rows = tfra.dynamic_embedding.embedding_lookup(emb, ids)

Training: any Keras model with ``de.keras.layers`` trains its embeddings once its optimizer is
``de.DynamicEmbeddingOptimizer(keras_optimizer)`` (``fit`` or a custom loop over
``model.trainable_variables``). Importing this module imports TensorFlow.
"""

try:
    import keras as _keras  # noqa: F401
    import tensorflow as _tf  # noqa: F401
except ModuleNotFoundError as err:  # before any submodule: one clear message
    from tfra_redis._optional import tensorflow_missing

    raise tensorflow_missing(__name__, err) from err

from tfra_redis.config import RedisTableConfig
from tfra_redis.creator import RedisTableCreator
from tfra_redis.dynamic_embedding import keras
from tfra_redis.dynamic_embedding.keras.layers import Embedding
from tfra_redis.dynamic_embedding.lookups import (
    embedding_lookup_sparse,
    embedding_lookup_unique,
    safe_embedding_lookup_sparse,
)
from tfra_redis.dynamic_embedding.optimizer import DynamicEmbeddingOptimizer
from tfra_redis.dynamic_embedding.restrict import (
    FrequencyRestrictPolicy,
    RestrictPolicy,
    TimestampRestrictPolicy,
)
from tfra_redis.dynamic_embedding.trainable import (
    ModelMode,
    NotDynamicEmbeddingOptimizerError,
    TrainableWrapper,
    enable_inference_mode,
    enable_train_mode,
    get_model_mode,
)
from tfra_redis.dynamic_embedding.training import DynamicEmbeddingModel, DynamicEmbeddingTrainer
from tfra_redis.dynamic_embedding.variable import Variable, embedding_lookup, get_variable
from tfra_redis.table import RedisTable

__all__ = [
    "DynamicEmbeddingModel",
    "DynamicEmbeddingOptimizer",
    "DynamicEmbeddingTrainer",
    "Embedding",
    "FrequencyRestrictPolicy",
    "ModelMode",
    "NotDynamicEmbeddingOptimizerError",
    "RedisTable",
    "RedisTableConfig",
    "RedisTableCreator",
    "RestrictPolicy",
    "TimestampRestrictPolicy",
    "TrainableWrapper",
    "Variable",
    "embedding_lookup",
    "embedding_lookup_sparse",
    "embedding_lookup_unique",
    "enable_inference_mode",
    "enable_train_mode",
    "get_model_mode",
    "get_variable",
    "keras",
    "safe_embedding_lookup_sparse",
]
