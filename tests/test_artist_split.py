"""Artist-disjoint splits of trees whose file names carry the artist (WikiArt's `<artist>_<title>.jpg`):
no artist on two sides, every file once, the same split for a seed; a random split's leak (test
artists with paintings in train) is counted and printed; names without an artist are refused."""
import io
import json
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from artstyle_jax.data import builders
from artstyle_jax.data import sources
from artstyle_jax.data.builders import artists
from artstyle_jax.data.builders import base
from artstyle_jax.data.builders import image_folder
from helpers import run_program

tfds.disable_progress_bar()

STYLES = ("Baroque", "Cubism", "Impressionism")
# artist -> paintings per style (some artists paint in two styles)
PAINTERS = {
    "rembrandt": (4, 0, 0), "rubens": (3, 0, 0), "caravaggio": (2, 0, 0), "vermeer": (3, 0, 0),
    "pablo-picasso": (0, 4, 2), "georges-braque": (0, 3, 0), "juan-gris": (0, 2, 0), "fernand-leger": (0, 3, 0),
    "claude-monet": (0, 0, 4), "edgar-degas": (0, 0, 3), "camille-pissarro": (0, 0, 2), "paul-cezanne": (1, 1, 2),
}


def write_jpeg(path, seed):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  buffer = io.BytesIO()
  Image.fromarray(np.random.default_rng(seed).integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(buffer, "JPEG")
  with open(path, "wb") as f:
    f.write(buffer.getvalue())


def write_artist_tree(root):
  """<style>/<artist>_painting-<i>.jpg for PAINTERS; returns {relative path: artist}."""
  written = {}
  for artist, per_style in PAINTERS.items():
    for style, count in zip(STYLES, per_style):
      for i in range(count):
        key = f"{style}/{artist}_painting-{i}.jpg"
        write_jpeg(os.path.join(root, key), len(written))
        written[key] = artist
  return written


def split_artists(splits):
  return {split: {artists.artist_of(f.key) for f in files} for split, files in splits.items()}


def test_the_artist_is_the_file_names_part_before_the_first_underscore():
  assert artists.artist_of("Cubism/pablo-picasso_guernica_1937.jpg") == "pablo-picasso"
  assert artists.artist_of("Cubism/guernica.jpg") is None and artists.artist_of("Cubism/_x.jpg") is None


def test_split_by_artist_puts_every_artist_on_one_side_every_file_once_the_same_for_a_seed(tmp_path):
  written = write_artist_tree(tmp_path)
  config = image_folder.FolderConfig(name="artists", split_by="artist", test_fraction=0.3, val_fraction=0.2)
  names, splits = image_folder.list_folder_dataset(tmp_path, config)
  assert names == list(STYLES) and set(splits) == {"train", "validation", "test"}
  assert sorted(f.key for files in splits.values() for f in files) == sorted(written)
  by_split = split_artists(splits)
  assert not (by_split["train"] & by_split["test"]) and not (by_split["train"] & by_split["validation"])
  assert not (by_split["test"] & by_split["validation"]) and all(by_split.values())
  for files in splits.values():
    assert all(names[f.label] == f.key.split("/")[0] for f in files)
  assert image_folder.list_folder_dataset(tmp_path, config) == (names, splits)
  other_seed = image_folder.FolderConfig(name="artists", split_by="artist", test_fraction=0.3, val_fraction=0.2,
                                         seed=1)
  assert image_folder.list_folder_dataset(tmp_path, other_seed)[1] != splits


def test_split_by_artist_holds_about_the_test_fraction_of_every_style():
  """60 artists, 3 styles, 2 to 6 paintings each: every style's test share within 5 points of 25%."""
  rng = np.random.default_rng(0)
  files = [base.SourceFile(None, f"artist-{a}_p{i}.jpg", a % 3) for a in range(60) for i in range(rng.integers(2, 7))]
  splits = artists.split_by_artist(files, STYLES, seed=0, held_out=[("test", 0.25)], rest="train")
  for label in range(3):
    in_test = sum(f.label == label for f in splits["test"])
    assert abs(in_test / sum(f.label == label for f in files) - 0.25) <= 0.05


def test_a_name_without_an_artist_is_refused_naming_it(tmp_path):
  write_artist_tree(tmp_path)
  write_jpeg(tmp_path / "Cubism" / "untitled.jpg", 0)
  config = image_folder.FolderConfig(name="artists", split_by="artist")
  with pytest.raises(ValueError, match=r"1 files have no '_' in their names, e.g. \['Cubism/untitled.jpg'\]"):
    image_folder.list_folder_dataset(tmp_path, config)


def write_wikiart_lists(manual, written, test_artists):
  """ArtGAN's list files for the artist tree, a random split that puts `test_artists`' paintings and
  every third other painting in the test list."""
  with open(manual / "style_class.txt", "w") as f:
    f.writelines(f"{i} {style}\n" for i, style in enumerate(STYLES))
  rows = {"style_train.csv": [], "style_val.csv": []}
  for i, (key, artist) in enumerate(sorted(written.items())):
    in_test = artist in test_artists or i % 3 == 0
    rows["style_val.csv" if in_test else "style_train.csv"].append(f"{key},{STYLES.index(key.split('/')[0])}\n")
  for name, lines in rows.items():
    (manual / name).write_text("".join(lines))
  return rows


def test_wikiart_reports_its_random_splits_leak_and_builds_an_artist_disjoint_split(tmp_path):
  """The ArtGAN lists' build counts the test artists with paintings in train; the CLI's
  --split_by=artist pools both lists into wikiart_artist/<config>, where that count is 0."""
  manual = tmp_path / "manual"
  written = write_artist_tree(manual / "wikiart")
  rows = write_wikiart_lists(manual, written, test_artists={"vermeer", "juan-gris"})
  builder = builders.build("wikiart", manual, tmp_path / "tfds", num_workers=2)
  test_artists = {written[line.split(",")[0]] for line in rows["style_val.csv"]}
  train_artists = {written[line.split(",")[0]] for line in rows["style_train.csv"]}
  shared = test_artists & train_artists
  assert builder.artist_overlap == artists.ArtistOverlap(
      train_artists=len(train_artists), test_artists=len(test_artists), shared_artists=len(shared),
      test_images=len(rows["style_val.csv"]),
      test_images_of_shared_artists=sum(written[line.split(",")[0]] in shared for line in rows["style_val.csv"]))
  assert 0 < len(shared) < len(test_artists)
  report = json.loads((tmp_path / "tfds" / "wikiart" / "1.0.0" / builders.REPORT_FILE).read_text())
  assert report["artist_overlap"] == builder.artist_overlap.to_json()

  result = run_program("data.builders", "--dataset=wikiart", "--split_by=artist", "--config_name=by_artist",
                       "--manual_dir=manual", "--data_dir=tfds", "--test_fraction=0.3", "--min_side=8", cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert "dataset wikiart_artist/by_artist in " in result.stdout
  assert "artists: 0 of the " in result.stdout
  split_keys = {split: [example["filename"].decode().removeprefix("wikiart/") for example in sources.open_split(
      "wikiart_artist/by_artist", tmp_path / "tfds", split)] for split in ("train", "test")}
  assert sorted(split_keys["train"] + split_keys["test"]) == sorted(written)
  assert not {written[k] for k in split_keys["train"]} & {written[k] for k in split_keys["test"]}


def test_split_by_artist_is_refused_for_a_dataset_without_artists_in_one_line(tmp_path):
  result = run_program("data.builders", "--dataset=flickr_style", "--split_by=artist", "--manual_dir=manual",
                       "--data_dir=tfds", cwd=tmp_path)
  assert result.returncode == 1 and result.stderr.strip().splitlines() == [
      "error: --split_by=artist: flickr_style has no artist in its file names"]
  assert not (tmp_path / "tfds").exists()
