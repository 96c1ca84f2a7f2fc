"""Keras 3 parts of ``de``: ``de.keras.layers.Embedding`` and ``de.keras.models``."""

from tfra_redis.dynamic_embedding.keras import layers, models

__all__ = ["layers", "models"]
