"""The losses equal artstyle_jax/METHOD.md's formulas, evaluated independently in float64 NumPy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from artstyle_jax.method import losses

RTOL = 1e-5


def _unit_rows(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _numpy_gram(f):
  b, h, w, c = f.shape
  flat = f.reshape(b, h * w, c)
  return np.stack([flat[i].T @ flat[i] for i in range(b)])


def _numpy_cos(u, v, eps=1e-8):
  u, v = u.ravel(), v.ravel()
  return u @ v / (max(np.linalg.norm(u), eps) * max(np.linalg.norm(v), eps))


def _numpy_gram_loss(f_s, f_t):
  a = _numpy_gram((f_s + f_t) / 2)
  a_c = a - a.reshape(a.shape[0], -1).mean(axis=1)[:, None, None]
  return 0.5 * (1 - _numpy_cos(a_c, _numpy_gram(f_s))) + 0.5 * (1 - _numpy_cos(a_c, _numpy_gram(f_t)))


def _numpy_log_softmax(x):
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _numpy_relation_loss(z_s, z_t, queue, t_s, t_t):
  target = np.exp(_numpy_log_softmax(z_t @ queue.T / t_t))
  return -np.mean(np.sum(target * _numpy_log_softmax(z_s @ queue.T / t_s), axis=-1))


def _numpy_info_nce(z_s, z_t, queue, t):
  logits = np.concatenate([np.sum(z_s * z_t, -1, keepdims=True), z_s @ queue.T], axis=-1) / t
  return -np.mean(_numpy_log_softmax(logits)[:, 0])


# Maps with more positions than channels, and with fewer (the loss then takes products of
# positions); the second with an offset, as real feature maps have.
MAP_SHAPES = {"positions_ge_channels": ((4, 3, 5, 8), 0.0), "positions_lt_channels": ((4, 2, 3, 16), 1.0)}


@pytest.fixture(params=sorted(MAP_SHAPES))
def maps(request):
  shape, offset = MAP_SHAPES[request.param]
  rng = np.random.default_rng(0)
  f_s = rng.normal(size=shape) + offset
  return f_s.astype(np.float32), (f_s + rng.normal(size=shape)).astype(np.float32)


@pytest.fixture
def embeddings():
  rng = np.random.default_rng(1)
  z_s = _unit_rows(rng.normal(size=(6, 16))).astype(np.float32)
  z_t = _unit_rows(rng.normal(size=(6, 16))).astype(np.float32)
  queue = _unit_rows(rng.normal(size=(64, 16))).astype(np.float32)
  return z_s, z_t, queue


def test_gram_matrix_is_unnormalised_sum_over_positions(maps):
  f, _ = maps
  np.testing.assert_allclose(losses.gram_matrix(jnp.asarray(f)), _numpy_gram(f.astype(np.float64)), rtol=RTOL, atol=1e-5)


def test_gram_alignment_loss_matches_formula(maps):
  f_s, f_t = maps
  expected = _numpy_gram_loss(f_s.astype(np.float64), f_t.astype(np.float64))
  np.testing.assert_allclose(losses.gram_alignment_loss(jnp.asarray(f_s), jnp.asarray(f_t)), expected, rtol=RTOL)


def test_gram_alignment_loss_is_one_cosine_over_the_whole_batch(maps):
  """Not a mean of per-image cosines: the loss of a batch differs from the mean over its images."""
  f_s, f_t = maps
  f_s = f_s * np.arange(1, 5, dtype=np.float32)[:, None, None, None] ** 2
  whole = float(losses.gram_alignment_loss(jnp.asarray(f_s), jnp.asarray(f_t)))
  per_image = np.mean([_numpy_gram_loss(f_s[i:i + 1].astype(np.float64), f_t[i:i + 1].astype(np.float64)) for i in range(4)])
  np.testing.assert_allclose(whole, _numpy_gram_loss(f_s.astype(np.float64), f_t.astype(np.float64)), rtol=RTOL)
  assert abs(whole - per_image) > 1e-3


def test_gram_alignment_gradient_flows_through_the_student_inside_the_average(maps):
  """d loss / d f_s equals central differences of the float64 formula, where f_s appears in A too."""
  f_s, f_t = maps
  grad = np.asarray(jax.grad(losses.gram_alignment_loss)(jnp.asarray(f_s), jnp.asarray(f_t)))
  f_s64, f_t64 = f_s.astype(np.float64), f_t.astype(np.float64)
  for index in [(0, 0, 0, 0), (1, 1, 2, 7), (3, 1, 2, 5)]:
    step = np.zeros_like(f_s64)
    step[index] = 1e-4
    numeric = (_numpy_gram_loss(f_s64 + step, f_t64) - _numpy_gram_loss(f_s64 - step, f_t64)) / 2e-4
    np.testing.assert_allclose(grad[index], numeric, rtol=1e-3, atol=1e-6)


def test_batch_cosine_similarity_clamps_each_norm_as_torch():
  rng = np.random.default_rng(2)
  for scale in (1.0, 1e-9):
    u = (rng.normal(size=(3, 4, 4)) * scale).astype(np.float32)
    v = rng.normal(size=(3, 4, 4)).astype(np.float32)
    expected = torch.nn.functional.cosine_similarity(torch.from_numpy(u).flatten(), torch.from_numpy(v).flatten(), dim=0)
    np.testing.assert_allclose(losses.batch_cosine_similarity(jnp.asarray(u), jnp.asarray(v)), expected.numpy(), rtol=RTOL)


def test_relation_alignment_loss_matches_formula(embeddings):
  z_s, z_t, queue = embeddings
  expected = _numpy_relation_loss(*(x.astype(np.float64) for x in embeddings), 0.1, 0.04)
  got = losses.relation_alignment_loss(jnp.asarray(z_s), jnp.asarray(z_t), jnp.asarray(queue))
  np.testing.assert_allclose(got, expected, rtol=RTOL)


def test_relation_alignment_loss_uses_given_temperatures(embeddings):
  expected = _numpy_relation_loss(*(x.astype(np.float64) for x in embeddings), 0.2, 0.05)
  got = losses.relation_alignment_loss(*map(jnp.asarray, embeddings), student_temp=0.2, teacher_temp=0.05)
  np.testing.assert_allclose(got, expected, rtol=RTOL)


def test_relation_alignment_loss_has_no_gradient_through_teacher_or_queue(embeddings):
  grads = jax.grad(losses.relation_alignment_loss, argnums=(0, 1, 2))(*map(jnp.asarray, embeddings))
  assert np.any(np.asarray(grads[0]) != 0)
  np.testing.assert_array_equal(grads[1], 0)
  np.testing.assert_array_equal(grads[2], 0)


def test_info_nce_loss_matches_formula(embeddings):
  expected = _numpy_info_nce(*(x.astype(np.float64) for x in embeddings), 0.2)
  np.testing.assert_allclose(losses.info_nce_loss(*map(jnp.asarray, embeddings)), expected, rtol=RTOL)


def test_info_nce_loss_has_no_gradient_through_teacher_or_queue(embeddings):
  grads = jax.grad(losses.info_nce_loss, argnums=(0, 1, 2))(*map(jnp.asarray, embeddings))
  assert np.any(np.asarray(grads[0]) != 0)
  np.testing.assert_array_equal(grads[1], 0)
  np.testing.assert_array_equal(grads[2], 0)


def test_losses_refuse_mismatched_shapes(embeddings, maps):
  z_s, z_t, queue = embeddings
  with pytest.raises(ValueError, match="queue must be"):
    losses.relation_alignment_loss(jnp.asarray(z_s), jnp.asarray(z_t), jnp.asarray(queue[:, :8]))
  with pytest.raises(ValueError, match="differ in shape"):
    losses.gram_alignment_loss(jnp.asarray(maps[0]), jnp.asarray(maps[1][:2]))
  with pytest.raises(ValueError, match="differ in shape"):
    losses.gram_alignment_loss(jnp.asarray(maps[0][0]), jnp.asarray(maps[1][0]))
