"""The pictures of a run: training curves, retrieval sheets, a 2-D map of features.

Every picture is drawn on a bare `matplotlib.figure.Figure` with the Agg canvas (no display,
matplotlib's global backend left alone), carries a title naming the model, the step and the
dataset, and is saved as a PNG of `DPI` dots per inch, so that its size in pixels is its size in
inches times `DPI`, as each drawing function states. The drawing functions return the Figure,
whose artists keep what was drawn (lines, scatter offsets, images) for a reader or a test.
"""
from collections.abc import Sequence
import io
import json
import os
from typing import NamedTuple

from absl import logging
from etils import epath
import jax
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
from PIL import Image

from artstyle_jax import checkpoints
from artstyle_jax import metric_writer
from artstyle_jax import paths

DPI = 100
CURVES_FILE = "curves.png"
# Training redraws the curves at a checkpoint at most this often (seconds), and at its last step.
CURVES_MIN_INTERVAL_S = 60.0
EMBEDDING_FILE = "embedding.png"

# (metrics.jsonl key, panel title) of the curves picture, in reading order.
CURVE_PANELS = (
    ("loss", "total loss"),
    ("rel_weak", "relation loss, weak teacher"),
    ("rel_style", "relation loss, style teacher"),
    ("gram_weak", "Gram loss, weak teacher"),
    ("gram_style", "Gram loss, style teacher"),
    ("lr", "learning rate"),
    ("grad_norm", "gradient norm (before weight decay)"),
    ("knn_top1", "kNN monitor top-1 (held-out split)"),
)
CURVES_GRID = (2, 4)  # rows, columns of panels
CURVES_INCHES = (16.0, 8.0)  # 1600 x 800 px
FEW_POINTS = 20  # series of at most this many points are drawn with a marker at each
EMBEDDING_INCHES = (10.0, 7.0)  # 1000 x 700 px
MIN_EMBEDDING_POINTS = 3  # t-SNE's perplexity must stay below the number of points
# A retrieval sheet's cell (one thumbnail and the text under it), and the band of its title.
SHEET_CELL_INCHES = (1.8, 2.6)
SHEET_TITLE_INCHES = 0.6
SHEET_THUMBNAIL_PX = 160
SHEET_MIN_COLUMNS = 4  # a sheet is at least this many cells wide, so that its title fits

# A series of one metric: (steps (T,) int64 ascending, values (T,) float64).
Series = tuple[np.ndarray, np.ndarray]


