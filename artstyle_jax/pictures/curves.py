"""Training curves: the loss terms, the learning rate, the gradient norm, the kNN monitor and the
feature-health signals of one or more runs' metrics files against step, in one picture (curves.png)."""
from collections.abc import Sequence
import os
from typing import NamedTuple

from absl import logging
from etils import epath
import jax
from matplotlib.figure import Figure
import numpy as np

from artstyle_jax.pictures import figure
from artstyle_jax.storage import checkpoints
from artstyle_jax.storage import metric_writer

CURVES_FILE = "curves.png"
# Training redraws the curves at a checkpoint at most this often (seconds), and at its last step.
CURVES_MIN_INTERVAL_S = 60.0

# ((metrics record keys), panel title) of the curves picture, in reading order; a panel of several
# keys draws each in its own line style and names it in its legend.
CURVE_PANELS = (
    (("loss",), "total loss"),
    (("rel_weak",), "relation loss, weak teacher"),
    (("rel_style",), "relation loss, style teacher"),
    (("gram_weak",), "Gram loss, weak teacher"),
    (("gram_style",), "Gram loss, style teacher"),
    (("lr",), "learning rate"),
    (("grad_norm",), "gradient norm (before weight decay)"),
    (("knn_top1", "knn_pc1_share"), "kNN monitor (held-out split)"),
    (("health/pooled_rank", "health/proj_rank", "knn_rank"), "effective rank (RankMe)"),
    (("health/proj_std",), "std of normalised projections (1/sqrt(D) healthy)"),
    (("health/cos_weak", "health/cos_style"), "student-teacher cosine"),
    (("health/entropy_weak", "health/entropy_style"), "teacher entropy over the queue (nats)"),
)
# How a panel of several keys names each in its legend.
KEY_LABELS = {"knn_top1": "top-1", "knn_pc1_share": "first-PC share", "health/pooled_rank": "pooled, batch",
              "health/proj_rank": "projection, batch", "knn_rank": "pooled, held-out",
              "health/cos_weak": "weak", "health/cos_style": "style",
              "health/entropy_weak": "weak", "health/entropy_style": "style"}
LINE_STYLES = ("-", "--", ":")
CURVES_GRID = (3, 4)  # rows, columns of panels
CURVES_INCHES = (16.0, 12.0)  # 1600 x 1200 px
FEW_POINTS = 20  # series of at most this many points are drawn with a marker at each

# A series of one metric: (steps (T,) int64 ascending, values (T,) float64).
Series = tuple[np.ndarray, np.ndarray]


class Run(NamedTuple):
  """The curves of one training run."""
  label: str  # the run's name in the legend (its workdir's name)
  description: str  # 'model, step N, dataset', for the title
  metrics: dict[str, Series]


def metric_series(records: Sequence[dict]) -> dict[str, Series]:
  """{metric: (steps, values)} of metric_writer records, 'step' and 'time' left out.

  A resumed run logs again the steps between its last checkpoint and the point where it died:
  the last record of a step wins. A record that is not numbers with a step is skipped.
  """
  by_key: dict[str, dict[int, float]] = {}
  for record in records:
    try:
      step = int(record["step"])
      values = {key: float(value) for key, value in record.items() if key not in ("step", "time")}
    except (KeyError, TypeError, ValueError):
      continue
    for key, value in values.items():
      by_key.setdefault(key, {})[step] = value
  return {key: (np.array(sorted(values), np.int64), np.array([values[s] for s in sorted(values)], np.float64))
          for key, values in by_key.items()}


def run_from_workdir(workdir: str) -> Run:
  """The curves of a training workdir (its metrics files and config.json).

  Raises:
    WorkdirError: no config.json, or no metrics file (nothing logged yet).
  """
  config = checkpoints.load_config(workdir)
  if not metric_writer.metrics_files(workdir):
    raise checkpoints.WorkdirError(f"{workdir} holds no metrics-*.jsonl: the run has logged nothing yet")
  metrics = metric_series(metric_writer.read_records(workdir))
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
  none of the runs logged says so. 1600 x 1200 px.

  Lines carry gids '<run label>/<metric>/raw' and '<run label>/<metric>/smoothed'.
  """
  fig = figure.new_figure(CURVES_INCHES)
  colours = [f"C{i % 10}" for i in range(len(runs))]
  rows, columns = CURVES_GRID
  for index, (keys, name) in enumerate(CURVE_PANELS):
    ax = fig.add_subplot(rows, columns, index + 1)
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("step")
    drawn = False
    for key, style in zip(keys, LINE_STYLES):
      for run, colour in zip(runs, colours):
        if key not in run.metrics:
          continue
        steps, values = run.metrics[key]
        label = run.label if len(keys) == 1 else f"{run.label}: {KEY_LABELS[key]}"
        marker = "o" if key.startswith("knn_") or len(steps) <= FEW_POINTS else None  # a lone point shows
        if key == "lr":
          ax.plot(steps, values, color=colour, label=label, gid=f"{run.label}/{key}/raw", marker=marker,
                  markersize=3)
        else:
          ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8, linestyle=style,
                  gid=f"{run.label}/{key}/raw")
          ax.plot(steps, smooth(values), color=colour, label=label, gid=f"{run.label}/{key}/smoothed",
                  linestyle=style, marker=marker, markersize=3)
        drawn = True
    if not drawn:
      ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.grid(alpha=0.3)
  labelled = [ax for ax in fig.axes if ax.get_legend_handles_labels()[1]]
  # The first labelled panel names the runs; each panel of several keys names its keys.
  for ax in labelled:
    if ax is labelled[0] or len(CURVE_PANELS[fig.axes.index(ax)][0]) > 1:
      ax.legend(fontsize=8)
  fig.suptitle("Training curves: " + "; ".join(f"{run.label} ({run.description})" for run in runs), wrap=True)
  fig.tight_layout()
  return fig


def write_curves(workdirs: Sequence[str], path: str | os.PathLike) -> Figure:
  """Draws the curves of one or more workdirs (`draw_curves`) into the PNG at `path`.

  Raises:
    WorkdirError: a workdir without config.json or metrics files.
  """
  runs = [run_from_workdir(workdir) for workdir in workdirs]
  if len({run.label for run in runs}) < len(runs):  # workdirs of the same name: their paths tell them apart
    runs = [run._replace(label=str(workdir)) for run, workdir in zip(runs, workdirs)]
  fig = draw_curves(runs)
  figure.save_png(fig, path)
  return fig


def refresh_curves(workdir: str) -> bool:
  """Redraws workdir/curves.png from the run's metrics files, on process 0 only.

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

