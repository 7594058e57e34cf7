"""The dual-teacher objective: relation alignment, Gram alignment and MoCo InfoNCE.

Pure functions on jnp arrays (artstyle_jax/METHOD.md, "One training step": the relation and
Gram alignment losses). They compute in float32 whatever the input dtype, and take global arrays:
under `jax.jit` with a batch sharded over devices XLA inserts the reductions, so the values do
not depend on the sharding.
"""
import jax
import jax.numpy as jnp

# Loss arithmetic is a small part of the step; full float32 precision keeps it equal to the
# reference on accelerators whose default matmul precision is lower.
_PRECISION = jax.lax.Precision.HIGHEST


def gram_matrix(f: jax.Array) -> jax.Array:
  """Per-image Gram matrix of a feature map, unnormalised.

  Args:
    f: (B, h, w, C) feature map.

  Returns:
    (B, C, C) float32, `sum_{i,j} f[b, i, j, :]^T f[b, i, j, :]`.
  """
  if f.ndim != 4:
    raise ValueError(f"gram_matrix expects a (B, h, w, C) feature map, got shape {f.shape}")
  f = f.astype(jnp.float32)
  return jnp.einsum("bhwc,bhwd->bcd", f, f, precision=_PRECISION)


def _unit(x: jax.Array, eps: float) -> jax.Array:
  """`x / max(||x||, eps)` over all of `x` (torch's per-input clamp of `cosine_similarity`)."""
  return x / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(x))), eps)


