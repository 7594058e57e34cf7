"""The comparison chart: kNN and linear probe top-1 of every row of a comparison (comparison.png)."""
from collections.abc import Mapping
import os
from typing import Any

from matplotlib.figure import Figure

from artstyle_jax.pictures import figure


def draw_comparison_chart(comparison: Mapping[str, Any], path: str | os.PathLike | None = None) -> Figure:
  """kNN and linear top-1 per entry of `comparison` (what comparison.json holds) as horizontal
  bars, failed entries marked; saved as a PNG at `path` when given. 8 x (1.2 + 0.6 N) inches for
  N entries: 800 x 360 px for 4."""
  entries = comparison["entries"]
  fig = figure.new_figure((8, 1.2 + 0.6 * len(entries)))
  fig.set_layout_engine("constrained")
  axes = fig.add_subplot()
  height = 0.38
  positions = range(len(entries))
  for offset, key, label in ((-height / 2, "knn_top1", "kNN top-1"),
                             (height / 2, "linear_top1", f"linear top-1 ({comparison['mode']})")):
    values = [100.0 * (r[key] or 0.0) for r in entries]
    bars = axes.barh([p + offset for p in positions], values, height, label=label)
    axes.bar_label(bars, labels=["failed" if r["error"] else "-" if r[key] is None else f"{v:.1f}"
                                     for r, v in zip(entries, values)],
                   padding=2, fontsize=8)
  axes.set_yticks(list(positions), [r["name"] for r in entries])
  axes.invert_yaxis()
  axes.set_xlim(0, 105)
  axes.set_xlabel("accuracy (%)")
  axes.set_title(f"{comparison['dataset']} ({comparison['test_split']}): kNN and linear probe top-1")
  axes.legend(loc="lower right", fontsize=8)
  if path is not None:
    figure.save_png(fig, path)
  return fig
