"""A procedural art-style dataset: the embedded data of the demo and the tests.

Ten styles (`styles.py`: brushstroke, pointillism, hard_edge, op_art, color_field, mosaic,
drip, hatching, cubist_facets, sfumato), each a way of putting paint down rather than a thing
depicted.

Layout and content are random in every image, and every image draws its own palette from
one distribution shared by all styles (hue uniform, saturation and value broad), so
neither object identity nor mean colour separates the classes: texture does (scale, edge
sharpness, orientation statistics, frequency content). All images get a little canvas
grain.

Output: a class-per-folder tree that `builders.image_folder` reads,

  <out>/train/<style>/<style>_00000.jpg ...   `per_class` images per style
  <out>/test/<style>/...                      `test_per_class` (default per_class // 4)
  <out>/valid/<style>/...                     only with val_per_class > 0

Every image is rendered from its own generator seeded by (seed, split, style, index), so
the files are byte-identical for a seed (given the same NumPy and Pillow builds: float
rounding or the JPEG library may differ between them), and an image does not depend on
how many others are written. Program (`__main__.py`):

  python -m artstyle_jax.data.synthetic --out=DIR --per_class=N --size=S [--seed=K]
      [--test_per_class=M] [--val_per_class=V]
"""
from __future__ import annotations

import os
import shutil
from typing import Sequence

import numpy as np
from PIL import Image

from artstyle_jax.data import images
from artstyle_jax.data.synthetic.styles import render
from artstyle_jax.data.synthetic.styles import STYLES

JPEG_QUALITY = 90
SPLIT_CODES = {"train": 0, "test": 1, "valid": 2}


def image_rng(seed: int, split: str, style: str, index: int) -> np.random.Generator:
  """The generator of one image, independent of every other image's."""
  return np.random.default_rng([seed, SPLIT_CODES[split], list(STYLES).index(style), index])


def write_tree(out_dir: str | os.PathLike, *, per_class: int, size: int, seed: int = 0,
               test_per_class: int | None = None, val_per_class: int = 0,
               styles: Sequence[str] = tuple(STYLES)) -> dict[str, int]:
  """Writes the class-per-folder tree (see module docstring).

  Returns:
    {split folder: number of images written}.
  """
  if test_per_class is None:
    test_per_class = max(1, per_class // 4)
  counts = {"train": per_class, "test": test_per_class, "valid": val_per_class}
  if per_class < 1 or test_per_class < 0 or val_per_class < 0:
    raise ValueError(f"need per_class >= 1 and non-negative test/val counts, got {counts}")
  written = {}
  for split, count in counts.items():
    if count == 0:
      continue
    for style in styles:
      folder = os.path.join(os.fspath(out_dir), split, style)
      os.makedirs(folder, exist_ok=True)
      for index in range(count):
        pixels = render(style, size, image_rng(seed, split, style, index))
        data = images.encode_jpeg(Image.fromarray(pixels, "RGB"), JPEG_QUALITY)
        with open(os.path.join(folder, f"{style}_{index:05d}.jpg"), "wb") as f:
          f.write(data)
    written[split] = count * len(styles)
  return written


def build_dataset(data_dir: str | os.PathLike, *, per_class: int, size: int, seed: int = 0,
                  test_per_class: int | None = None, val_per_class: int = 0) -> str:
  """Writes the tree under data_dir/synthetic_trees/ and builds it as an image_folder dataset.

  Returns:
    The dataset name to pass to `sources.open_split` ('image_folder/synthetic_...').
  """
  # TFDS takes seconds to import; only this function needs it, not the CLI.
  from artstyle_jax.data import builders  # pylint: disable=g-import-not-at-top

  if test_per_class is None:
    test_per_class = max(1, per_class // 4)
  name = f"synthetic_{size}px_{per_class}_{test_per_class}_{val_per_class}_seed{seed}"
  tree = os.path.join(os.fspath(data_dir), "synthetic_trees", name)
  if not os.path.isdir(tree):
    partial = f"{tree}.partial-{os.getpid()}"
    write_tree(partial, per_class=per_class, size=size, seed=seed,
               test_per_class=test_per_class, val_per_class=val_per_class)
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
