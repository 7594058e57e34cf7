"""Art style of images, and the gallery images closest in style, with a trained student
(`prediction.predict`).

  python -m artstyle_jax.predict --workdir=DIR [--top_k=5] [--gallery=GALLERY [--num_matches=5]]
      [--sheet=OUT.png] IMAGE...

Styles come from the linear head that `python -m artstyle_jax.eval --workdir=DIR` saved
(DIR/eval/linear_head.npz) on the student backbone of the checkpoint step that head was trained
on, each image prepared as the dataset builders prepare a file (`images.prepare_image`: any
mode to 8-bit RGB) and then as eval's test images (`views.EvalView` with the head's size and
normalisation). With --gallery, every image file under GALLERY (recursively, by extension) is
embedded the same way and ranked by the cosine similarity of its pooled student features to
each query's, both whitened with the gallery's statistics (`evaluators.retrieval`). When GALLERY
is a class-per-folder tree, a last line gives the precision@k and mAP@k (k = --num_matches) of
each gallery image ranking the others. A head that `eval --weights=SOURCE --workdir=DIR` trained
is applied on that external backbone (`models.load_backbone(SOURCE)`, with the config eval saved
in DIR/eval/config.json).

Output on stdout, per image: its path, then one line per style, most probable first, and with
--gallery one line per match, most similar first:

  IMAGE
    style  0.8312  impressionism
    match  0.9731  GALLERY/some/painting.jpg
  gallery retrieval (each of its 1000 images against the others, whitened features): precision@5 0.4120  mAP@5 0.3510

With --sheet, the same is drawn into OUT.png: a row per image, the image with its styles under
it, then its matches as thumbnails with their similarity and, when GALLERY is a class-per-folder
tree, their class (the image's first folder under GALLERY).

An image that cannot be read, a missing gallery, a --sheet in a directory that does not exist, or
a workdir that eval has not been run on: one error line, exit 1. Nothing is written.
"""
from absl import app
from absl import flags
from absl import logging

from artstyle_jax import cli
from artstyle_jax.runs import prediction
from artstyle_jax.storage import paths

_WORKDIR = cli.DEFINE_path("workdir", None, "Workdir of a training run on which eval has been run.", required=True)
_TOP_K = flags.DEFINE_integer("top_k", 5, "Styles to print per image.", lower_bound=1)
_GALLERY = cli.DEFINE_path("gallery", None, "Directory of images to rank by style similarity to each image.")
_NUM_MATCHES = flags.DEFINE_integer("num_matches", 5, "Gallery images to print per image.", lower_bound=1)
_SHEET = cli.DEFINE_path("sheet", None, "Also draw the styles and matches as a retrieval sheet into this PNG.")


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("give one or more image paths")
  lines = prediction.predict(_WORKDIR.value, [paths.resolve(image) for image in argv[1:]], top_k=_TOP_K.value,
                             gallery=_GALLERY.value, num_matches=_NUM_MATCHES.value, sheet=_SHEET.value)
  print("\n".join(lines))


if __name__ == "__main__":
  cli.run(main, verbosity=logging.WARNING)
