"""Flickr Style: about 80k Flickr photographs in 20 photographic-style classes.

Where to get it: S. Karayev et al., "Recognizing Image Style", BMVC 2014
(http://sergeykarayev.com/recognizing-image-style/). The dataset is distributed as a list
of image URLs with labels and a train/test assignment: `flickr_style.csv.gz` in Caffe's
`examples/finetune_flickr_style/` (https://github.com/BVLC/caffe), whose
`assemble_data.py` downloads the images into `images/` and writes `train.txt` and
`test.txt` (lines `<image path> <label>`). Either result works as the manual directory:

  <manual_dir>/images/<file>             the downloaded images, named as in their URL
  <manual_dir>/train.txt, test.txt       assemble_data.py's lists (preferred when present:
                                         they hold only the images that downloaded), or
  <manual_dir>/flickr_style.csv[.gz]     the CSV (columns include image_url, label and
                                         _split, which is 'train' or 'test')
  <manual_dir>/style_names.txt           optional: one name per line, label order;
                                         default: Caffe's style_names.txt order

Images are looked up by file name (the last component of the URL or listed path) in
images/. Splits: 'train' and 'test' as listed. Listed images that are missing (dead
URLs) or unreadable are skipped and reported.
"""
from __future__ import annotations

import csv
import gzip
import io
import os

from etils import epath

from artstyle_jax.data.builders import base

# Label order of Caffe's examples/finetune_flickr_style/style_names.txt.
STYLE_NAMES = (
    "Detailed", "Pastel", "Melancholy", "Noir", "HDR", "Vintage", "Long Exposure", "Horror",
    "Sunny", "Bright", "Hazy", "Bokeh", "Serene", "Texture", "Ethereal", "Macro",
    "Depth of Field", "Geometric Composition", "Minimal", "Romantic",
)


class FlickrStyle(base.ArtStyleBuilder):
  """Flickr photographs labelled with one of 20 photographic styles."""

  name = "flickr_style"
  HOMEPAGE = "http://sergeykarayev.com/recognizing-image-style/"
  CITATION = """\
@inproceedings{karayev2014recognizing,
  title={Recognizing Image Style},
  author={Karayev, Sergey and Trentacoste, Matthew and Han, Helen and Agarwala, Aseem and
          Darrell, Trevor and Hertzmann, Aaron and Winnemoeller, Holger},
  booktitle={British Machine Vision Conference (BMVC)},
  year={2014}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Run Caffe's examples/finetune_flickr_style/assemble_data.py (or download the URLs of
  flickr_style.csv.gz yourself) and put the images in manual_dir/images/, with either
  train.txt and test.txt or flickr_style.csv[.gz] in manual_dir.
  """

  def _list_files(self, manual_dir):
    names_file = manual_dir / "style_names.txt"
    names = ([line for _, line in base.read_text_lines(names_file)] if names_file.is_file()
             else list(STYLE_NAMES))
    image_dir = manual_dir / "images"
    if (manual_dir / "train.txt").is_file() and (manual_dir / "test.txt").is_file():
      listed = {split: _read_caffe_list(manual_dir / f"{split}.txt", len(names))
                for split in (base.TRAIN, base.TEST)}
    else:
      listed = _read_csv(_find_csv(manual_dir), len(names))
    splits = {}
    for split, entries in listed.items():
      splits[split] = [
          base.SourceFile(image_dir / filename, f"images/{filename}", label)
          for filename, label in entries
      ]
    return names, splits


def _find_csv(manual_dir: epath.Path) -> epath.Path:
  for name in ("flickr_style.csv.gz", "flickr_style.csv"):
    if (manual_dir / name).is_file():
      return manual_dir / name
  raise FileNotFoundError(
      f"Flickr Style: {manual_dir} holds neither train.txt and test.txt nor "
      "flickr_style.csv[.gz]")


def _file_name(path_or_url: str) -> str:
  return path_or_url.strip().replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _read_caffe_list(path: epath.Path, num_classes: int) -> list[tuple[str, int]]:
  """(file name, label) from lines `<image path> <label>`."""
  entries = []
  for number, line in base.read_text_lines(path):
    image, _, label = line.rpartition(" ")
    if not image or not label.lstrip("-").isdigit():
      raise ValueError(f"{path}:{number}: expected '<image path> <label>', got {line!r}")
    entries.append((_file_name(image), base.check_label(int(label), num_classes,
                                                         f"{path}:{number}")))
  return entries


def _read_csv(path: epath.Path, num_classes: int) -> dict[str, list[tuple[str, int]]]:
  """{split: [(file name, label)]} from the CSV's image_url, label and _split columns."""
  opener = gzip.open if path.name.endswith(".gz") else open
  with opener(os.fspath(path), "rb") as f:
    text = io.TextIOWrapper(f, encoding="utf-8-sig", newline="")
    reader = csv.DictReader(text)
    missing = {"image_url", "label", "_split"} - set(reader.fieldnames or ())
    if missing:
      raise ValueError(f"{path}: missing columns {sorted(missing)} (has {reader.fieldnames})")
    splits = {base.TRAIN: [], base.TEST: []}
    for row in reader:
      where = f"{path}:{reader.line_num}"
      if row["_split"] not in splits:
        raise ValueError(f"{where}: _split is {row['_split']!r}, expected 'train' or 'test'")
      try:
        label = int(float(row["label"]))
      except ValueError:
        raise ValueError(f"{where}: label {row['label']!r} is not a number") from None
      label = base.check_label(label, num_classes, where)
      splits[row["_split"]].append((_file_name(row["image_url"]), label))
  return splits