def batch_cosine_similarity(u: jax.Array, v: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Cosine similarity of two tensors each flattened over ALL axes, batch included.

  As `torch.nn.functional.cosine_similarity(u.flatten(), v.flatten(), dim=0, eps=eps)`.
  Each tensor is scaled to unit norm before the dot product so that large Gram entries
  cannot overflow float32.

  Returns:
    Scalar float32.
  """
  if u.shape != v.shape:
    raise ValueError(f"cosine similarity of different shapes {u.shape} and {v.shape}")
  return jnp.sum(_unit(u.astype(jnp.float32), eps) * _unit(v.astype(jnp.float32), eps))


def _centred_gram_cosines(f_s: jax.Array, f_t: jax.Array, eps: float) -> tuple[jax.Array, jax.Array]:
  """cos(A_c, gram(f_s)) and cos(A_c, gram(f_t)) from the (B, C, C) Gram matrices."""
  a = gram_matrix((f_s + f_t) / 2)
  a_centred = a - jnp.mean(a, axis=(1, 2), keepdims=True)
  return (batch_cosine_similarity(a_centred, gram_matrix(f_s), eps),
          batch_cosine_similarity(a_centred, gram_matrix(f_t), eps))


def _centred_gram_cosines_by_positions(f_s: jax.Array, f_t: jax.Array, eps: float) -> tuple[jax.Array, jax.Array]:
  """The same two cosines through (B, hw, hw) products of positions, for maps with hw < C.

  Per image, with X the (hw, C) rows of (f_s + f_t) / 2, m their channel means, X' = X - m 1^T
  (rows centred) and v = X'^T m, exactly `A - mean(A) = X'^T X' + v 1^T + 1 v^T`, hence for
  any (hw, C) map Y:
    <A_c, Y^T Y> = ||X' Y^T||^2 + 2 (Y v) . (Y 1),  ||A_c||^2 = ||X' X'^T||^2 + 2 C ||v||^2,
    ||Y^T Y|| = ||Y Y^T||   (Frobenius norms, each summed over the batch).
  No term cancels another (float32 keeps its precision) and nothing of size C x C is formed:
  memory and FLOPs scale with hw^2 instead of C^2 (121 against 1024^2 for ConvNeXt-B at 352 px).
  """
  b, h, w, c = f_s.shape
  y_s, y_t = f_s.reshape(b, h * w, c), f_t.reshape(b, h * w, c)
  x = (y_s + y_t) / 2
  means = jnp.mean(x, axis=-1)
  x_centred = x - means[..., None]
  v = jnp.einsum("bpc,bp->bc", x_centred, means, precision=_PRECISION)

  def squared_norm_of_products(u, y):
    k = jnp.einsum("bpc,bqc->bpq", u, y, precision=_PRECISION)
    return jnp.sum(jnp.square(k))

  norm_a = jnp.sqrt(squared_norm_of_products(x_centred, x_centred) + 2 * c * jnp.sum(jnp.square(v)))

  def cosine(y):
    y_v = jnp.einsum("bpc,bc->bp", y, v, precision=_PRECISION)
    inner = squared_norm_of_products(x_centred, y) + 2 * jnp.sum(y_v * jnp.sum(y, axis=-1))
    norm_y = jnp.sqrt(squared_norm_of_products(y, y))
    return inner / (jnp.maximum(norm_a, eps) * jnp.maximum(norm_y, eps))

  return cosine(y_s), cosine(y_t)


def gram_alignment_loss(f_student: jax.Array, f_teacher: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Gram alignment between student and teacher feature maps (artstyle_jax/METHOD.md step 4).

  `A = gram((f_s + f_t) / 2)`, centred per sample by the mean of its C*C entries, then
  `0.5 * (1 - cos(A_c, gram(f_s))) + 0.5 * (1 - cos(A_c, gram(f_t)))` with the cosine over the
  whole batch (norms clamped at `eps` as torch's `cosine_similarity`). The gradient flows
  through `f_student` everywhere it appears (also inside `A`); the caller passes teacher maps
  that carry no gradient. When the map has fewer positions than channels (h * w < C) the
  cosines are computed through products of positions, which is exact and much cheaper.

  Args:
    f_student: (B, h, w, C) last-stage map of the student.
    f_teacher: (B, h, w, C) last-stage map of a teacher, same images in the same order.

  Returns:
    Scalar float32 in [0, 2].
  """
  if f_student.shape != f_teacher.shape or f_student.ndim != 4:
    raise ValueError(f"student map {f_student.shape} and teacher map {f_teacher.shape} differ in shape "
                     "or are not (B, h, w, C)")
  f_s = f_student.astype(jnp.float32)
  f_t = f_teacher.astype(jnp.float32)
  _, h, w, c = f_s.shape
  cosines = _centred_gram_cosines_by_positions if h * w < c else _centred_gram_cosines
  cos_student, cos_teacher = cosines(f_s, f_t, eps)
  return 0.5 * (1 - cos_student) + 0.5 * (1 - cos_teacher)


def _check_embeddings(z_student: jax.Array, z_teacher: jax.Array, queue: jax.Array) -> None:
  if z_student.ndim != 2 or z_student.shape != z_teacher.shape:
    raise ValueError(f"embeddings must both be (B, D), got {z_student.shape} and {z_teacher.shape}")
  if queue.ndim != 2 or queue.shape[1] != z_student.shape[1]:
    raise ValueError(f"queue must be (K, D) with D = {z_student.shape[1]}, got {queue.shape}")


def relation_alignment_loss(
    z_student: jax.Array,
    z_teacher: jax.Array,
    queue: jax.Array,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> jax.Array:
  """ReSSL relation alignment against a queue (artstyle_jax/METHOD.md step 3).

  `- mean_i sum_k softmax(z_t Q^T / teacher_temp)_ik * log_softmax(z_s Q^T / student_temp)_ik`,
  with no gradient through the teacher side or the queue.

  Args:
    z_student: (B, D) L2-normalised student embeddings.
    z_teacher: (B, D) L2-normalised teacher embeddings of the same images.
    queue: (K, D) unit-norm keys.
    student_temp: temperature of the student's distribution.
    teacher_temp: temperature of the teacher's (target) distribution.

  Returns:
    Scalar float32.
  """
  _check_embeddings(z_student, z_teacher, queue)
  queue = jax.lax.stop_gradient(queue.astype(jnp.float32))
  z_t = jax.lax.stop_gradient(z_teacher.astype(jnp.float32))
  logits_s = jnp.einsum("bd,kd->bk", z_student.astype(jnp.float32), queue, precision=_PRECISION)
  logits_t = jnp.einsum("bd,kd->bk", z_t, queue, precision=_PRECISION)
  target = jax.nn.softmax(logits_t / teacher_temp, axis=-1)
  log_prob = jax.nn.log_softmax(logits_s / student_temp, axis=-1)
  return -jnp.mean(jnp.sum(target * log_prob, axis=-1))


def info_nce_loss(
    z_student: jax.Array, z_teacher: jax.Array, queue: jax.Array, temperature: float = 0.2
) -> jax.Array:
  """MoCo InfoNCE: the image's own teacher key is the positive, the queue the negatives.

  `- mean_i log( exp(z_s_i . z_t_i / T) / (exp(z_s_i . z_t_i / T) + sum_k exp(z_s_i . Q_k / T)) )`,
  with no gradient through the teacher keys or the queue.

  Args:
    z_student: (B, D) L2-normalised student embeddings (queries).
    z_teacher: (B, D) L2-normalised teacher embeddings (positive keys).
    queue: (K, D) unit-norm negative keys.
    temperature: softmax temperature T.

  Returns:
    Scalar float32.
  """
  _check_embeddings(z_student, z_teacher, queue)
  z_s = z_student.astype(jnp.float32)
  z_t = jax.lax.stop_gradient(z_teacher.astype(jnp.float32))
  queue = jax.lax.stop_gradient(queue.astype(jnp.float32))
  positive = jnp.sum(z_s * z_t, axis=-1, keepdims=True)
  negatives = jnp.einsum("bd,kd->bk", z_s, queue, precision=_PRECISION)
  logits = jnp.concatenate([positive, negatives], axis=-1) / temperature
  return -jnp.mean(jax.nn.log_softmax(logits, axis=-1)[:, 0])
