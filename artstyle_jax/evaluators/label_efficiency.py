"""Few-label evaluation: the kNN and the fast linear probe fitted on class-balanced subsets of the
training labels, over several label seeds, on the features an evaluation extracted once.

Settings (`Setting`), each a subset of the training split's labelled images:
- a fraction f in (0, 1]: each class keeps ceil(f * n_c) of its n_c images, so every class keeps
  its share of the split and at least one image (a fraction that gives less than one image per
  class is rounded up to one, never refused);
- shots s >= 1: s images of every class; a class with fewer than s images is refused.

Draws (`draw_subset`): for label seed i, each class's images are put in a random order drawn from
`np.random.default_rng([i, class])`, and a setting takes the first images of every class's order.
The subsets of one seed are therefore nested: a setting that takes at least as many images of
every class as another holds all of its images (1 shot within 5 shots, 10% within 50%). A seed
gives the same subsets on every run and for every backbone: the label seeds are 0 .. N-1,
whatever the config's seed, so that the rows of a comparison are scored on the same labels.

Per setting and seed, on the subset's features:
- kNN: `knn.knn_classify` with config.knn_k neighbours, at most the subset's size;
- linear: the fast probe (`probes.fit_fast_probe`: standardised features, Adam, 300 full-batch
  steps, the weight decay chosen on a random fifth of the subset held out, the label seed its
  seed), without augmented copies. At 100% and label seed = config.seed it is eval's fast probe
  (linear_fast.json without --augmented_copies). At a few shots the held-out fifth misses whole
  classes and the choice is noisy (ties go to the largest weight decay); that noise is part of
  the spread reported. A subset of fewer than 3 images, too few to hold out a fifth, takes the
  default weight decay `linear_probe.FAST_WEIGHT_DECAY`.
Both are scored on the whole test split with `metrics.classification_results`; each setting
reports the mean and the sample standard deviation over seeds (None for one seed) of top-1,
top-5, mean per-class accuracy and macro-F1.
"""
from collections.abc import Sequence
import dataclasses
from typing import Any, NamedTuple, Optional

import numpy as np

from artstyle_jax.evaluators import knn
from artstyle_jax.evaluators import linear_probe
from artstyle_jax.evaluators import metrics
from artstyle_jax.evaluators import probes
from artstyle_jax.method import config_lib
from artstyle_jax.models import heads

RESULTS_FILE = "label_efficiency.json"
METRICS = ("top1", "top5", "mean_per_class_accuracy", "macro_f1")
METHODS = ("knn", "linear")
DEFAULT_SEEDS = 3


@dataclasses.dataclass(frozen=True)
class Setting:
  """A fraction of every class's images ('fraction', value in (0, 1]) or a number of images per
  class ('shots', value an int >= 1)."""
  kind: str
  value: float

  @property
  def name(self) -> str:
    return f"{self.value:g}-shot" if self.kind == "shots" else f"{100 * self.value:g}%"


class Plan(NamedTuple):
  """What to evaluate: the settings, in order, and how many label seeds (0 .. seeds - 1)."""
  settings: tuple[Setting, ...]
  seeds: int


def make_plan(fractions: Sequence[str | float] = (), shots: Sequence[str | int] = (),
              seeds: int = DEFAULT_SEEDS) -> Optional[Plan]:
  """The plan of --label_fractions, --shots and --label_seeds; None when neither lists a setting.

  Raises:
    ConfigError: a fraction outside (0, 1], a shot count below 1, anything not a number, a
      setting given twice or fewer than one seed.
  """
  settings = []
  for value in fractions:
    try:
      fraction = float(value)
    except ValueError:
      raise config_lib.ConfigError(f"--label_fractions: {value!r} is not a number") from None
    if not 0.0 < fraction <= 1.0:
      raise config_lib.ConfigError(f"--label_fractions: {value} is not in (0, 1]")
    settings.append(Setting("fraction", fraction))
  for value in shots:
    if not str(value).strip().isdigit() or int(value) < 1:
      raise config_lib.ConfigError(f"--shots: {value!r} is not a whole number of images per class >= 1")
    settings.append(Setting("shots", int(value)))
  if len(set(settings)) != len(settings):
    raise config_lib.ConfigError("a label fraction or shot count is given twice")
  if seeds < 1:
    raise config_lib.ConfigError(f"--label_seeds must be >= 1, got {seeds}")
  return Plan(tuple(settings), seeds) if settings else None


