"""Art style of images, and the gallery images closest in style, with a trained student.

  python -m artstyle_jax.predict --workdir=DIR [--top_k=5] [--gallery=GALLERY [--num_matches=5]]
      [--sheet=OUT.png] IMAGE...

Styles come from the linear head that `python -m artstyle_jax.eval --workdir=DIR` saved
(DIR/eval/linear_head.npz) on the student backbone of the checkpoint step that head was trained
on, each image prepared as the dataset builders prepare a file (`images.prepare_image`: any
mode to 8-bit RGB) and then as eval's test images (`views.EvalView` with the head's size and
normalisation). With --gallery, every image file under GALLERY (recursively, by extension) is
embedded the same way and ranked by the cosine similarity of its pooled student features to
each query's (`knn.nearest_neighbours`). A head that `eval --weights=SOURCE --workdir=DIR` trained
is applied on that external backbone (`models.load_backbone(SOURCE)`, with the config eval saved
in DIR/eval/config.json).

Output on stdout, per image: its path, then one line per style, most probable first, and with
--gallery one line per match, most similar first:

  IMAGE
    style  0.8312  impressionism
    match  0.9731  GALLERY/some/painting.jpg

With --sheet, the same is drawn into OUT.png: a row per image, the image with its styles under
it, then its matches as thumbnails with their similarity and, when GALLERY is a class-per-folder
tree, their class (the image's first folder under GALLERY).

An image that cannot be read, a missing gallery, a --sheet in a directory that does not exist, or
a workdir that eval has not been run on: one error line, exit 1. Nothing is written.
"""
from collections.abc import Sequence
import os
import sys
from typing import Any, NamedTuple

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax
import numpy as np

from artstyle_jax import checkpoints
from artstyle_jax import config_lib
from artstyle_jax import eval as eval_lib
from artstyle_jax import features
from artstyle_jax import host_memory
from artstyle_jax import models
from artstyle_jax import paths as paths_lib
from artstyle_jax import pictures
from artstyle_jax import program_logging
from artstyle_jax import sharding
from artstyle_jax import step as step_lib
from artstyle_jax.data import images
from artstyle_jax.data import views
from artstyle_jax.evaluators import knn
from artstyle_jax.evaluators import linear_probe

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class Head(NamedTuple):
  """The probe eval saved, and how its input features are made."""
  params: linear_probe.Head  # {'kernel': (C, K), 'bias': (K,)} float32
  class_names: list[str]
  model_name: str
  step: int  # checkpoint step of the backbone; -1: the random initialisation of config.seed
  transform: views.EvalView
  weights: str  # the --weights source of an external backbone (`models.load_backbone`); '' for a workdir's
  seed: int  # the seed of a random initialisation


def load_head(workdir: str) -> Head:
  """The linear head in `eval_lib.eval_dir(workdir)`.

  Raises:
    WorkdirError: eval has not been run on the workdir.
  """
  path = eval_lib.eval_dir(workdir) / eval_lib.HEAD_FILE
  if not path.exists():
    raise checkpoints.WorkdirError(f"{workdir} has no linear head ({path}): run "
                                   f"`python -m artstyle_jax.eval --workdir={workdir}` first")
  with path.open("rb") as f, np.load(f, allow_pickle=False) as saved:
    missing = [key for key in eval_lib.HEAD_KEYS if key not in saved]
    if missing:
      raise checkpoints.WorkdirError(f"{path} lacks {', '.join(missing)} (an older eval wrote it): run "
                                     f"`python -m artstyle_jax.eval --workdir={workdir}` again")
    arrays = {key: saved[key] for key in eval_lib.HEAD_KEYS}
  transform = views.EvalView(int(arrays["image_size"]), tuple(arrays["mean"]), tuple(arrays["std"]),
                             crop_fraction=float(arrays["crop_fraction"]))
  return Head(params={"kernel": arrays["kernel"], "bias": arrays["bias"]},
              class_names=[str(name) for name in arrays["class_names"]], model_name=str(arrays["model_name"]),
              step=int(arrays["step"]), transform=transform, weights=str(arrays["weights"]),
              seed=int(arrays["seed"]))


def read_image(path: str) -> bytes:
  """The file as an 8-bit RGB JPEG, as a dataset build would store it.

  Raises:
    BadImageError: naming the path: missing, not a file, or not a readable image.
  """
  if not os.path.exists(path):
    raise images.BadImageError(f"{path}: no such file")
  if not os.path.isfile(path):
    raise images.BadImageError(f"{path}: not a file")
  try:
    return images.prepare_image(path).data
  except images.BadImageError as e:
    raise images.BadImageError(f"{path}: {e}") from e


