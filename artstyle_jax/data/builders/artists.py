"""Artists read from file names, artist-disjoint splits, and how much a split shares its artists.

WikiArt names its files `<artist>_<title>.<ext>` (`vincent-van-gogh_the-starry-night-1889.jpg`):
the artist is the file name's part before its first '_' (artist slugs use '-', never '_').
A random split of such a dataset puts paintings of one artist on both sides, so a classifier can
recognise the painter instead of the style; `overlap` measures how much, `split_by_artist` makes
splits with no artist on two sides.

`split_by_artist` assigns whole artists, in a random order drawn from the seed, greedily: each
goes to the held-out split (test, then validation) whose per-class image counts it brings closest
to that split's fraction of every class (least squares over classes), or to train when it brings
none closer. Every class then holds about its share of test images, as far as its artists allow:
a class painted by one artist lies wholly on one side (the build logs a warning per such class).
"""
from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import os
from typing import Optional, Protocol, TypeVar

from absl import logging
import numpy as np


class ListedFile(Protocol):
  """What is read of a listed file (`base.SourceFile`): its key (relative path) and label."""
  key: str
  label: int


File = TypeVar("File", bound=ListedFile)


def artist_of(key: str) -> Optional[str]:
  """The artist of a file (key or path): its name's part before the first '_', None without one."""
  artist, sep, _ = os.path.basename(key).partition("_")
  return artist if sep and artist else None


def require_artists(files: Sequence[ListedFile]) -> list[str]:
  """The artist of every file, in order.

  Raises:
    ValueError: some file names carry no artist (their count and the first three).
  """
  found = [artist_of(f.key) for f in files]
  missing = [f.key for f, artist in zip(files, found) if artist is None]
  if missing:
    raise ValueError(f"split by artist needs file names <artist>_<title>; {len(missing)} files have no '_' "
                     f"in their names, e.g. {missing[:3]}")
  return found


@dataclasses.dataclass(frozen=True)
class ArtistOverlap:
  """How many of the test split's artists also have images in train, and how many test images."""
  train_artists: int
  test_artists: int
  shared_artists: int  # test artists with images in train too
  test_images: int
  test_images_of_shared_artists: int

  def summary(self) -> str:
    return (f"{self.shared_artists} of the {self.test_artists} test artists "
            f"({100 * self.shared_artists / max(self.test_artists, 1):.1f}%) also appear in train; "
            f"{self.test_images_of_shared_artists} of the {self.test_images} test images "
            f"({100 * self.test_images_of_shared_artists / max(self.test_images, 1):.1f}%) are theirs")

  def to_json(self) -> dict[str, int]:
    return dataclasses.asdict(self)


def overlap(train_files: Sequence[ListedFile], test_files: Sequence[ListedFile]) -> Optional[ArtistOverlap]:
  """The test files' artists against the training files'; None when a name carries no artist."""
  train = [artist_of(f.key) for f in train_files]
  test = [artist_of(f.key) for f in test_files]
  if None in train or None in test:
    return None
  train_artists = set(train)
  return ArtistOverlap(train_artists=len(train_artists), test_artists=len(set(test)),
                       shared_artists=len(set(test) & train_artists), test_images=len(test),
                       test_images_of_shared_artists=sum(artist in train_artists for artist in test))


def split_by_artist(files: Sequence[File], names: Sequence[str], *, seed: int, held_out: Sequence[tuple[str, float]],
                    rest: str) -> dict[str, list[File]]:
  """Artist-disjoint splits (module docstring), deterministic for a seed, each sorted by key.

  Args:
    files: the files of every class, labels indexing `names`.
    names: the class names.
    seed: seed of the order the artists are assigned in.
    held_out: (split, fraction of every class) of the held-out splits, in the order they are
      preferred on a tie (test first); fractions > 0 summing below 1.
    rest: the split of the remaining artists (train).

  Raises:
    ValueError: bad fractions, or file names without an artist (`require_artists`).
  """
  fractions = [fraction for _, fraction in held_out]
  if not held_out or min(fractions) <= 0 or sum(fractions) >= 1:
    raise ValueError(f"held-out fractions must be > 0 and sum below 1, got {dict(held_out)}")
  by_artist: dict[str, list[File]] = {}
  for file, artist in zip(files, require_artists(files)):
    by_artist.setdefault(artist, []).append(file)
  artists = sorted(by_artist)
  counts = np.zeros((len(artists), len(names)))
  for row, artist in enumerate(artists):
    np.add.at(counts[row], [f.label for f in by_artist[artist]], 1)
  targets = {split: fraction * counts.sum(axis=0) for split, fraction in held_out}
  filled = {split: np.zeros(len(names)) for split, _ in held_out}
  splits = {rest: [], **{split: [] for split, _ in held_out}}
  for row in np.random.default_rng(seed).permutation(len(artists)):
    # Change of the squared distance to the target if the artist's images joined the split.
    change = {split: float(np.sum(counts[row] * (2 * (filled[split] - targets[split]) + counts[row])))
              for split in filled}
    best = min(change, key=change.get)
    split = best if change[best] < 0 else rest
    if split != rest:
      filled[split] += counts[row]
    splits[split].extend(by_artist[artists[row]])
  for split, split_files in splits.items():
    split_files.sort(key=lambda f: f.key)
    present = {f.label for f in split_files}
    for label, name in enumerate(names):
      if label not in present and counts[:, label].sum():
        logging.warning("split by artist: class %r has no images in the %s split (its artists went elsewhere)",
                        name, split)
  return splits
