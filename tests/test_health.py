"""The feature-health measures on features whose spread is known: the effective rank of rank-r
data is r, the std of normalised isotropic vectors 1/sqrt(D), a collapsed set scores 0, and the
softmax entropy spans [0, log K]; training warns once when a rank falls."""
import logging

import jax.numpy as jnp
import numpy as np
import pytest

from artstyle_jax.method import health
from artstyle_jax.runs import pretraining
from artstyle_jax.storage import metric_writer


def rank_r_features(rank, num=1000, dim=64, offset=5.0, seed=0):
  """(num, dim) float32: Gaussian coordinates in a random r-dimensional subspace, plus a constant
  offset (the centring must remove it)."""
  rng = np.random.default_rng(seed)
  basis = np.linalg.qr(rng.normal(size=(dim, rank)))[0].T
  return (rng.normal(size=(num, rank)) @ basis + offset).astype(np.float32)


@pytest.mark.parametrize("rank", [1, 8, 16])
def test_effective_rank_of_rank_r_gaussian_features_is_r(rank):
  """1000 rows in an r-dimensional subspace of 64: the effective rank lies in [0.98 r, r]
  (its r singular values agree within about sqrt(r / 1000); measured 7.99 for r = 8, 15.96 for
  r = 16) and the first PC holds between 1/r and 1.3/r of the variance (measured 0.144 at r = 8)."""
  x = rank_r_features(rank)
  assert 0.98 * rank <= float(health.effective_rank(x)) <= rank + 1e-3
  assert 1 / rank - 1e-6 <= float(health.first_pc_share(x)) <= 1.3 / rank


def test_effective_rank_of_a_batch_is_bounded_by_its_rows_and_ignores_scale():
  """Centred, B rows span at most B - 1 directions; scaling the features changes nothing."""
  x = np.random.default_rng(1).normal(size=(32, 128)).astype(np.float32)
  rank = float(health.effective_rank(x))
  assert 20 <= rank <= 31 + 1e-3
  np.testing.assert_allclose(health.effective_rank(1000 * x), rank, rtol=1e-4)


@pytest.mark.parametrize("rank", [3, 31])
def test_a_batchs_effective_rank_through_its_gram_matrix_is_the_svds(rank):
  """The train step's cheaper path (eigenvalues of the 32 x 32 Gram matrix) gives the SVD's rank
  on a batch of 32 rows in 128 dimensions, spanning 3 or all 31 centred directions; 0 collapsed."""
  x = rank_r_features(rank, num=32, dim=128, seed=5)
  np.testing.assert_allclose(health.effective_rank(x, via_gram=True), health.effective_rank(x), rtol=1e-3)
  assert float(health.effective_rank(np.tile(x[:1], (32, 1)), via_gram=True)) == 0.0


@pytest.mark.parametrize("dim", [16, 128])
def test_std_of_normalised_isotropic_vectors_is_one_over_sqrt_d(dim):
  """4096 isotropic Gaussian vectors: each coordinate of the unit vector has variance 1/D, so
  the mean per-dimension std is 1/sqrt(D) within 2% (measured 0.9998 / sqrt(D))."""
  z = np.random.default_rng(2).normal(size=(4096, dim)).astype(np.float32) * 7.0
  np.testing.assert_allclose(float(health.normalised_std(z)) * np.sqrt(dim), 1.0, rtol=0.02)


def test_a_collapsed_set_scores_zero_spread_and_one_direction():
  """Every row the same vector: normalised std 0, effective rank 0, all the (no) variance in the
  first PC; rows differing only in length normalise to one point, std 0 too."""
  row = np.random.default_rng(3).normal(size=(1, 10)).astype(np.float32)
  x = np.tile(row, (50, 1))
  assert float(health.normalised_std(x)) < 1e-6
  assert float(health.effective_rank(x)) == 0.0
  assert float(health.first_pc_share(x)) == 1.0
  lengths = np.linspace(1.0, 5.0, 50, dtype=np.float32)[:, None]
  assert float(health.normalised_std(lengths * x)) < 1e-6


def test_softmax_entropy_is_log_k_for_uniform_and_zero_for_one_hot():
  np.testing.assert_allclose(health.softmax_entropy(jnp.zeros((3, 256))), np.log(256), rtol=1e-6)
  assert float(health.softmax_entropy(jnp.eye(5) * 1e4)) == pytest.approx(0.0, abs=1e-6)


def test_mean_cosine_is_one_for_the_same_directions_and_minus_one_for_opposite():
  u = np.random.default_rng(4).normal(size=(8, 16)).astype(np.float32)
  np.testing.assert_allclose(health.mean_cosine(u, 3 * u), 1.0, rtol=1e-6)
  np.testing.assert_allclose(health.mean_cosine(u, -u), -1.0, rtol=1e-6)


def test_queue_logits_are_the_similarities_over_the_temperature():
  z, queue = np.eye(2, 4, dtype=np.float32), np.eye(3, 4, dtype=np.float32)
  np.testing.assert_allclose(health.queue_logits(z, queue, 0.5), [[2, 0, 0], [0, 2, 0]])


def test_rank_watch_warns_once_when_a_rank_falls_under_its_fraction_of_the_first_value(tmp_path, caplog):
  """The first value of each signal is its start; falling under a quarter of it is one warning
  line naming the signal, and later falls say nothing more. A resumed run (the metrics files of
  earlier starts holding the signal) measures against the first value logged there."""
  watch = pretraining.RankWatch(str(tmp_path), 0.25)
  with caplog.at_level(logging.WARNING):
    watch(1, {"health/pooled_rank": 20.0, "loss": 1.0})
    watch(2, {"health/pooled_rank": 6.0})
    watch(3, {"knn_rank": 100.0})
    assert not caplog.records
    watch(4, {"health/pooled_rank": 4.0})
    watch(5, {"knn_rank": 2.0})
  assert [r.getMessage() for r in caplog.records] == [
      "step 4: the effective rank health/pooled_rank fell to 4.0, under 0.25 of its first value 20.0: the features "
      "are collapsing onto a few dimensions"]

  (tmp_path / metric_writer.START_FILE.format(start=1)).write_text(
      '{"step": 1, "time": 0, "health/pooled_rank": 20.0}\n{"step": 2, "time": 0, "health/pooled_rank": 6.0}\n')
  assert pretraining.RankWatch(str(tmp_path), 0.25).start == {"health/pooled_rank": 20.0}
