"""The confusion matrix of one evaluation (<method>_confusion.png)."""
from collections.abc import Mapping
import os
from typing import Any

from matplotlib.figure import Figure
import numpy as np

from artstyle_jax.pictures import figure

MAX_COUNTED_CLASSES = 30  # up to this many classes the cells also print their counts


def draw_confusion_matrix(results: Mapping[str, Any], title: str, path: str | os.PathLike | None = None) -> Figure:
  """The confusion matrix of `metrics.classification_results`: rows true class, columns predicted
  class; saved as a PNG at `path` when given. For K classes (1.5 + s) x s inches, s = 4 + 0.45 K
  (at most 40): 1000 x 850 px for 10 classes.

  Colour is the row-normalised fraction (each true class sums to 1, so classes of different
  sizes compare); the cells also print the raw counts when there are at most 30 classes.
  """
  confusion = np.asarray(results["confusion_matrix"], np.int64)
  names = results["class_names"]
  num_classes = len(names)
  counts = confusion.sum(axis=1, keepdims=True)
  fractions = confusion / np.maximum(counts, 1)
  side = min(4.0 + 0.45 * num_classes, 40.0)
  fig = figure.new_figure((side + 1.5, side))
  ax = fig.add_subplot()
  image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
  ax.set_xticks(range(num_classes), names, rotation=90)
  ax.set_yticks(range(num_classes), names)
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  ax.set_title(f"{title}\ntop-1 {100.0 * results['top1']:.2f}%, n = {results['num_examples']}")
  if num_classes <= MAX_COUNTED_CLASSES:
    for i in range(num_classes):
      for j in range(num_classes):
        if confusion[i, j]:
          ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7,
                  color="white" if fractions[i, j] > 0.5 else "black")
  fig.tight_layout()
  if path is not None:
    figure.save_png(fig, path)
  return fig
