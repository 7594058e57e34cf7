"""The transforms of the pipeline: the three training views, the linear-probe and evaluation views.

Each maps (image bytes, numpy Generator) to a dict of NumPy arrays. The work is split in two:
decoding, cropping and resizing run on the host (`geometry`) and give uint8 views; the
photometric ops (`photometric`) run either on the host (`TrainViews` with
`photometric_on_device=False`, float32 normalised views out) or inside the jitted step
(`photometric.device_photometric`), from per-image parameters that the host samples
(`view_specs`). The views of an image depend only on its bytes and the Generator.
"""
from typing import Optional, Sequence

import numpy as np

from artstyle_jax.data import geometry
from artstyle_jax.data import photometric
from artstyle_jax.data import view_specs


class TrainViews:
  """The three training views of one image: student, weak, style.

  Host mode: float32 (S, S, 3) normalised views. Device mode (config.photometric_on_device):
  uint8 (S, S, 3) views plus the `photometric.param_keys` of each view, for
  `photometric.device_photometric`.
  """

  def __init__(self, config, draft: bool = True):
    self.specs = view_specs.view_specs(config)
    self.image_size = int(config.image_size)
    self.on_device = bool(config.photometric_on_device)
    self.draft = draft

  def __call__(self, image_bytes: bytes, rng: np.random.Generator) -> dict[str, np.ndarray]:
    image = geometry.open_image(image_bytes)
    source_size = image.size
    params = {view: view_specs.sample_view_params(rng, spec, *source_size) for view, spec in self.specs.items()}
    decoded = geometry.decode_for_crops(image, [p.crop for p in params.values()], self.image_size, self.draft)
    out = {}
    for view, spec in self.specs.items():
      p = params[view]
      pixels = geometry.resized_crop(decoded, source_size, p.crop, self.image_size, p.flip)
      if self.on_device:
        out[view] = pixels
        out.update(photometric.param_arrays(view, spec, p))
      else:
        out[view] = photometric.host_photometric(pixels, p, spec)
    return out


class ProbeTrainView:
  """Linear-probe training view: RandomResizedCrop(S, scale=(0.2, 1)) + flip, normalised.

  Output {'image': (S, S, 3) float32}.
  """

  def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], draft: bool = True):
    self.image_size = int(image_size)
    self.spec = view_specs.ViewSpec(scale=(0.2, 1.0), flip=True, mean=tuple(mean), std=tuple(std))
    self.draft = draft

  def __call__(self, image_bytes: bytes, rng: np.random.Generator) -> dict[str, np.ndarray]:
    image = geometry.open_image(image_bytes)
    source_size = image.size
    params = view_specs.sample_view_params(rng, self.spec, *source_size)
    decoded = geometry.decode_for_crops(image, [params.crop], self.image_size, self.draft)
    pixels = geometry.resized_crop(decoded, source_size, params.crop, self.image_size, params.flip)
    return {"image": photometric.host_photometric(pixels, params, self.spec)}


class EvalView:
  """Deterministic evaluation transform: resize the shorter side to round(S / crop_fraction)
  (402 for S = 352 at the default 0.875), centre-crop S x S, normalise. Output {'image': (S, S, 3)
  float32}.

  The resize and the crop are one PIL call on a box that maps the crop back to the source, which
  gives exactly the pixels of resize-then-crop. JPEG draft decoding is used only when the
  source's shorter side is >= `geometry.DRAFT_MARGIN` times the resize target per downscale step.
  """

  def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float],
               crop_fraction: float = geometry.EVAL_CROP_FRACTION, draft: bool = True):
    self.image_size = int(image_size)
    self.crop_fraction = float(crop_fraction)
    self.spec = view_specs.ViewSpec(scale=(1.0, 1.0), flip=False, mean=tuple(mean), std=tuple(std))
    self.draft = draft
    geometry.eval_geometry(self.image_size, self.image_size, self.image_size, self.crop_fraction)

  def __call__(self, image_bytes: bytes, rng: Optional[np.random.Generator] = None) -> dict[str, np.ndarray]:
    del rng
    image = geometry.open_image(image_bytes)
    width, height = image.size
    resized, crop = geometry.eval_geometry(width, height, self.image_size, self.crop_fraction)
    short = min(width, height)
    decoded = geometry.decode_for_crops(image, [(0, 0, short, short)], min(resized), self.draft)
    pixels = geometry.resized_crop(decoded, resized, crop, self.image_size)
    return {"image": photometric.normalise(pixels, self.spec)}