def gallery_files(gallery: str) -> list[str]:
  """The image files under `gallery` (by extension, recursively, hidden ones left out), sorted.

  Raises:
    FileNotFoundError: `gallery` is not a directory, or holds no image file.
  """
  if not os.path.isdir(gallery):
    raise FileNotFoundError(f"gallery {gallery} is not a directory")
  found = []
  for root, dirs, names in os.walk(gallery):
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    found += [os.path.join(root, name) for name in names
              if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")]
  found.sort()
  if not found:
    raise FileNotFoundError(f"gallery {gallery} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
  return found


class ImageFiles:
  """Random-access source of image files for the eval pass: {'image': JPEG bytes, 'label': 0},
  each file read when its record is asked for."""

  def __init__(self, paths: Sequence[str]):
    self.paths = list(paths)

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {"image": read_image(self.paths[index]), "label": 0}


class Predictor:
  """A workdir's evaluated student: style probabilities and style embeddings of images."""

  def __init__(self, workdir: str, mesh: jax.sharding.Mesh | None = None):
    """Loads the head and the backbone of its step.

    Raises:
      WorkdirError: no head (eval not run), or its checkpoint is gone.
    """
    self.head = load_head(workdir)
    self.mesh = sharding.create_mesh() if mesh is None else mesh
    if self.head.weights:
      self._load_weights(workdir)
      return
    self.config = checkpoints.load_config(workdir)
    if self.head.model_name != self.config.model.name:
      raise checkpoints.WorkdirError(f"the head in {eval_lib.eval_dir(workdir)} was trained on "
                                     f"{self.head.model_name}, but {workdir} holds {self.config.model.name}: "
                                     f"run `python -m artstyle_jax.eval --workdir={workdir}` again")
    backbone = step_lib.build_backbone(self.config, self.mesh)
    if self.head.step < 0:
      self.backbone_params = eval_lib.random_backbone_params(self.config, backbone, self.mesh)
    else:
      try:
        self.backbone_params, _ = eval_lib.restore_backbone(workdir, self.config, self.head.step, self.mesh)
      except checkpoints.WorkdirError as e:
        raise checkpoints.WorkdirError(f"{e}: the head was trained on step {self.head.step}; run "
                                       f"`python -m artstyle_jax.eval --workdir={workdir}` again") from e
    self.feature_fn = features.make_feature_fn(backbone, self.mesh)

  def _load_weights(self, workdir: str) -> None:
    """The external backbone eval --weights evaluated into `workdir`, with the config it used."""
    self.config = checkpoints.load_config(str(eval_lib.eval_dir(workdir)))
    try:
      backbone, variables = models.load_backbone(self.head.weights, seed=self.head.seed,
                                                 dtype=config_lib.compute_dtype(self.config),
                                                 forms=step_lib.model_forms(self.config, self.mesh))
    except (models.BackboneError, FileNotFoundError) as e:
      raise checkpoints.WorkdirError(f"the head in {eval_lib.eval_dir(workdir)} was trained on "
                                     f"{self.head.weights}, which no longer loads: {e}") from e
    self.backbone_params = jax.device_put(variables["params"], sharding.replicated(self.mesh))
    self.feature_fn = features.make_feature_fn(backbone, self.mesh)

  def embed(self, source: Any) -> np.ndarray:
    """(N, C) float32 pooled features of a source's records, in order."""
    return eval_lib.extract_features(self.config, self.feature_fn, self.backbone_params, source,
                                     self.head.transform, self.mesh,
                                     eval_lib.extraction_batch_size(self.config, self.mesh))[0]

  def styles(self, embeddings: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, k) descending, class indices (N, k)) of the k most probable styles."""
    probabilities = np.asarray(jax.nn.softmax(linear_probe.apply_head(self.head.params, embeddings), axis=-1))
    order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :top_k]
    return np.take_along_axis(probabilities, order, axis=-1), order


def predict(workdir: str, paths: Sequence[str], *, top_k: int = 5, gallery: str | None = None,
            num_matches: int = 5, sheet: str | None = None) -> list[str]:
  """The lines the program prints (see the module docstring); with `sheet`, the same drawn as a
  retrieval sheet (`pictures.draw_retrieval_sheet`) into that PNG.

  Raises:
    BadImageError: a query image cannot be read (checked before any model is loaded), or a
      gallery image.
    WorkdirError, FileNotFoundError: no head, its checkpoint gone, no usable gallery, no directory
      for the sheet.
  """
  if not paths:
    raise ValueError("give at least one image")
  if top_k < 1 or num_matches < 1:
    raise ValueError(f"top_k and num_matches must be >= 1, got {top_k} and {num_matches}")
  if sheet is not None and not epath.Path(sheet).parent.is_dir():
    raise FileNotFoundError(f"the sheet's directory {epath.Path(sheet).parent} does not exist")
  queries = [{"image": read_image(path), "label": 0} for path in paths]
  gallery_paths = gallery_files(gallery) if gallery is not None else []
  predictor = Predictor(workdir)
  query_embeddings = predictor.embed(queries)
  probabilities, classes = predictor.styles(query_embeddings, top_k)
  matches = None
  if gallery_paths:
    gallery_embeddings = predictor.embed(ImageFiles(gallery_paths))
    similarities, indices = knn.nearest_neighbours(gallery_embeddings, query_embeddings,
                                                   k=min(num_matches, len(gallery_paths)))
    matches = np.asarray(similarities), np.asarray(indices)
  lines = []
  for i, path in enumerate(paths):
    lines.append(path)
    lines += [f"  style  {p:.4f}  {predictor.head.class_names[c]}" for p, c in zip(probabilities[i], classes[i])]
    if matches is not None:
      lines += [f"  match  {s:.4f}  {gallery_paths[j]}" for s, j in zip(matches[0][i], matches[1][i])]
  if sheet is not None:
    draw_sheet(predictor, paths, (probabilities, classes), matches, gallery, gallery_paths, sheet)
  return lines


def draw_sheet(predictor: Predictor, paths: Sequence[str], styles: tuple[np.ndarray, np.ndarray],
               matches: tuple[np.ndarray, np.ndarray] | None, gallery: str | None, gallery_paths: list[str],
               sheet: str) -> None:
  """The retrieval sheet of `predict`'s results: (probabilities, classes) (N, k) of the styles and
  (similarities, gallery indices) (N, m) of the matches, or None without a gallery."""
  classes = pictures.folder_classes(gallery, gallery_paths) if gallery_paths else []
  names = predictor.head.class_names
  rows = []
  for i, path in enumerate(paths):
    row_matches = [] if matches is None else [
        pictures.Match(float(s), gallery_paths[j], classes[j]) for s, j in zip(matches[0][i], matches[1][i])]
    rows.append(pictures.SheetRow(path, [(float(p), names[c]) for p, c in zip(styles[0][i], styles[1][i])],
                                  row_matches))
  title = (f"{predictor.head.model_name} ({pictures.describe_step(predictor.head.step)}), trained on "
           f"{predictor.config.dataset.name}: styles by eval's linear head")
  if gallery is not None:
    title += f"\nmatches: the {len(gallery_paths)} images under {pictures.shorten(gallery, 80)}"
  pictures.draw_retrieval_sheet(rows, title, sheet)


def _define_flags() -> None:
  """The program's flags; defined only when it runs as a program, so that importing this module
  does not claim flag names (workdir) that the other programs define too."""
  paths_lib.DEFINE_path("workdir", None, "Workdir of a training run on which eval has been run.", required=True)
  flags.DEFINE_integer("top_k", 5, "Styles to print per image.", lower_bound=1)
  paths_lib.DEFINE_path("gallery", None, "Directory of images to rank by style similarity to each image.")
  flags.DEFINE_integer("num_matches", 5, "Gallery images to print per image.", lower_bound=1)
  paths_lib.DEFINE_path("sheet", None, "Also draw the styles and matches as a retrieval sheet into this PNG.")


def main(argv):
  host_memory.keep_freed_memory()  # Before JAX starts its backend.
  if len(argv) < 2:
    raise app.UsageError("give one or more image paths")
  program_logging.setup(logging.WARNING)
  flag_values = flags.FLAGS
  try:
    lines = predict(flag_values.workdir, [paths_lib.resolve(image) for image in argv[1:]], top_k=flag_values.top_k,
                    gallery=flag_values.gallery, num_matches=flag_values.num_matches, sheet=flag_values.sheet)
  except (images.BadImageError, checkpoints.WorkdirError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print("\n".join(lines))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