def subset_sizes(setting: Setting, class_counts: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
  """(K,) int images per class a setting takes from classes of `class_counts` (K,) images.

  Raises:
    ConfigError: shots beyond a class's images, or a class without training images.
  """
  empty = [name for name, count in zip(class_names, class_counts) if count == 0]
  if empty:
    raise config_lib.ConfigError(f"few-label evaluation needs training images of every class; {empty} have none")
  if setting.kind == "fraction":
    return np.maximum(1, np.ceil(setting.value * class_counts - 1e-9)).astype(np.int64)
  short = [f"{name} ({count})" for name, count in zip(class_names, class_counts) if count < setting.value]
  if short:
    raise config_lib.ConfigError(f"{setting.name}: classes with fewer training images than that: "
                                 f"{', '.join(short)}")
  return np.full(len(class_counts), int(setting.value), np.int64)


def draw_subset(labels: np.ndarray, sizes: np.ndarray, seed: int) -> np.ndarray:
  """Sorted indices into `labels` (N,) of the first sizes[c] images of each class c, in class c's
  order for `seed` (module docstring): class-balanced, deterministic and nested per seed."""
  chosen = []
  for label, size in enumerate(sizes):
    members = np.flatnonzero(labels == label)
    order = np.random.default_rng([seed, label]).permutation(len(members))
    chosen.append(members[order[:size]])
  return np.sort(np.concatenate(chosen))


_MIN_SELECTION_IMAGES = 3  # `linear_probe.select_weight_decay` holds out round(N / 5), at least 1, of N


def _score(train_features, train_labels, test_features, test_labels, class_names, knn_k,
           seed) -> tuple[dict[str, dict], float]:
  """({'knn': results, 'linear': results}, the probe's weight decay) of one subset, the results
  `metrics.classification_results`."""
  num_classes = len(class_names)
  knn_scores = knn.knn_classify(train_features, train_labels, test_features, num_classes,
                                k=min(knn_k, len(train_labels))).scores
  if len(train_labels) >= _MIN_SELECTION_IMAGES:
    head, settings = probes.fit_fast_probe(train_features[None], train_labels, num_classes, seed)
    weight_decay = settings["weight_decay"]
  else:
    weight_decay = linear_probe.FAST_WEIGHT_DECAY
    head = linear_probe.fit_fast(train_features, train_labels, num_classes, weight_decay=weight_decay).head
  linear_scores = heads.linear_logits(head, test_features)
  return {"knn": metrics.classification_results(np.asarray(knn_scores), test_labels, class_names),
          "linear": metrics.classification_results(np.asarray(linear_scores), test_labels, class_names)
          }, weight_decay


def _spread(values: list[float]) -> dict[str, Any]:
  return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
          "values": values}


def evaluate(plan: Plan, train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
             test_labels: np.ndarray, class_names: Sequence[str], knn_k: int) -> dict[str, Any]:
  """Every setting of `plan` over its seeds (module docstring).

  Args:
    plan: the settings and the number of label seeds.
    train_features, train_labels: (N, C) features and (N,) int labels of the whole training split.
    test_features, test_labels: (M, C) and (M,) of the test split.
    class_names: the K class names.
    knn_k: the kNN's neighbours (fewer when a subset holds fewer images).

  Returns:
    {'label_seeds': [0 .. seeds-1], 'nested': True, 'knn_k', 'linear_steps',
     'settings': [{'name', 'kind', 'value', 'num_labelled', 'labels_per_class' (mean over classes),
     'min_per_class', 'linear_weight_decay' (per seed), 'knn': {metric: {'mean', 'std', 'values'}},
     'linear': {...}}]}.
  Raises:
    ConfigError: a setting the training split cannot give (`subset_sizes`), before any fit.
  """
  train_labels = np.asarray(train_labels)
  class_counts = np.bincount(train_labels, minlength=len(class_names))
  sizes = [subset_sizes(setting, class_counts, class_names) for setting in plan.settings]
  settings = []
  for setting, setting_sizes in zip(plan.settings, sizes):
    scored, weight_decays = [], []
    for seed in range(plan.seeds):
      rows = draw_subset(train_labels, setting_sizes, seed)
      results, weight_decay = _score(train_features[rows], train_labels[rows], test_features, test_labels,
                                     class_names, knn_k, seed)
      scored.append(results)
      weight_decays.append(weight_decay)
    settings.append({
        "name": setting.name, "kind": setting.kind, "value": setting.value,
        "num_labelled": int(setting_sizes.sum()), "labels_per_class": float(setting_sizes.mean()),
        "min_per_class": int(setting_sizes.min()), "linear_weight_decay": weight_decays,
        **{method: {metric: _spread([s[method][metric] for s in scored]) for metric in METRICS}
           for method in METHODS},
    })
  return {"label_seeds": list(range(plan.seeds)), "nested": True, "knn_k": int(knn_k),
          "linear_steps": linear_probe.FAST_STEPS, "settings": settings}


def _mean_std(spread: dict[str, Any]) -> str:
  mean = f"{100 * spread['mean']:.2f}"
  return mean if spread["std"] is None else f"{mean} ± {100 * spread['std']:.2f}"


def format_table(results: dict[str, Any], title: str = "") -> str:
  """One line per setting: labels per class, then kNN and linear top-1 and mean per-class accuracy
  (percent, mean ± std over the label seeds), as a string to print."""
  header = ("setting", "labels/class", "kNN top-1", "kNN per-class", "linear top-1", "linear per-class")
  rows = [(s["name"], f"{s['labels_per_class']:.1f}", _mean_std(s["knn"]["top1"]),
           _mean_std(s["knn"]["mean_per_class_accuracy"]), _mean_std(s["linear"]["top1"]),
           _mean_std(s["linear"]["mean_per_class_accuracy"])) for s in results["settings"]]
  widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
  def line(cells):  # the setting's name left-aligned, the figures right-aligned
    return "  ".join([f"{cells[0]:<{widths[0]}}"] + [f"{c:>{w}}" for c, w in zip(cells[1:], widths[1:])])

  lines = [title] if title else []
  lines.append(line(header))
  lines.append("-" * len(lines[-1]))
  lines += [line(row) for row in rows]
  lines.append(f"(over label seeds {results['label_seeds']}, kNN k <= {results['knn_k']})")
  return "\n".join(lines)
