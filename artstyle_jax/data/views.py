"""The three training views, the linear-probe and evaluation transforms, and their photometric ops.

Semantics are torchvision's, as used by the reference code (artstyle_jax/METHOD.md, "Views"):

- RandomResizedCrop: area fraction ~ U(scale), log aspect ratio ~ U(log 3/4, log 4/3), width and
  height rounded half-to-even (Python `round`), up to 10 tries, then the central crop clamped to
  the ratio range. The crop is resampled to S x S with PIL's antialiased BILINEAR filter in one
  `Image.resize(box=...)` call; unlike `crop()` followed by `resize()` the filter at the crop's
  edges may read the source pixels just outside it (the output's first and last row/column).
- Horizontal flip with p=0.5 after the crop.
- ColorJitter on floats in [0, 1] (torchvision's tensor formulas): brightness `x * f`; contrast
  blends with the mean luma of the image; saturation blends with the luma image; hue rotates H in
  HSV by `h` turns. Factors ~ U(max(0, 1 - s), 1 + s), hue ~ U(-h, h); the four ops run in a
  random permutation and every op clips to [0, 1].
- Grayscale: luma 0.299 R + 0.587 G + 0.114 B copied to the three channels.
- Gaussian blur with sigma ~ U(0.1, 2.0): a true Gaussian of standard deviation sigma, truncated at
  BLUR_RADIUS = 6 = 3 * max sigma taps each side, separable, edges replicated. The reference's
  PIL `ImageFilter.GaussianBlur(radius=sigma)` approximates the same Gaussian with three box
  blurs (within about one grey level on average for sigma >= 0.5; for smaller sigma PIL's boxes
  blur more than the Gaussian does).
- Normalise with each view's mean and std (config.views.<view>.{mean,std}).

The work is split in two: decoding, cropping and resizing run on the host and give uint8 views;
the photometric ops run either on the host (`TrainViews` with `photometric_on_device=False`, float32
normalised views out) or inside the jitted step (`device_photometric`), from per-image
parameters that the host samples. The same sampled parameters give the same views either way
(within float rounding), because the colour ops below are written once for NumPy and jax.numpy,
on channels-first (..., 3, H, W) floats; views enter and leave as (H, W, 3).

JPEG decoding uses DCT-domain downscaling (PIL `draft`) by 2, 4 or 8 when every crop of the image
keeps at least DRAFT_MARGIN = 4 times the output resolution after it. This is an approximation:
the views then differ from those of a full-resolution decode by under one grey level on average
and a few levels at most (measured on a harsh texture of 8-px random colour cells: mean 0.4-0.7,
max 4; with a margin of 2 it would be 1.2-1.8 and 10, mostly in chroma). Since the three views
share one decode, the smallest crop decides, so it pays off for very large sources and in
`EvalView`. `draft=False` turns it off.

Randomness: every transform takes a `numpy.random.Generator`; the pipeline seeds it from
(seed, epoch, record index), so views never depend on worker count or batch position.
"""
import dataclasses
import io
import math
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from scipy import ndimage

VIEW_NAMES = ("student", "weak", "style")
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
_JITTER_IDENTITY = (1.0, 1.0, 1.0, 0.0)
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
BLUR_RADIUS = 6
DRAFT_MARGIN = 4
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
EVAL_CROP_FRACTION = 0.875


@dataclasses.dataclass(frozen=True)
class ViewSpec:
  """How one view is made.

  Attributes:
    scale: RandomResizedCrop area fraction range.
    flip: whether a horizontal flip is applied with p=0.5.
    mean, std: per-channel normalisation constants for RGB in [0, 1].
    jitter: ColorJitter strengths (brightness, contrast, saturation, hue); 0 disables an op.
    jitter_p: probability that the ColorJitter is applied at all.
    gray_p: probability of converting to grayscale.
    blur_p: probability of a Gaussian blur.
    ratio: RandomResizedCrop aspect-ratio (width / height) range.
    sigma: range of the blur's standard deviation in output pixels.
  """
  scale: tuple[float, float]
  flip: bool
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
  jitter_p: float = 0.0
  gray_p: float = 0.0
  blur_p: float = 0.0
  ratio: tuple[float, float] = DEFAULT_RATIO
  sigma: tuple[float, float] = (0.1, 2.0)

  @property
  def jitter_ops(self) -> tuple[int, ...]:
    """Indices into JITTER_OPS of the ops this view can apply."""
    if self.jitter_p <= 0:
      return ()
    return tuple(i for i, strength in enumerate(self.jitter) if strength > 0)


