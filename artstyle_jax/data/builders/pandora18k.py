"""Pandora18k: about 18k paintings in 18 art-movement (style) classes.

Where to get it: the Pandora project of the Image Processing and Analysis Laboratory,
University Politehnica of Bucharest (http://imag.pub.ro/pandora/, "Pandora18k"); see
C. Florea et al., "Pandora: Description of a painting database for art movement
recognition with baselines and perspectives", EUSIPCO 2016. Unpack the archive and
point manual_dir at the folder that holds the 18 style folders:

  <manual_dir>/<style>/**/<image>        e.g. 05_Baroque/<artist>/<image>.jpg

(a manual_dir holding only one folder, such as the unpacked `Pandora18k/`, is descended
into). Label names are the 18 style folder names, sorted. The dataset has no official
split: each style is split at random, deterministically for the config's seed, with the
config's fractions (default: 20% test, no validation). A tree already split into
Train/<style>/, Valid/<style>/, Test/<style>/ (the layout the published code reads) is
used as it is.
"""
from __future__ import annotations

from etils import epath

from artstyle_jax.data.builders import base
from artstyle_jax.data.builders import image_folder

NUM_STYLES = 18


class Pandora18k(base.ArtStyleBuilder):
  """Pandora18k paintings labelled with one of 18 art movements."""

  name = "pandora18k"
  BUILDER_CONFIGS = [image_folder.FolderConfig(
      name="default", description="seed 0, 20% test, no validation")]
  HOMEPAGE = "http://imag.pub.ro/pandora/"
  CITATION = """\
@inproceedings{florea2016pandora,
  title={Pandora: Description of a painting database for art movement recognition with
         baselines and perspectives},
  author={Florea, Corneliu and Condorovici, Razvan and Vertan, Constantin and Boia, Raluca
          and Florea, Laura and Vranceanu, Ruxandra},
  booktitle={European Signal Processing Conference (EUSIPCO)},
  year={2016}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download Pandora18k from http://imag.pub.ro/pandora/ and point manual_dir at the
  folder holding its 18 style folders (<style>/**/<image>), or at a tree already split
  into Train/<style>/, Valid/<style>/, Test/<style>/.
  """

  def _list_files(self, manual_dir):
    root = _descend_single_folder(manual_dir)
    names, splits = image_folder.list_folder_dataset(root, self.builder_config)
    if len(names) != NUM_STYLES:
      raise ValueError(f"Pandora18k has {NUM_STYLES} style folders, found {len(names)} under "
                       f"{root}: {names}")
    return names, splits

  def _file_names_carry_artists(self):
    return self.builder_config.split_by == "artist"


def _descend_single_folder(manual_dir: epath.Path) -> epath.Path:
  """The folder to read: manual_dir, or its only entry when that is a folder."""
  entries = [p for p in manual_dir.iterdir() if not p.name.startswith(".")]
  if len(entries) == 1 and entries[0].is_dir():
    return entries[0]
  return manual_dir
