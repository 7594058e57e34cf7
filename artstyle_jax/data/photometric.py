"""The views' photometric ops on float RGB in [0, 1]: on the host (NumPy) or in the jitted step (jnp).

Semantics (artstyle_jax/METHOD.md, "Views"):

- ColorJitter on floats in [0, 1] (torchvision's tensor formulas): brightness `x * f`; contrast
  blends with the mean luma of the image; saturation blends with the luma image; hue rotates H in
  HSV by `h` turns. The four ops run in the sampled order and every op clips to [0, 1].
- Grayscale: luma 0.299 R + 0.587 G + 0.114 B copied to the three channels.
- Gaussian blur: a true Gaussian of standard deviation sigma (output pixels), truncated at
  BLUR_RADIUS = 6 = 3 * max sigma taps each side, separable, edges replicated. The reference's
  PIL `ImageFilter.GaussianBlur(radius=sigma)` approximates the same Gaussian with three box
  blurs (within about one grey level on average for sigma >= 0.5; for smaller sigma PIL's boxes
  blur more than the Gaussian does).
- Normalise with the view's mean and std.

The ops are written once for NumPy (host, scalar factors) and jax.numpy (device, factors of shape
(B, 1, 1, 1)) on channels-first (..., 3, H, W) floats; views enter as (S, S, 3) uint8 and leave as
(S, S, 3) float32. Channels first keeps NumPy's inner loops over whole rows instead of over the
three channels of a pixel. The same sampled `ViewParams` give the same views on the host
(`host_photometric`) and on the device (`device_photometric`, from the batch keys of
`param_keys`), within float rounding.
"""
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from artstyle_jax.data import view_specs

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
BLUR_RADIUS = 6


def _xp(x):
  return jnp if isinstance(x, jax.Array) else np


def luma(x):
  """(..., 1, H, W) ITU-R 601 luma."""
  return x[..., 0:1, :, :] * LUMA_WEIGHTS[0] + x[..., 1:2, :, :] * LUMA_WEIGHTS[1] + x[..., 2:3, :, :] * LUMA_WEIGHTS[2]


def adjust_brightness(x, factor):
  return _xp(x).clip(x * factor, 0.0, 1.0)


def adjust_contrast(x, factor):
  mean = luma(x).mean(axis=(-3, -2, -1), keepdims=True)
  return _xp(x).clip((x - mean) * factor + mean, 0.0, 1.0)


def adjust_saturation(x, factor):
  gray = luma(x)
  return _xp(x).clip((x - gray) * factor + gray, 0.0, 1.0)


def _floor_mod6(x, xp):
  return x - 6.0 * xp.floor(x * (1.0 / 6.0))


def adjust_hue(x, shift):
  """Rotates the HSV hue by `shift` turns, keeping saturation and value."""
  xp = _xp(x)
  r, g, b = x[..., 0:1, :, :], x[..., 1:2, :, :], x[..., 2:3, :, :]
  maxc = xp.maximum(xp.maximum(r, g), b)
  delta = maxc - xp.minimum(xp.minimum(r, g), b)
  inverse = 1.0 / xp.where(delta > 0, delta, 1.0)
  # Hue in sixths of a turn, with the branch order of colorsys/torchvision (red wins ties).
  hue6 = xp.where(maxc == r, (g - b) * inverse, xp.where(maxc == g, 2.0 + (b - r) * inverse, 4.0 + (r - g) * inverse))
  hue6 = _floor_mod6(hue6 + 6.0 * shift, xp)
  # HSV -> RGB as V - V S clip(min(k, 4 - k), 0, 1) with k = (n + H) mod 6, n = 5, 3, 1 for R, G, B.
  channels = []
  for n in (5.0, 3.0, 1.0):
    k = hue6 + n
    k = xp.where(k >= 6.0, k - 6.0, k)
    channels.append(maxc - delta * xp.clip(xp.minimum(k, 4.0 - k), 0.0, 1.0))
  return xp.concatenate(channels, axis=-3)


