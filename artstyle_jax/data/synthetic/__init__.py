"""Procedural art-style datasets: the embedded data of the demo and the tests.

kind 'textures' (the demo's): ten styles (`styles.py`: brushstroke, pointillism, hard_edge, op_art, color_field, mosaic,
drip, hatching, cubist_facets, sfumato), each a way of putting paint down rather than a thing
depicted.

Layout and content are random in every image, and every image draws its own palette from
one distribution shared by all styles (hue uniform, saturation and value broad), so
neither object identity nor mean colour separates the classes: texture does (scale, edge
sharpness, orientation statistics, frequency content). All images get a little canvas
grain. An ImageNet network's features already separate these styles.

kind 'scenes', the headroom set (`scenes.py`): the same generated scenes painted by ten styles
whose handling (stroke length and width, colour jitter, blur, colour depth) lies on one path
with overlapping ranges, so that what is depicted says nothing of the style and neighbouring
styles are confused as real ones are.

Output: a class-per-folder tree that `builders.image_folder` reads,

  <out>/train/<style>/<style>_00000.jpg ...   `per_class` images per style
  <out>/test/<style>/...                      `test_per_class` (default per_class // 4)
  <out>/valid/<style>/...                     only with val_per_class > 0

Every image is rendered from its own generator seeded by (seed, split, style, index) (and a
scene's from (seed, split, index), the same for every style), so
the files are byte-identical for a seed (given the same NumPy and Pillow builds: float
rounding or the JPEG library may differ between them), and an image does not depend on
how many others are written. Program (`__main__.py`):

  python -m artstyle_jax.data.synthetic --out=DIR --per_class=N --size=S [--seed=K]
      [--test_per_class=M] [--val_per_class=V] [--kind=textures|scenes]
"""
from __future__ import annotations

import os
import shutil
from typing import Sequence

import numpy as np
from PIL import Image

from artstyle_jax.data import images
from artstyle_jax.data.synthetic import scenes
from artstyle_jax.data.synthetic.styles import render
from artstyle_jax.data.synthetic.styles import STYLES

JPEG_QUALITY = 90
SPLIT_CODES = {"train": 0, "test": 1, "valid": 2}
KINDS = ("textures", "scenes")


def image_rng(seed: int, split: str, style: str, index: int) -> np.random.Generator:
  """The generator of one image, independent of every other image's."""
  return np.random.default_rng([seed, SPLIT_CODES[split], list(STYLES).index(style), index])


def styles_of(kind: str) -> tuple[str, ...]:
  """The style names (class folders) of a kind of dataset."""
  if kind not in KINDS:
    raise ValueError(f"unknown kind {kind!r}; kinds are {KINDS}")
  return tuple(STYLES) if kind == "textures" else scenes.STYLES


def render_image(kind: str, seed: int, split: str, style: str, index: int, size: int) -> np.ndarray:
  """Image `index` of `style` in `split`: (size, size, 3) uint8. In 'scenes' the scene is drawn
  from (seed, split, index) alone, the painting from the style's own generator."""
  if kind == "textures":
    return render(style, size, image_rng(seed, split, style, index))
  scene_rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
  paint_rng = np.random.default_rng([seed, SPLIT_CODES[split], styles_of(kind).index(style), index, 1])
  return scenes.render(style, size, scene_rng, paint_rng)


def write_tree(out_dir: str | os.PathLike, *, per_class: int, size: int, seed: int = 0,
               test_per_class: int | None = None, val_per_class: int = 0,
               styles: Sequence[str] | None = None, kind: str = "textures") -> dict[str, int]:
  """Writes the class-per-folder tree (see module docstring) of `kind`, all its styles unless
  `styles` names some.

  Returns:
    {split folder: number of images written}.
  """
  if test_per_class is None:
    test_per_class = max(1, per_class // 4)
  counts = {"train": per_class, "test": test_per_class, "valid": val_per_class}
  if per_class < 1 or test_per_class < 0 or val_per_class < 0:
    raise ValueError(f"need per_class >= 1 and non-negative test/val counts, got {counts}")
  styles = styles_of(kind) if styles is None else tuple(styles)
  written = {}
  for split, count in counts.items():
    if count == 0:
      continue
    for style in styles:
      folder = os.path.join(os.fspath(out_dir), split, style)
      os.makedirs(folder, exist_ok=True)
      for index in range(count):
        pixels = render_image(kind, seed, split, style, index, size)
        data = images.encode_jpeg(Image.fromarray(pixels, "RGB"), JPEG_QUALITY)
        with open(os.path.join(folder, f"{style}_{index:05d}.jpg"), "wb") as f:
          f.write(data)
    written[split] = count * len(styles)
  return written


def build_dataset(data_dir: str | os.PathLike, *, per_class: int, size: int, seed: int = 0,
                  test_per_class: int | None = None, val_per_class: int = 0, kind: str = "textures") -> str:
  """Writes the tree of `kind` under data_dir/synthetic_trees/ and builds it as an image_folder dataset.

  Returns:
    The dataset name to pass to `sources.open_split` ('image_folder/synthetic_...').
  """
  # TFDS takes seconds to import; only this function needs it, not the CLI.
  from artstyle_jax.data import builders  # pylint: disable=g-import-not-at-top

  if test_per_class is None:
    test_per_class = max(1, per_class // 4)
  styles_of(kind)  # An unknown kind is refused before anything is written.
  prefix = "synthetic" if kind == "textures" else f"synthetic_{kind}"
  name = f"{prefix}_{size}px_{per_class}_{test_per_class}_{val_per_class}_seed{seed}"
  tree = os.path.join(os.fspath(data_dir), "synthetic_trees", name)
  if not os.path.isdir(tree):
    partial = f"{tree}.partial-{os.getpid()}"
    write_tree(partial, per_class=per_class, size=size, seed=seed,
               test_per_class=test_per_class, val_per_class=val_per_class, kind=kind)
    try:
      os.rename(partial, tree)
    except OSError:
      if not os.path.isdir(tree):
        raise
      shutil.rmtree(partial)  # Another process wrote the same (byte-identical) tree first.
  builder = builders.build("image_folder", tree, data_dir,
                           config=builders.FolderConfig(name=name),
                           image_policy=images.ImagePolicy(min_side=size))
  return builders.dataset_name(builder)
