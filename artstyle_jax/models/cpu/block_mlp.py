"""The ConvNeXt block's residual branch on the CPU, with its gradient written by hand for XLA:CPU.

Per token (last axis C): LayerNorm (eps 1e-6, two-pass variance) -> Linear C->4C -> exact GELU
-> Linear 4C->C -> layer scale, all float32, the same operations in the same order as flax's
`nn.LayerNorm` and `nn.Dense` (convnext.Block's 'autodiff' form), so the outputs are equal.

Gradient forms (`Forms.mlp_grad` of convnext.Block):
- 'autodiff': flax's modules differentiated by JAX. Its forward writes out every intermediate
  the backward reads (LayerNorm output, GELU output, second Linear's output); on XLA:CPU those
  writes split the forward's fusions of LayerNorm and GELU into the matmuls, so the forward
  inside a training step ran markedly slower than the inference forward.
- 'manual' (`pointwise_mlp`, a `jax.custom_vjp`): the forward keeps only its input, each
  token's mean and 1/std and the first Linear's output; the backward recomputes the rest from
  them and gets the layer-scale gradient from the (4C, C) product it needs for the second
  Linear anyway (sum_t g * (a W2 + b2) = sum_k W2 * (a^T g) + b2 * sum_t g). Gradients equal
  to autodiff's within 1e-6; the gain: artstyle_jax/PERFORMANCE.md.
'manual' is the CPU's form for float32 blocks (`forms.resolve`); GPU and TPU fuse either way,
and bfloat16 blocks keep flax's casts.

`depthwise_block` is the whole branch, depthwise convolution first, for a 'manual' block whose
convolution is the 'shift' form on the compiled kernels (`Forms.fused_block`): the convolution and the
LayerNorm are one C++ kernel (`cpu_kernels.depthwise_norm`), whose outputs go to the Linear
layers without another pass (XLA:CPU otherwise fuses the LayerNorm into the first matmul's
input, which its matmul then recomputes per tile). Its backward is `pointwise_mlp`'s, then the
convolution's from the compiled kernels. `layer_norm` is the LayerNorm alone as a compiled
kernel, with the same hand-written gradient, for the stem and the downsampling layers of such a
network: a custom call is a boundary that XLA:CPU's YNNPACK fusion does not grow across (it grew
from those LayerNorms' reductions over whole blocks, into graphs several times slower than their
parts).
"""
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from artstyle_jax.models.cpu import kernels as cpu_kernels

LAYER_NORM_EPS = 1e-6
_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU in torch's form, x/2 * (1 + erf(x/sqrt(2))).

  Same function as `jax.nn.gelu(approximate=False)`, which uses erfc for accuracy far in the
  negative tail (irrelevant here); this erf form compiles to fewer operations on XLA:CPU.
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * _SQRT_HALF))


def _gelu_derivative(x: jax.Array) -> jax.Array:
  """d gelu / dx = Phi(x) + x phi(x)."""
  return 0.5 * (1.0 + jax.lax.erf(x * _SQRT_HALF)) + x * (_INV_SQRT_2PI * jnp.exp(-0.5 * x * x))


class MlpParams(NamedTuple):
  """The block's pointwise parameters, float32: C channels, 4C hidden."""
  norm_scale: jax.Array  # (C,)
  norm_bias: jax.Array  # (C,)
  fc1_kernel: jax.Array  # (C, 4C)
  fc1_bias: jax.Array  # (4C,)
  fc2_kernel: jax.Array  # (4C, C)
  fc2_bias: jax.Array  # (C,)
  gamma: jax.Array  # (C,) layer scale


def _normalize(x: jax.Array, params: MlpParams) -> tuple[jax.Array, jax.Array, jax.Array]:
  """flax's LayerNorm: (output, mean, 1/std), the statistics (..., 1)."""
  mean = jnp.mean(x, axis=-1, keepdims=True)
  centred = x - mean
  inv_std = jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + LAYER_NORM_EPS)
  return centred * (inv_std * params.norm_scale) + params.norm_bias, mean, inv_std


