"""WikiArt paintings with style labels, split by the ArtGAN lists (27 styles).

Where to get it: the "WikiArt Dataset" folder of the ArtGAN repository
(https://github.com/cs-chan/ArtGAN, W. R. Tan et al., IEEE TIP 2019) links the images
(`wikiart.zip`, one folder per style) and holds the split lists (`wikiart_csv`):
`style_class.txt` (lines `<index> <name>`), `style_train.csv` and `style_val.csv` (lines
`<Style>/<file>.jpg,<index>`, no header). Layout of the manual directory:

  <manual_dir>/style_class.txt           the three list files, here or in
  <manual_dir>/style_train.csv           <manual_dir>/wikiart_csv/
  <manual_dir>/style_val.csv
  <manual_dir>/wikiart/<Style>/<file>    the unpacked images, here or directly
                                         as <manual_dir>/<Style>/<file>

Splits: 'train' is style_train.csv and 'test' is style_val.csv (the ArtGAN "val" list is
the held-out set papers report on). Label names and indices are those of
style_class.txt. Listed files that are missing or unreadable are skipped and reported.
These lists split the paintings, not the artists: the build logs how many test artists also
have paintings in train (file names are `<artist>_<title>.jpg`, `artists`).

`WikiArtByArtist` ('wikiart_artist/<config>', built by `builders.build('wikiart', ...,
config=FolderConfig(split_by='artist'))` or `--split_by=artist`) pools both lists and splits
them by artist (`artists.split_by_artist`): no artist on two sides, each style about the
config's test (and validation) fraction, deterministic for its seed.
"""
from __future__ import annotations

from etils import epath

from artstyle_jax.data.builders import base
from artstyle_jax.data.builders import image_folder

LIST_FILES = {"names": "style_class.txt", base.TRAIN: "style_train.csv", base.TEST: "style_val.csv"}


class WikiArt(base.ArtStyleBuilder):
  """WikiArt paintings labelled with their style, split as in ArtGAN."""

  name = "wikiart"
  HOMEPAGE = "https://github.com/cs-chan/ArtGAN"
  CITATION = """\
@article{tan2019improved,
  title={Improved ArtGAN for Conditional Synthesis of Natural Image and Artwork},
  author={Tan, Wei Ren and Chan, Chee Seng and Aguirre, Hernan and Tanaka, Kiyoshi},
  journal={IEEE Transactions on Image Processing},
  volume={28}, number={1}, pages={394--409}, year={2019}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  From https://github.com/cs-chan/ArtGAN ("WikiArt Dataset"), download wikiart.zip and the
  wikiart_csv lists. Put style_class.txt, style_train.csv and style_val.csv in manual_dir
  (or manual_dir/wikiart_csv/) and unpack the images to manual_dir/wikiart/<Style>/.
  """

  def _list_files(self, manual_dir):
    lists_dir = _find_lists_dir(manual_dir)
    image_root = manual_dir / "wikiart" if (manual_dir / "wikiart").is_dir() else manual_dir
    names = read_class_names(lists_dir / LIST_FILES["names"])
    splits = {split: read_split_list(lists_dir / LIST_FILES[split], image_root, manual_dir,
                                     len(names))
              for split in (base.TRAIN, base.TEST)}
    return names, splits

  def _file_names_carry_artists(self):
    return True


class WikiArtByArtist(WikiArt):
  """WikiArt paintings labelled with their style, split by artist (no artist on two sides)."""

  name = "wikiart_artist"
  BUILDER_CONFIGS = [image_folder.FolderConfig(name="default", split_by="artist",
                                               description="by artist, seed 0, 20% test, no validation")]

  def _list_files(self, manual_dir):
    names, listed = super()._list_files(manual_dir)
    pooled = {file.key: file for split in (base.TRAIN, base.TEST) for file in listed[split]}
    return names, image_folder.split_by_artist(list(pooled.values()), names, self.builder_config)


def _find_lists_dir(manual_dir: epath.Path) -> epath.Path:
  for candidate in (manual_dir, manual_dir / "wikiart_csv"):
    if all((candidate / f).is_file() for f in LIST_FILES.values()):
      return candidate
  raise FileNotFoundError(
      f"WikiArt: {', '.join(LIST_FILES.values())} not found in {manual_dir} or "
      f"{manual_dir / 'wikiart_csv'} (they come with ArtGAN's wikiart_csv)")


def read_class_names(path: epath.Path) -> list[str]:
  """Names from lines `<index> <name>`, indices 0..n-1 in any order."""
  by_index = {}
  for number, line in base.read_text_lines(path):
    fields = line.split(maxsplit=1)
    if len(fields) != 2 or not fields[0].isdigit():
      raise ValueError(f"{path}:{number}: expected '<index> <name>', got {line!r}")
    index = int(fields[0])
    if index in by_index:
      raise ValueError(f"{path}:{number}: index {index} appears twice")
    by_index[index] = fields[1].strip()
  if sorted(by_index) != list(range(len(by_index))):
    raise ValueError(f"{path}: indices {sorted(by_index)} are not 0..{len(by_index) - 1}")
  return [by_index[i] for i in range(len(by_index))]


def read_split_list(path: epath.Path, image_root: epath.Path, manual_dir: epath.Path,
                    num_classes: int) -> list[base.SourceFile]:
  """Files of lines `<relative path>,<label index>` (paths may themselves hold commas)."""
  files = []
  for number, line in base.read_text_lines(path):
    relative, _, label = line.rpartition(",")
    if not relative or not label.strip().lstrip("-").isdigit():
      raise ValueError(f"{path}:{number}: expected '<path>,<label index>', got {line!r}")
    label = base.check_label(int(label), num_classes, f"{path}:{number}")
    image = image_root / relative.strip()
    files.append(base.SourceFile(image, base.relative_key(image, manual_dir), label))
  return files
