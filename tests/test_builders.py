"""The TFDS builders, built from small fake downloads made here, and sources.open_split.

Each build test checks the exact example counts, the label names and which file landed in
which split with which label, read back through `sources.open_split` (ArrayRecord,
no TensorFlow).
"""
import gzip
import io
import os
import pickle

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from artstyle_jax.data import builders
from artstyle_jax.data import geometry
from artstyle_jax.data import sources
from helpers import run_program

tfds.disable_progress_bar()


def write_jpeg(path, seed: int, size=(12, 10)) -> bytes:
  """A small random RGB JPEG at path (parents created); returns its bytes."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
  with open(path, "wb") as f:
    f.write(buffer.getvalue())
  return buffer.getvalue()


def split_contents(name: str, data_dir, split: str) -> dict[str, int]:
  """{filename: label} of a built split."""
  source = sources.open_split(name, data_dir, split)
  contents = {}
  for i in range(len(source)):
    example = source[i]
    contents[example["filename"].decode("utf-8")] = example["label"]
  assert len(contents) == len(source), "a file was stored twice"
  return contents


def build(dataset, manual_dir, data_dir, **kwargs):
  return builders.build(dataset, manual_dir, data_dir, num_workers=2, **kwargs)


def write_wikiart(manual_dir, lists_dir, image_root):
  """A 3-style WikiArt download; returns the expected {split: {filename: label}}."""
  os.makedirs(lists_dir, exist_ok=True)
  with open(os.path.join(lists_dir, "style_class.txt"), "w") as f:
    f.write("2 Cubism\n0 Abstract_Expressionism\n\n1 Baroque\n")
  listed = {
      "style_train.csv": [("Abstract_Expressionism/a-1.jpg", 0), ("Baroque/b,with comma.jpg", 1),
                          ("Cubism/c-1.jpg", 2), ("Cubism/c-2.jpg", 2),
                          ("Baroque/missing.jpg", 1)],
      "style_val.csv": [("Abstract_Expressionism/a-2.jpg", 0), ("Cubism/c-3.jpg", 2)],
  }
  expected = {}
  for seed, (list_name, rows) in enumerate(listed.items()):
    with open(os.path.join(lists_dir, list_name), "w") as f:
      f.writelines(f"{path},{label}\n" for path, label in rows)
    split = "train" if list_name == "style_train.csv" else "test"
    expected[split] = {}
    for i, (path, label) in enumerate(rows):
      if "missing" not in path:
        write_jpeg(os.path.join(image_root, path), seed * 100 + i)
        expected[split][os.path.relpath(os.path.join(image_root, path), manual_dir)] = label
  write_jpeg(os.path.join(image_root, "Baroque", "unlisted.jpg"), 999)
  return expected


@pytest.mark.parametrize("layout", ["lists_in_wikiart_csv", "images_at_top"])
def test_wikiart_splits_are_the_artgan_lists(tmp_path, layout):
  """Train is style_train.csv, test is style_val.csv, labels and names from style_class.txt;
  an unlisted image is left out and a listed but missing one is skipped and reported."""
  manual = tmp_path / "manual"
  if layout == "lists_in_wikiart_csv":
    expected = write_wikiart(manual, manual / "wikiart_csv", manual / "wikiart")
  else:
    expected = write_wikiart(manual, manual, manual)
  builder = build("wikiart", manual, tmp_path / "tfds")

  assert builders.dataset_name(builder) == "wikiart"
  assert sources.label_names("wikiart", tmp_path / "tfds") == [
      "Abstract_Expressionism", "Baroque", "Cubism"]
  for split in ("train", "test"):
    assert split_contents("wikiart", tmp_path / "tfds", split) == expected[split]
  prefix = "wikiart/" if layout == "lists_in_wikiart_csv" else ""
  skipped = [key for key, _ in builder.build_report["train"].skipped]
  assert skipped == [f"{prefix}Baroque/missing.jpg"]
  assert builder.build_report["test"].skipped == []


def test_wikiart_names_the_line_of_a_bad_label(tmp_path):
  """A label outside style_class.txt's indices is an error that names file and line."""
  manual = tmp_path / "manual"
  write_wikiart(manual, manual, manual / "wikiart")
  with open(manual / "style_val.csv", "a") as f:
    f.write("Cubism/c-9.jpg,3\n")
  with pytest.raises(ValueError, match=r"style_val\.csv:3: label 3 is outside \[0, 3\)"):
    build("wikiart", manual, tmp_path / "tfds")


def write_style_tree(root, styles, per_style: int, nested: bool = False, seed: int = 0):
  """root/<style>/[<artist>/]<i>.jpg; returns {relative path: style index}."""
  files = {}
  for label, style in enumerate(styles):
    for i in range(per_style):
      parts = [style, f"artist_{i % 2}"] if nested else [style]
      relative = "/".join(parts + [f"{i}.jpg"])
      write_jpeg(os.path.join(root, *relative.split("/")), seed + 1000 * label + i)
      files[relative] = label
  return files


