"""The ten styles of the procedural art-style dataset, each a way of putting paint down rather
than a thing depicted:

  brushstroke    short thick strokes following a smooth flow field over an underpainting
  pointillism    dense round dots of unmixed colours on two offset jittered grids
  hard_edge      a few large flat geometric shapes with sharp edges
  op_art         high-frequency two-colour stripes or rings, warped
  color_field    two or three soft-edged stacked rectangles over a ground (Rothko-like)
  mosaic         small Voronoi tiles of flat colour separated by grout lines
  drip           tangled thin random-walk lines and splatter (Pollock-like)
  hatching       ink lines in one to three directions whose density follows a tone field
  cubist_facets  large Voronoi facets, each shaded by its own linear gradient, outlined
  sfumato        smooth blends between colours with no edges at all

Layout and content are random in every image, and every image draws its own palette from
one distribution shared by all styles (hue uniform, saturation and value broad), so
neither object identity nor mean colour separates the classes: texture does (scale, edge
sharpness, orientation statistics, frequency content). All images get a little canvas
grain.
"""
from __future__ import annotations

import colorsys
import functools
from typing import Callable

import numpy as np
from PIL import Image
from PIL import ImageDraw

Renderer = Callable[[np.random.Generator, int], np.ndarray]


def _palette(rng: np.random.Generator, n: int) -> np.ndarray:
  """n RGB colours (n, 3) float in [0, 255], drawn the same way for every style."""
  hsv = np.stack([rng.uniform(0.0, 1.0, n), rng.uniform(0.15, 0.95, n),
                  rng.uniform(0.2, 0.98, n)], axis=-1)
  return np.array([colorsys.hsv_to_rgb(*c) for c in hsv]) * 255.0


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pixel-centre coordinates (y, x), each (size, size) float32, in pixels."""
  y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
  return y, x


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
  """A smooth random field (size, size) float32 in about [0, 1], `cells` bumps per side."""
  coarse = rng.uniform(0.0, 1.0, (cells + 1, cells + 1)).astype(np.float32)
  return np.asarray(Image.fromarray(coarse, "F").resize((size, size), Image.Resampling.BICUBIC))


def _to_pil(canvas: np.ndarray) -> Image.Image:
  return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")


def _colour(c: np.ndarray) -> tuple[int, int, int]:
  return _colours(c[None])[0]


def _colours(c: np.ndarray) -> list[tuple[int, int, int]]:
  """(n, 3) float colours as PIL fill tuples."""
  return [tuple(v) for v in np.clip(np.round(c), 0, 255).astype(int).tolist()]


def _underpainting(rng: np.random.Generator, size: int, palette: np.ndarray) -> np.ndarray:
  """A soft two-colour ground (size, size, 3) float."""
  a, b = palette[rng.choice(len(palette), 2, replace=False)]
  t = _smooth_noise(rng, size, int(rng.integers(1, 4)))[..., None]
  return a * (1 - t) + b * t


def _brushstroke(rng: np.random.Generator, size: int) -> np.ndarray:
  palette = _palette(rng, int(rng.integers(3, 7)))
  image = _to_pil(_underpainting(rng, size, palette))
  draw = ImageDraw.Draw(image)
  flow = _smooth_noise(rng, size, int(rng.integers(1, 4)))
  angle_field = rng.uniform(0, np.pi) + rng.uniform(0.5, 2.0) * np.pi * flow
  length = max(4.0, rng.uniform(0.05, 0.12) * size)
  width = max(2, int(round(rng.uniform(0.02, 0.04) * size)))
  count = int(rng.uniform(1.5, 2.5) * size * size / (length * width))
  centres = rng.uniform(0, size, (count, 2))
  angles = angle_field[centres[:, 1].astype(int), centres[:, 0].astype(int)]
  angles += rng.normal(0, 0.15, count)
  half = 0.5 * length * rng.uniform(0.6, 1.4, count)
  dx, dy = np.cos(angles) * half, np.sin(angles) * half
  ends = np.stack([centres[:, 0] - dx, centres[:, 1] - dy, centres[:, 0] + dx, centres[:, 1] + dy],
                  axis=-1).tolist()
  colours = _colours(palette[rng.integers(0, len(palette), count)] + rng.normal(0, 14, (count, 3)))
  for end, colour in zip(ends, colours):
    draw.line(end, fill=colour, width=width)
  return np.asarray(image, dtype=np.float32)


def _pointillism(rng: np.random.Generator, size: int) -> np.ndarray:
  palette = _palette(rng, int(rng.integers(4, 8)))
  canvas = np.empty((size, size, 3), np.float32)
  canvas[:] = palette[rng.integers(len(palette))]
  y, x = _grid(size)
  cell = max(3.0, rng.uniform(0.025, 0.05) * size)
  for shift in (0.0, 0.5 * cell):
    iy, ix = ((y + shift) // cell).astype(int), ((x + shift) // cell).astype(int)
    n = int(size // cell) + 2
    radius = cell * rng.uniform(0.3, 0.48, (n, n))
    offset = rng.uniform(0, 1, (n, n, 2)) * (cell - 2 * radius)[..., None] + radius[..., None]
    colours = palette[rng.integers(0, len(palette), (n, n))] + rng.normal(0, 10, (n, n, 3))
    cy = iy * cell - shift + offset[iy, ix, 0]
    cx = ix * cell - shift + offset[iy, ix, 1]
    inside = (y - cy) ** 2 + (x - cx) ** 2 <= radius[iy, ix] ** 2
    canvas[inside] = colours[iy, ix][inside]
  return canvas


def _hard_edge(rng: np.random.Generator, size: int) -> np.ndarray:
  palette = _palette(rng, int(rng.integers(3, 7)))
  image = Image.new("RGB", (size, size), _colour(palette[rng.integers(len(palette))]))
  draw = ImageDraw.Draw(image)
  for _ in range(int(rng.integers(3, 9))):
    fill = _colour(palette[rng.integers(len(palette))])
    cx, cy = rng.uniform(0, size, 2)
    extent = rng.uniform(0.15, 0.45) * size
    kind = rng.integers(4)
    if kind == 0:  # Rotated rectangle.
      a, w, h = rng.uniform(0, np.pi), extent, extent * rng.uniform(0.2, 1.0)
      corners = [(-w, -h), (w, -h), (w, h), (-w, h)]
      draw.polygon([(cx + u * np.cos(a) - v * np.sin(a), cy + u * np.sin(a) + v * np.cos(a))
                    for u, v in corners], fill=fill)
    elif kind == 1:  # Triangle.
      points = rng.uniform(-extent, extent, (3, 2)) + (cx, cy)
      draw.polygon([tuple(p) for p in points], fill=fill)
    elif kind == 2:  # Disc.
      draw.ellipse([cx - extent / 2, cy - extent / 2, cx + extent / 2, cy + extent / 2], fill=fill)
    else:  # Band across the canvas.
      a, w = rng.uniform(0, np.pi), extent * rng.uniform(0.1, 0.4)
      d = (np.cos(a) * 2 * size, np.sin(a) * 2 * size)
      n = (-np.sin(a) * w, np.cos(a) * w)
      draw.polygon([(cx - d[0] - n[0], cy - d[1] - n[1]), (cx + d[0] - n[0], cy + d[1] - n[1]),
                    (cx + d[0] + n[0], cy + d[1] + n[1]), (cx - d[0] + n[0], cy - d[1] + n[1])],
                   fill=fill)
  return np.asarray(image, dtype=np.float32)


def _op_art(rng: np.random.Generator, size: int) -> np.ndarray:
  palette = _palette(rng, 2)
  if abs(palette[0].mean() - palette[1].mean()) < 80:
    palette[1] = 255.0 - palette[0]
  y, x = _grid(size)
  period = rng.uniform(max(4.0, 0.05 * size), max(6.0, 0.12 * size))
  warp = rng.uniform(0.5, 3.0) * np.sin(2 * np.pi * (y * rng.uniform(0.5, 2.5) / size)
                                        + rng.uniform(0, 2 * np.pi))
  if rng.uniform() < 0.5:  # Straight stripes, warped across.
    a = rng.uniform(0, np.pi)
    u = x * np.cos(a) + y * np.sin(a)
  else:  # Concentric rings around a random centre.
    cy, cx = rng.uniform(0, size, 2)
    u = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
  wave = np.sin(2 * np.pi * u / period + warp)
  t = np.clip(wave * 3.0, -1.0, 1.0)[..., None] * 0.5 + 0.5
  return palette[0] * t + palette[1] * (1 - t)


def _color_field(rng: np.random.Generator, size: int) -> np.ndarray:
  palette = _palette(rng, 4)
  y, x = _grid(size)
  canvas = np.empty((size, size, 3), np.float32)
  canvas[:] = palette[0]
  bands = int(rng.integers(2, 4))
  margin = rng.uniform(0.06, 0.14) * size
  edges = np.sort(rng.uniform(margin, size - margin, 2 * bands))
  soft = rng.uniform(0.015, 0.04) * size
  for i in range(bands):
    top, bottom = edges[2 * i], edges[2 * i + 1]
    left, right = margin * rng.uniform(0.7, 1.3), size - margin * rng.uniform(0.7, 1.3)
    alpha = (_ramp((y - top) / soft) * _ramp((bottom - y) / soft)
             * _ramp((x - left) / soft) * _ramp((right - x) / soft))[..., None]
    mottle = (_smooth_noise(rng, size, int(rng.integers(4, 9))) - 0.5)[..., None] * 30.0
    canvas = canvas * (1 - alpha) + (palette[1 + i % 3] + mottle) * alpha
  return canvas


def _ramp(t: np.ndarray) -> np.ndarray:
  return np.clip(t * 0.5 + 0.5, 0.0, 1.0)


def _voronoi(rng: np.random.Generator, size: int, cell: float
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Nearest-seed map of a jittered grid of seeds, one per cell of `cell` pixels.

  Returns:
    (tile id (size, size) int, distance to the nearest seed minus distance to the second
    nearest (size, size) float, seed y (size, size), seed x (size, size)).
  """
  y, x = _grid(size)
  n = int(np.ceil(size / cell)) + 2
  seeds = ((np.stack(np.mgrid[-1:n - 1, -1:n - 1], axis=-1) + rng.uniform(0, 1, (n, n, 2)))
           * cell).astype(np.float32)
  iy, ix = (y // cell).astype(int), (x // cell).astype(int)
  nearest = np.full((size, size), np.inf, np.float32)  # Squared distances.
  second = np.full((size, size), np.inf, np.float32)
  tile = np.zeros((size, size), int)
  for oy in (-1, 0, 1):
    for ox in (-1, 0, 1):
      gy, gx = iy + oy + 1, ix + ox + 1
      d = (y - seeds[gy, gx, 0]) ** 2 + (x - seeds[gy, gx, 1]) ** 2
      nearer = d < nearest
      second = np.where(nearer, nearest, np.minimum(second, d))
      nearest = np.where(nearer, d, nearest)
      tile = np.where(nearer, gy * n + gx, tile)
  ids = tile.ravel()
  return (tile, np.sqrt(second) - np.sqrt(nearest), seeds[..., 0].ravel()[ids].reshape(size, size),
          seeds[..., 1].ravel()[ids].reshape(size, size))


def _mosaic(rng: np.random.Generator, size: int) -> np.ndarray:
  palette = _palette(rng, int(rng.integers(3, 7)))
  tile, gap, _, _ = _voronoi(rng, size, max(5.0, rng.uniform(0.06, 0.1) * size))
  n_tiles = int(tile.max()) + 1
  colours = palette[rng.integers(0, len(palette), n_tiles)] + rng.normal(0, 12, (n_tiles, 3))
  canvas = colours[tile].astype(np.float32)
  grout = np.full(3, rng.uniform(30, 225))
  width = rng.uniform(0.8, 1.6)
  t = np.clip(gap / width, 0.0, 1.0)[..., None]
  return canvas * t + grout * (1 - t)


def _drip(rng: np.random.Generator, size: int) -> np.ndarray:
  palette = _palette(rng, int(rng.integers(3, 7)))
  image = _to_pil(_underpainting(rng, size, palette))
  draw = ImageDraw.Draw(image)
  step = max(1.5, rng.uniform(0.015, 0.03) * size)
  for _ in range(int(rng.integers(15, 40))):
    n = int(rng.integers(20, 70))
    turn = np.cumsum(rng.normal(0, 0.45, n)) + rng.uniform(0, 2 * np.pi)
    points = np.cumsum(np.stack([np.cos(turn), np.sin(turn)], -1) * step, axis=0)
    points += rng.uniform(0, size, 2)
    draw.line(points.ravel().tolist(), fill=_colour(palette[rng.integers(len(palette))]),
              width=int(rng.integers(1, 4)), joint="curve")
  count = int(rng.integers(40, 120))
  centres, radii = rng.uniform(0, size, (count, 2)), rng.uniform(0.5, 2.0, count)
  boxes = np.concatenate([centres - radii[:, None], centres + radii[:, None]], axis=1).tolist()
  for box, colour in zip(boxes, _colours(palette[rng.integers(0, len(palette), count)])):
    draw.ellipse(box, fill=colour)
  return np.asarray(image, dtype=np.float32)


def _hatching(rng: np.random.Generator, size: int) -> np.ndarray:
  paper, ink = _palette(rng, 2)
  if abs(paper.mean() - ink.mean()) < 80:
    ink = 255.0 - paper
  y, x = _grid(size)
  tone = _smooth_noise(rng, size, int(rng.integers(2, 5)))
  base = rng.uniform(0, np.pi)
  period = rng.uniform(3.0, max(3.5, 0.06 * size))
  covered = np.zeros((size, size), np.float32)
  for k, threshold in enumerate((0.25, 0.5, 0.75)[:int(rng.integers(1, 4))]):
    a = base + k * rng.uniform(np.pi / 5, np.pi / 2.5)
    u = (x * np.cos(a) + y * np.sin(a)) / period + rng.uniform()
    line = np.clip(1.0 - np.abs(u - np.round(u)) * period / 0.9, 0.0, 1.0)
    covered = np.maximum(covered, line * (tone > threshold))
  t = covered[..., None]
  return ink * t + paper * (1 - t)


def _cubist_facets(rng: np.random.Generator, size: int) -> np.ndarray:
  palette = _palette(rng, int(rng.integers(3, 6)))
  y, x = _grid(size)
  tile, gap, sy, sx = _voronoi(rng, size, rng.uniform(0.18, 0.3) * size)
  n_tiles = int(tile.max()) + 1
  colours = palette[rng.integers(0, len(palette), n_tiles)]
  direction = rng.uniform(0, 2 * np.pi, n_tiles)
  amplitude = rng.uniform(60, 140, n_tiles) / size
  shade = ((x - sx) * np.cos(direction[tile])
           + (y - sy) * np.sin(direction[tile])) * amplitude[tile]
  canvas = colours[tile] + shade[..., None]
  outline = np.clip(gap / rng.uniform(0.7, 1.5), 0.0, 1.0)[..., None]
  return canvas * outline + palette[0] * 0.3 * (1 - outline)


def _sfumato(rng: np.random.Generator, size: int) -> np.ndarray:
  palette = _palette(rng, int(rng.integers(3, 6)))
  fields = np.stack([_smooth_noise(rng, size, int(rng.integers(1, 4))) for _ in palette])
  weights = np.exp((fields - fields.max(0)) * rng.uniform(4.0, 10.0))
  weights /= weights.sum(0)
  return np.einsum("kyx,kc->yxc", weights, palette)


STYLES: dict[str, Renderer] = {
    "brushstroke": _brushstroke,
    "pointillism": _pointillism,
    "hard_edge": _hard_edge,
    "op_art": _op_art,
    "color_field": _color_field,
    "mosaic": _mosaic,
    "drip": _drip,
    "hatching": _hatching,
    "cubist_facets": _cubist_facets,
    "sfumato": _sfumato,
}


def render(style: str, size: int, rng: np.random.Generator) -> np.ndarray:
  """One image of a style: (size, size, 3) uint8, canvas grain included."""
  if style not in STYLES:
    raise ValueError(f"unknown style {style!r}; styles are {list(STYLES)}")
  if size < 16:
    raise ValueError(f"size must be at least 16 pixels, got {size}")
  canvas = STYLES[style](rng, size).astype(np.float32)
  canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(rng.uniform(1.0, 5.0))
  return np.clip(np.round(canvas), 0, 255).astype(np.uint8)
