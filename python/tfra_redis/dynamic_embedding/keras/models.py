"""Keras models that train Redis-backed embeddings (``de.keras.models.DynamicEmbeddingModel``)."""

from tfra_redis.dynamic_embedding.training import DynamicEmbeddingModel, DynamicEmbeddingTrainer

__all__ = ["DynamicEmbeddingModel", "DynamicEmbeddingTrainer"]
