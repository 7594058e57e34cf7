"""The projection head: Linear -> ReLU -> Linear, output L2-normalised (ReSSL's MoCoHead); and
the linear classifier of the probes and of fine-tuning (`LinearHead`, `linear_logits`).

Layer names `linear` and `out` follow the published checkpoints (`head_q.linear.weight`, ...).
Initialisation is torch's `nn.Linear` default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights
and biases alike.
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

LinearHead = dict[str, jax.Array]
"""A linear classifier: {'kernel': (C, K) float32, 'bias': (K,) float32}."""


def linear_logits(head: LinearHead, features) -> jax.Array:
  """(..., C) features -> (..., K) float32 logits, features @ kernel + bias."""
  kernel, bias = head["kernel"], head["bias"]
  features = jnp.asarray(features, jnp.float32)
  if features.shape[-1] != kernel.shape[0]:
    raise ValueError(f"features have {features.shape[-1]} channels but the head expects {kernel.shape[0]}.")
  return jnp.matmul(features, kernel, precision=jax.lax.Precision.HIGHEST) + bias


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """`x / max(||x||, eps)` along the last axis, as `torch.nn.functional.normalize`."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


def _torch_linear_init(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _torch_linear(features: int, fan_in: int, dtype: Any, name: str) -> nn.Dense:
  """`nn.Dense` with torch's default initialisation; float32 parameters, `dtype` compute."""
  init = _torch_linear_init(fan_in)
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=init, bias_init=init, name=name)


class ProjectionHead(nn.Module):
  """Maps pooled features (B, C_in) to unit-norm embeddings (B, out_dim), float32."""
  hidden_dim: int = 2048
  out_dim: int = 128
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = _torch_linear(self.hidden_dim, x.shape[-1], self.dtype, "linear")(x)
    x = nn.relu(x)
    x = _torch_linear(self.out_dim, self.hidden_dim, self.dtype, "out")(x)
    return l2_normalize(x.astype(jnp.float32))
