"""Feature-health signals of self-supervised training: measures of dimensional collapse.

Pure jnp functions (they run inside the jitted train step and on host features alike), each
returning a float32 scalar. A healthy run keeps its features spread over many directions; a
collapsing one drives the effective rank and the spread of the normalised embeddings towards
zero while its loss curve can look normal. A run whose loss is no longer finite cannot go on:
`TrainingError`.
"""
import jax
import jax.numpy as jnp

_PRECISION = jax.lax.Precision.HIGHEST


class TrainingError(RuntimeError):
  """A run that cannot go on (a non-finite loss)."""


def centred_singular_values(x: jax.Array, *, via_gram: bool = False) -> jax.Array:
  """Singular values of the rows of `x` centred on their mean, those at float32 rounding level
  (under eps * max(N, D) * ||x||_F, as numpy's matrix_rank but against the uncentred features,
  since centring equal rows leaves only rounding) set to 0. Centring takes one direction away:
  N rows span at most N - 1 centred directions, so with N <= D the smallest value is rounding
  alone (through the Gram matrix about sqrt(eps) * ||x||_F, different for every summation order,
  such as another sharding of the batch) and is dropped.

  Args:
    x: (N, D) features, any float dtype.
    via_gram: the square roots of the eigenvalues of the (N, N) Gram matrix of the rows instead
      of an SVD: inside a train step (N the batch, N < D) many times cheaper on a CPU or TPU,
      and as exact for a batch's few values; squaring the matrix loses a long spectrum's tail
      (values under about sqrt(eps * N) of the largest), so a whole split's features take the SVD.

  Returns:
    (min(N - 1, D),) float32, descending.
  """
  if x.ndim != 2:
    raise ValueError(f"features must be (N, D), got shape {x.shape}")
  x = x.astype(jnp.float32)
  centred = x - jnp.mean(x, axis=0, keepdims=True)
  if via_gram:
    gram = jnp.matmul(centred, centred.T, precision=_PRECISION)
    s = jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(gram)[::-1], 0.0))
  else:
    s = jnp.linalg.svd(centred, compute_uv=False)
  s = s[:min(x.shape[0] - 1, x.shape[1])]
  tolerance = jnp.finfo(jnp.float32).eps * max(x.shape) * jnp.linalg.norm(x)
  return jnp.where(s > tolerance, s, 0.0)


def effective_rank(x: jax.Array, *, via_gram: bool = False) -> jax.Array:
  """RankMe effective rank of centred features: exp of the entropy of their singular values
  normalised to sum 1 (Garrido et al., 2023), computed on the centred rows.

  Between 1 (one direction) and min(N - 1, D); r equal singular values give r. A set whose rows
  are all equal (no spread at all) gives 0.

  Args:
    x: (N, D) features.
    via_gram: as `centred_singular_values`'s (for a train step's batch).

  Returns:
    Scalar float32.
  """
  s = centred_singular_values(x, via_gram=via_gram)
  total = jnp.sum(s)
  p = s / jnp.where(total > 0, total, 1.0)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return jnp.where(total > 0, jnp.exp(entropy), 0.0)


def first_pc_share(x: jax.Array) -> jax.Array:
  """The share of the centred features' variance along their first principal component.

  Between 1 / min(N - 1, D) (isotropic) and 1 (one direction); 1 for a set whose rows are all
  equal.

  Args:
    x: (N, D) features.

  Returns:
    Scalar float32 in [0, 1].
  """
  variances = jnp.square(centred_singular_values(x))
  total = jnp.sum(variances)
  return jnp.where(total > 0, variances[0] / jnp.where(total > 0, total, 1.0), 1.0)


def _l2_normalised(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def normalised_std(z: jax.Array) -> jax.Array:
  """Mean over dimensions of the standard deviation over the batch of the L2-normalised rows.

  1/sqrt(D) for embeddings spread evenly over the sphere, 0 when every row points the same way
  (the collapse signal of SimSiam, as lightly logs it).

  Args:
    z: (N, D) embeddings (normalised here; their norms do not matter).

  Returns:
    Scalar float32 in [0, 1/sqrt(D)] up to sampling noise.
  """
  return jnp.mean(jnp.std(_l2_normalised(z), axis=0))


def mean_cosine(u: jax.Array, v: jax.Array) -> jax.Array:
  """Mean over rows of the cosine similarity of `u[i]` and `v[i]`.

  Args:
    u, v: (N, D) embeddings of the same N images (student and a teacher).

  Returns:
    Scalar float32 in [-1, 1].
  """
  if u.shape != v.shape:
    raise ValueError(f"cosine of different shapes {u.shape} and {v.shape}")
  return jnp.mean(jnp.sum(_l2_normalised(u) * _l2_normalised(v), axis=-1))


def softmax_entropy(logits: jax.Array) -> jax.Array:
  """Mean over rows of the entropy of softmax(logits), in nats.

  log K for a uniform distribution over the K entries, 0 for a one-hot one: for the teacher's
  target over the queue, how sharp the relation it teaches is.

  Args:
    logits: (N, K), the temperature already applied.

  Returns:
    Scalar float32 in [0, log K].
  """
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.mean(-jnp.sum(jnp.exp(log_p) * log_p, axis=-1))


def queue_logits(z: jax.Array, queue: jax.Array, temperature: float) -> jax.Array:
  """(N, K) similarities of embeddings `z` (N, D) to the queue's keys (K, D), over `temperature`
  (as the relation loss forms them)."""
  return jnp.einsum("nd,kd->nk", z.astype(jnp.float32), queue.astype(jnp.float32),
                    precision=_PRECISION) / temperature
