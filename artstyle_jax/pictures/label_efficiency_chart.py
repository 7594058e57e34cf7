"""The few-label chart of a comparison: accuracy against labels per class, a line per backbone
(label_efficiency.png)."""
from collections.abc import Mapping
import os
from typing import Any

from matplotlib.figure import Figure

from artstyle_jax.pictures import figure

_PANELS = (("knn", "kNN"), ("linear", "linear probe (fast)"))
_METRIC_LABELS = {"top1": "top-1 accuracy", "top5": "top-5 accuracy",
                  "mean_per_class_accuracy": "mean per-class accuracy", "macro_f1": "macro-F1"}
# Shots (the same number of images in every class) and fractions (every class its share) are
# different draws: each has its own line style, in the backbone's colour.
_KINDS = (("shots", "-", "o", "shots"), ("fraction", "--", "s", "fraction"))


def draw_label_efficiency_chart(comparison: Mapping[str, Any], path: str | os.PathLike | None = None,
                                metric: str = "top1") -> Figure:
  """`metric` (a key of `label_efficiency.METRICS`, top-1 by default) of the kNN (left) and the
  linear probe (right) against the mean labelled images per class (log scale), a colour per entry
  of `comparison` (what comparison.json holds) that has few-label settings: shots solid with
  circles, fractions dashed with squares, the mean over label seeds drawn and mean ± one standard
  deviation shaded (an error bar for a line of one point). Saved as a PNG at `path` when given.
  12 x 5 inches: 1200 x 500 px."""
  fig = figure.new_figure((12, 5))
  fig.set_layout_engine("constrained")
  axes_pair = fig.subplots(1, 2, sharey=True)
  entries = [r for r in comparison["entries"] if r.get("label_efficiency")]
  colours = [f"C{i % 10}" for i in range(len(entries))]
  for axes, (method, title) in zip(axes_pair, _PANELS):
    for entry, colour in zip(entries, colours):
      for kind, style, marker, kind_label in _KINDS:
        points = sorted((s for s in entry["label_efficiency"] if s["kind"] == kind),
                        key=lambda s: s["labels_per_class"])
        if not points:
          continue
        x = [s["labels_per_class"] for s in points]
        mean = [100.0 * s[method][metric]["mean"] for s in points]
        std = [100.0 * (s[method][metric]["std"] or 0.0) for s in points]
        axes.plot(x, mean, linestyle=style, marker=marker, color=colour, label=f"{entry['name']} ({kind_label})")
        if any(std) and len(points) == 1:
          axes.errorbar(x, mean, yerr=std, color=colour, capsize=4, linestyle="none")
        elif any(std):
          axes.fill_between(x, [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)],
                            color=colour, alpha=0.2, linewidth=0)
    axes.set_xscale("log")
    axes.set_xlabel("labelled training images per class (mean)")
    axes.set_title(title)
    axes.grid(True, which="major", alpha=0.3)
  axes_pair[0].set_ylabel(f"{_METRIC_LABELS[metric]} (%)")
  if entries:
    axes_pair[1].legend(loc="lower right", fontsize=8)
  plan = comparison.get("label_plan") or {}
  fig.suptitle(f"{comparison['dataset']} ({comparison['test_split']}): accuracy against labels per class, "
               f"mean ± std over {plan.get('seeds', '?')} label seeds")
  if path is not None:
    figure.save_png(fig, path)
  return fig
