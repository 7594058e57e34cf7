"""What every art-style TFDS builder shares: the example format, bad-file handling, splits.

Example format (one record per image, ArrayRecord files, read with `tfds.data_source`
or `artstyle_jax.data.sources.open_split`):
  'image':    tfds.features.Image, stored as JPEG bytes of an 8-bit RGB image (see
              `artstyle_jax.data.images` for what becomes of unusual files).
  'label':    tfds.features.ClassLabel, the style index; names in the dataset info.
  'filename': tfds.features.Text, the file's path relative to the manual directory.

Builders subclass `ArtStyleBuilder` and implement `_list_files(manual_dir)`, returning the
label names and, per split, the files with their labels. Each file is read once, in
parallel threads (PIL releases the GIL while decoding and encoding): good files become
examples, bad ones are skipped with a warning naming the file and the reason, and the
per-split counts are logged at the end of the split and kept in `builder.build_report`. A
builder whose file names carry the artist (`_file_names_carry_artists`, WikiArt's
`<artist>_<title>.jpg`) also logs how many test artists have paintings in train
(`builder.artist_overlap`, `artists.ArtistOverlap`).
"""
from __future__ import annotations

import abc
import collections
import concurrent.futures
import dataclasses
import os
from typing import Iterator, Mapping, Sequence
import zlib

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from artstyle_jax.data import images
from artstyle_jax.data.builders import artists

TRAIN, VALIDATION, TEST = "train", "validation", "test"

# Folder names of split subtrees (compared in lower case) and the TFDS split they hold.
SPLIT_FOLDERS = {"train": TRAIN, "valid": VALIDATION, "val": VALIDATION,
                 "validation": VALIDATION, "test": TEST}


@dataclasses.dataclass(frozen=True)
class SourceFile:
  """One listed image: where it is, what it is called in the dataset, its label index."""
  path: epath.Path
  key: str
  label: int


@dataclasses.dataclass
class SplitReport:
  """What a build did with the files of one split. Lists hold (filename, detail)."""
  written: int = 0
  skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  converted: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  downscaled: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  small: list[tuple[str, str]] = dataclasses.field(default_factory=list)

  def summary(self) -> str:
    return (f"{self.written} examples written, {len(self.skipped)} files skipped, "
            f"{len(self.converted)} converted to 8-bit RGB, {len(self.downscaled)} downscaled, "
            f"{len(self.small)} smaller than the crop (kept)")

  def to_json(self) -> dict[str, object]:
    return dataclasses.asdict(self)


class ArtStyleBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the art-style builders: reads a manual directory, writes ArrayRecord."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  HOMEPAGE = ""
  CITATION = ""

  def __init__(self, *, image_policy: images.ImagePolicy = images.ImagePolicy(),
               num_workers: int | None = None, **kwargs):
    """Creates the builder.

    Args:
      image_policy: how unusual images are treated (artstyle_jax.data.images).
      num_workers: image decoding threads; default: the CPU count, at most 8.
      **kwargs: tfds.core.DatasetBuilder's (data_dir, config, version, file_format);
        file_format defaults to 'array_record'.
    """
    kwargs.setdefault("file_format", "array_record")
    self.image_policy = image_policy
    self.num_workers = num_workers or min(8, os.cpu_count() or 1)
    self.build_report: dict[str, SplitReport] = {}
    self.artist_overlap: artists.ArtistOverlap | None = None
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(self.__doc__ or "").strip().split("\n")[0],
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(),
            "filename": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
    )

  @abc.abstractmethod
  def _list_files(self, manual_dir: epath.Path) -> tuple[list[str], dict[str, list[SourceFile]]]:
    """Returns (label_names, {split: files}) for the manual directory."""

  def _file_names_carry_artists(self) -> bool:
    """Whether the file names are `<artist>_<title>`, so that the build reports the artists the
    test split shares with train."""
    return False

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = epath.Path(dl_manager.manual_dir)
    if not manual_dir.is_dir():
      raise FileNotFoundError(
          f"{self.name}: manual directory {manual_dir} does not exist.\n"
          f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    names, listed = self._list_files(manual_dir)
    splits = {split: files for split, files in listed.items() if files}
    for split in listed.keys() - splits.keys():
      logging.warning("%s: split %r lists no files; the dataset will not have it", self.name,
                      split)
    if not splits:
      raise ValueError(f"{self.name}: no image files found under {manual_dir}")
    self.info.features["label"].names = names
    self.build_report = {split: SplitReport() for split in splits}
    if self._file_names_carry_artists() and TRAIN in splits and TEST in splits:
      self.artist_overlap = artists.overlap(splits[TRAIN], splits[TEST])
      if self.artist_overlap is not None:
        logging.info("%s artists: %s", self.name, self.artist_overlap.summary())
    return {split: self._generate_examples(split, files) for split, files in splits.items()}

  def _generate_examples(self, split: str, files: Sequence[SourceFile]):
    report = self.build_report[split]
    seen = set()
    unique = []
    for file in files:
      if file.key in seen:
        _skip(report, split, file.key, "listed twice in the split; kept the first entry")
      else:
        seen.add(file.key)
        unique.append(file)
    for file, result in _prepare_all(unique, self.image_policy, self.num_workers):
      if isinstance(result, images.BadImageError):
        _skip(report, split, file.key, str(result))
        continue
      _note_changes(report, split, file.key, result, self.image_policy)
      report.written += 1
      yield file.key, {"image": result.data, "label": file.label, "filename": file.key}
    logging.info("%s %s: %s", self.name, split, report.summary())
    if report.written == 0:
      raise ValueError(f"{self.name}: none of the {len(files)} files of the {split!r} split is "
                       "a usable image (each skipped file has a log line above)")


def _skip(report: SplitReport, split: str, key: str, reason: str) -> None:
  report.skipped.append((key, reason))
  logging.warning("Skipping %s (%s split): %s", key, split, reason)


def _note_changes(report: SplitReport, split: str, key: str, image: images.PreparedImage,
                  policy: images.ImagePolicy) -> None:
  if image.converted_from is not None:
    report.converted.append((key, image.converted_from))
    logging.info("Converted %s (%s split) from mode %s to 8-bit RGB", key, split,
                 image.converted_from)
  if image.downscaled_from is not None:
    old = "x".join(map(str, image.downscaled_from))
    report.downscaled.append((key, f"{old} -> {image.width}x{image.height}"))
    logging.info("Downscaled %s (%s split) from %s to %dx%d (more than %d pixels)", key, split,
                 old, image.width, image.height, policy.max_pixels)
  if image.small:
    report.small.append((key, f"{image.width}x{image.height}"))
    logging.info("Kept small image %s (%s split): %dx%d, shorter side below %d px", key, split,
                 image.width, image.height, policy.min_side)


def _prepare_all(files: Sequence[SourceFile], policy: images.ImagePolicy, num_workers: int
                 ) -> Iterator[tuple[SourceFile, images.PreparedImage | images.BadImageError]]:
  """prepare_image over files in threads, in order, holding at most 4 * num_workers results."""

  def prepare(file: SourceFile) -> images.PreparedImage | images.BadImageError:
    try:
      return images.prepare_image(file.path, policy)
    except images.BadImageError as e:
      return e

  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    pending = collections.deque()
    for file in files:
      pending.append((file, pool.submit(prepare, file)))
      if len(pending) >= 4 * num_workers:
        done, future = pending.popleft()
        yield done, future.result()
    while pending:
      done, future = pending.popleft()
      yield done, future.result()


def list_images(root: epath.Path) -> list[epath.Path]:
  """Every non-hidden regular file under root, recursively, sorted by relative path.

  Non-image files are listed too, so that the build reports them as skipped.
  """
  root_str = os.fspath(root)
  found = []
  for directory, subdirs, filenames in os.walk(root_str, followlinks=True):
    subdirs[:] = [d for d in subdirs if not d.startswith(".")]
    found.extend(os.path.join(directory, f) for f in filenames if not f.startswith("."))
  found.sort(key=lambda p: os.path.relpath(p, root_str).replace(os.sep, "/"))
  return [epath.Path(p) for p in found]


def class_folders(root: epath.Path) -> list[str]:
  """Sorted names of the non-hidden subdirectories of root."""
  return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def split_subtrees(root: epath.Path) -> dict[str, epath.Path] | None:
  """{split: folder} when root holds split subtrees (Train/, Valid/, Test/, any case), else None.

  Raises:
    ValueError: two folders map to the same split, or split folders lack a train folder.
  """
  found: dict[str, epath.Path] = {}
  for name in class_folders(root):
    split = SPLIT_FOLDERS.get(name.lower())
    if split is None:
      continue
    if split in found:
      raise ValueError(f"{root}: folders {found[split].name!r} and {name!r} both name the "
                       f"{split!r} split")
    found[split] = root / name
  if not found:
    return None
  if TRAIN not in found:
    raise ValueError(f"{root}: split folders {sorted(p.name for p in found.values())} "
                     "have no train folder (Train/ or train/)")
  return found


def relative_key(path: epath.Path, manual_dir: epath.Path) -> str:
  return os.path.relpath(os.fspath(path), os.fspath(manual_dir)).replace(os.sep, "/")


def split_by_seed(files_by_class: Mapping[str, Sequence[epath.Path]], names: Sequence[str],
                  manual_dir: epath.Path, *, seed: int, val_fraction: float,
                  test_fraction: float) -> dict[str, list[SourceFile]]:
  """Splits each class's files at random, deterministically for a seed.

  Per class, with n files sorted by path: round(n * test_fraction) go to 'test',
  round(n * val_fraction) to 'validation', the rest to 'train'. The permutation of a class
  depends only on the seed and the class name, so adding a class or a file elsewhere does
  not move files between splits. 'validation' exists only when val_fraction > 0.
  """
  if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0
          and val_fraction + test_fraction < 1.0):
    raise ValueError(f"need 0 <= val_fraction, test_fraction and their sum < 1, got "
                     f"val_fraction={val_fraction}, test_fraction={test_fraction}")
  splits = {TRAIN: [], TEST: []}
  if val_fraction > 0:
    splits[VALIDATION] = []
  for label, name in enumerate(names):
    files = list(files_by_class.get(name, ()))
    rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
    order = rng.permutation(len(files))
    n_test = round(len(files) * test_fraction)
    n_val = round(len(files) * val_fraction)
    for rank, i in enumerate(order):
      split = TEST if rank < n_test else VALIDATION if rank < n_test + n_val else TRAIN
      splits[split].append(SourceFile(files[i], relative_key(files[i], manual_dir), label))
  for files in splits.values():
    files.sort(key=lambda f: f.key)
  return splits


def read_text_lines(path: epath.Path) -> list[tuple[int, str]]:
  """(line number, stripped line) of the non-empty lines of a UTF-8 text file."""
  with open(os.fspath(path), encoding="utf-8-sig") as f:
    return [(n, line.strip()) for n, line in enumerate(f, start=1) if line.strip()]


def check_label(label: int, num_classes: int, where: str) -> int:
  if not 0 <= label < num_classes:
    raise ValueError(f"{where}: label {label} is outside [0, {num_classes})")
  return label
