"""The headroom set: the same generated scenes painted in ten styles whose handling overlaps.

A scene (sky and ground split by a horizon, a sun, mountains, houses, stick figures, one palette)
is drawn from a generator of its own, shared by every style: image i of a split is the same scene
in all ten styles, so what is depicted says nothing of the style. A style is a way of painting
it, one point t on a path through the painting parameters,

  t = 0 ... 1    stroke length 2 -> 12 px, stroke width 4 -> 1 px, colour jitter low -> high
                 -> low, blur 1.5 -> 0 px, colour depth 3 -> 8 bits

(lengths for 64 px, scaled with the image side), style k at t = k / 9; each image draws its own
t uniformly within `SPREAD` style spacings of its style's, so that neighbouring styles' ranges
overlap as real painting styles' do, and an image's handling does not always tell its style.
Strokes are short lines in the scene's colour at their centre (plus jitter) covering the canvas
in random order and direction.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFilter
from PIL import ImageOps

from artstyle_jax.data.synthetic import styles

# The textures' palette distribution and colour conversion, shared on purpose.
_palette = styles._palette  # pylint: disable=protected-access
_colours = styles._colours  # pylint: disable=protected-access

STYLES = tuple(f"handling_{k}" for k in range(10))
SPREAD = 0.6  # half-width of an image's range of t, in style spacings (> 0.5: neighbours overlap)
_REFERENCE_SIZE = 64


def _scene(rng: np.random.Generator, size: int) -> Image.Image:
  """A flat-coloured scene (size, size) RGB: sky, ground, sun, mountains, houses, figures."""
  colours = _colours(_palette(rng, 7))
  horizon = int(rng.uniform(0.35, 0.75) * size)
  image = Image.new("RGB", (size, size), colours[0])
  draw = ImageDraw.Draw(image)
  draw.rectangle((0, horizon, size, size), fill=colours[1])
  radius = rng.uniform(0.05, 0.12) * size
  cx, cy = rng.uniform(0.1, 0.9) * size, rng.uniform(0.05, 0.3) * size
  draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colours[2])
  for _ in range(int(rng.integers(0, 3))):
    x, half = rng.uniform(0, 1) * size, rng.uniform(0.15, 0.35) * size
    draw.polygon([(x - half, horizon), (x, horizon - rng.uniform(0.2, 0.5) * size), (x + half, horizon)],
                 fill=colours[3])
  for _ in range(int(rng.integers(0, 4))):
    x, w, h = rng.uniform(0, 0.85) * size, rng.uniform(0.08, 0.2) * size, rng.uniform(0.08, 0.25) * size
    y = horizon + rng.uniform(0.0, 0.2) * size
    draw.rectangle((x, y - h, x + w, y), fill=colours[4])
    draw.polygon([(x, y - h), (x + w / 2, y - h - 0.5 * w), (x + w, y - h)], fill=colours[5])
  for _ in range(int(rng.integers(0, 4))):
    x, y, h = rng.uniform(0.05, 0.95) * size, horizon + rng.uniform(0.05, 0.3) * size, rng.uniform(0.1, 0.2) * size
    head = h / 6
    draw.ellipse((x - head, y - h, x + head, y - h + 2 * head), fill=colours[6])
    draw.line((x, y - h + 2 * head, x, y - h / 3), fill=colours[6], width=max(1, int(h / 10)))
    draw.line((x, y - h / 3, x - h / 5, y), fill=colours[6], width=max(1, int(h / 12)))
    draw.line((x, y - h / 3, x + h / 5, y), fill=colours[6], width=max(1, int(h / 12)))
  return image


def handling(t: float) -> dict[str, float]:
  """The painting parameters at t in [0, 1] (lengths in pixels at 64 px)."""
  return {"length": 2.0 + 10.0 * t, "width": 4.0 - 3.0 * t, "jitter": 60.0 * t * (1.0 - t),
          "blur": 1.5 * (1.0 - t), "bits": 3.0 + 5.0 * t}


def style_position(style: str, rng: np.random.Generator) -> float:
  """An image's t: its style's k / 9, plus uniform noise of +-SPREAD / 9, within [0, 1]."""
  if style not in STYLES:
    raise ValueError(f"unknown style {style!r}; styles are {list(STYLES)}")
  spacing = 1.0 / (len(STYLES) - 1)
  return float(np.clip(STYLES.index(style) * spacing + rng.uniform(-SPREAD, SPREAD) * spacing, 0.0, 1.0))


def render(style: str, size: int, scene_rng: np.random.Generator, paint_rng: np.random.Generator) -> np.ndarray:
  """The scene of `scene_rng` painted in `style` with `paint_rng`'s strokes: (size, size, 3) uint8."""
  if size < 16:
    raise ValueError(f"size must be at least 16 pixels, got {size}")
  scene = np.asarray(_scene(scene_rng, size), np.float32)
  params = handling(style_position(style, paint_rng))
  scale = size / _REFERENCE_SIZE
  length, width = params["length"] * scale, max(1, int(round(params["width"] * scale)))
  count = int(1.5 * size * size / (length * width))
  centres = paint_rng.uniform(0, size, (count, 2))
  angles = paint_rng.uniform(0, np.pi, count)
  pixels = np.clip(centres.astype(int), 0, size - 1)
  colours = scene[pixels[:, 1], pixels[:, 0]] + paint_rng.normal(0, params["jitter"], (count, 3))
  canvas = Image.fromarray(np.clip(scene, 0, 255).astype(np.uint8), "RGB")
  draw = ImageDraw.Draw(canvas)
  offsets = 0.5 * length * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
  for (x, y), (dx, dy), colour in zip(centres, offsets, _colours(colours)):
    draw.line((x - dx, y - dy, x + dx, y + dy), fill=colour, width=width)
  if params["blur"] * scale > 0.05:
    canvas = canvas.filter(ImageFilter.GaussianBlur(params["blur"] * scale))
  canvas = ImageOps.posterize(canvas, int(round(params["bits"])))
  out = np.asarray(canvas, np.float32) + paint_rng.standard_normal((size, size, 3), dtype=np.float32) * 2.0
  return np.clip(np.round(out), 0, 255).astype(np.uint8)
