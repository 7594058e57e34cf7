"""Presenting a `metrics.classification_results` dict: a text table, a JSON file, a PNG plot.

The plot draws on a bare `matplotlib.figure.Figure` with the Agg canvas, never through
pyplot, so it needs no display and leaves matplotlib's global backend alone.
"""
import json
from typing import Any, Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from artstyle_jax import paths


def _percent(fraction) -> str:
  return "-" if fraction is None else f"{100.0 * fraction:.2f}%"


def format_table(results: Mapping[str, Any], title: str = "") -> str:
  """One line per class (name, count, accuracy), then the overall figures, as a string to print."""
  per_class = results["per_class"]
  name_width = max([len("class"), len("mean per class")] + [len(row["name"]) for row in per_class])
  count_width = max(len("count"), len(str(results["num_examples"])))
  lines = [title] if title else []
  header = f"{'class':<{name_width}}  {'count':>{count_width}}  {'accuracy':>8}"
  lines += [header, "-" * len(header)]
  for row in per_class:
    lines.append(f"{row['name']:<{name_width}}  {row['count']:>{count_width}}  {_percent(row['accuracy']):>8}")
  lines.append("-" * len(header))
  lines.append(f"{'mean per class':<{name_width}}  {'':>{count_width}}  "
               f"{_percent(results['mean_per_class_accuracy']):>8}")
  lines.append(f"{'top-1':<{name_width}}  {results['num_examples']:>{count_width}}  {_percent(results['top1']):>8}")
  lines.append(f"{'top-' + str(results['top5_k']):<{name_width}}  {results['num_examples']:>{count_width}}  "
               f"{_percent(results['top5']):>8}")
  return "\n".join(lines)


def write_json(results: Mapping[str, Any], path: str) -> None:
  """Writes `results` as strict JSON (NaN refused), atomically: a reader never sees half a file."""
  paths.write_atomically(path, (json.dumps(results, indent=2, allow_nan=False) + "\n").encode())


def plot_confusion_matrix(results: Mapping[str, Any], path: str, title: str = "Confusion matrix") -> None:
  """Saves the confusion matrix as a PNG: rows true class, columns predicted class.

  Colour is the row-normalised fraction (each true class sums to 1, so classes of different
  sizes compare); the cells also print the raw counts when there are at most 30 classes.
  """
  confusion = np.asarray(results["confusion_matrix"], np.int64)
  names = results["class_names"]
  num_classes = len(names)
  counts = confusion.sum(axis=1, keepdims=True)
  fractions = confusion / np.maximum(counts, 1)
  side = min(4.0 + 0.45 * num_classes, 40.0)
  fig = Figure(figsize=(side + 1.5, side))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
  ax.set_xticks(range(num_classes), names, rotation=90)
  ax.set_yticks(range(num_classes), names)
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  ax.set_title(f"{title}\ntop-1 {_percent(results['top1'])}, n = {results['num_examples']}")
  if num_classes <= 30:
    for i in range(num_classes):
      for j in range(num_classes):
        if confusion[i, j]:
          ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7,
                  color="white" if fractions[i, j] > 0.5 else "black")
  fig.tight_layout()
  fig.savefig(path, format="png", dpi=100)