PANDORA_STYLES = [f"{i:02d}_style" for i in range(1, 19)]


def test_pandora18k_splits_each_style_by_seed(tmp_path):
  """18 sorted style folders (artist subfolders allowed, one wrapping folder descended into);
  per style round(5 * 0.2) = 1 test image; the split is reproducible for a seed and
  changes with it."""
  files = write_style_tree(tmp_path / "manual" / "Pandora18k", PANDORA_STYLES, 5, nested=True)
  build("pandora18k", tmp_path / "manual", tmp_path / "a")
  build("pandora18k", tmp_path / "manual", tmp_path / "b")
  build("pandora18k", tmp_path / "manual", tmp_path / "c",
        config=builders.FolderConfig(name="seed1", seed=1))

  assert sources.label_names("pandora18k/default", tmp_path / "a") == PANDORA_STYLES
  train = split_contents("pandora18k/default", tmp_path / "a", "train")
  test = split_contents("pandora18k/default", tmp_path / "a", "test")
  assert len(train) == 18 * 4 and len(test) == 18
  assert {**train, **test} == files
  assert sorted(label for label in test.values()) == list(range(18))
  assert split_contents("pandora18k/default", tmp_path / "b", "test") == test
  assert split_contents("pandora18k/seed1", tmp_path / "c", "test") != test


def test_pandora18k_refuses_a_tree_without_18_styles(tmp_path):
  """Pointing manual_dir at the wrong folder is a clear error, not a 17-class dataset."""
  write_style_tree(tmp_path / "manual", PANDORA_STYLES[:17], 1)
  with pytest.raises(ValueError, match="18 style folders, found 17"):
    build("pandora18k", tmp_path / "manual", tmp_path / "tfds")


def test_a_predefined_config_name_with_other_settings_is_refused(tmp_path):
  """'default' means seed 0 / 20% test; asking for other settings under it is an error."""
  write_style_tree(tmp_path / "manual", ["a", "b"], 2)
  with pytest.raises(ValueError, match="give these settings a config name of their own"):
    build("image_folder", tmp_path / "manual", tmp_path / "tfds",
          config=builders.FolderConfig(name="default", seed=3))


def write_flickr_images(manual, names_labels_splits):
  for i, (filename, _, _) in enumerate(names_labels_splits):
    if filename != "dead.jpg":
      write_jpeg(os.path.join(manual, "images", filename), i)


FLICKR_ROWS = [("1_a.jpg", 0, "train"), ("2_b.jpg", 19, "train"), ("3_c.jpg", 4, "test"),
               ("dead.jpg", 7, "train"), ("4_d.jpg", 11, "test")]


def test_flickr_style_reads_assemble_data_lists(tmp_path):
  """train.txt / test.txt of Caffe's assemble_data.py, paths from another machine resolved by
  file name in images/; the 20 names in Caffe's order; a dead download is skipped."""
  manual = tmp_path / "manual"
  write_flickr_images(manual, FLICKR_ROWS)
  for split in ("train", "test"):
    with open(manual / f"{split}.txt", "w") as f:
      f.writelines(f"/home/someone/caffe/data/flickr_style/images/{name} {label}\n"
                   for name, label, s in FLICKR_ROWS if s == split)
  builder = build("flickr_style", manual, tmp_path / "tfds")

  names = sources.label_names("flickr_style", tmp_path / "tfds")
  assert len(names) == 20 and names[0] == "Detailed" and names[19] == "Romantic"
  assert split_contents("flickr_style", tmp_path / "tfds", "train") == {
      "images/1_a.jpg": 0, "images/2_b.jpg": 19}
  assert split_contents("flickr_style", tmp_path / "tfds", "test") == {
      "images/3_c.jpg": 4, "images/4_d.jpg": 11}
  assert [key for key, _ in builder.build_report["train"].skipped] == ["images/dead.jpg"]


def test_flickr_style_reads_the_url_csv(tmp_path):
  """flickr_style.csv.gz (index column, image_url, label, _split) with images named as in
  their URL, and a style_names.txt that overrides the names."""
  manual = tmp_path / "manual"
  write_flickr_images(manual, FLICKR_ROWS)
  lines = [",image_url,label,_split,Bokeh\n"] + [
      f"{i},http://farm{i}.staticflickr.com/{i}/{name},{label},{split},False\n"
      for i, (name, label, split) in enumerate(FLICKR_ROWS)]
  with gzip.open(manual / "flickr_style.csv.gz", "wt") as f:
    f.writelines(lines)
  with open(manual / "style_names.txt", "w") as f:
    f.writelines(f"style {i}\n" for i in range(20))
  build("flickr_style", manual, tmp_path / "tfds")

  assert sources.label_names("flickr_style", tmp_path / "tfds") == [f"style {i}" for i in range(20)]
  assert split_contents("flickr_style", tmp_path / "tfds", "train") == {
      "images/1_a.jpg": 0, "images/2_b.jpg": 19}
  assert split_contents("flickr_style", tmp_path / "tfds", "test") == {
      "images/3_c.jpg": 4, "images/4_d.jpg": 11}


