"""Host geometry of the views (PIL): decode an image once, then crop and resize each view from it.

A crop is resampled to S x S with PIL's antialiased BILINEAR filter in one
`Image.resize(box=...)` call (torchvision's RandomResizedCrop and Resize + CenterCrop); unlike
`crop()` followed by `resize()` the filter at the crop's edges may read the source pixels just
outside it (the output's first and last row/column).

JPEG decoding uses DCT-domain downscaling (PIL `draft`) by 2, 4 or 8 when every crop of the image
keeps at least DRAFT_MARGIN = 4 times the output resolution after it. This is an approximation:
the views then differ from those of a full-resolution decode by under one grey level on average
and a few levels at most (measured on a harsh texture of 8-px random colour cells: mean 0.4-0.7,
max 4; with a margin of 2 it would be 1.2-1.8 and 10, mostly in chroma). Since the three training
views share one decode, the smallest crop decides, so it pays off for very large sources and in
evaluation. Transforms take `draft=False` to turn it off.

Sizes are (width, height) as PIL gives them; crops are (top, left, height, width) in pixels.
"""
import io
from typing import Sequence

import numpy as np
from PIL import Image

DRAFT_MARGIN = 4
EVAL_CROP_FRACTION = 0.875

Crop = tuple[int, int, int, int]


def open_image(image_bytes: bytes) -> Image.Image:
  """A lazily decoded PIL image (only the header is read)."""
  return Image.open(io.BytesIO(image_bytes))


def draft_factor(image: Image.Image, crops: Sequence[Crop], size: int) -> int:
  """The largest JPEG downscale in {1, 2, 4, 8} leaving every crop >= DRAFT_MARGIN * size pixels wide and high."""
  if image.format != "JPEG":
    return 1
  smallest = min(min(h, w) for _, _, h, w in crops)
  for factor in (8, 4, 2):
    if smallest >= DRAFT_MARGIN * size * factor:
      return factor
  return 1


def decode_rgb(image: Image.Image, factor: int = 1) -> Image.Image:
  """Decodes `image` as RGB, downscaled by `factor` in the JPEG decoder when factor > 1.

  `np.asarray` of the result is the (H, W, 3) uint8 pixels.
  """
  if factor > 1:
    width, height = image.size
    image.draft("RGB", (width // factor, height // factor))
  if image.mode != "RGB":
    image = image.convert("RGB")
  return image


def decode_for_crops(image: Image.Image, crops: Sequence[Crop], size: int, draft: bool) -> Image.Image:
  """`image` decoded as RGB; with `draft`, downscaled in the JPEG decoder as far as `draft_factor`
  allows for `crops` resized to `size`.

  PIL's draft changes `image.size`: read the source size before calling this.
  """
  return decode_rgb(image, draft_factor(image, crops, size) if draft else 1)


def resized_crop(decoded: Image.Image, frame_size: tuple[int, int], crop: Crop, size: int,
                 flip: bool = False) -> np.ndarray:
  """(size, size, 3) uint8: `crop` of a frame of `frame_size`, antialiased bilinear resize.

  The frame is the image the crop is given in: the source, or (for evaluation) the source
  resized. `decoded` shows the whole frame at its own size (a downscaled decode, or the source
  of the resized frame); the crop box is mapped onto it, so the filter scale is that of the frame.
  """
  top, left, h, w = crop
  sx = decoded.size[0] / frame_size[0]
  sy = decoded.size[1] / frame_size[1]
  box = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
  pixels = np.asarray(decoded.resize((size, size), Image.BILINEAR, box=box))
  return pixels[:, ::-1] if flip else pixels


def eval_geometry(width: int, height: int, image_size: int,
                  crop_fraction: float = EVAL_CROP_FRACTION) -> tuple[tuple[int, int], Crop]:
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