# The named scopes are the flax layer names of the 'autodiff' form, so that profiles (bench
# profile) attribute each op to its layer in every form.
def _mlp(normed: jax.Array, params: MlpParams) -> tuple[jax.Array, jax.Array]:
  """Linear 4C -> GELU -> Linear C -> layer scale of normalised tokens: (output, first Linear's output)."""
  with jax.named_scope("fc1"):
    hidden = normed @ params.fc1_kernel + params.fc1_bias
  activation = gelu(hidden)
  with jax.named_scope("fc2"):
    out = (activation @ params.fc2_kernel + params.fc2_bias) * params.gamma
  return out, hidden


def _forward(x: jax.Array, params: MlpParams):
  with jax.named_scope("norm"):
    normed, mean, inv_std = _normalize(x, params)
  out, hidden = _mlp(normed, params)
  return out, (x, mean, inv_std, hidden, params)


@jax.custom_vjp
def pointwise_mlp(x: jax.Array, params: MlpParams) -> jax.Array:
  """LayerNorm -> Linear 4C -> GELU -> Linear C -> layer scale of (..., C) float32 tokens;
  returns (..., C) float32. Differentiated by `_pointwise_mlp_bwd`."""
  return _forward(x, params)[0]


def _layer_norm_backward(x_hat: jax.Array, inv_std: jax.Array, scale: jax.Array,
                         grad_normed: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """LayerNorm's gradients (input, scale, shift) from x_hat (T, C), 1/std (T, 1), scale (C,) and
  the output's gradient (T, C)."""
  grad_scale = jnp.sum(grad_normed * x_hat, axis=0)
  grad_shift = jnp.sum(grad_normed, axis=0)
  grad_x_hat = grad_normed * scale
  grad_x = inv_std * (grad_x_hat - jnp.mean(grad_x_hat, axis=-1, keepdims=True)
                      - x_hat * jnp.mean(grad_x_hat * x_hat, axis=-1, keepdims=True))
  return grad_x, grad_scale, grad_shift


def _backward(x_hat: jax.Array, inv_std: jax.Array, hidden: jax.Array, params: MlpParams,
              grad_out: jax.Array) -> tuple[jax.Array, MlpParams]:
  """Gradients of the LayerNorm's input and of the parameters, from the normalised input x_hat
  (..., C), 1/std (..., 1), the first Linear's output (..., 4C) and the output's gradient."""
  shape, channels = x_hat.shape, x_hat.shape[-1]
  x_hat = x_hat.reshape(-1, channels)
  grad_out = grad_out.reshape(-1, channels)
  hidden = hidden.reshape(-1, hidden.shape[-1])
  inv_std = inv_std.reshape(-1, 1)
  activation = gelu(hidden)
  with jax.named_scope("fc2"):
    # (4C, C): the second Linear's kernel gradient before the layer scale, and the layer scale's.
    product = activation.T @ grad_out
    grad_out_sum = jnp.sum(grad_out, axis=0)
    grad_fc2_kernel = product * params.gamma
    grad_fc2_bias = grad_out_sum * params.gamma
    grad_gamma = jnp.sum(params.fc2_kernel * product, axis=0) + params.fc2_bias * grad_out_sum
    grad_activation = grad_out @ (params.fc2_kernel * params.gamma).T
  grad_hidden = grad_activation * _gelu_derivative(hidden)
  with jax.named_scope("fc1"):
    grad_fc1_kernel = (x_hat * params.norm_scale + params.norm_bias).T @ grad_hidden
    grad_fc1_bias = jnp.sum(grad_hidden, axis=0)
    grad_normed = grad_hidden @ params.fc1_kernel.T
  with jax.named_scope("norm"):
    grad_x, grad_norm_scale, grad_norm_bias = _layer_norm_backward(x_hat, inv_std, params.norm_scale, grad_normed)
  grads = MlpParams(grad_norm_scale, grad_norm_bias, grad_fc1_kernel, grad_fc1_bias, grad_fc2_kernel,
                    grad_fc2_bias, grad_gamma)
  return grad_x.reshape(shape), grads


def _pointwise_mlp_bwd(residuals, grad_out: jax.Array):
  x, mean, inv_std, hidden, params = residuals
  with jax.named_scope("norm"):
    x_hat = (x - mean) * inv_std
  return _backward(x_hat, inv_std, hidden, params, grad_out)


pointwise_mlp.defvjp(_forward, _pointwise_mlp_bwd)


@jax.custom_vjp
def depthwise_block(x: jax.Array, taps: jax.Array, dw_bias: jax.Array, params: MlpParams) -> jax.Array:
  """A ConvNeXt block's residual branch on the CPU: depthwise convolution (taps (k, k, C), bias
  (C,)) -> LayerNorm -> Linear 4C -> GELU -> Linear C -> layer scale of (B, H, W, C) float32;
  returns (B, H, W, C) float32. The convolution and the LayerNorm run as one compiled kernel
  (`cpu_kernels.depthwise_norm`, k in `cpu_kernels.CONV_SIZES`), the rest as `pointwise_mlp`."""
  with jax.named_scope("conv_dw"):
    normed = cpu_kernels.depthwise_norm(x, taps, dw_bias, params.norm_scale, params.norm_bias, LAYER_NORM_EPS)
  return _mlp(normed, params)[0]


def _depthwise_block_fwd(x, taps, dw_bias, params):
  with jax.named_scope("conv_dw"):
    normed, x_hat, inv_std = cpu_kernels.depthwise_norm_residuals(
        x, taps, dw_bias, params.norm_scale, params.norm_bias, LAYER_NORM_EPS)
  out, hidden = _mlp(normed, params)
  return out, (x, taps, x_hat, inv_std[..., None], hidden, params)


def _depthwise_block_bwd(residuals, grad_out: jax.Array):
  x, taps, x_hat, inv_std, hidden, params = residuals
  grad_y, grads = _backward(x_hat, inv_std, hidden, params, grad_out)
  with jax.named_scope("conv_dw"):
    # The adjoint of a cross-correlation is the cross-correlation with the flipped kernel.
    grad_x = cpu_kernels.depthwise_conv(grad_y, taps[::-1, ::-1], jnp.zeros_like(grad_y[0, 0, 0]))
    grad_taps = cpu_kernels.depthwise_kernel_grad(x, grad_y, taps.shape[0])
    grad_dw_bias = jnp.sum(grad_y, axis=(0, 1, 2))
  return grad_x, grad_taps, grad_dw_bias, grads


depthwise_block.defvjp(_depthwise_block_fwd, _depthwise_block_bwd)


@jax.custom_vjp
def layer_norm(x: jax.Array, scale: jax.Array, shift: jax.Array) -> jax.Array:
  """flax's LayerNorm (eps 1e-6, two-pass variance) over the last axis of (..., C) float32 on the
  CPU, as a compiled kernel (`cpu_kernels.layer_norm`); where `depthwise_block` runs, the
  network's other LayerNorms (stem, downsampling) run as this."""
  return cpu_kernels.layer_norm(x, scale, shift, LAYER_NORM_EPS)


def _layer_norm_fwd(x, scale, shift):
  normed, x_hat, inv_std = cpu_kernels.layer_norm_residuals(x, scale, shift, LAYER_NORM_EPS)
  return normed, (x_hat, inv_std[..., None], scale)


def _layer_norm_bwd(residuals, grad_out):
  x_hat, inv_std, scale = residuals
  channels = x_hat.shape[-1]
  grad_x, grad_scale, grad_shift = _layer_norm_backward(
      x_hat.reshape(-1, channels), inv_std.reshape(-1, 1), scale, grad_out.reshape(-1, channels))
  return grad_x.reshape(x_hat.shape), grad_scale, grad_shift


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class CompiledLayerNorm(nn.Module):
  """flax's `nn.LayerNorm(epsilon=1e-6, use_fast_variance=False)` in float32 as `layer_norm`: the
  same parameters ('scale', 'bias', (C,) float32), the same function."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
    return layer_norm(x.astype(jnp.float32), scale, bias)