def _normalisation(config, view: str) -> dict[str, tuple[float, float, float]]:
  constants = config.views[view]
  mean = tuple(float(m) for m in constants.mean)
  std = tuple(float(s) for s in constants.std)
  if len(mean) != 3 or len(std) != 3:
    raise ValueError(f"config.views.{view}.mean and .std need 3 values each, got {mean} and {std}.")
  if min(std) <= 0:
    raise ValueError(f"config.views.{view}.std must be positive, got {std}.")
  return {"mean": mean, "std": std}


def view_specs(config) -> dict[str, ViewSpec]:
  """The student, weak and style views of artstyle_jax/METHOD.md, normalised with config.views.<view>."""
  return {
      "student": ViewSpec(scale=(0.2, 1.0), flip=True, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, gray_p=0.2,
                          blur_p=0.5, **_normalisation(config, "student")),
      "weak": ViewSpec(scale=(0.2, 1.0), flip=True, **_normalisation(config, "weak")),
      "style": ViewSpec(scale=(0.08, 1.0), flip=False, jitter=(0.2, 0.2, 0.0, 0.0), jitter_p=1.0,
                        **_normalisation(config, "style")),
  }


# ---------------------------------------------------------------------------------------------
# Parameter sampling (host).


@dataclasses.dataclass(frozen=True)
class ViewParams:
  """One image's draws for one view.

  Attributes:
    crop: (top, left, height, width) in source pixels.
    flip: horizontal flip.
    jitter_apply: whether the ColorJitter runs.
    jitter_order: (4,) int32 permutation of JITTER_OPS indices, the order the ops run in.
    jitter_factors: (4,) float32 brightness, contrast, saturation factors and hue shift (turns);
      identity values (1, 1, 1, 0) for ops the view lacks.
    gray: whether the view is converted to grayscale.
    blur_sigma: blur standard deviation in output pixels; 0 means no blur.
  """
  crop: tuple[int, int, int, int]
  flip: bool
  jitter_apply: bool
  jitter_order: np.ndarray
  jitter_factors: np.ndarray
  gray: bool
  blur_sigma: float


