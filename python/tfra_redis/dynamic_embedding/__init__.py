"""``tfra_redis.dynamic_embedding``: TFRA's ``tfra.dynamic_embedding`` API for Redis tables.

Code written for TFRA's Redis backend runs with only its import changed::

    import tfra_redis as tfra

    creator = tfra.dynamic_embedding.RedisTableCreator(
        tfra.dynamic_embedding.RedisTableConfig(redis_config_abs_dir="/tmp/redis.json"))
    emb = tfra.dynamic_embedding.get_variable(
        name="user_embeddings", dim=8, kv_creator=creator,
        initializer=tf.keras.initializers.RandomNormal(-1, 1))
    rows = tfra.dynamic_embedding.embedding_lookup(emb, ids)

Training: Keras models built with ``de.keras.layers.Embedding`` train with
``DynamicEmbeddingModel`` (its ``train_step`` applies the embedding gradients in Redis); custom
loops use ``record_lookups`` and ``EmbeddingOptimizer``. Importing this module imports
TensorFlow.
"""

from tfra_redis.config import RedisTableConfig
from tfra_redis.creator import RedisTableCreator
from tfra_redis.dynamic_embedding import keras
from tfra_redis.dynamic_embedding.keras.layers import Embedding
from tfra_redis.dynamic_embedding.recording import LookupRecord, LookupRecorder, record_lookups
from tfra_redis.dynamic_embedding.training import (
    DynamicEmbeddingModel,
    DynamicEmbeddingTrainer,
    EmbeddingOptimizer,
)
from tfra_redis.dynamic_embedding.variable import Variable, embedding_lookup, get_variable
from tfra_redis.table import RedisTable

__all__ = [
    "DynamicEmbeddingModel",
    "DynamicEmbeddingTrainer",
    "Embedding",
    "EmbeddingOptimizer",
    "LookupRecord",
    "LookupRecorder",
    "RedisTable",
    "RedisTableConfig",
    "RedisTableCreator",
    "Variable",
    "embedding_lookup",
    "get_variable",
    "keras",
    "record_lookups",
]
