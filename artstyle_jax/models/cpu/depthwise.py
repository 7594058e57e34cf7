"""The 'shift' form of the depthwise (per-channel) 2-D convolution, stride 1, 'SAME' padding: the
CPU's form of what `convnext.depthwise_conv` computes with a grouped convolution ('conv'), which
XLA:CPU runs very slowly.

With the compiled kernels (`cpu_kernels`, k = 3, 5, 7; `Forms.compiled_kernels`), a C++ loop;
else the sum over the k*k taps of shifted slices of the padded input times a per-channel weight,
which XLA:CPU fuses into one vectorised loop (1.2 to 2x slower than the C++ loop) and any other
platform runs too. Its gradient is written by hand (`jax.custom_vjp`): the input gradient is the
same convolution with the flipped kernel; the kernel gradient, with the compiled kernels, a C++
kernel, else a cache-sized tiling of shifted-product reductions (autodiff of the shifts and XLA's
grouped-convolution gradient are both several times slower on CPU, the tiling 5-12x slower than
the C++ loop).

It computes `out[b, h, w, c] = sum_{i, j} x[b, h + i - p, w + j - p, c] * kernel[i, j, 0, c]`
with `p = (k - 1) // 2` and zeros outside the image (cross-correlation, as torch and flax).
"""
import functools

import jax
from jax import lax
import jax.numpy as jnp

from artstyle_jax.models.cpu import kernels as cpu_kernels


# Jitted so that, called outside jit (e.g. an eager `module.init`), the k*k taps compile as one
# program rather than op by op.
@functools.partial(jax.jit, static_argnames="compiled_kernels")
def shift_conv(x: jax.Array, kernel: jax.Array, compiled_kernels: bool = False) -> jax.Array:
  """Depthwise convolution of an NHWC batch as shifted slices.

  Args:
    x: (B, H, W, C) input.
    kernel: (k, k, 1, C) per-channel weights (flax's HWIO layout for a grouped conv), k odd.
    compiled_kernels: run on the C++ kernels (XLA:CPU only) where they cover k.

  Returns:
    (B, H, W, C), in the dtype of `x`, accumulated in float32.
  """
  return _shift_conv(x, kernel[:, :, 0, :].astype(x.dtype), compiled_kernels)


def _pad_same(x: jax.Array, k: int) -> jax.Array:
  pad = (k - 1) // 2
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def _shift_forward(x: jax.Array, taps: jax.Array) -> jax.Array:
  """sum_{i,j} pad(x)[:, i:i+H, j:j+W, :] * taps[i, j], accumulated in float32; taps (k, k, C)."""
  k = taps.shape[0]
  height, width = x.shape[1:3]
  pad = (k - 1) // 2
  # One spare output column, sliced off at the end. Without a slice between them, XLA:CPU's
  # YNNPACK fusion of the next matmul (e.g. LayerNorm + Linear) absorbs part of this sum and
  # materialises every shifted input it takes, which slows the block.
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad + 1), (0, 0))).astype(jnp.float32)
  taps = taps.astype(jnp.float32)
  out = None
  for i in range(k):
    for j in range(k):
      term = padded[:, i:i + height, j:j + width + 1, :] * taps[i, j]
      out = term if out is None else out + term
  return out[:, :, :width, :].astype(x.dtype)


# Elements of one (batch, rows, width, channels) tile of the kernel gradient: small enough that
# the k*k passes over a tile hit the cache.
_TILE_ELEMENTS = 30_000


def _shift_kernel_grad(x: jax.Array, grad_out: jax.Array, k: int) -> jax.Array:
  """d(loss)/d(taps), (k, k, C) float32: sum_{b,h,w} pad(x)[b, h+i, w+j, c] * grad_out[b, h, w, c].

  XLA:CPU reduces each shifted product well, but k*k reductions over the whole activation are
  memory-bound and k*k*batch unrolled ones compile slowly. So: a loop over tiles of output rows
  (all images: the batch axis stays whole, as it may be sharded), inside it a loop over kernel
  rows i, and the k taps j of a row unrolled.
  """
  batch, height, width, channels = grad_out.shape
  rows = max(d for d in range(1, height + 1)
             if height % d == 0 and (d == 1 or batch * d * width * channels <= _TILE_ELEMENTS))
  padded = _pad_same(x, k).astype(jnp.float32)
  grad_out = grad_out.astype(jnp.float32)

  def tile(t, grad):
    x_tile = lax.dynamic_slice_in_dim(padded, t * rows, rows + k - 1, axis=1)
    g_tile = lax.dynamic_slice_in_dim(grad_out, t * rows, rows, axis=1)

    def kernel_row(i, grad):
      x_rows = lax.dynamic_slice_in_dim(x_tile, i, rows, axis=1)
      row = jnp.stack([jnp.sum(x_rows[:, :, j:j + width, :] * g_tile, axis=(0, 1, 2))
                       for j in range(k)])
      return lax.dynamic_update_index_in_dim(grad, grad[i] + row, i, axis=0)

    return lax.fori_loop(0, k, kernel_row, grad)

  return lax.fori_loop(0, height // rows, tile, jnp.zeros((k, k, channels), jnp.float32))


def _convolve(x: jax.Array, taps: jax.Array, compiled_kernels: bool) -> jax.Array:
  """The convolution with taps (k, k, C): the C++ kernel where it runs, else XLA's sum."""
  if compiled_kernels and taps.shape[0] in cpu_kernels.CONV_SIZES:
    return cpu_kernels.depthwise_conv(x, taps, jnp.zeros(taps.shape[-1], jnp.float32)).astype(x.dtype)
  return _shift_forward(x, taps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _shift_conv(x: jax.Array, taps: jax.Array, compiled_kernels: bool) -> jax.Array:
  return _convolve(x, taps, compiled_kernels)


def _shift_conv_fwd(x, taps, compiled_kernels):
  return _convolve(x, taps, compiled_kernels), (x, taps)


def _shift_conv_bwd(compiled_kernels, residuals, grad_out):
  x, taps = residuals
  k = taps.shape[0]
  # The adjoint of a cross-correlation is the cross-correlation with the flipped kernel.
  grad_x = _convolve(grad_out, taps[::-1, ::-1], compiled_kernels).astype(x.dtype)
  if compiled_kernels:
    grad_taps = cpu_kernels.depthwise_kernel_grad(x, grad_out, k)
  else:
    grad_taps = _shift_kernel_grad(x, grad_out, k)
  return grad_x, grad_taps.astype(taps.dtype)


_shift_conv.defvjp(_shift_conv_fwd, _shift_conv_bwd)
