"""Turns any file a dataset may hold into a stored training image, or a reason to skip it.

Dataset builders call `prepare_image` on every file once, when the dataset is built, so
that training never meets a bad file. The policy, per kind of input:

- Zero-byte files, files PIL cannot identify (text, HTML error pages, ...), truncated or
  corrupt image data, and images whose header claims more than `ImagePolicy.bomb_pixels`
  pixels (PIL's decompression-bomb guard, checked before any pixel is decoded) raise
  `BadImageError`; the builder skips the file and logs why.
- Every other image becomes 8-bit RGB:
  CMYK through its embedded ICC profile when it has one (else PIL's formula);
  palette images through their palette; images with transparency (RGBA, LA, PA, palette
  with a transparent index) composited over white, since a transparent region of a
  scanned or digital artwork is unpainted ground, not the colour hidden under it;
  16-bit images scaled to 8 bits (PIL's own conversion clips them); grayscale and
  bilevel replicated to three channels.
- Images with more than `ImagePolicy.max_pixels` pixels are downscaled (aspect kept) to
  fit: a 352 px RandomResizedCrop of scale >= 0.08 from a 2048 x 2048 image still draws on
  more than 352 x 352 source pixels, so the default cap does not change what training
  sees, while it bounds the per-image decode cost of every epoch.
- Images whose shorter side is below `ImagePolicy.min_side` (the training crop) are kept
  as they are and flagged: RandomResizedCrop upsamples them anyway, and upsampling them
  here would only spend disk.

Every stored image is a JPEG of an 8-bit RGB image: an RGB JPEG within the pixel cap is
kept byte for byte; anything else is re-encoded at `ImagePolicy.jpeg_quality` with full
4:4:4 chroma. EXIF orientation is not applied, as in the reference implementation's
loader (torchvision's PIL loader), so stored pixels are the file's pixels.
"""
from __future__ import annotations

import dataclasses
import io
import math
import os

import numpy as np
from PIL import Image
from PIL import ImageCms

_TRANSPARENT_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@dataclasses.dataclass(frozen=True)
class ImagePolicy:
  """What a dataset build does with unusual images.

  Attributes:
    min_side: images whose shorter side is below this many pixels are flagged as small
      (kept unchanged).
    max_pixels: images with more pixels (width * height) are downscaled to fit.
    bomb_pixels: images whose header claims more pixels are skipped without decoding.
      PIL itself refuses images above 2 * PIL.Image.MAX_IMAGE_PIXELS at open, so a larger
      value also needs that global raised.
    jpeg_quality: JPEG quality of re-encoded images.
  """
  min_side: int = 352
  max_pixels: int = 2048 * 2048
  bomb_pixels: int = 89_478_485
  jpeg_quality: int = 95

  def __post_init__(self):
    if self.min_side < 1 or self.max_pixels < 1 or self.bomb_pixels < 1:
      raise ValueError(f"ImagePolicy sizes must be positive, got {self}")
    if not 1 <= self.jpeg_quality <= 100:
      raise ValueError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")


class BadImageError(Exception):
  """The file cannot become a training image; str(error) says why."""


@dataclasses.dataclass(frozen=True)
class PreparedImage:
  """A file ready to store.

  Attributes:
    data: JPEG bytes of an 8-bit RGB image.
    height: stored image height in pixels.
    width: stored image width in pixels.
    converted_from: the file's PIL mode when it was not 8-bit RGB, else None.
    downscaled_from: (width, height) of the file when it was downscaled, else None.
    small: the shorter side is below the policy's `min_side`.
  """
  data: bytes
  height: int
  width: int
  converted_from: str | None = None
  downscaled_from: tuple[int, int] | None = None
  small: bool = False

  @property
  def reencoded(self) -> bool:
    return self.converted_from is not None or self.downscaled_from is not None


