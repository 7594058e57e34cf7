"""Style retrieval: ranking a labelled gallery by cosine similarity, and how good the ranking is.

A query's relevant gallery images are those of its class. Over Q queries and the top k of each:

    precision@k = mean_q (relevant among the top k) / k
    mAP@k       = mean_q sum_{i <= k} precision@i * rel_i / min(k, R_q)

with rel_i = 1 when the i-th match is relevant and R_q the relevant images in the gallery (a
query without any scores 0). Host-side NumPy on the (Q, k) matches; the ranking itself is
`knn.nearest_neighbours` on the features after `represent`.

Representations (`REPRESENTATIONS`), all from the gallery's statistics alone:
  'raw'       the pooled features as they are;
  'centred'   minus the gallery's mean feature: a direction every feature shares (large in a
              network whose features have collapsed towards a few) no longer makes every
              image similar to every other;
  'whitened'  centred, then rotated onto the gallery's principal axes and each divided by its
              standard deviation (with a floor of `WHITENING_FLOOR` of the largest variance).
"""
from typing import Any

import numpy as np

from artstyle_jax.evaluators import knn

REPRESENTATIONS = ("raw", "centred", "whitened")
# The representation eval scores and predict ranks a gallery in: on the synthetic styles it
# retrieved best, for a random and a collapsed backbone alike (README, "Feature health and retrieval").
REPRESENTATION = "whitened"
DEFAULT_K = 5  # matches per query eval scores (the retrieval sheet's five)
# Whitening divides by sqrt(variance + floor * largest variance): directions of no variance (a
# gallery smaller than the feature dimension has many) are not blown up into noise. 1e-4: of the
# floors 1e-1 to 1e-6 tried on the synthetic styles, among the best for both backbones.
WHITENING_FLOOR = 1e-4


def represent(gallery: np.ndarray, queries: np.ndarray, representation: str) -> tuple[np.ndarray, np.ndarray]:
  """(gallery, queries) in `representation` (module docstring), from the gallery's statistics.

  Args:
    gallery: (N, C) float features.
    queries: (Q, C) float features.

  Returns:
    (N, C') and (Q, C') float32 (C' = C).
  """
  if representation not in REPRESENTATIONS:
    raise ValueError(f"representation must be one of {REPRESENTATIONS}, got {representation!r}")
  gallery, queries = np.asarray(gallery, np.float64), np.asarray(queries, np.float64)
  if representation == "raw":
    return gallery.astype(np.float32), queries.astype(np.float32)
  mean = gallery.mean(axis=0)
  gallery, queries = gallery - mean, queries - mean
  if representation == "whitened":
    variances, axes = np.linalg.eigh(gallery.T @ gallery / len(gallery))
    scale = 1.0 / np.sqrt(np.maximum(variances, 0.0) + WHITENING_FLOOR * max(variances.max(), 1e-30))
    gallery, queries = gallery @ axes * scale, queries @ axes * scale
  return gallery.astype(np.float32), queries.astype(np.float32)


def rank(gallery: np.ndarray, queries: np.ndarray, k: int, *,
         leave_one_out: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """The k gallery rows most cosine-similar to each query, most similar first.

  Args:
    gallery: (N, C) features.
    queries: (Q, C) features; with `leave_one_out`, the gallery itself (Q = N), each row's own
      entry left out of its ranking.
    k: matches per query, at most N (N - 1 with `leave_one_out`).

  Returns:
    similarities (Q, k) float32 descending, indices (Q, k) int into the gallery.
  """
  similarities, indices = knn.nearest_neighbours(gallery, queries, k=k + 1 if leave_one_out else k)
  similarities, indices = np.asarray(similarities), np.asarray(indices)
  if not leave_one_out:
    return similarities, indices
  if len(queries) != len(gallery):
    raise ValueError(f"leave_one_out ranks the gallery against itself, got {len(queries)} queries for "
                     f"{len(gallery)} gallery rows")
  own = indices == np.arange(len(queries))[:, None]
  # Each row drops its own entry, or its last one when ties pushed its own out of the top k + 1.
  own[~own.any(axis=1), -1] = True
  keep = ~own
  return similarities[keep].reshape(-1, k), indices[keep].reshape(-1, k)


def retrieval_metrics(match_labels: np.ndarray, query_labels: np.ndarray,
                      relevant_counts: np.ndarray) -> dict[str, float]:
  """'precision_at_k' and 'map_at_k' (module docstring) of ranked matches.

  Args:
    match_labels: (Q, k) int classes of each query's matches, best first.
    query_labels: (Q,) int classes of the queries.
    relevant_counts: (Q,) int images of the query's class in the gallery (the query itself left
      out when it is in the gallery).
  """
  match_labels, query_labels = np.asarray(match_labels), np.asarray(query_labels)
  if match_labels.ndim != 2 or query_labels.shape != match_labels.shape[:1]:
    raise ValueError(f"match_labels must be (Q, k) and query_labels (Q,), got {match_labels.shape} and "
                     f"{query_labels.shape}")
  k = match_labels.shape[1]
  relevant = (match_labels == query_labels[:, None]).astype(np.float64)
  precision_at_i = np.cumsum(relevant, axis=1) / np.arange(1, k + 1)
  denominator = np.minimum(k, np.asarray(relevant_counts))
  average_precision = np.where(denominator > 0, np.sum(precision_at_i * relevant, axis=1) / np.maximum(denominator, 1),
                               0.0)
  return {"precision_at_k": float(np.mean(relevant.sum(axis=1) / k)), "map_at_k": float(np.mean(average_precision))}


def evaluate_retrieval(gallery: np.ndarray, gallery_labels: np.ndarray, queries: np.ndarray | None,
                       query_labels: np.ndarray | None, k: int, representation: str) -> dict[str, Any]:
  """Precision@k and mAP@k of ranking a labelled gallery for labelled queries; with `queries`
  None, of each gallery image against the rest (leave one out).

  Returns:
    {'precision_at_k', 'map_at_k', 'retrieval_k': k, 'representation', 'num_queries'}.
  """
  gallery_labels = np.asarray(gallery_labels)
  leave_one_out = queries is None
  if leave_one_out:
    queries, query_labels = gallery, gallery_labels
  gallery_features, query_features = represent(gallery, queries, representation)
  _, indices = rank(gallery_features, query_features, k, leave_one_out=leave_one_out)
  query_labels = np.asarray(query_labels)
  counts = np.bincount(gallery_labels, minlength=int(max(gallery_labels.max(), query_labels.max())) + 1)
  relevant_counts = counts[query_labels] - (1 if leave_one_out else 0)
  return {**retrieval_metrics(gallery_labels[indices], query_labels, relevant_counts), "retrieval_k": int(k),
          "representation": representation, "num_queries": int(len(query_labels))}
