"""Classification metrics from class scores: top-k, per-class accuracy, macro-F1, confusion matrix.

Host-side NumPy: the inputs are small (examples x classes) and the results go to JSON.
Predictions are `argmax` over classes (the first class wins a tie); the top-k sets are taken
from a stable sort of the scores, so the top-1 set is always the argmax prediction and the
top-1 accuracy agrees with the confusion matrix's diagonal.
"""
from typing import Any, Optional, Sequence

import numpy as np


def _check_scores_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
  scores = np.asarray(scores)
  labels = np.asarray(labels)
  if scores.ndim != 2:
    raise ValueError(f"scores must be (examples, classes); got shape {scores.shape}.")
  if labels.shape != scores.shape[:1]:
    raise ValueError(f"labels must be (examples,) = ({scores.shape[0]},); got shape {labels.shape}.")
  if not len(labels):
    raise ValueError("there are no examples to evaluate.")
  _check_labels(labels, scores.shape[1])
  return scores, labels


def _check_labels(labels: np.ndarray, num_classes: int) -> None:
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers; got dtype {labels.dtype}.")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}); got values in "
                     f"[{labels.min()}, {labels.max()}].")


def top_k_accuracy(scores, labels, k: int) -> float:
  """Fraction of examples whose true class is among the `k` highest-scoring classes.

  Args:
    scores: (N, K) class scores (logits, probabilities or kNN votes; only the order matters).
    labels: (N,) int true classes in [0, K).
    k: how many top classes count as a hit; clipped to K (so top-5 over 3 classes is 1.0).

  Returns:
    Accuracy in [0, 1].
  """
  scores, labels = _check_scores_labels(scores, labels)
  if k < 1:
    raise ValueError(f"k must be >= 1; got {k}.")
  k = min(k, scores.shape[1])
  top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return float(np.mean(np.any(top == labels[:, None], axis=1)))


def predictions(scores) -> np.ndarray:
  """(N, K) scores -> (N,) int64 predicted classes, the first maximum on ties."""
  scores = np.asarray(scores)
  if scores.ndim != 2:
    raise ValueError(f"scores must be (examples, classes); got shape {scores.shape}.")
  return np.argmax(scores, axis=1)


def confusion_matrix(labels, predicted, num_classes: int) -> np.ndarray:
  """(K, K) int64 counts: row = true class, column = predicted class."""
  labels = np.asarray(labels)
  predicted = np.asarray(predicted)
  if labels.shape != predicted.shape or labels.ndim != 1:
    raise ValueError(f"labels and predictions must both be (N,); got {labels.shape} and {predicted.shape}.")
  _check_labels(labels, num_classes)
  _check_labels(predicted, num_classes)
  counts = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(counts, (labels, predicted), 1)
  return counts


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
  """(K,) float64 recall per true class from a confusion matrix; NaN for a class with no examples."""
  confusion = np.asarray(confusion)
  counts = confusion.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(counts > 0, np.diag(confusion) / np.maximum(counts, 1), np.nan)


def macro_f1(confusion: np.ndarray) -> float:
  """Mean over classes of F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c), from a (K, K) confusion matrix.

  The mean runs over the classes that occur among the true labels or the predictions; a class
  with examples that is never predicted counts 0. This is scikit-learn's
  `f1_score(labels, predicted, average="macro", zero_division=0)`.
  """
  confusion = np.asarray(confusion)
  true_positives = np.diag(confusion).astype(np.float64)
  occurring = confusion.sum(axis=0) + confusion.sum(axis=1)  # = 2 TP + FP + FN
  present = occurring > 0
  return float(np.mean(2.0 * true_positives[present] / occurring[present]))


def classification_results(scores, labels, class_names: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """All the metrics of one evaluation, as a JSON-serialisable dict of plain Python values.

  Args:
    scores: (N, K) class scores.
    labels: (N,) int true classes.
    class_names: K names, in class-index order; default "0", "1", ...

  Returns:
    {'num_examples', 'num_classes', 'top1', 'top5', 'top5_k' (the k used, min(5, K)),
     'mean_per_class_accuracy' (the balanced accuracy: mean recall over the classes with
     examples, scikit-learn's `balanced_accuracy_score`), 'macro_f1' (`macro_f1`), 'class_names',
     'per_class': [{'name', 'count', 'accuracy' (None when count is 0)}],
     'confusion_matrix': K lists of K ints, rows true, columns predicted}.
    Accuracies are fractions in [0, 1].
  """
  scores, labels = _check_scores_labels(scores, labels)
  num_classes = scores.shape[1]
  if class_names is None:
    class_names = [str(i) for i in range(num_classes)]
  class_names = [str(name) for name in class_names]
  if len(class_names) != num_classes:
    raise ValueError(f"got {len(class_names)} class names for {num_classes} classes.")
  confusion = confusion_matrix(labels, predictions(scores), num_classes)
  recall = per_class_accuracy(confusion)
  counts = confusion.sum(axis=1)
  present = counts > 0
  return {
      "num_examples": int(len(labels)),
      "num_classes": int(num_classes),
      "top1": top_k_accuracy(scores, labels, 1),
      "top5": top_k_accuracy(scores, labels, 5),
      "top5_k": int(min(5, num_classes)),
      "mean_per_class_accuracy": float(np.mean(recall[present])),
      "macro_f1": macro_f1(confusion),
      "class_names": class_names,
      "per_class": [
          {"name": name, "count": int(count), "accuracy": float(acc) if count else None}
          for name, count, acc in zip(class_names, counts, recall)
      ],
      "confusion_matrix": confusion.tolist(),
  }