def sample_crop(rng: np.random.Generator, width: int, height: int, scale: Sequence[float],
                ratio: Sequence[float] = DEFAULT_RATIO) -> tuple[int, int, int, int]:
  """torchvision's RandomResizedCrop.get_params: (top, left, height, width) in pixels."""
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect_ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect_ratio)))
    h = int(round(math.sqrt(target_area / aspect_ratio)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w = width
    h = int(round(w / min(ratio)))
  elif in_ratio > max(ratio):
    h = height
    w = int(round(h * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def sample_view_params(rng: np.random.Generator, spec: ViewSpec, width: int, height: int) -> ViewParams:
  """Draws one view's crop, flip, jitter, grayscale and blur parameters for a width x height image."""
  crop = sample_crop(rng, width, height, spec.scale, spec.ratio)
  flip = bool(rng.random() < 0.5) if spec.flip else False
  factors = np.array(_JITTER_IDENTITY, np.float32)
  order = np.arange(4, dtype=np.int32)
  jitter_apply = False
  if spec.jitter_ops:
    jitter_apply = bool(rng.random() < spec.jitter_p)
    order = rng.permutation(4).astype(np.int32)
    for i in spec.jitter_ops:
      strength = spec.jitter[i]
      if JITTER_OPS[i] == "hue":
        factors[i] = rng.uniform(-strength, strength)
      else:
        factors[i] = rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength)
  gray = bool(rng.random() < spec.gray_p) if spec.gray_p > 0 else False
  blur_sigma = 0.0
  if spec.blur_p > 0:
    apply_blur = rng.random() < spec.blur_p
    sigma = rng.uniform(spec.sigma[0], spec.sigma[1])
    blur_sigma = float(sigma) if apply_blur else 0.0
  return ViewParams(crop=crop, flip=flip, jitter_apply=jitter_apply, jitter_order=order, jitter_factors=factors,
                    gray=gray, blur_sigma=blur_sigma)


# ---------------------------------------------------------------------------------------------
# Geometry (host, PIL): decode once, crop + resize each view.


def open_image(image_bytes: bytes) -> Image.Image:
  """A lazily decoded PIL image (only the header is read)."""
  return Image.open(io.BytesIO(image_bytes))


def draft_factor(image: Image.Image, crops: Sequence[tuple[int, int, int, int]], size: int) -> int:
  """The largest JPEG downscale in {1, 2, 4, 8} leaving every crop >= DRAFT_MARGIN * size pixels wide and high."""
  if image.format != "JPEG":
    return 1
  smallest = min(min(h, w) for _, _, h, w in crops)
  for factor in (8, 4, 2):
    if smallest >= DRAFT_MARGIN * size * factor:
      return factor
  return 1


def decode_rgb(image: Image.Image, factor: int = 1) -> Image.Image:
  """Decodes `image` as RGB, downscaled by `factor` in the JPEG decoder when factor > 1."""
  if factor > 1:
    width, height = image.size
    image.draft("RGB", (width // factor, height // factor))
  if image.mode != "RGB":
    image = image.convert("RGB")
  return image


def resized_crop(decoded: Image.Image, source_size: tuple[int, int], crop: tuple[int, int, int, int], size: int,
                 flip: bool = False) -> np.ndarray:
  """(size, size, 3) uint8: `crop` (top, left, h, w) of the source image, antialiased bilinear resize.

  `decoded` may be a downscaled decode of a source of `source_size` (width, height); the crop box
  is mapped onto it.
  """
  top, left, h, w = crop
  sx = decoded.size[0] / source_size[0]
  sy = decoded.size[1] / source_size[1]
  box = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
  pixels = np.asarray(decoded.resize((size, size), Image.BILINEAR, box=box))
  return pixels[:, ::-1] if flip else pixels


# ---------------------------------------------------------------------------------------------
# Photometric ops on float RGB in [0, 1], channels first: (..., 3, H, W). Written once for NumPy
# (host, scalar factors) and jax.numpy (device, factors of shape (B, 1, 1, 1)). Channels first
# keeps NumPy's inner loops over whole rows instead of over the three channels of a pixel.


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


def _normalise_interleaved(pixels: np.ndarray, spec: ViewSpec) -> np.ndarray:
  """(H, W, 3) uint8 -> normalised float32, computed on rows of W * 3 values."""
  height, width, _ = pixels.shape
  scale = np.tile(1.0 / (255.0 * np.asarray(spec.std, np.float32)), width)
  offset = np.tile(-np.asarray(spec.mean, np.float32) / np.asarray(spec.std, np.float32), width)
  return (pixels.reshape(height, width * 3) * scale + offset).reshape(height, width, 3)


def host_photometric(pixels: np.ndarray, params: ViewParams, spec: ViewSpec) -> np.ndarray:
  """(S, S, 3) uint8 -> (S, S, 3) float32: jitter, grayscale, blur and normalisation on the host."""
  if not (params.jitter_apply or params.gray or params.blur_sigma > 0):
    return _normalise_interleaved(pixels, spec)
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


def param_keys(view: str, spec: ViewSpec) -> tuple[str, ...]:
  """The extra batch keys that carry `view`'s per-image parameters in device mode."""
  keys = []
  if spec.jitter_ops:
    keys += [f"{view}_jitter_apply", f"{view}_jitter_order", f"{view}_jitter_factors"]
  if spec.gray_p > 0:
    keys.append(f"{view}_gray")
  if spec.blur_p > 0:
    keys.append(f"{view}_blur_sigma")
  return tuple(keys)


def param_arrays(view: str, spec: ViewSpec, params: ViewParams) -> dict[str, np.ndarray]:
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


def _device_view(pixels: jax.Array, batch: Mapping[str, jax.Array], view: str, spec: ViewSpec) -> jax.Array:
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
  specs = view_specs(config)
  out = dict(batch)
  for view, spec in specs.items():
    out[view] = _device_view(jnp.asarray(batch[view]), batch, view, spec)
    for key in param_keys(view, spec):
      del out[key]
  return out


# ---------------------------------------------------------------------------------------------
# Transforms: (image bytes, Generator) -> dict of NumPy arrays, used by the Grain pipeline.


class TrainViews:
  """The three training views of one image: student, weak, style.

  Host mode: float32 (S, S, 3) normalised views. Device mode (config.photometric_on_device):
  uint8 (S, S, 3) views plus the `param_keys` of each view, for `device_photometric`.
  """

  def __init__(self, config, draft: bool = True):
    self.specs = view_specs(config)
    self.image_size = int(config.image_size)
    self.on_device = bool(config.photometric_on_device)
    self.draft = draft

  def __call__(self, image_bytes: bytes, rng: np.random.Generator) -> dict[str, np.ndarray]:
    image = open_image(image_bytes)
    source_size = image.size
    params = {view: sample_view_params(rng, spec, *source_size) for view, spec in self.specs.items()}
    factor = draft_factor(image, [p.crop for p in params.values()], self.image_size) if self.draft else 1
    decoded = decode_rgb(image, factor)
    out = {}
    for view, spec in self.specs.items():
      p = params[view]
      pixels = resized_crop(decoded, source_size, p.crop, self.image_size, p.flip)
      if self.on_device:
        out[view] = pixels
        out.update(param_arrays(view, spec, p))
      else:
        out[view] = host_photometric(pixels, p, spec)
    return out


def student_normalisation(config) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) of the student view, used by the linear probe and evaluation transforms."""
  constants = _normalisation(config, "student")
  return constants["mean"], constants["std"]


class ProbeTrainView:
  """Linear-probe training view: RandomResizedCrop(S, scale=(0.2, 1)) + flip, normalised.

  Output {'image': (S, S, 3) float32}.
  """

  def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], draft: bool = True):
    self.image_size = int(image_size)
    self.spec = ViewSpec(scale=(0.2, 1.0), flip=True, mean=tuple(mean), std=tuple(std))
    self.draft = draft

  def __call__(self, image_bytes: bytes, rng: np.random.Generator) -> dict[str, np.ndarray]:
    image = open_image(image_bytes)
    source_size = image.size
    params = sample_view_params(rng, self.spec, *source_size)
    factor = draft_factor(image, [params.crop], self.image_size) if self.draft else 1
    pixels = resized_crop(decode_rgb(image, factor), source_size, params.crop, self.image_size, params.flip)
    return {"image": host_photometric(pixels, params, self.spec)}


def eval_geometry(width: int, height: int, image_size: int,
                  crop_fraction: float = EVAL_CROP_FRACTION) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
  """torchvision Resize(R) + CenterCrop(S) with R = round(S / crop_fraction).

  Returns:
    (resized (width, height), centre crop (top, left, S, S) in resized pixels). The shorter side
    becomes R, the longer `int(R * long / short)`, as torchvision's Resize(int).
  """
  resize = int(round(image_size / crop_fraction))
  if resize < image_size:
    raise ValueError(f"crop_fraction {crop_fraction} must be <= 1 (resize {resize} < crop {image_size}).")
  if width <= height:
    resized = (resize, int(resize * height / width))
  else:
    resized = (int(resize * width / height), resize)
  top = int(round((resized[1] - image_size) / 2.0))
  left = int(round((resized[0] - image_size) / 2.0))
  return resized, (top, left, image_size, image_size)


class EvalView:
  """Deterministic evaluation transform: resize the shorter side to round(S / crop_fraction)
  (402 for S = 352 at the default 0.875), centre-crop S x S, normalise. Output {'image': (S, S, 3)
  float32}.

  The resize and the crop are one PIL call on a box that maps the crop back to the source, which
  gives exactly the pixels of resize-then-crop. JPEG draft decoding is used only when the
  source's shorter side is >= DRAFT_MARGIN times the resize target per downscale step.
  """

  def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float],
               crop_fraction: float = EVAL_CROP_FRACTION, draft: bool = True):
    self.image_size = int(image_size)
    self.crop_fraction = float(crop_fraction)
    self.spec = ViewSpec(scale=(1.0, 1.0), flip=False, mean=tuple(mean), std=tuple(std))
    self.draft = draft
    eval_geometry(self.image_size, self.image_size, self.image_size, self.crop_fraction)

  def __call__(self, image_bytes: bytes, rng: Optional[np.random.Generator] = None) -> dict[str, np.ndarray]:
    del rng
    image = open_image(image_bytes)
    width, height = image.size
    resized, (top, left, _, _) = eval_geometry(width, height, self.image_size, self.crop_fraction)
    factor = 1
    if self.draft:
      short_resized = min(resized)
      factor = draft_factor(image, [(0, 0, min(width, height), min(width, height))], short_resized)
    decoded = decode_rgb(image, factor)
    # The box maps resized pixels back onto `decoded`, so the filter scale is that of the full resize.
    sx = decoded.size[0] / resized[0]
    sy = decoded.size[1] / resized[1]
    box = (left * sx, top * sy, (left + self.image_size) * sx, (top + self.image_size) * sy)
    pixels = np.asarray(decoded.resize((self.image_size, self.image_size), Image.BILINEAR, box=box))
    return {"image": _normalise_interleaved(pixels, self.spec)}
