"""TFDS builders of the art-style datasets; they write ArrayRecord and need no TensorFlow.

  wikiart       WikiArt, 27 styles, ArtGAN train/val lists  (builders/wikiart.py);
                with FolderConfig(split_by='artist'): wikiart_artist/<config>, split by artist
  pandora18k    Pandora18k, 18 styles, seeded split          (builders/pandora18k.py)
  flickr_style  Flickr Style, 20 styles, train/test lists    (builders/flickr_style.py)
  image_folder  any class-per-folder tree                    (builders/image_folder.py)

Each module's docstring says where the data comes from and the layout it expects. Build:

  builder = builders.build('wikiart', manual_dir='/data/wikiart_raw', data_dir='/data/tfds')

or `python -m artstyle_jax.data.builders --dataset=wikiart --manual_dir=... --data_dir=...`,
then read splits with `artstyle_jax.data.sources.open_split(dataset_name(builder), ...)`.
"""
from __future__ import annotations

import json
import os

from absl import logging
import tensorflow_datasets as tfds

from artstyle_jax.data import images
from artstyle_jax.data.builders import base
from artstyle_jax.data.builders.flickr_style import FlickrStyle
from artstyle_jax.data.builders.image_folder import FolderConfig
from artstyle_jax.data.builders.image_folder import ImageFolder
from artstyle_jax.data.builders.pandora18k import Pandora18k
from artstyle_jax.data.builders.wikiart import WikiArt
from artstyle_jax.data.builders.wikiart import WikiArtByArtist

BUILDERS: dict[str, type[base.ArtStyleBuilder]] = {
    cls.name: cls for cls in (WikiArt, Pandora18k, FlickrStyle, ImageFolder)
}
REPORT_FILE = "build_report.json"


def build(dataset: str, manual_dir: str | os.PathLike, data_dir: str | os.PathLike, *,
          config: str | FolderConfig | None = None,
          image_policy: images.ImagePolicy = images.ImagePolicy(),
          num_workers: int | None = None) -> base.ArtStyleBuilder:
  """Builds a dataset from its manual directory into data_dir (no-op if already built).

  Args:
    dataset: one of BUILDERS ('wikiart', 'pandora18k', 'flickr_style', 'image_folder').
    manual_dir: the downloaded copy, laid out as the builder's module docstring says.
    data_dir: TFDS data directory the ArrayRecord files go to.
    config: for 'image_folder' and 'pandora18k', a FolderConfig (its name names the
      dataset: image_folder/<name>) or the name of a predefined one; None: 'default'. For
      'wikiart', a FolderConfig with split_by='artist' builds `WikiArtByArtist`
      (wikiart_artist/<name>); None: the ArtGAN lists.
    image_policy: how unusual images are treated (artstyle_jax.data.images).
    num_workers: image decoding threads.

  Returns:
    The builder; `builder.build_report` maps each split to its SplitReport (empty when
    the dataset was already built), also written to <dataset dir>/build_report.json, with
    `builder.artist_overlap` (None when file names carry no artist) under 'artist_overlap'.
  """
  if dataset not in BUILDERS:
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(BUILDERS)}")
  builder_class = BUILDERS[dataset]
  if dataset == WikiArt.name and isinstance(config, FolderConfig):
    if config.split_by != "artist":
      raise ValueError("wikiart is split by its ArtGAN lists, or by artist with a config of split_by='artist'")
    builder_class = WikiArtByArtist
  if isinstance(config, FolderConfig):
    config = _predefined_name_or_config(builder_class, config)
  builder = builder_class(data_dir=os.fspath(data_dir), config=config,
                          image_policy=image_policy, num_workers=num_workers)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
  if builder.build_report:
    report = {split: r.to_json() for split, r in builder.build_report.items()}
    if builder.artist_overlap is not None:
      report["artist_overlap"] = builder.artist_overlap.to_json()
    with open(os.path.join(os.fspath(builder.data_dir), REPORT_FILE), "w") as f:
      json.dump(report, f, indent=1)
  else:
    logging.info("%s was already built in %s", dataset_name(builder), builder.data_dir)
  return builder


def dataset_name(builder: tfds.core.DatasetBuilder) -> str:
  """The name that `sources.open_split` takes for this builder: 'name' or 'name/config'."""
  if builder.builder_config is None:
    return builder.name
  return f"{builder.name}/{builder.builder_config.name}"


def _predefined_name_or_config(builder_class: type[base.ArtStyleBuilder],
                               config: FolderConfig) -> str | FolderConfig:
  """TFDS takes a predefined config only by name: pass the name when the settings agree."""
  predefined = {c.name: c for c in builder_class.BUILDER_CONFIGS}.get(config.name)
  if predefined is None:
    return config
  settings = lambda c: (c.seed, c.val_fraction, c.test_fraction, c.split_by)
  if settings(predefined) != settings(config):
    raise ValueError(
        f"{builder_class.name} config {config.name!r} is predefined with (seed, val_fraction, "
        f"test_fraction, split_by) = {settings(predefined)}, not {settings(config)}: give these "
        "settings a config name of their own")
  return config.name
