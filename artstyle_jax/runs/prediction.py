"""Art style of images, and the gallery images closest in style, with an evaluated student.

`predict(workdir, paths, ...)`: styles come from the linear head the evaluation of the workdir
saved (`head_file`), applied to the pooled features of the backbone that head was trained on
(the checkpoint of its step, the random initialisation, or an external backbone). Each image is
prepared as the dataset builders prepare a file (`images.prepare_image`: any mode to 8-bit RGB)
and then as evaluation's test images (`views.EvalView` with the head's size and normalisation).
A gallery is ranked by the cosine similarity of its images' features to each query's, in the
representation `retrieval.REPRESENTATION` (`retrieval.represent`, from the gallery's statistics);
on a class-per-folder gallery, the precision@k and mAP@k of ranking each gallery image against
the others are reported too; the whole can be drawn as a retrieval sheet.
"""
from collections.abc import Sequence
import os
from typing import Any

from etils import epath
import jax
import numpy as np

from artstyle_jax import models
from artstyle_jax.data import images
from artstyle_jax.evaluators import retrieval
from artstyle_jax.method import config_lib
from artstyle_jax.method import features
from artstyle_jax.method import sharding
from artstyle_jax.method import step as step_lib
from artstyle_jax.models import heads
from artstyle_jax.pictures import figure
from artstyle_jax.pictures import retrieval_sheet
from artstyle_jax.runs import head_file
from artstyle_jax.runs import saved_run
from artstyle_jax.storage import checkpoints

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


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
    self.head = head_file.load(workdir)
    self.mesh = sharding.create_mesh() if mesh is None else mesh
    if self.head.weights:
      self._load_weights(workdir)
      return
    self.config = checkpoints.load_config(workdir)
    if self.head.model_name != self.config.model.name:
      raise checkpoints.WorkdirError(f"the head in {saved_run.eval_dir(workdir)} was trained on "
                                     f"{self.head.model_name}, but {workdir} holds {self.config.model.name}: "
                                     f"run `python -m artstyle_jax.eval --workdir={workdir}` again")
    backbone = step_lib.build_backbone(self.config, self.mesh)
    if self.head.step < 0:
      self.backbone_params = saved_run.random_backbone_params(self.config, backbone, self.mesh)
    else:
      try:
        self.backbone_params, _ = saved_run.restore_backbone(workdir, self.config, self.head.step, self.mesh)
      except checkpoints.WorkdirError as e:
        raise checkpoints.WorkdirError(f"{e}: the head was trained on step {self.head.step}; run "
                                       f"`python -m artstyle_jax.eval --workdir={workdir}` again") from e
    self.feature_fn = features.make_feature_fn(backbone, self.mesh)

  def _load_weights(self, workdir: str) -> None:
    """The external backbone eval --weights evaluated into `workdir`, with the config it used."""
    self.config = checkpoints.load_config(str(saved_run.eval_dir(workdir)))
    try:
      backbone, variables = models.load_backbone(self.head.weights, seed=self.head.seed,
                                                 dtype=config_lib.compute_dtype(self.config),
                                                 forms=step_lib.model_forms(self.config, self.mesh))
    except (models.BackboneError, FileNotFoundError) as e:
      raise checkpoints.WorkdirError(f"the head in {saved_run.eval_dir(workdir)} was trained on "
                                     f"{self.head.weights}, which no longer loads: {e}") from e
    self.backbone_params = jax.device_put(variables["params"], sharding.replicated(self.mesh))
    self.feature_fn = features.make_feature_fn(backbone, self.mesh)

  def embed(self, source: Any) -> np.ndarray:
    """(N, C) float32 pooled features of a source's records, in order."""
    return features.extract_split(self.config, self.feature_fn, self.backbone_params, source, self.head.transform,
                                  self.mesh, features.extraction_batch_size(self.config, self.mesh))[0]

  def styles(self, embeddings: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, k) descending, class indices (N, k)) of the k most probable styles."""
    probabilities = np.asarray(jax.nn.softmax(heads.linear_logits(self.head.params, embeddings), axis=-1))
    order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :top_k]
    return np.take_along_axis(probabilities, order, axis=-1), order


def predict(workdir: str, paths: Sequence[str], *, top_k: int = 5, gallery: str | None = None,
            num_matches: int = 5, sheet: str | None = None) -> list[str]:
  """Per image of `paths`: its path, then `  style  <probability>  <style>` for its `top_k` styles,
  most probable first, and with a `gallery`, `  match  <similarity>  <path>` for its `num_matches`
  closest gallery images, most similar first; with `sheet`, the same drawn as a retrieval sheet
  (`retrieval_sheet.draw_retrieval_sheet`) into that PNG. A class-per-folder gallery (every image
  in a folder under it, the first folder its class) of at least two images adds a last line,
  `gallery retrieval ...`: precision@k and mAP@k (k = `num_matches`, at most the gallery's size
  less one) of each gallery image ranking the others (`retrieval.evaluate_retrieval`).

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
  matches, scores = None, None
  if gallery_paths:
    gallery_embeddings = predictor.embed(ImageFiles(gallery_paths))
    matches = retrieval.rank(*retrieval.represent(gallery_embeddings, query_embeddings, retrieval.REPRESENTATION),
                             k=min(num_matches, len(gallery_paths)))
    scores = gallery_retrieval(gallery, gallery_paths, gallery_embeddings, num_matches)
  lines = []
  for i, path in enumerate(paths):
    lines.append(path)
    lines += [f"  style  {p:.4f}  {predictor.head.class_names[c]}" for p, c in zip(probabilities[i], classes[i])]
    if matches is not None:
      lines += [f"  match  {s:.4f}  {gallery_paths[j]}" for s, j in zip(matches[0][i], matches[1][i])]
  if scores is not None:
    k = scores["retrieval_k"]
    lines.append(f"gallery retrieval (each of its {scores['num_queries']} images against the others, "
                 f"{scores['representation']} features): precision@{k} {scores['precision_at_k']:.4f}  "
                 f"mAP@{k} {scores['map_at_k']:.4f}")
  if sheet is not None:
    draw_sheet(predictor, paths, (probabilities, classes), matches, gallery, gallery_paths, sheet)
  return lines


