"""Weighted k-nearest-neighbour classification of features, as in InstDisc and DINO.

Both the bank (labelled training features) and the queries are L2-normalised, so the
similarity is the cosine. Each query takes its k most similar bank rows, s_1..s_k with labels
y_1..y_k, and every class c gets the vote

    score_c = sum_{j : y_j = c} exp(s_j / T),   k = 20, T = 0.07 by default

(Wu et al. 2018, "Unsupervised feature learning via non-parametric instance discrimination";
Caron et al. 2021, DINO's `knn_classifier`). We divide the votes by their sum, so the scores
of a query add up to 1; that is a positive factor per query and changes no ranking.

Queries go through in chunks of `chunk_size` rows (a `lax.map` inside one jit), so the
similarity matrix held at once is (chunk_size, bank size), whatever the number of queries.
The similarity matmul runs at full float32 precision (on TPU the default would be bf16
passes, enough to reorder close neighbours).
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_K = 20
DEFAULT_TEMPERATURE = 0.07
DEFAULT_CHUNK_SIZE = 512


class KnnResult(NamedTuple):
  scores: jax.Array  # (Q, num_classes) float32, normalised weighted votes, rows sum to 1.
  predictions: jax.Array  # (Q,) int32, argmax of scores.


def _l2_normalize(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _check_features(bank, queries, k: int, chunk_size: int) -> None:
  if bank.ndim != 2 or queries.ndim != 2:
    raise ValueError(f"bank and queries must be (N, C) feature arrays; got shapes {bank.shape} and {queries.shape}.")
  if bank.shape[1] != queries.shape[1]:
    raise ValueError(f"bank has {bank.shape[1]} feature channels but queries have {queries.shape[1]}.")
  if not 1 <= k <= bank.shape[0]:
    raise ValueError(f"k must lie in [1, bank size = {bank.shape[0]}]; got k = {k}.")
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1; got {chunk_size}.")


@functools.partial(jax.jit, static_argnames=("k", "chunk_size"))
def _nearest(bank: jax.Array, queries: jax.Array, k: int, chunk_size: int) -> tuple[jax.Array, jax.Array]:
  bank = _l2_normalize(bank.astype(jnp.float32))
  queries = _l2_normalize(queries.astype(jnp.float32))
  num_queries, channels = queries.shape
  chunk_size = max(1, min(chunk_size, num_queries))
  padding = -num_queries % chunk_size
  chunks = jnp.pad(queries, ((0, padding), (0, 0))).reshape(-1, chunk_size, channels)

  def one_chunk(chunk):
    similarity = jnp.matmul(chunk, bank.T, precision=jax.lax.Precision.HIGHEST)
    return jax.lax.top_k(similarity, k)

  similarities, indices = jax.lax.map(one_chunk, chunks)
  return similarities.reshape(-1, k)[:num_queries], indices.reshape(-1, k)[:num_queries]


def nearest_neighbours(bank, queries, k: int = DEFAULT_K,
                       chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[jax.Array, jax.Array]:
  """The k bank rows most cosine-similar to each query, most similar first.

  Args:
    bank: (N, C) features to search.
    queries: (Q, C) features.
    k: neighbours per query, 1 <= k <= N.
    chunk_size: queries per step; memory holds a (chunk_size, N) similarity block.

  Returns:
    similarities (Q, k) float32 cosines in [-1, 1], descending; indices (Q, k) int32 into bank.
  """
  bank = jnp.asarray(bank)
  queries = jnp.asarray(queries)
  _check_features(bank, queries, k, chunk_size)
  if queries.shape[0] == 0:
    return jnp.zeros((0, k), jnp.float32), jnp.zeros((0, k), jnp.int32)
  return _nearest(bank, queries, k=k, chunk_size=chunk_size)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _vote(similarities, neighbour_labels, num_classes: int, temperature) -> KnnResult:
  # Subtracting each query's top similarity keeps exp() finite for any T; the factor cancels
  # in the normalisation.
  weights = jnp.exp((similarities - similarities[:, :1]) / temperature)
  votes = jnp.einsum("qk,qkc->qc", weights, jax.nn.one_hot(neighbour_labels, num_classes, dtype=jnp.float32))
  scores = votes / jnp.sum(votes, axis=1, keepdims=True)
  return KnnResult(scores=scores, predictions=jnp.argmax(scores, axis=1).astype(jnp.int32))


def knn_classify(bank_features, bank_labels, query_features, num_classes: int, k: int = DEFAULT_K,
                 temperature: float = DEFAULT_TEMPERATURE, chunk_size: int = DEFAULT_CHUNK_SIZE) -> KnnResult:
  """Weighted kNN scores and predictions for each query (see the module docstring).

  Args:
    bank_features: (N, C) labelled features (e.g. the training split's pooled features).
    bank_labels: (N,) int labels in [0, num_classes).
    query_features: (Q, C) features to classify.
    num_classes: K.
    k: neighbours per query, 1 <= k <= N (20 as in InstDisc/DINO).
    temperature: T of the exp(similarity / T) weights (0.07 as in InstDisc/DINO), > 0.
    chunk_size: queries per step, bounding memory to a (chunk_size, N) block.

  Returns:
    KnnResult(scores (Q, K) float32 summing to 1 per query, predictions (Q,) int32).
  """
  bank_labels_np = np.asarray(bank_labels)
  if bank_labels_np.shape != (np.shape(bank_features)[0],):
    raise ValueError(f"bank_labels must be (N,) = ({np.shape(bank_features)[0]},); got {bank_labels_np.shape}.")
  if not np.issubdtype(bank_labels_np.dtype, np.integer):
    raise ValueError(f"bank_labels must be integers; got dtype {bank_labels_np.dtype}.")
  if bank_labels_np.size and (bank_labels_np.min() < 0 or bank_labels_np.max() >= num_classes):
    raise ValueError(f"bank_labels must lie in [0, {num_classes}); got values in "
                     f"[{bank_labels_np.min()}, {bank_labels_np.max()}].")
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0; got {temperature}.")
  similarities, indices = nearest_neighbours(bank_features, query_features, k=k, chunk_size=chunk_size)
  neighbour_labels = jnp.asarray(bank_labels_np, jnp.int32)[indices]
  return _vote(similarities, neighbour_labels, num_classes=num_classes, temperature=jnp.float32(temperature))
