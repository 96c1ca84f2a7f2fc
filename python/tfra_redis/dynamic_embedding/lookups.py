"""TFRA's other lookups over a ``de.Variable``: unique, sparse (``SparseTensor`` ids with optional
weights and a combiner) and "safe" sparse lookups.

Each is built on :func:`~tfra_redis.dynamic_embedding.variable.lookup_rows`, so each is
trainable the same way: in a training step its rows are staged in a trainable wrapper that the
tape watches and ``de.DynamicEmbeddingOptimizer`` applies. The combining math is TensorFlow's
own (``tf.nn.embedding_lookup_sparse`` / ``tf.nn.safe_embedding_lookup_sparse`` on an in-memory
table give the same numbers).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from tfra_redis._types import TensorLike
from tfra_redis.dynamic_embedding.variable import embedding_lookup, lookup_rows, one_variable

__all__ = ["embedding_lookup_sparse", "embedding_lookup_unique", "safe_embedding_lookup_sparse"]

_COMBINERS = ("mean", "sqrtn", "sum")


def embedding_lookup_unique(
    params: Any,
    ids: TensorLike,
    partition_strategy: object = None,
    name: str | None = None,
    validate_indices: object = None,
    max_norm: float | None = None,
    return_trainable: bool = False,
) -> tf.Tensor:
    """Rows of ``ids`` looked up once per distinct id (TFRA's ``de.embedding_lookup_unique``;
    every lookup here is unique, so this is :func:`embedding_lookup`). Unlike TFRA's,
    ``max_norm`` is honoured (TFRA passes ``validate_indices`` in its place)."""
    return embedding_lookup(
        params, ids, name=name, max_norm=max_norm, return_trainable=return_trainable
    )


def _combine(
    rows: tf.Tensor, segments: tf.Tensor, weights: tf.Tensor | None, combiner: str
) -> tf.Tensor:
    """``rows`` (one per id) combined per segment, as ``tf.nn.embedding_lookup_sparse`` does."""
    if weights is None:
        positions = tf.range(tf.shape(rows)[0])
        reduce = {
            "sum": tf.sparse.segment_sum,
            "mean": tf.sparse.segment_mean,
            "sqrtn": tf.sparse.segment_sqrt_n,
        }[combiner]
        return reduce(rows, positions, segments)
    original = rows.dtype
    if original in (tf.float16, tf.bfloat16):
        rows = tf.cast(rows, tf.float32)
    weights = tf.cast(weights, rows.dtype)
    segments = tf.cast(segments, tf.int32)
    weighted = rows * tf.expand_dims(weights, -1)
    summed = tf.math.segment_sum(weighted, segments)
    if combiner == "mean":
        summed = tf.math.divide_no_nan(summed, tf.math.segment_sum(weights, segments)[:, None])
    elif combiner == "sqrtn":
        norm = tf.sqrt(tf.math.segment_sum(tf.square(weights), segments))
        summed = tf.math.divide_no_nan(summed, norm[:, None])
    return tf.cast(summed, original)


def embedding_lookup_sparse(
    params: Any,
    sp_ids: tf.SparseTensor,
    sp_weights: tf.SparseTensor | None,
    partition_strategy: object = None,
    name: str = "embedding_lookup_sparse",
    combiner: str = "mean",
    max_norm: float | None = None,
    return_trainable: bool = False,
) -> tf.Tensor:
    """Rows of the ids of each row of ``sp_ids`` (a ``[n, k]`` ``SparseTensor``), weighted by
    ``sp_weights`` (or 1) and combined with ``combiner`` (``mean``, ``sqrtn`` or ``sum``):
    ``[rows up to the last non-empty one, dim]``, as TFRA's and TensorFlow's. Looked up through
    the trainable wrapper ``<name>/embedding_lookup`` (TFRA's name). Zero weight sums give zero
    rows (TensorFlow's ``div_no_nan``; TFRA divides and gets NaN)."""
    params = one_variable(params)
    if combiner not in _COMBINERS:
        raise ValueError(f"combiner must be one of 'mean', 'sqrtn' or 'sum', got {combiner!r}")
    if not isinstance(sp_ids, tf.SparseTensor):
        raise TypeError(f"sp_ids must be a SparseTensor, got {type(sp_ids).__name__}")
    if sp_weights is not None and not isinstance(sp_weights, tf.SparseTensor):
        raise TypeError(
            f"sp_weights must be None or a SparseTensor, got {type(sp_weights).__name__}"
        )
    wrapper_name = f"{name}/embedding_lookup"
    rows = lookup_rows(params, sp_ids.values, wrapper_name=wrapper_name, training=None)
    if max_norm is not None:
        rows = tf.clip_by_norm(rows, max_norm, axes=[-1])
    weights = None if sp_weights is None else sp_weights.values
    out = _combine(rows, sp_ids.indices[:, 0], weights, combiner)
    if return_trainable:
        return out, params.trainable_wrapper(wrapper_name)
    return out


def safe_embedding_lookup_sparse(
    embedding_weights: Any,
    sparse_ids: tf.SparseTensor,
    sparse_weights: tf.SparseTensor | None = None,
    combiner: str = "mean",
    default_id: int | None = None,
    name: str = "safe_embedding_lookup_sparse",
    partition_strategy: object = None,
    max_norm: float | None = None,
    return_trainable: bool = False,
) -> tf.Tensor:
    """:func:`embedding_lookup_sparse` for ids of any rank ``[d0, ..., dn]``, giving ``[d0, ...,
    dn-1, dim]``, that also covers empty rows (TFRA's ``de.safe_embedding_lookup_sparse``).

    With a combiner other than ``sum``, entries whose weight is not positive are dropped. An
    empty row gets the row of ``default_id``, or zeros when it is ``None``; in that case
    nothing is looked up for it (TFRA looks id 0 up and so also trains and stores a row for
    it). Ids are never dropped for their value: every int64 is a key (TFRA's rule;
    ``tf.nn.safe_embedding_lookup_sparse`` drops negative ids).
    """
    params = one_variable(embedding_weights)
    if not isinstance(sparse_ids, tf.SparseTensor):
        raise TypeError(f"sparse_ids must be a SparseTensor, got {type(sparse_ids).__name__}")
    if sparse_ids.dtype != params.key_dtype:
        raise TypeError(
            f"sparse_ids are {sparse_ids.dtype.name}, the variable's keys {params.key_dtype.name}"
        )
    if sparse_weights is not None and sparse_weights.dtype != params.value_dtype:
        raise TypeError(
            f"sparse_weights are {sparse_weights.dtype.name}, the variable's values "
            f"{params.value_dtype.name}"
        )
    original_shape = sparse_ids.dense_shape
    rank = tf.size(original_shape)
    rows_count = tf.reduce_prod(original_shape[:-1])
    sparse_ids = tf.sparse.reshape(sparse_ids, tf.stack([rows_count, original_shape[-1]]))
    if sparse_weights is not None:
        sparse_weights = tf.SparseTensor(
            sparse_ids.indices, sparse_weights.values, sparse_ids.dense_shape
        )
        if combiner != "sum":
            keep = sparse_weights.values > 0
            sparse_ids = tf.sparse.retain(sparse_ids, keep)
            sparse_weights = tf.sparse.retain(sparse_weights, keep)
    if default_id is not None:
        sparse_ids, _ = tf.sparse.fill_empty_rows(sparse_ids, tf.cast(default_id, sparse_ids.dtype))
        if sparse_weights is not None:
            sparse_weights, _ = tf.sparse.fill_empty_rows(
                sparse_weights, tf.constant(1, sparse_weights.dtype)
            )
    result = embedding_lookup_sparse(
        params,
        sparse_ids,
        sparse_weights,
        name=name,
        combiner=combiner,
        max_norm=max_norm,
    )
    # Rows after the last non-empty one are missing from a segment reduction: zeros.
    missing = rows_count - tf.cast(tf.shape(result)[0], rows_count.dtype)
    result = tf.pad(result, tf.stack([tf.stack([0, tf.cast(missing, tf.int32)]), [0, 0]]))
    out_shape = tf.concat([tf.cast(original_shape[: rank - 1], tf.int32), [params.dim]], 0)
    result = tf.reshape(result, out_shape)
    if return_trainable:
        return result, params.trainable_wrapper(f"{name}/embedding_lookup")
    return result