def gallery_retrieval(gallery: str, gallery_paths: list[str], embeddings: np.ndarray,
                      num_matches: int) -> dict[str, Any] | None:
  """`retrieval.evaluate_retrieval` of a class-per-folder gallery ranked against itself (leave one
  out), k = num_matches at most N - 1; None for a gallery of one image or not class-per-folder."""
  classes = retrieval_sheet.folder_classes(gallery, gallery_paths)
  if len(gallery_paths) < 2 or None in classes:
    return None
  names = sorted(set(classes))
  labels = np.array([names.index(c) for c in classes])
  return retrieval.evaluate_retrieval(embeddings, labels, None, None, min(num_matches, len(gallery_paths) - 1),
                                      retrieval.REPRESENTATION)


def draw_sheet(predictor: Predictor, paths: Sequence[str], styles: tuple[np.ndarray, np.ndarray],
               matches: tuple[np.ndarray, np.ndarray] | None, gallery: str | None, gallery_paths: list[str],
               sheet: str) -> None:
  """The retrieval sheet of `predict`'s results: (probabilities, classes) (N, k) of the styles and
  (similarities, gallery indices) (N, m) of the matches, or None without a gallery."""
  classes = retrieval_sheet.folder_classes(gallery, gallery_paths) if gallery_paths else []
  names = predictor.head.class_names
  rows = []
  for i, path in enumerate(paths):
    row_matches = [] if matches is None else [
        retrieval_sheet.Match(float(s), gallery_paths[j], classes[j]) for s, j in zip(matches[0][i], matches[1][i])]
    rows.append(retrieval_sheet.SheetRow(path, [(float(p), names[c]) for p, c in zip(styles[0][i], styles[1][i])],
                                         row_matches))
  title = (f"{predictor.head.model_name} ({figure.describe_step(predictor.head.step)}), trained on "
           f"{predictor.config.dataset.name}: styles by eval's linear head")
  if gallery is not None:
    title += f"\nmatches: the {len(gallery_paths)} images under {figure.shorten(gallery, 80)}"
  retrieval_sheet.draw_retrieval_sheet(rows, title, sheet)
