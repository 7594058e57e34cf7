"""Few-label evaluation: the subsets are class-balanced, the same for a seed and nested within a seed;
a fraction too small for one image per class is rounded up to one, shots beyond a class's images are
refused; the figures are the mean and std of the seeds' classification results; the chart draws a
line per backbone and setting kind with the spread shaded."""
import json

from matplotlib.collections import PolyCollection
import numpy as np
from PIL import Image
import pytest

from artstyle_jax.evaluators import knn
from artstyle_jax.evaluators import label_efficiency
from artstyle_jax.evaluators import metrics
from artstyle_jax.evaluators import probes
from artstyle_jax.method import config_lib
from artstyle_jax.models import heads
from artstyle_jax.pictures import label_efficiency_chart

# 3 classes of 40, 12 and 5 training images, interleaved.
LABELS = np.random.default_rng(0).permutation(np.repeat([0, 1, 2], [40, 12, 5]))
NAMES = ["Baroque", "Cubism", "Pop_Art"]
COUNTS = np.bincount(LABELS)


def subset(setting, seed):
  return label_efficiency.draw_subset(LABELS, label_efficiency.subset_sizes(setting, COUNTS, NAMES), seed)


def test_shots_take_the_same_number_of_images_of_every_class_and_fractions_each_class_its_share():
  shots = subset(label_efficiency.Setting("shots", 4), seed=0)
  assert np.bincount(LABELS[shots]).tolist() == [4, 4, 4]
  quarter = subset(label_efficiency.Setting("fraction", 0.25), seed=0)
  assert np.bincount(LABELS[quarter]).tolist() == [10, 3, 2]  # ceil(0.25 * [40, 12, 5])
  assert len(set(shots.tolist())) == len(shots) and np.all(np.diff(shots) > 0)


def test_a_fraction_below_one_image_per_class_is_rounded_up_to_one():
  sizes = label_efficiency.subset_sizes(label_efficiency.Setting("fraction", 0.01), COUNTS, NAMES)
  assert sizes.tolist() == [1, 1, 1]
  everything = subset(label_efficiency.Setting("fraction", 1.0), seed=2)
  np.testing.assert_array_equal(everything, np.arange(len(LABELS)))


def test_a_seed_gives_the_same_subset_every_time_and_another_seed_another():
  setting = label_efficiency.Setting("shots", 3)
  np.testing.assert_array_equal(subset(setting, 1), subset(setting, 1))
  assert not np.array_equal(subset(setting, 1), subset(setting, 2))


def test_the_subsets_of_one_seed_are_nested():
  """1 shot within 2 shots within 50% within 100%, each taking at least as many images of every
  class as the one before: each class's first images in one order per seed."""
  settings = [label_efficiency.Setting("shots", 1), label_efficiency.Setting("shots", 2),
              label_efficiency.Setting("fraction", 0.5), label_efficiency.Setting("fraction", 1.0)]
  for seed in (0, 1):
    subsets = [set(subset(s, seed).tolist()) for s in settings]
    assert all(small < large for small, large in zip(subsets, subsets[1:]))


def test_shots_beyond_the_images_of_a_class_are_refused_naming_it():
  with pytest.raises(config_lib.ConfigError, match=r"Pop_Art \(5\)"):
    label_efficiency.subset_sizes(label_efficiency.Setting("shots", 6), COUNTS, NAMES)