def save_png(fig: Figure, path: str | os.PathLike) -> None:
  """Writes the figure as a PNG at `path` (local or gs://...), atomically (`paths.write_atomically`)."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=DPI)
  paths.write_atomically(path, buffer.getvalue())


def _new_figure(inches: tuple[float, float]) -> Figure:
  fig = Figure(figsize=inches, dpi=DPI)
  FigureCanvasAgg(fig)
  return fig


# ---------------------------------------------------------------------------------------------
# Training curves.


class Run(NamedTuple):
  """The curves of one training run."""
  label: str  # the run's name in the legend (its workdir's name)
  description: str  # 'model, step N, dataset', for the title
  metrics: dict[str, Series]


def read_metrics(path: str | os.PathLike) -> dict[str, Series]:
  """{metric: (steps, values)} of a metric_writer JSONL file, 'step' and 'time' left out.

  A resumed run logs again the steps between its last checkpoint and the point where it died:
  the last record of a step wins. A line that is not a record of numbers with a step (one cut
  short by a run killed while writing it) is skipped.
  """
  by_key: dict[str, dict[int, float]] = {}
  with epath.Path(path).open() as f:
    for line in f:
      try:
        record = json.loads(line)
        step = int(record.pop("step"))
        record.pop("time", None)
        values = {key: float(value) for key, value in record.items()}
      except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        continue
      for key, value in values.items():
        by_key.setdefault(key, {})[step] = value
  return {key: (np.array(sorted(values), np.int64), np.array([values[s] for s in sorted(values)], np.float64))
          for key, values in by_key.items()}


def run_from_workdir(workdir: str) -> Run:
  """The curves of a training workdir (its metrics.jsonl and config.json).

  Raises:
    WorkdirError: no config.json, or no metrics.jsonl (nothing logged yet).
  """
  config = checkpoints.load_config(workdir)
  path = epath.Path(workdir) / metric_writer.METRICS_FILE
  if not path.exists():
    raise checkpoints.WorkdirError(f"{workdir} holds no {metric_writer.METRICS_FILE}: the run has logged nothing yet")
  metrics = read_metrics(path)
  last_step = max((int(steps[-1]) for steps, _ in metrics.values()), default=0)
  return Run(label=epath.Path(workdir).name, metrics=metrics,
             description=f"{config.model.name}, step {last_step}, {config.dataset.name}")


def smooth(values: np.ndarray) -> np.ndarray:
  """Debiased exponential moving average (as TensorBoard's) whose time constant is a tenth of the
  series: a run's trend at any length of logging; series of up to 10 points are left as they are."""
  weight = max(0.0, 1.0 - 10.0 / len(values)) if len(values) else 0.0
  smoothed = np.empty(len(values), np.float64)
  average = 0.0
  for i, value in enumerate(values):
    average = weight * average + (1.0 - weight) * value
    smoothed[i] = average / (1.0 - weight ** (i + 1))
  return smoothed


def draw_curves(runs: Sequence[Run]) -> Figure:
  """The panels of `CURVE_PANELS`, each metric against step, the runs overlaid, one colour each:
  the raw values faint, their `smooth`ing solid (the learning rate is drawn raw only). A panel
  none of the runs logged says so. 1600 x 800 px.

  Lines carry gids '<run label>/<metric>/raw' and '<run label>/<metric>/smoothed'.
  """
  fig = _new_figure(CURVES_INCHES)
  colours = [f"C{i % 10}" for i in range(len(runs))]
  rows, columns = CURVES_GRID
  for index, (key, name) in enumerate(CURVE_PANELS):
    ax = fig.add_subplot(rows, columns, index + 1)
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("step")
    drawn = False
    for run, colour in zip(runs, colours):
      if key not in run.metrics:
        continue
      steps, values = run.metrics[key]
      marker = "o" if key == "knn_top1" or len(steps) <= FEW_POINTS else None  # a lone point shows
      if key == "lr":
        ax.plot(steps, values, color=colour, label=run.label, gid=f"{run.label}/{key}/raw", marker=marker,
                markersize=3)
      else:
        ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8, gid=f"{run.label}/{key}/raw")
        ax.plot(steps, smooth(values), color=colour, label=run.label, gid=f"{run.label}/{key}/smoothed",
                marker=marker, markersize=3)
      drawn = True
    if not drawn:
      ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.grid(alpha=0.3)
  labelled = [ax for ax in fig.axes if ax.get_legend_handles_labels()[1]]
  if labelled:  # nothing logged yet (a first checkpoint before the first log step): no legend
    labelled[0].legend(fontsize=8)
  fig.suptitle("Training curves: " + "; ".join(f"{run.label} ({run.description})" for run in runs), wrap=True)
  fig.tight_layout()
  return fig


def write_curves(workdirs: Sequence[str], path: str | os.PathLike) -> Figure:
  """Draws the curves of one or more workdirs (`draw_curves`) into the PNG at `path`.

  Raises:
    WorkdirError: a workdir without config.json or metrics.jsonl.
  """
  runs = [run_from_workdir(workdir) for workdir in workdirs]
  if len({run.label for run in runs}) < len(runs):  # workdirs of the same name: their paths tell them apart
    runs = [run._replace(label=str(workdir)) for run, workdir in zip(runs, workdirs)]
  fig = draw_curves(runs)
  save_png(fig, path)
  return fig


