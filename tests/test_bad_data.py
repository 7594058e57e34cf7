"""Bad and unusual image files: converted to 8-bit RGB JPEG or skipped, never fatal.

Unit tests of `images.prepare_image` per kind of file, then one dataset build over a tree
holding one file of each kind, which checks the counts and the log line naming each file.
"""
import io
import logging
import os
import re
import struct
import zlib

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from artstyle_jax.data import builders
from artstyle_jax.data import geometry
from artstyle_jax.data import images
from artstyle_jax.data import sources

tfds.disable_progress_bar()

POLICY = images.ImagePolicy(min_side=16, max_pixels=100 * 100, bomb_pixels=200_000)
JPEG_TOLERANCE = 4  # Flat 8x8-aligned blocks survive JPEG quality 95, 4:4:4, this closely.


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format=fmt, **kwargs)
  return buffer.getvalue()


def blocks(colours, block: int = 16) -> np.ndarray:
  """A (block, block * n, C) image of n flat blocks; colours: n tuples (or scalars)."""
  return np.concatenate([np.broadcast_to(np.asarray(c), (block, block) + np.shape(c))
                         for c in colours], axis=1)


def block_centres(rgb: np.ndarray, n: int, block: int = 16) -> np.ndarray:
  """(n, 3) pixel values at the centres of n horizontal blocks."""
  return rgb[block // 2, [block * i + block // 2 for i in range(n)]].astype(int)


def png_chunks(width: int, height: int, bit_depth: int, colour_type: int, raw: bytes) -> bytes:
  """A PNG file written by hand (PIL cannot write 16-bit RGB, nor lie about the size)."""
  def chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
  header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
          + chunk(b"IEND", b""))


def rgb48_png(pixels: np.ndarray) -> bytes:
  rows = [b"\x00" + row.astype(">u2").tobytes() for row in pixels]
  return png_chunks(pixels.shape[1], pixels.shape[0], 16, 2, b"".join(rows))


def good_jpeg(width=40, height=30, seed=0) -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
  return encoded(Image.fromarray(pixels), "JPEG", quality=90)