def test_image_folder_uses_split_subtrees(tmp_path):
  """train/ Valid/ TEST/ (any case) become 'train', 'validation', 'test'; labels index the
  sorted union of class folders, also when a split lacks a class."""
  manual = tmp_path / "manual"
  train = write_style_tree(manual / "train", ["cubism", "baroque"], 3)
  valid = write_style_tree(manual / "Valid", ["baroque"], 2, seed=50)
  test = write_style_tree(manual / "TEST", ["cubism", "baroque", "pop"], 1, seed=80)
  config = builders.FolderConfig(name="tree")
  build("image_folder", manual, tmp_path / "tfds", config=config)

  names = ["baroque", "cubism", "pop"]
  assert sources.label_names("image_folder/tree", tmp_path / "tfds") == names
  for split, folder, files in (("train", "train", train), ("validation", "Valid", valid),
                               ("test", "TEST", test)):
    old_names = {"train": ["cubism", "baroque"], "Valid": ["baroque"],
                 "TEST": ["cubism", "baroque", "pop"]}[folder]
    expected = {f"{folder}/{path}": names.index(old_names[label])
                for path, label in files.items()}
    assert split_contents("image_folder/tree", tmp_path / "tfds", split) == expected


def test_image_folder_splits_one_tree_by_seed_with_exact_counts(tmp_path):
  """Per class of n files: round(0.3 n) test, round(0.2 n) validation, the rest train."""
  manual = tmp_path / "manual"
  files = {}
  for label, (style, n) in enumerate((("a", 10), ("b", 7), ("c", 4))):
    for i in range(n):
      write_jpeg(manual / style / f"{i}.jpg", 10 * label + i)
      files[f"{style}/{i}.jpg"] = label
  config = builders.FolderConfig(name="fractions", seed=5, val_fraction=0.2, test_fraction=0.3)
  build("image_folder", manual, tmp_path / "tfds", config=config)

  contents = {split: split_contents("image_folder/fractions", tmp_path / "tfds", split)
              for split in ("train", "validation", "test")}
  per_class = {split: np.bincount(list(c.values()), minlength=3).tolist()
               for split, c in contents.items()}
  assert per_class == {"test": [3, 2, 1], "validation": [2, 1, 1], "train": [5, 4, 2]}
  assert {**contents["train"], **contents["validation"], **contents["test"]} == files


def test_open_split_gives_the_stored_jpeg_bytes_label_and_filename(tmp_path):
  """An RGB JPEG is stored byte for byte; the source is random access, batched, picklable."""
  manual = tmp_path / "manual"
  originals = {f"{style}/{i}.jpg": write_jpeg(manual / style / f"{i}.jpg", 7 * i + len(style))
               for style in ("x", "yy") for i in range(3)}
  build("image_folder", manual, tmp_path / "tfds",
        config=builders.FolderConfig(name="bytes", test_fraction=0.0))

  source = sources.open_split("image_folder/bytes", tmp_path / "tfds", "train")
  assert len(source) == 6
  for example in source.__getitems__(list(range(6))):
    assert set(example) == {"image", "label", "filename"}
    filename = example["filename"].decode("utf-8")
    assert example["image"] == originals[filename]
    assert example["label"] == ("x", "yy").index(filename.split("/")[0])
    assert np.asarray(geometry.decode_rgb(geometry.open_image(example["image"]))).shape == (10, 12, 3)
  again = pickle.loads(pickle.dumps(source))
  assert [again[i]["filename"] for i in range(6)] == [source[i]["filename"] for i in range(6)]
  assert len(sources.open_split("image_folder/bytes", tmp_path / "tfds", "train[:50%]")) == 3


def test_open_split_errors_name_what_is_missing(tmp_path):
  """An unbuilt dataset and an absent split are clear errors."""
  write_style_tree(tmp_path / "manual", ["a", "b"], 3)
  build("image_folder", tmp_path / "manual", tmp_path / "tfds")
  with pytest.raises(FileNotFoundError, match="no built dataset 'image_folder/nope'"):
    sources.open_split("image_folder/nope", tmp_path / "tfds", "train")
  with pytest.raises(ValueError, match=r"has no split 'validation'; it has \['test', 'train'\]"):
    sources.open_split("image_folder/default", tmp_path / "tfds", "validation")


def test_builders_cli_builds_and_prints_the_dataset_name(tmp_path):
  """`python -m artstyle_jax.data.builders`, run from tmp_path with relative directories, builds
  a folder tree there and names the dataset."""
  write_style_tree(tmp_path / "manual", ["a", "b"], 3)
  result = run_program("data.builders", "--dataset=image_folder", "--config_name=cli", "--manual_dir=manual",
                       "--data_dir=tfds", "--test_fraction=0.34", "--min_side=8", cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert "train: 4 examples written, 0 files skipped" in result.stdout
  assert "test: 2 examples written" in result.stdout
  assert "dataset image_folder/cli in " in result.stdout
  assert len(sources.open_split("image_folder/cli", tmp_path / "tfds", "test")) == 2
