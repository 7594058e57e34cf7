r"""Builds an art-style dataset from its manual download into a TFDS data_dir (ArrayRecord).

  python -m artstyle_jax.data.builders --dataset=wikiart \
      --manual_dir=/data/wikiart_raw --data_dir=/data/tfds
  python -m artstyle_jax.data.builders --dataset=image_folder --config_name=mytree \
      --manual_dir=/data/mytree --data_dir=/data/tfds --test_fraction=0.2 --seed=0
  python -m artstyle_jax.data.builders --dataset=wikiart --split_by=artist \
      --manual_dir=/data/wikiart_raw --data_dir=/data/tfds --test_fraction=0.2 --seed=0

--split_by=artist (wikiart, image_folder, pandora18k; file names <artist>_<title>.<ext>)
splits whole artists: no artist has paintings on two sides (WikiArt: the dataset
wikiart_artist/<config_name>, both ArtGAN lists pooled). Prints, last, the dataset name to
give `sources.open_split` (and the training config's dataset.name), the per-split counts of
written, skipped, converted, downscaled and small images (each skipped or changed file has
its own log line) and, when file names carry artists, how many test artists and test images
also have paintings in train.
"""
import sys

from absl import app
from absl import flags
import tensorflow_datasets as tfds

from artstyle_jax import cli
from artstyle_jax.data import builders
from artstyle_jax.data import images

_DATASET = flags.DEFINE_enum("dataset", None, sorted(builders.BUILDERS), "Dataset to build.")
_MANUAL_DIR = cli.DEFINE_path("manual_dir", None, "The downloaded copy (see the builder's "
                                "module docstring for its layout).")
_DATA_DIR = cli.DEFINE_path("data_dir", None, "TFDS data directory to write to.")
_CONFIG_NAME = flags.DEFINE_string(
    "config_name", "default", "image_folder and pandora18k: name of the split configuration "
    "(the dataset is then '<dataset>/<config_name>').")
_SEED = flags.DEFINE_integer("seed", 0, "image_folder and pandora18k: seed of the split of a "
                             "tree without Train/Valid/Test folders.")
_VAL_FRACTION = flags.DEFINE_float("val_fraction", 0.0, "Fraction of each class for validation.")
_TEST_FRACTION = flags.DEFINE_float("test_fraction", 0.2, "Fraction of each class for test.")
_MIN_SIDE = flags.DEFINE_integer("min_side", images.ImagePolicy.min_side,
                                 "Images with a shorter side are flagged as small (kept).")
_MAX_PIXELS = flags.DEFINE_integer("max_pixels", images.ImagePolicy.max_pixels,
                                   "Images with more pixels are downscaled to fit.")
_BOMB_PIXELS = flags.DEFINE_integer("bomb_pixels", images.ImagePolicy.bomb_pixels,
                                    "Images claiming more pixels are skipped undecoded.")
_JPEG_QUALITY = flags.DEFINE_integer("jpeg_quality", images.ImagePolicy.jpeg_quality,
                                     "JPEG quality of re-encoded images.")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", None, "Image decoding threads.")

_SPLIT_BY = flags.DEFINE_enum("split_by", "image", ["image", "artist"], "wikiart, image_folder and pandora18k: "
                               "'artist' splits whole artists (file names <artist>_<title>.<ext>), no artist on "
                               "two sides; 'image': the dataset's lists, or each class at random.")

_FOLDER_DATASETS = ("image_folder", "pandora18k")
_ARTIST_DATASETS = ("wikiart", *_FOLDER_DATASETS)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  tfds.disable_progress_bar()
  config = None
  if _SPLIT_BY.value == "artist" and _DATASET.value not in _ARTIST_DATASETS:
    sys.exit(f"error: --split_by=artist: {_DATASET.value} has no artist in its file names")
  if _DATASET.value in _FOLDER_DATASETS or _SPLIT_BY.value == "artist":
    config = builders.FolderConfig(name=_CONFIG_NAME.value, seed=_SEED.value,
                                   val_fraction=_VAL_FRACTION.value,
                                   test_fraction=_TEST_FRACTION.value, split_by=_SPLIT_BY.value)
  policy = images.ImagePolicy(min_side=_MIN_SIDE.value, max_pixels=_MAX_PIXELS.value,
                              bomb_pixels=_BOMB_PIXELS.value, jpeg_quality=_JPEG_QUALITY.value)
  try:
    builder = builders.build(_DATASET.value, _MANUAL_DIR.value, _DATA_DIR.value, config=config,
                             image_policy=policy, num_workers=_NUM_WORKERS.value)
  except (ValueError, FileNotFoundError) as e:  # input the build cannot use: one error line
    sys.exit(f"error: {str(e).strip().splitlines()[0]}")
  for split, report in builder.build_report.items():
    print(f"{split}: {report.summary()}")
  if builder.artist_overlap is not None:
    print(f"artists: {builder.artist_overlap.summary()}")
  print(f"dataset {builders.dataset_name(builder)} in {builder.data_dir}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["dataset", "manual_dir", "data_dir"])
  app.run(main)