def refresh_curves(workdir: str) -> bool:
  """Redraws workdir/curves.png from the run's metrics.jsonl, on process 0 only.

  Training calls it at its checkpoints: a picture must never stop a run, so any failure is one
  warning line and False.
  """
  if jax.process_index() != 0:
    return False
  try:
    write_curves([workdir], epath.Path(workdir) / CURVES_FILE)
  except Exception as e:  # noqa: BLE001  (whatever went wrong, training goes on)
    reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
    logging.warning("could not draw %s in %s: %s: %s", CURVES_FILE, workdir, type(e).__name__, reason)
    return False
  return True


# ---------------------------------------------------------------------------------------------
# Feature map.


def tsne_coordinates(features: np.ndarray, seed: int = 0) -> np.ndarray:
  """(N, 2) t-SNE map of (N, C) features, L2-normalised first (so distances rank as the kNN's
  cosine similarities do); deterministic for a seed. Perplexity 30, or (N - 1) / 3 when N is small."""
  from sklearn.manifold import TSNE  # imported here: scikit-learn takes seconds to import
  import threadpoolctl

  features = np.asarray(features, np.float64)
  if len(features) < MIN_EMBEDDING_POINTS:
    raise ValueError(f"a t-SNE map needs at least {MIN_EMBEDDING_POINTS} points, got {len(features)}")
  features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
  tsne = TSNE(n_components=2, perplexity=min(30.0, (len(features) - 1) / 3), init="pca", random_state=seed)
  # One OpenMP thread: beside other busy threads (JAX's, another job's) scikit-learn's threads
  # spin-wait on one another (45 points: 20 s on two threads of a loaded 2-core machine, 0.3 s on
  # one), and the Barnes-Hut sums come out in the same order on every machine.
  with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
    return tsne.fit_transform(features)


def _class_colours(num_classes: int) -> list:
  from matplotlib import colormaps

  if num_classes <= 10:
    return [colormaps["tab10"](i) for i in range(num_classes)]
  if num_classes <= 20:
    return [colormaps["tab20"](i) for i in range(num_classes)]
  return [colormaps["turbo"](i / (num_classes - 1)) for i in range(num_classes)]


def draw_embedding(features: np.ndarray, labels: np.ndarray, class_names: Sequence[str], title: str,
                   path: str | os.PathLike | None = None, *, seed: int = 0) -> Figure:
  """A 2-D t-SNE map (`tsne_coordinates`) of (N, C) features, one colour per class of the (N,) int
  labels, with a legend of `class_names`; saved as a PNG at `path` when given. 1000 x 700 px.

  Each class is one scatter (gid 'class/<name>') whose offsets are its points' coordinates.
  """
  labels = np.asarray(labels)
  coordinates = tsne_coordinates(features, seed)
  fig = _new_figure(EMBEDDING_INCHES)
  ax = fig.add_subplot()
  point_size = float(np.clip(8000 / len(labels), 6, 40))  # in points^2: a few large dots, many small ones
  for index, (name, colour) in enumerate(zip(class_names, _class_colours(len(class_names)))):
    members = labels == index
    if members.any():
      ax.scatter(coordinates[members, 0], coordinates[members, 1], s=point_size, color=colour, label=name,
                 gid=f"class/{name}", alpha=0.8, linewidths=0)
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(f"{title}\nt-SNE of the pooled features, n = {len(labels)}", fontsize=11)
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, markerscale=1.5,
            ncol=1 if len(class_names) <= 25 else 2, title="class")
  fig.tight_layout()
  if path is not None:
    save_png(fig, path)
  return fig


# ---------------------------------------------------------------------------------------------
# Retrieval sheet.


class Match(NamedTuple):
  similarity: float  # cosine similarity to the query's features
  path: str
  class_name: str | None  # the gallery's class of the image, when it is a class-per-folder tree


class SheetRow(NamedTuple):
  """One query of a retrieval sheet."""
  query: str  # image path
  styles: list[tuple[float, str]]  # (probability, style), most probable first
  matches: list[Match]  # most similar first