def grayscale(x):
  """Luma in all three channels."""
  gray = luma(x)
  return _xp(x).concatenate([gray, gray, gray], axis=-3)


JITTER_FUNCTIONS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def gaussian_kernel(sigma) -> np.ndarray:
  """(2 * BLUR_RADIUS + 1,) float64 normalised Gaussian taps for a scalar sigma > 0."""
  taps = np.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, dtype=np.float64)
  weights = np.exp(-0.5 * (taps / sigma) ** 2)
  return weights / weights.sum()


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
  """Host blur of one (3, H, W) float32 image: separable Gaussian, edges replicated."""
  kernel = gaussian_kernel(sigma)
  x = ndimage.correlate1d(x, kernel, axis=-2, mode="nearest")
  return ndimage.correlate1d(x, kernel, axis=-1, mode="nearest")


def to_planar(pixels: np.ndarray) -> np.ndarray:
  """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
  return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32) * np.float32(1.0 / 255.0)


def normalise(pixels: np.ndarray, spec: view_specs.ViewSpec) -> np.ndarray:
  """(H, W, 3) uint8 -> (H, W, 3) float32 (x / 255 - mean) / std, computed on rows of W * 3 values."""
  height, width, _ = pixels.shape
  scale = np.tile(1.0 / (255.0 * np.asarray(spec.std, np.float32)), width)
  offset = np.tile(-np.asarray(spec.mean, np.float32) / np.asarray(spec.std, np.float32), width)
  return (pixels.reshape(height, width * 3) * scale + offset).reshape(height, width, 3)


def host_photometric(pixels: np.ndarray, params: view_specs.ViewParams, spec: view_specs.ViewSpec) -> np.ndarray:
  """(S, S, 3) uint8 -> (S, S, 3) float32: jitter, grayscale, blur and normalisation on the host."""
  if not (params.jitter_apply or params.gray or params.blur_sigma > 0):
    return normalise(pixels, spec)
  x = to_planar(pixels)
  if params.jitter_apply:
    for i in params.jitter_order:
      if i in spec.jitter_ops:
        x = JITTER_FUNCTIONS[i](x, params.jitter_factors[i])
  if params.gray:
    x = grayscale(x)
  if params.blur_sigma > 0:
    x = gaussian_blur(x, params.blur_sigma)
  mean = np.asarray(spec.mean, np.float32)[:, None, None]
  std = np.asarray(spec.std, np.float32)[:, None, None]
  return ((x - mean) / std).transpose(1, 2, 0)


# ---------------------------------------------------------------------------------------------
# Device form: parameters as batch arrays, ops in jnp inside the jitted step.


def param_keys(view: str, spec: view_specs.ViewSpec) -> tuple[str, ...]:
  """The extra batch keys that carry `view`'s per-image parameters in device mode."""
  keys = []
  if spec.jitter_ops:
    keys += [f"{view}_jitter_apply", f"{view}_jitter_order", f"{view}_jitter_factors"]
  if spec.gray_p > 0:
    keys.append(f"{view}_gray")
  if spec.blur_p > 0:
    keys.append(f"{view}_blur_sigma")
  return tuple(keys)


def param_arrays(view: str, spec: view_specs.ViewSpec, params: view_specs.ViewParams) -> dict[str, np.ndarray]:
  """One image's device-mode parameters: bool (), int32 (4,), float32 (4,), bool (), float32 ()."""
  values = {
      f"{view}_jitter_apply": np.bool_(params.jitter_apply),
      f"{view}_jitter_order": params.jitter_order,
      f"{view}_jitter_factors": params.jitter_factors,
      f"{view}_gray": np.bool_(params.gray),
      f"{view}_blur_sigma": np.float32(params.blur_sigma),
  }
  return {key: values[key] for key in param_keys(view, spec)}


