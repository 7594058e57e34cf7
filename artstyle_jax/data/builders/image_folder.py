"""Any class-per-folder image tree as a TFDS dataset (the layout the published code reads).

Layouts of the manual directory (the tree's root), either

  Train/<class>/**/<image>      split subtrees, folder names in any case:
  Valid/<class>/**/<image>      train/ (required), valid/ val/ validation/ -> 'validation',
  Test/<class>/**/<image>       test/ -> 'test'

or

  <class>/**/<image>            one tree, split per class at random, deterministically for
                                `FolderConfig.seed`, into 'train', 'test' and (when
                                val_fraction > 0) 'validation'; with `split_by='artist'`,
                                files named <artist>_<title>.<ext> (WikiArt's names) are
                                split by artist instead: no artist in two splits
                                (`artists.split_by_artist`).

Label names are the class folder names, sorted; label i is the i-th name. Images may sit
in nested folders below their class folder. Hidden files and folders are ignored; every
other file is read, and files that are not usable images are skipped and reported.

Each tree gets its own config (a `FolderConfig` with its own name), so several trees can
live in one data_dir: data_dir/image_folder/<config name>/<version>/. Build with
`artstyle_jax.data.builders.build('image_folder', manual_dir, data_dir,
config=FolderConfig(name='mytree'))` or the `python -m artstyle_jax.data.builders` CLI,
and open a split with `sources.open_split('image_folder/mytree', data_dir, 'train')`.
"""
from __future__ import annotations

import dataclasses

from absl import logging
from etils import epath
import tensorflow_datasets as tfds

from artstyle_jax.data.builders import artists
from artstyle_jax.data.builders import base

SPLIT_BY = ("image", "artist")


@dataclasses.dataclass
class FolderConfig(tfds.core.BuilderConfig):
  """How a folder dataset is split when its tree has no split subtrees.

  Attributes:
    seed: seed of the per-class random split.
    val_fraction: fraction of each class's files that go to 'validation' (0: no such split).
    test_fraction: fraction of each class's files that go to 'test'.
    split_by: 'image' (each class's files at random) or 'artist' (whole artists, read from file
      names <artist>_<title>.<ext>, about the fractions of each class: `artists.split_by_artist`).
  """
  seed: int = 0
  val_fraction: float = 0.0
  test_fraction: float = 0.2
  split_by: str = "image"


def split_files(files_by_class: dict[str, list[epath.Path]], names: list[str], manual_dir: epath.Path,
                config: FolderConfig) -> dict[str, list[base.SourceFile]]:
  """Each class's files split as `config` says: by image (`base.split_by_seed`) or by artist."""
  if config.split_by not in SPLIT_BY:
    raise ValueError(f"split_by must be one of {SPLIT_BY}, got {config.split_by!r}")
  if config.split_by == "image":
    return base.split_by_seed(files_by_class, names, manual_dir, seed=config.seed, val_fraction=config.val_fraction,
                              test_fraction=config.test_fraction)
  files = [base.SourceFile(path, base.relative_key(path, manual_dir), label)
           for label, name in enumerate(names) for path in files_by_class.get(name, ())]
  return split_by_artist(files, names, config)


def split_by_artist(files: list[base.SourceFile], names: list[str],
                    config: FolderConfig) -> dict[str, list[base.SourceFile]]:
  """`artists.split_by_artist` of `files` into 'test', 'validation' (when config.val_fraction > 0)
  and 'train', with config's fractions and seed."""
  held_out = [(base.TEST, config.test_fraction)] + (
      [(base.VALIDATION, config.val_fraction)] if config.val_fraction > 0 else [])
  return artists.split_by_artist(files, names, seed=config.seed, held_out=held_out, rest=base.TRAIN)


def list_folder_dataset(manual_dir: epath.Path, config: FolderConfig
                        ) -> tuple[list[str], dict[str, list[base.SourceFile]]]:
  """(label names, {split: files}) of a class-per-folder tree; see the module docstring."""
  subtrees = base.split_subtrees(manual_dir)
  if subtrees is None:
    names = base.class_folders(manual_dir)
    _check_has_classes(names, manual_dir)
    files_by_class = {name: base.list_images(manual_dir / name) for name in names}
    return names, split_files(files_by_class, names, manual_dir, config)

  if config.split_by != "image":
    raise ValueError(f"{manual_dir} is already split into {sorted(p.name for p in subtrees.values())}: "
                     f"split_by={config.split_by!r} splits a tree of class folders only")

  split_roots = {p.name for p in subtrees.values()}
  ignored = [name for name in base.class_folders(manual_dir) if name not in split_roots]
  if ignored:
    logging.warning("%s: ignoring folders %s next to the split folders", manual_dir, ignored)
  names = sorted(set().union(*(base.class_folders(root) for root in subtrees.values())))
  _check_has_classes(names, manual_dir)
  splits = {}
  for split, root in subtrees.items():
    splits[split] = [
        base.SourceFile(path, base.relative_key(path, manual_dir), label)
        for label, name in enumerate(names) if (root / name).is_dir()
        for path in base.list_images(root / name)
    ]
  return names, splits


def _check_has_classes(names: list[str], manual_dir: epath.Path) -> None:
  if not names:
    raise ValueError(f"{manual_dir} has no class folders: expected <class>/<image> or "
                     "Train/<class>/<image> (see artstyle_jax.data.builders.image_folder)")


class ImageFolder(base.ArtStyleBuilder):
  """A class-per-folder image tree (Train/Valid/Test subtrees or one tree split by seed)."""

  name = "image_folder"
  BUILDER_CONFIGS = [FolderConfig(name="default", description="seed 0, 20% test, no validation")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Point manual_dir at the root of a class-per-folder tree: Train/<class>/<image> (with
  optional Valid/ and Test/ subtrees), or <class>/<image> to be split by FolderConfig's
  seed and fractions.
  """

  def _list_files(self, manual_dir):
    return list_folder_dataset(manual_dir, self.builder_config)

  def _file_names_carry_artists(self):
    return self.builder_config.split_by == "artist"