def prepare_image(source: str | os.PathLike | bytes,
                  policy: ImagePolicy = ImagePolicy()) -> PreparedImage:
  """Reads, checks and converts one image file (or its bytes) as the module docstring says.

  Raises:
    BadImageError: the file is empty, not an image, truncated or corrupt, or too large.
  """
  data = source if isinstance(source, bytes) else _read_bytes(source)
  if not data:
    raise BadImageError("empty file (0 bytes)")
  try:
    image = Image.open(io.BytesIO(data))
  except Image.UnidentifiedImageError:
    raise BadImageError("not an image PIL can read") from None
  except Image.DecompressionBombError as e:
    raise BadImageError(f"decompression bomb: {e}") from None
  except Exception as e:  # pylint: disable=broad-except
    raise BadImageError(f"unreadable image header ({type(e).__name__}: {e})") from None

  width, height = image.size
  if width * height > policy.bomb_pixels:
    raise BadImageError(
        f"decompression bomb: {width}x{height} = {width * height} pixels exceeds "
        f"the limit of {policy.bomb_pixels}")
  if width < 1 or height < 1:
    raise BadImageError(f"degenerate size {width}x{height}")

  target = _fit_within(width, height, policy.max_pixels)
  try:
    if target is not None and image.format == "JPEG":
      image.draft(None, target)  # Decodes at 1/2, 1/4 or 1/8 scale when that still covers target.
    image.load()
    rgb, converted_from = to_rgb8(image)
    if target is not None:
      rgb = rgb.resize(target, Image.Resampling.LANCZOS)
  except BadImageError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise BadImageError(f"truncated or corrupt image data ({type(e).__name__}: {e})") from None

  downscaled_from = (width, height) if target is not None else None
  if image.format == "JPEG" and converted_from is None and downscaled_from is None:
    stored = data
  else:
    stored = encode_jpeg(rgb, policy.jpeg_quality)
  return PreparedImage(
      data=stored,
      height=rgb.height,
      width=rgb.width,
      converted_from=converted_from,
      downscaled_from=downscaled_from,
      small=min(rgb.size) < policy.min_side)


def to_rgb8(image: Image.Image) -> tuple[Image.Image, str | None]:
  """Converts a loaded PIL image to 8-bit RGB.

  Returns:
    (rgb_image, original_mode), original_mode None when the image was RGB already.

  Raises:
    BadImageError: the mode has no sensible RGB rendering.
  """
  mode = image.mode
  if mode == "RGB":
    return image, None
  if mode == "P" and "transparency" in image.info:
    rgb = _over_white(image.convert("RGBA"))
  elif mode == "P":
    rgb = image.convert("RGB")
  elif mode in _TRANSPARENT_MODES:
    rgb = _over_white(image.convert("RGBA"))
  elif mode in _SIXTEEN_BIT_MODES:
    values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
    gray = ((values * 255 + 32767) // 65535).astype(np.uint8)
    rgb = Image.fromarray(np.stack([gray] * 3, axis=-1), "RGB")
  elif mode == "F":
    values = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    gray = np.round(values * 255.0).astype(np.uint8)
    rgb = Image.fromarray(np.stack([gray] * 3, axis=-1), "RGB")
  elif mode == "CMYK":
    rgb = _cmyk_to_rgb(image)
  else:
    try:
      rgb = image.convert("RGB")
    except ValueError as e:
      raise BadImageError(f"unsupported image mode {mode!r} ({e})") from None
  return rgb, mode


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
  """JPEG bytes of an RGB PIL image, 4:4:4 chroma; deterministic for equal pixels."""
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=quality, subsampling=0)
  return buffer.getvalue()


def _read_bytes(path: str | os.PathLike) -> bytes:
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise BadImageError(f"cannot read file ({e.strerror or e})") from None


def _fit_within(width: int, height: int, max_pixels: int) -> tuple[int, int] | None:
  """The largest (w, h) with the same aspect and at most max_pixels pixels; None if it fits."""
  if width * height <= max_pixels:
    return None
  scale = math.sqrt(max_pixels / (width * height))
  w, h = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
  while w * h > max_pixels:  # Guards float rounding at the boundary.
    w, h = max(1, w - 1), max(1, h - 1)
  return w, h


def _over_white(rgba: Image.Image) -> Image.Image:
  ground = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
  return Image.alpha_composite(ground, rgba).convert("RGB")


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
  icc = image.info.get("icc_profile")
  if icc:
    try:
      return ImageCms.profileToProfile(
          image, ImageCms.ImageCmsProfile(io.BytesIO(icc)), ImageCms.createProfile("sRGB"),
          outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
      pass  # A broken embedded profile: PIL's formula below is the documented fallback.
  return image.convert("RGB")