def _per_image(values: jax.Array) -> jax.Array:
  return values.reshape(values.shape[0], 1, 1, 1)


def _blur_matrices(sigma: jax.Array, size: int) -> jax.Array:
  """(B, size, size) per-image 1-D blur operators: Gaussian taps of sigma (B,), edges replicated."""
  taps = jnp.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, dtype=jnp.float32)
  weights = jnp.exp(-0.5 * (taps[None, :] / sigma[:, None]) ** 2)
  weights = weights / weights.sum(axis=1, keepdims=True)
  source = np.clip(np.arange(size)[:, None] + np.arange(-BLUR_RADIUS, BLUR_RADIUS + 1)[None, :], 0, size - 1)
  reads = (source[:, :, None] == np.arange(size)[None, None, :]).astype(np.float32)  # (out, tap, in)
  return jnp.einsum("bt,otj->boj", weights, reads, precision=jax.lax.Precision.HIGHEST)


def _device_blur(x: jax.Array, sigma: jax.Array) -> jax.Array:
  """(B, 3, H, W) blurred with per-image sigma (B,) > 0: separable Gaussian, edges replicated.

  Two batched matrix products with banded operators: a small program for the compiler and
  matrix-unit work on accelerators (at full float32 precision).
  """
  rows = _blur_matrices(sigma, x.shape[-2])
  columns = _blur_matrices(sigma, x.shape[-1])
  x = jnp.einsum("bij,bcjw->bciw", rows, x, precision=jax.lax.Precision.HIGHEST)
  return jnp.einsum("bkw,bchw->bchk", columns, x, precision=jax.lax.Precision.HIGHEST)


def _device_view(pixels: jax.Array, batch: Mapping[str, jax.Array], view: str, spec: view_specs.ViewSpec) -> jax.Array:
  x = jnp.moveaxis(pixels.astype(jnp.float32) * (1.0 / 255.0), -1, -3)
  if spec.jitter_ops:
    order = batch[f"{view}_jitter_order"]
    factors = batch[f"{view}_jitter_factors"]

    def jitter_position(position, y):
      op = _per_image(jnp.take(order, position, axis=1))
      out = y
      for i in spec.jitter_ops:
        out = jnp.where(op == i, JITTER_FUNCTIONS[i](y, _per_image(factors[:, i])), out)
      return out

    # A loop, not four unrolled copies of every op: a quarter of the program to compile.
    jittered = jax.lax.fori_loop(0, 4, jitter_position, x)
    x = jnp.where(_per_image(batch[f"{view}_jitter_apply"]), jittered, x)
  if spec.gray_p > 0:
    x = jnp.where(_per_image(batch[f"{view}_gray"]), grayscale(x), x)
  if spec.blur_p > 0:
    sigma = batch[f"{view}_blur_sigma"]
    blurred = _device_blur(x, jnp.where(sigma > 0, sigma, 1.0))
    x = jnp.where(_per_image(sigma > 0), blurred, x)
  mean = jnp.asarray(spec.mean, jnp.float32)[:, None, None]
  std = jnp.asarray(spec.std, jnp.float32)[:, None, None]
  return jnp.moveaxis((x - mean) / std, -3, -1)


def device_photometric(batch: Mapping[str, Any], config) -> dict[str, Any]:
  """Device half of the views: uint8 views + parameters -> float32 normalised views.

  Args:
    batch: 'student', 'weak', 'style' (B, S, S, 3) uint8 and the keys of `param_keys` for each
      view; any other keys ('label', 'index', ...) pass through.
    config: supplies config.views.<view>.{mean,std}.

  Returns:
    The batch with the three views float32 (B, S, S, 3) and the parameter keys removed.
  """
  specs = view_specs.view_specs(config)
  out = dict(batch)
  for view, spec in specs.items():
    out[view] = _device_view(jnp.asarray(batch[view]), batch, view, spec)
    for key in param_keys(view, spec):
      del out[key]
  return out
