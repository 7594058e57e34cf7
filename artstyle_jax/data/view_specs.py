"""What each view is (`ViewSpec`) and one image's random draws for it (`ViewParams`), on the host.

Semantics are torchvision's, as used by the reference code (artstyle_jax/METHOD.md, "Views"):

- RandomResizedCrop parameters: area fraction ~ U(scale), log aspect ratio ~ U(log 3/4, log 4/3),
  width and height rounded half-to-even (Python `round`), up to 10 tries, then the central crop
  clamped to the ratio range.
- Horizontal flip with p=0.5.
- ColorJitter: factors ~ U(max(0, 1 - s), 1 + s), hue shift ~ U(-h, h) turns, the four ops in a
  random permutation.
- Grayscale with p = gray_p; Gaussian blur with p = blur_p, sigma ~ U(0.1, 2.0) output pixels.
- Normalisation with each view's mean and std (config.views.<view>.{mean,std}).

Every draw takes a `numpy.random.Generator`; the pipeline seeds it from (seed, epoch, record
index), so views never depend on worker count or batch position.
"""
import dataclasses
import math
from typing import Sequence

import numpy as np

VIEW_NAMES = ("student", "weak", "style")
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
_JITTER_IDENTITY = (1.0, 1.0, 1.0, 0.0)
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# Per-channel RGB normalisation constants for pixels in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def student_normalisation(config) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) of the student view, used by the linear probe and evaluation transforms."""
  constants = _normalisation(config, "student")
  return constants["mean"], constants["std"]


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