def sheet_inches(num_rows: int, num_matches: int) -> tuple[float, float]:
  """(width, height) of a retrieval sheet: a cell per image (at least `SHEET_MIN_COLUMNS` across),
  a band for the title."""
  width, height = SHEET_CELL_INCHES
  return width * max(1 + num_matches, SHEET_MIN_COLUMNS), height * num_rows + SHEET_TITLE_INCHES


def _thumbnail(path: str) -> np.ndarray:
  """(h, w, 3) uint8 of the image, fitted inside SHEET_THUMBNAIL_PX square."""
  with Image.open(path) as image:
    image = image.convert("RGB")
    image.thumbnail((SHEET_THUMBNAIL_PX, SHEET_THUMBNAIL_PX))
    return np.asarray(image)


def shorten(name: str, width: int = 24) -> str:
  """`name`, or its last `width` - 3 characters after "..." when it is longer."""
  return name if len(name) <= width else "..." + name[-(width - 3):]


def draw_retrieval_sheet(rows: Sequence[SheetRow], title: str, path: str | os.PathLike | None = None) -> Figure:
  """Under `title` (two lines fit), one row per query: the query, its predicted styles under it, then its matches in order as
  thumbnails, each with its rank, similarity, file name and class; saved at `path` when given.
  Size `sheet_inches(len(rows), most matches of a row)` times DPI: 180 px per image across (at
  least 720), 260 px per row plus 60 down.

  Each thumbnail's axes has the gid 'query/<path>' or 'match/<rank>/<path>', rank from 1.
  """
  num_matches = max((len(row.matches) for row in rows), default=0)
  width, height = sheet_inches(len(rows), num_matches)
  fig = _new_figure((width, height))
  cell_w, cell_h = SHEET_CELL_INCHES
  image_side = 0.85 * cell_w  # inches; the rest of the cell's height holds its text

  def cell_axes(row, column, gid):
    left = (column * cell_w + (cell_w - image_side) / 2) / width
    bottom = (height - SHEET_TITLE_INCHES - row * cell_h - 0.25 - image_side) / height
    ax = fig.add_axes((left, bottom, image_side / width, image_side / height), gid=gid)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax

  for r, row in enumerate(rows):
    ax = cell_axes(r, 0, f"query/{row.query}")
    ax.imshow(_thumbnail(row.query))
    for spine in ax.spines.values():
      spine.set_color("black")
      spine.set_linewidth(2)
    ax.set_title(shorten(os.path.basename(row.query)), fontsize=7, fontweight="bold")
    styles = "\n".join(f"{p:.3f}  {shorten(name, 18)}" for p, name in row.styles)
    ax.text(0.5, -0.04, styles, transform=ax.transAxes, ha="center", va="top", fontsize=7)
    for rank, match in enumerate(row.matches, start=1):
      ax = cell_axes(r, rank, f"match/{rank}/{match.path}")
      ax.imshow(_thumbnail(match.path))
      ax.set_title(f"#{rank}  similarity {match.similarity:.3f}", fontsize=7)
      caption = shorten(os.path.basename(match.path))
      if match.class_name is not None:
        caption += f"\nclass: {shorten(match.class_name, 18)}"
      ax.text(0.5, -0.04, caption, transform=ax.transAxes, ha="center", va="top", fontsize=7)
  fig.suptitle(title, y=1.0 - 0.1 / height, va="top", fontsize=9)
  if path is not None:
    save_png(fig, path)
  return fig


def folder_classes(root: str, paths: Sequence[str]) -> list[str | None]:
  """The class of each path in a class-per-folder tree at `root`: its first folder under root.
  All None when some path lies directly in root (not a class-per-folder tree)."""
  parts = [os.path.relpath(path, root).split(os.sep) for path in paths]
  if any(len(p) < 2 for p in parts):
    return [None] * len(paths)
  return [p[0] for p in parts]


def describe_step(step: int | None) -> str:
  """'step N', or 'random init' for the untrained backbone (step None or -1)."""
  return "random init" if step is None or step < 0 else f"step {step}"

