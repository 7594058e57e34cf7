"""Retrieval measures: precision@k and mAP@k counted by hand on small rankings, leave-one-out
ranking that never returns the query itself, and the representations' statistics."""
import numpy as np
import pytest

from artstyle_jax.evaluators import retrieval


def test_precision_and_map_at_k_match_a_hand_count():
  """Query 0 (class 1), matches 1 0 1: P@3 = 2/3, AP@3 = (1/1 + 2/3) / min(3, R=2) = 5/6.
  Query 1 (class 0), matches 1 1 0 with R = 5: P@3 = 1/3, AP@3 = (1/3) / 3 = 1/9.
  Query 2 (class 2), no image of its class in the gallery: 0 and 0."""
  result = retrieval.retrieval_metrics(np.array([[1, 0, 1], [1, 1, 0], [0, 0, 0]]), np.array([1, 0, 2]),
                                       np.array([2, 5, 0]))
  assert result["precision_at_k"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
  assert result["map_at_k"] == pytest.approx((5 / 6 + 1 / 9 + 0) / 3)


def test_perfect_ranking_scores_one():
  result = retrieval.retrieval_metrics(np.array([[3, 3], [4, 4]]), np.array([3, 4]), np.array([2, 7]))
  assert result == {"precision_at_k": 1.0, "map_at_k": 1.0}


def test_leave_one_out_never_returns_the_query_and_finds_its_class():
  """Two tight clusters of 4 points: each point's 3 matches are the other points of its cluster,
  never itself, even among exact duplicates (ties)."""
  rng = np.random.default_rng(0)
  centres = np.array([[10.0, 0, 0], [0, 10.0, 0]])
  gallery = np.repeat(centres, 4, axis=0) + rng.normal(scale=0.01, size=(8, 3))
  gallery[1] = gallery[0]
  labels = np.repeat([0, 1], 4)
  _, indices = retrieval.rank(gallery, gallery, 3, leave_one_out=True)
  assert not np.any(indices == np.arange(8)[:, None])
  result = retrieval.evaluate_retrieval(gallery, labels, None, None, 3, "raw")
  assert result["precision_at_k"] == 1.0 and result["map_at_k"] == 1.0 and result["num_queries"] == 8


def test_centring_removes_a_shared_direction_that_makes_raw_cosines_all_near_one():
  """Features = a large shared offset + small class signal: raw cosines are all about 1 and
  retrieval is at chance; centred on the gallery mean, each class is found."""
  rng = np.random.default_rng(1)
  labels = np.repeat(np.arange(4), 25)
  signal = np.eye(4, 16)[labels] + rng.normal(scale=0.1, size=(100, 16))
  features = 1000.0 * np.ones(16) + signal
  similarities, _ = retrieval.rank(*retrieval.represent(features, features, "raw"), 5, leave_one_out=True)
  assert similarities.min() > 0.999
  centred = retrieval.evaluate_retrieval(features, labels, None, None, 5, "centred")
  assert centred["precision_at_k"] == 1.0


def test_whitened_gallery_has_identity_covariance_up_to_the_floor():
  rng = np.random.default_rng(2)
  gallery = rng.normal(size=(2000, 8)) * np.array([1, 2, 3, 4, 5, 6, 7, 8.0]) + 3.0
  whitened, _ = retrieval.represent(gallery, gallery[:3], "whitened")
  np.testing.assert_allclose(whitened.mean(axis=0), 0.0, atol=1e-4)
  covariance = np.cov(whitened.T, bias=True)
  np.testing.assert_allclose(np.diag(covariance), 1 / (1 + retrieval.WHITENING_FLOOR * 64 / np.arange(1, 9) ** 2),
                             rtol=0.05)
  np.testing.assert_allclose(covariance - np.diag(np.diag(covariance)), 0.0, atol=1e-3)
