"""Built dataset splits as random-access sources for Grain (ArrayRecord, no TensorFlow).

A source is what `tfds.data_source` returns: `len(source)` examples, `source[i]` and
`source.__getitems__(indices)` give dicts (the same index always gives the same example),
and it pickles, so Grain worker processes can each open their own. Every example is

  {'image':    bytes, a JPEG of an 8-bit RGB image, not decoded here: decode it in the
               pipeline (PIL, `geometry.decode_rgb`, or PIL's draft mode for a reduced-size
               decode before cropping),
   'label':    int, the class index into `label_names(...)`,
   'filename': bytes, the UTF-8 path of the source file relative to the manual directory}

Dataset names are those `builders.dataset_name` gives: 'wikiart', 'flickr_style',
'pandora18k/default', 'image_folder/<config>' (a version may follow: 'wikiart:1.0.0';
without one, the newest built version). Splits: 'train', 'test' and, where the dataset has
one, 'validation'; TFDS slicing works ('train[:90%]').

Opening reads the dataset's own metadata from data_dir, so it needs neither the builder
code nor network access.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from etils import epath
import tensorflow_datasets as tfds
from tensorflow_datasets.core import read_only_builder


class DatasetError(ValueError):
  """A dataset the program cannot use: none named, a split it lacks, too few examples."""


def load_builder(dataset_name: str, data_dir: str | os.PathLike) -> tfds.core.DatasetBuilder:
  """A read-only builder of a dataset built in data_dir.

  Raises:
    FileNotFoundError: no such dataset (or config, or version) was built in data_dir.
  """
  try:
    return read_only_builder.builder_from_files(dataset_name, data_dir=os.fspath(data_dir))
  except Exception as e:  # pylint: disable=broad-except
    raise FileNotFoundError(
        f"no built dataset {dataset_name!r} in {os.fspath(data_dir)}: "
        "build it with `python -m artstyle_jax.data.builders`, or pass --config.dataset.name / "
        "--config.dataset.data_dir") from e


def open_split(dataset_name: str, data_dir: str | os.PathLike | None, split: str
               ) -> Sequence[dict[str, Any]]:
  """The examples of one split, with the image left as encoded bytes (see module docstring).

  Raises:
    DatasetError: no data_dir given, or the dataset has no such split.
    FileNotFoundError: data_dir does not exist, or the dataset was not built in it.
  """
  if not data_dir:
    raise DatasetError("dataset.data_dir is not set: pass --config.dataset.data_dir=DIR")
  if not epath.Path(data_dir).exists():
    raise FileNotFoundError(f"dataset.data_dir {os.fspath(data_dir)} does not exist")
  builder = load_builder(dataset_name, data_dir)
  available = sorted(builder.info.splits.keys())
  base_split = split.split("[", 1)[0]
  if base_split not in available:
    raise DatasetError(f"{dataset_name} has no split {base_split!r}; it has {available}")
  return builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})


def label_names(dataset_name: str, data_dir: str | os.PathLike) -> list[str]:
  """The class names; label i of an example is the i-th name."""
  return list(load_builder(dataset_name, data_dir).info.features["label"].names)