@pytest.mark.parametrize("fractions, shots, seeds, message", [
    (["0"], [], 3, r"not in \(0, 1\]"), (["1.5"], [], 3, r"not in \(0, 1\]"), (["a"], [], 3, "not a number"),
    ([], ["0"], 3, "whole number"), ([], ["2.5"], 3, "whole number"), (["0.1", "0.1"], [], 3, "twice"),
    (["0.1"], [], 0, "label_seeds"),
])
def test_bad_settings_are_refused(fractions, shots, seeds, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    label_efficiency.make_plan(fractions, shots, seeds)


def test_no_setting_is_no_plan_and_names_say_what_a_setting_is():
  assert label_efficiency.make_plan([], [], 3) is None
  plan = label_efficiency.make_plan(["0.01", "0.1", "1.0"], ["1", "5"], 2)
  assert [s.name for s in plan.settings] == ["1%", "10%", "100%", "1-shot", "5-shot"] and plan.seeds == 2


def test_figures_are_mean_and_sample_std_of_each_seeds_classification_results():
  rng = np.random.default_rng(1)
  centres = 3 * rng.normal(size=(3, 8))
  train = (centres[LABELS] + rng.normal(size=(len(LABELS), 8))).astype(np.float32)
  test_labels = np.repeat([0, 1, 2], 6)
  test = (centres[test_labels] + rng.normal(size=(18, 8))).astype(np.float32)
  plan = label_efficiency.make_plan(["1.0"], ["2"], 3)
  results = json.loads(json.dumps(label_efficiency.evaluate(plan, train, LABELS, test, test_labels, NAMES, knn_k=5),
                                  allow_nan=False))
  full, two_shot = results["settings"]
  assert (full["num_labelled"], two_shot["num_labelled"], two_shot["labels_per_class"]) == (57, 6, 2.0)
  assert results["label_seeds"] == [0, 1, 2] and results["nested"] is True
  # All the labels: the same subset for every seed, the kNN deterministic; the probe's held-out
  # fifth is the seed's, and seed 0's probe is eval's fast probe of config.seed 0.
  assert full["knn"]["top1"]["std"] == 0.0
  head, settings = probes.fit_fast_probe(train[None], LABELS, 3, 0)
  expected = metrics.classification_results(np.asarray(heads.linear_logits(head, test)), test_labels)
  assert full["linear"]["macro_f1"]["values"][0] == expected["macro_f1"]
  assert full["linear_weight_decay"][0] == settings["weight_decay"] and len(two_shot["linear_weight_decay"]) == 3
  for method in ("knn", "linear"):
    for metric in label_efficiency.METRICS:
      spread = two_shot[method][metric]
      assert spread["mean"] == pytest.approx(np.mean(spread["values"]))
      assert spread["std"] == pytest.approx(np.std(spread["values"], ddof=1))
  # Seed 1's two-shot kNN is the kNN of that subset, k capped at its 6 images.
  rows = subset(label_efficiency.Setting("shots", 2), seed=1)
  scores = knn.knn_classify(train[rows], LABELS[rows], test, 3, k=6).scores
  expected = metrics.classification_results(np.asarray(scores), test_labels)
  assert two_shot["knn"]["macro_f1"]["values"][1] == expected["macro_f1"]
  table = label_efficiency.format_table(results).splitlines()
  assert table[0].split()[:2] == ["setting", "labels/class"] and table[2].split()[0] == "100%"


def _spread(values):
  return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)), "values": values}


def _entry(name, offset):
  settings = []
  for kind, value, per_class in (("shots", 1, 1.0), ("shots", 5, 5.0), ("fraction", 0.5, 20.0)):
    figures = {m: _spread([0.2 + offset + per_class / 100, 0.25 + offset + per_class / 100])
               for m in label_efficiency.METRICS}
    settings.append({"name": str(value), "kind": kind, "value": value, "labels_per_class": per_class,
                     "knn": figures, "linear": figures})
  return {"name": name, "error": None, "label_efficiency": settings}


def test_chart_draws_a_line_per_backbone_and_kind_with_the_spread_shaded(tmp_path):
  comparison = {"dataset": "wikiart", "test_split": "test", "label_plan": {"settings": ["1", "5", "0.5"], "seeds": 2},
                "entries": [_entry("ours", 0.1), _entry("moco", 0.0), {"name": "broken", "error": "x",
                                                                       "label_efficiency": None}]}
  fig = label_efficiency_chart.draw_label_efficiency_chart(comparison, tmp_path / "label_efficiency.png")
  knn_axes = fig.axes[0]
  lines = {line.get_label(): line for line in knn_axes.get_lines() if not line.get_label().startswith("_")}
  assert sorted(lines) == ["moco (fraction)", "moco (shots)", "ours (fraction)", "ours (shots)"]
  np.testing.assert_allclose(lines["ours (shots)"].get_xdata(), [1.0, 5.0])
  np.testing.assert_allclose(lines["ours (shots)"].get_ydata(), [100 * (0.325 + 0.01), 100 * (0.325 + 0.05)])
  assert lines["ours (shots)"].get_color() != lines["moco (shots)"].get_color()
  # A shaded band per line of several points (shots), an error bar for the one-point fraction lines.
  bands = [c for c in knn_axes.collections if isinstance(c, PolyCollection)]
  assert len(bands) == 2 and len(knn_axes.containers) == 2
  with Image.open(tmp_path / "label_efficiency.png") as image:
    assert (image.format, image.size) == ("PNG", (1200, 500))
