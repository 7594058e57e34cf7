"""LayerNorm over the last axis, flax's `nn.LayerNorm` with its gradient written by hand on the CPU.

XLA:CPU differentiates flax's LayerNorm into about ten passes over the activations (the
statistics' gradients each a reduction and a broadcast); the hand-written backward keeps the
normalised input and 1/std from the forward and needs two row reductions:

  x_hat = (x - mean) / std,  y = x_hat * scale + bias,
  dx = (g - mean(g) - x_hat * mean(g * x_hat)) / std,  g = dy * scale  (means over the last axis).

On other backends the module is flax's own, unchanged.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def _normalise(x: jax.Array, epsilon: float) -> tuple[jax.Array, jax.Array]:
  """(x_hat, 1/std) over the last axis, two-pass variance, float32."""
  mean = jnp.mean(x, axis=-1, keepdims=True)
  centred = x - mean
  rstd = lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + epsilon)
  return centred * rstd, rstd


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
  """(..., C) float32 -> (..., C) float32: normalised over C, times scale (C,), plus bias (C,)."""
  return _normalise(x, epsilon)[0] * scale + bias


def _layer_norm_fwd(x, scale, bias, epsilon):
  x_hat, rstd = _normalise(x, epsilon)
  return x_hat * scale + bias, (x_hat, rstd, scale)


def _layer_norm_bwd(epsilon, residuals, grad_out):
  del epsilon
  x_hat, rstd, scale = residuals
  g = grad_out * scale
  grad_x = rstd * (g - jnp.mean(g, axis=-1, keepdims=True)
                   - x_hat * jnp.mean(g * x_hat, axis=-1, keepdims=True))
  batch_axes = tuple(range(grad_out.ndim - 1))
  return grad_x, jnp.sum(grad_out * x_hat, axis=batch_axes), jnp.sum(grad_out, axis=batch_axes)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.LayerNorm):
  """flax's `nn.LayerNorm` (same attributes, parameters 'scale' and 'bias'); on the CPU, with
  `use_scale`, `use_bias`, float32 parameters and the two-pass variance, `layer_norm` above:
  statistics in float32, output in `dtype`."""

  @nn.compact
  def __call__(self, x, *, mask=None):
    if (jax.default_backend() != "cpu" or mask is not None or self.use_fast_variance or not self.use_scale
        or not self.use_bias or self.reduction_axes != -1 or self.param_dtype != jnp.float32):
      return super().__call__(x, mask=mask)
    features = x.shape[-1]
    scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
    bias = self.param("bias", self.bias_init, (features,), self.param_dtype)
    y = layer_norm(x.astype(jnp.float32), scale, bias, self.epsilon)
    return y.astype(self.dtype or x.dtype)