def truncated(data: bytes) -> bytes:
  """The first half of a file: the header is whole, the image data stops midway."""
  return data[:len(data) // 2]


def bomb_header_png() -> bytes:
  """Claims 100000 x 100000 pixels: PIL's own guard refuses it at open."""
  return png_chunks(100_000, 100_000, 8, 0, b"")


def policy_bomb_png() -> bytes:
  """1000 x 1000 = 1e6 pixels: above POLICY.bomb_pixels, below PIL's own limit."""
  return encoded(Image.new("L", (1000, 1000)), "PNG")


BAD_FILES = {
    "empty.jpg": (lambda: b"", "empty file (0 bytes)"),
    "truncated.jpg": (lambda: truncated(good_jpeg()), "truncated or corrupt image data"),
    "truncated_header.jpg": (lambda: good_jpeg()[:400], "unreadable image header"),
    "notes.txt": (lambda: b"artist: unknown\n", "not an image PIL can read"),
    "error_page.jpg": (lambda: b"<html><body>404 Not Found</body></html>", "not an image"),
    "bomb_header.png": (bomb_header_png, "decompression bomb"),
    "bomb_policy.png": (policy_bomb_png, "1000x1000 = 1000000 pixels exceeds the limit of 200000"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_prepare_image_rejects_unusable_files_with_the_reason(name):
  """Zero-byte, truncated, non-image and over-large files raise BadImageError saying why."""
  make, reason = BAD_FILES[name]
  with pytest.raises(images.BadImageError, match=re.escape(reason)):
    images.prepare_image(make(), POLICY)


def test_prepare_image_reports_a_missing_file():
  with pytest.raises(images.BadImageError, match="cannot read file"):
    images.prepare_image("/nonexistent/dir/image.jpg", POLICY)


RED, GREEN, BLUE, WHITE, GREY = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (128,) * 3


def cmyk_jpeg():
  # PIL's CMYK -> RGB (no ICC profile): R = 255 - min(255, C + K), likewise G (M), B (Y).
  cmyk = blocks([(0, 255, 255, 0), (255, 0, 255, 0), (0, 0, 0, 127)]).astype(np.uint8)
  return encoded(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=95), [RED, GREEN, GREY]


def palette_png():
  rgb = Image.fromarray(blocks([RED, GREEN, BLUE]).astype(np.uint8))
  return encoded(rgb.quantize(colors=3), "PNG"), [RED, GREEN, BLUE]


def palette_transparent_png():
  image = Image.fromarray(blocks([0, 1, 2]).astype(np.uint8), "P")
  image.putpalette([255, 0, 0, 0, 0, 0, 0, 0, 255] + [0] * (253 * 3))
  return encoded(image, "PNG", transparency=1), [RED, WHITE, BLUE]


def rgba_png():
  # Opaque blue; fully transparent black (-> white ground); half-transparent red over white.
  rgba = blocks([(0, 0, 255, 255), (0, 0, 0, 0), (255, 0, 0, 128)]).astype(np.uint8)
  half = round(255 * (1 - 128 / 255))
  return encoded(Image.fromarray(rgba, "RGBA"), "PNG"), [BLUE, WHITE, (255, half, half)]


def la_png():
  la = blocks([(0, 255), (200, 0)]).astype(np.uint8)
  return encoded(Image.fromarray(la, "LA"), "PNG"), [(0, 0, 0), WHITE]


def grey_jpeg():
  return (encoded(Image.fromarray(blocks([0, 100, 255]).astype(np.uint8), "L"), "JPEG",
                  quality=95), [(0, 0, 0), (100,) * 3, WHITE])


def grey16_png():
  # 16-bit values scale to round(v * 255 / 65535); PIL's own conversion would clip them.
  values = blocks([0, 1000, 32896, 65535]).astype(np.uint16)
  expected = [(round(v * 255 / 65535),) * 3 for v in (0, 1000, 32896, 65535)]
  return encoded(Image.fromarray(values), "PNG"), expected


def rgb48_png_case():
  pixels = blocks([(65535, 0, 0), (0, 32896, 65535)]).astype(np.uint16)
  return rgb48_png(pixels), [RED, (0, 128, 255)]


def bilevel_png():
  return encoded(Image.fromarray(blocks([0, 255]).astype(np.uint8)).convert("1"), "PNG"), [
      (0, 0, 0), WHITE]


CONVERSIONS = {
    "cmyk": (cmyk_jpeg, "CMYK"),
    "palette": (palette_png, "P"),
    "palette_transparent": (palette_transparent_png, "P"),
    "rgba": (rgba_png, "RGBA"),
    "la": (la_png, "LA"),
    "grey": (grey_jpeg, "L"),
    "grey16": (grey16_png, "I;16"),
    "rgb48": (rgb48_png_case, None),
    "bilevel": (bilevel_png, "1"),
}


@pytest.mark.parametrize("name", sorted(CONVERSIONS))
def test_prepare_image_converts_unusual_modes_to_8bit_rgb_jpeg(name):
  """CMYK, palette (with transparency), RGBA, LA, grey, 16-bit grey and RGB, bilevel:
  stored as an RGB JPEG whose colours match the independently computed ones."""
  make, mode = CONVERSIONS[name]
  data, expected = make()
  prepared = images.prepare_image(data, POLICY)
  assert prepared.converted_from == mode
  with Image.open(io.BytesIO(prepared.data)) as stored:
    assert (stored.format, stored.mode) == ("JPEG", "RGB")
  rgb = np.asarray(geometry.decode_rgb(geometry.open_image(prepared.data)))
  assert rgb.shape == (16, 16 * len(expected), 3) and rgb.dtype == np.uint8
  got = block_centres(rgb, len(expected))
  assert np.abs(got - np.array(expected)).max() <= JPEG_TOLERANCE, (got, expected)


def test_prepare_image_keeps_an_rgb_jpeg_byte_for_byte():
  data = good_jpeg()
  prepared = images.prepare_image(data, POLICY)
  assert prepared.data == data
  assert (prepared.width, prepared.height, prepared.reencoded, prepared.small) == (40, 30, False,
                                                                                   False)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_prepare_image_downscales_over_max_pixels_keeping_the_aspect(fmt):
  """300 x 200 = 60000 pixels against a 10000 cap: 122 x 81 (floor of 300 and 200 times
  sqrt(1/6)), the largest same-aspect size within the cap; the content is kept."""
  gradient = np.broadcast_to(np.linspace(0, 255, 300)[None, :, None], (200, 300, 3))
  prepared = images.prepare_image(encoded(Image.fromarray(gradient.astype(np.uint8)), fmt), POLICY)
  assert prepared.downscaled_from == (300, 200)
  assert (prepared.width, prepared.height) == (122, 81)
  rgb = np.asarray(geometry.decode_rgb(geometry.open_image(prepared.data)))
  assert rgb.shape == (81, 122, 3)
  expected = np.linspace(0, 255, 122)
  assert np.abs(rgb[40, :, 0].astype(float) - expected)[2:-2].max() < 6


def test_prepare_image_keeps_and_flags_images_smaller_than_the_crop():
  data = good_jpeg(width=8, height=6)
  prepared = images.prepare_image(data, POLICY)
  assert prepared.small and prepared.data == data
  assert (prepared.width, prepared.height) == (8, 6)


def test_image_policy_rejects_nonsense():
  with pytest.raises(ValueError, match="jpeg_quality"):
    images.ImagePolicy(jpeg_quality=0)
  with pytest.raises(ValueError, match="positive"):
    images.ImagePolicy(max_pixels=0)


def write(path, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def test_build_converts_or_skips_each_bad_file_with_counts_and_log_lines(tmp_path, caplog):
  """One tree with a file of every kind: the build finishes, the good and convertible
  files become RGB JPEG examples, each bad file is skipped, and every skipped, converted,
  downscaled or small file has a count and a log line naming it."""
  manual = tmp_path / "manual"
  for name, (make, _) in BAD_FILES.items():
    write(manual / "bad" / name, make())
  write(manual / "bad" / "zero_byte_twin.png", b"")
  for name, (make, _) in CONVERSIONS.items():
    write(manual / "odd" / f"{name}.img", make()[0])
  write(manual / "odd" / "good.jpg", good_jpeg())
  write(manual / "odd" / "small.jpg", good_jpeg(width=8, height=6))
  write(manual / "odd" / "huge.png", encoded(Image.new("RGB", (300, 200), BLUE), "PNG"))
  write(manual / "odd" / ".DS_Store", b"hidden files are not listed")

  caplog.set_level(logging.INFO)
  builder = builders.build("image_folder", manual, tmp_path / "tfds", image_policy=POLICY,
                           config=builders.FolderConfig(name="bad", test_fraction=0.0),
                           num_workers=2)
  report = builder.build_report["train"]

  skipped = {key for key, _ in report.skipped}
  assert skipped == {f"bad/{name}" for name in BAD_FILES} | {"bad/zero_byte_twin.png"}
  assert report.written == len(CONVERSIONS) + 3
  converted = dict(report.converted)
  assert converted == {f"odd/{name}.img": mode for name, (_, mode) in CONVERSIONS.items()
                       if mode is not None}
  assert [key for key, _ in report.downscaled] == ["odd/huge.png"]
  assert [key for key, _ in report.small] == ["odd/small.jpg"]

  messages = [r.getMessage() for r in caplog.records]
  for key, reason in report.skipped:
    assert any(key in m and reason in m and "Skipping" in m for m in messages), key
  for key in converted:
    assert any(key in m and "Converted" in m for m in messages), key
  assert any("odd/huge.png" in m and "Downscaled" in m and "300x200" in m for m in messages)
  assert any("odd/small.jpg" in m and "small" in m for m in messages)
  assert any(f"{report.written} examples written, {len(skipped)} files skipped" in m
             for m in messages)

  source = sources.open_split("image_folder/bad", tmp_path / "tfds", "train")
  assert len(source) == report.written
  for i in range(len(source)):
    with Image.open(io.BytesIO(source[i]["image"])) as stored:
      assert (stored.format, stored.mode) == ("JPEG", "RGB")
      assert stored.width * stored.height <= POLICY.max_pixels


def test_a_split_of_only_bad_files_fails_with_a_clear_message(tmp_path):
  write(tmp_path / "manual" / "a" / "empty.jpg", b"")
  write(tmp_path / "manual" / "a" / "text.jpg", b"not a picture")
  with pytest.raises(Exception, match="none of the 2 files of the 'train' split is a usable image"):
    builders.build("image_folder", tmp_path / "manual", tmp_path / "tfds",
                   config=builders.FolderConfig(name="allbad", test_fraction=0.0))
