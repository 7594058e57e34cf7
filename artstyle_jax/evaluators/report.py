"""Presenting a `metrics.classification_results` dict: a text table, a JSON file. (Its picture,
the confusion matrix, is `pictures.confusion`'s.)"""
import json
from typing import Any, Mapping

from artstyle_jax.storage import paths


def _percent(fraction) -> str:
  return "-" if fraction is None else f"{100.0 * fraction:.2f}%"


def format_table(results: Mapping[str, Any], title: str = "") -> str:
  """One line per class (name, count, accuracy), then the overall figures and, when `results` has
  them, the retrieval measures and the features' effective rank and first-PC share, as a string
  to print."""
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
  lines.append(f"{'macro F1':<{name_width}}  {'':>{count_width}}  {_percent(results['macro_f1']):>8}")
  lines.append(f"{'top-1':<{name_width}}  {results['num_examples']:>{count_width}}  {_percent(results['top1']):>8}")
  lines.append(f"{'top-' + str(results['top5_k']):<{name_width}}  {results['num_examples']:>{count_width}}  "
               f"{_percent(results['top5']):>8}")
  if "map_at_k" in results:
    k = results["retrieval_k"]
    lines.append(f"retrieval of {results['train_split']} images ({results['representation']} features): "
                 f"precision@{k} {_percent(results['precision_at_k'])}, mAP@{k} {_percent(results['map_at_k'])}")
  if "effective_rank" in results:
    lines.append(f"features: effective rank {results['effective_rank']:.1f} of {results['feature_dim']} dimensions, "
                 f"first principal component {_percent(results['first_pc_share'])} of the variance")
  return "\n".join(lines)


def write_json(results: Mapping[str, Any], path: str) -> None:
  """Writes `results` as strict JSON (NaN refused), atomically: a reader never sees half a file."""
  paths.write_atomically(path, (json.dumps(results, indent=2, allow_nan=False) + "\n").encode())
