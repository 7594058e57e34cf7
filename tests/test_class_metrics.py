"""Mean per-class (balanced) accuracy and macro-F1 are scikit-learn's, on small label sets, including
a class that is never predicted and one that is predicted but absent from the labels; the table
prints them."""
import warnings

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from artstyle_jax.evaluators import metrics
from artstyle_jax.evaluators import report

# (labels, predictions, number of classes)
CASES = {
    "class 2 never predicted": ([0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 0, 1, 0], 3),
    "class 3 predicted, never true": ([0, 1, 1, 2, 2], [0, 3, 1, 2, 2], 4),
    "class 1 in neither": ([0, 0, 2, 2, 2], [0, 2, 2, 0, 2], 3),
    "all right": ([0, 1, 2, 1], [0, 1, 2, 1], 3),
}


def _scores(predicted, num_classes):
  """One-hot scores whose argmax is `predicted`."""
  return np.eye(num_classes)[np.asarray(predicted)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_balanced_accuracy_and_macro_f1_equal_scikit_learn(case):
  labels, predicted, num_classes = CASES[case]
  results = metrics.classification_results(_scores(predicted, num_classes), np.asarray(labels))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # scikit-learn warns of a predicted class absent from the labels
    expected_balanced = sk_metrics.balanced_accuracy_score(labels, predicted)
  assert results["mean_per_class_accuracy"] == pytest.approx(expected_balanced, abs=1e-12)
  assert results["macro_f1"] == pytest.approx(
      sk_metrics.f1_score(labels, predicted, average="macro", zero_division=0), abs=1e-12)


def test_macro_f1_of_random_predictions_over_many_classes_equals_scikit_learn():
  rng = np.random.default_rng(0)
  labels, predicted = rng.integers(0, 9, 200), rng.integers(0, 7, 200)
  confusion = metrics.confusion_matrix(labels, predicted, 9)
  assert metrics.macro_f1(confusion) == pytest.approx(
      sk_metrics.f1_score(labels, predicted, average="macro", zero_division=0), abs=1e-12)


def test_a_never_predicted_class_counts_zero_in_both_means():
  """Class 2 (3 of 7 examples) is never predicted: it counts 0 in both means, not left out."""
  labels, predicted, num_classes = CASES["class 2 never predicted"]
  results = metrics.classification_results(_scores(predicted, num_classes), np.asarray(labels))
  assert results["mean_per_class_accuracy"] == pytest.approx((1 / 2 + 2 / 2 + 0) / 3)
  assert results["macro_f1"] == pytest.approx((2 / 5 + 4 / 6 + 0) / 3)


def test_table_prints_macro_f1_beside_the_mean_per_class_accuracy():
  labels, predicted, num_classes = CASES["class 2 never predicted"]
  results = metrics.classification_results(_scores(predicted, num_classes), np.asarray(labels))
  lines = report.format_table(results).splitlines()
  assert lines[-4].split() == ["mean", "per", "class", "50.00%"]
  assert lines[-3].split() == ["macro", "F1", f"{100 * results['macro_f1']:.2f}%"]

