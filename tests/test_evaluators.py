"""Evaluators: kNN, linear probes (fast and paper protocol), metrics and their report."""
import json

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from artstyle_jax.evaluators import knn
from artstyle_jax.evaluators import linear_probe
from artstyle_jax.evaluators import metrics
from artstyle_jax.evaluators import report
from artstyle_jax.models import heads
from artstyle_jax.pictures import confusion as confusion_picture


def _clusters(rng: np.random.Generator, num_per_class: int, num_classes: int, channels: int,
              spread: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
  """Features in well-separated clusters, one per class, with a common offset and channel scales."""
  centres = rng.normal(size=(num_classes, channels))
  labels = np.repeat(np.arange(num_classes), num_per_class)
  features = centres[labels] + spread * rng.normal(size=(len(labels), channels))
  return (features * rng.uniform(0.5, 3.0, size=channels) + 2.0).astype(np.float32), labels


# --- metrics and report ---------------------------------------------------------------------

def test_top_k_accuracy_counts_true_class_among_k_highest_scores():
  scores = np.array([[0.1, 0.5, 0.4],   # true 1: top-1 hit
                     [0.6, 0.3, 0.1],   # true 1: second
                     [0.2, 0.3, 0.5]])  # true 0: third
  labels = np.array([1, 1, 0])
  assert metrics.top_k_accuracy(scores, labels, 1) == pytest.approx(1 / 3)
  assert metrics.top_k_accuracy(scores, labels, 2) == pytest.approx(2 / 3)
  assert metrics.top_k_accuracy(scores, labels, 3) == 1.0


def test_top5_with_fewer_than_five_classes_is_top_k_over_all_classes():
  scores = np.array([[0.9, 0.1, 0.0], [0.9, 0.1, 0.0]])
  results = metrics.classification_results(scores, np.array([2, 1]))
  assert results["top5"] == 1.0
  assert results["top5_k"] == 3
  assert results["top1"] == 0.0


def test_tied_scores_count_as_the_argmax_class_in_top1_and_confusion_matrix():
  scores = np.array([[0.5, 0.5], [0.5, 0.5]])
  results = metrics.classification_results(scores, np.array([0, 1]))
  assert results["top1"] == 0.5
  assert results["confusion_matrix"] == [[1, 0], [1, 0]]


def test_confusion_matrix_rows_are_true_classes_and_columns_predictions():
  confusion = metrics.confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 3)
  np.testing.assert_array_equal(confusion, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
  np.testing.assert_allclose(metrics.per_class_accuracy(confusion), [0.5, 1.0, 2 / 3])


def test_results_dict_is_strict_json_and_marks_classes_without_examples():
  scores = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0], [0.0, 2.0, 1.0]])
  results = metrics.classification_results(scores, np.array([0, 0, 2]), class_names=["a", "b", "c"])
  decoded = json.loads(json.dumps(results, allow_nan=False))
  assert decoded["per_class"] == [{"name": "a", "count": 2, "accuracy": 0.5},
                                  {"name": "b", "count": 0, "accuracy": None},
                                  {"name": "c", "count": 1, "accuracy": 0.0}]
  assert decoded["mean_per_class_accuracy"] == 0.25
  assert decoded["num_examples"] == 3 and decoded["num_classes"] == 3
  assert decoded["confusion_matrix"] == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]


@pytest.mark.parametrize("labels, message", [
    (np.array([0, 3]), r"\[0, 3\)"),
    (np.array([0.0, 1.0]), "integers"),
    (np.array([0]), r"\(examples,\)"),
])
def test_metrics_reject_bad_labels_with_a_clear_message(labels, message):
  with pytest.raises(ValueError, match=message):
    metrics.classification_results(np.zeros((2, 3)), labels)


def test_table_lists_every_class_with_count_and_accuracy_then_overall_figures():
  scores = np.eye(3)[[0, 1, 1, 2]]
  results = metrics.classification_results(scores, np.array([0, 1, 2, 2]), ["Baroque", "Cubism", "Pop_Art"])
  lines = report.format_table(results, title="linear probe").splitlines()
  assert lines[0] == "linear probe"
  rows = {line.split()[0]: line.split()[1:] for line in lines[3:6]}
  assert rows == {"Baroque": ["1", "100.00%"], "Cubism": ["1", "100.00%"], "Pop_Art": ["2", "50.00%"]}
  assert lines[-2].split() == ["top-1", "4", "75.00%"]
  assert lines[-1].split() == ["top-3", "4", "100.00%"]


def test_json_file_and_confusion_matrix_png_are_written_where_the_caller_says(tmp_path):
  rng = np.random.default_rng(0)
  results = metrics.classification_results(rng.normal(size=(40, 6)), rng.integers(0, 6, 40),
                                           [f"style {i}" for i in range(6)])
  report.write_json(results, str(tmp_path / "probe.json"))
  confusion_picture.draw_confusion_matrix(results, "probe", str(tmp_path / "probe_confusion.png"))
  assert json.loads((tmp_path / "probe.json").read_text()) == results
  with Image.open(tmp_path / "probe_confusion.png") as image:
    assert image.format == "PNG" and min(image.size) > 200
  assert sorted(p.name for p in tmp_path.iterdir()) == ["probe.json", "probe_confusion.png"]


# --- kNN --------------------------------------------------------------------------------------

def _numpy_weighted_knn(bank, bank_labels, queries, num_classes, k, temperature):
  """InstDisc/DINO weighted vote computed directly, in float64, normalised to sum 1."""
  bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
  queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  similarity = queries.astype(np.float64) @ bank.T.astype(np.float64)
  nearest = np.argsort(-similarity, axis=1)[:, :k]
  votes = np.zeros((len(queries), num_classes))
  for q in range(len(queries)):
    for j in nearest[q]:
      votes[q, bank_labels[j]] += np.exp(similarity[q, j] / temperature)
  return votes / votes.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("chunk_size", [8, 512])
def test_knn_scores_equal_direct_numpy_weighted_vote_whatever_the_chunking(chunk_size):
  rng = np.random.default_rng(0)
  bank = rng.normal(size=(300, 16)).astype(np.float32)
  bank_labels = rng.integers(0, 5, 300)
  queries = rng.normal(size=(37, 16)).astype(np.float32)  # 37: not a multiple of the chunk
  result = knn.knn_classify(bank, bank_labels, queries, num_classes=5, chunk_size=chunk_size)
  expected = _numpy_weighted_knn(bank, bank_labels, queries, 5, k=20, temperature=0.07)
  np.testing.assert_allclose(result.scores, expected, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(result.predictions, np.argmax(expected, axis=1))
  assert result.scores.shape == (37, 5) and result.predictions.dtype == jnp.int32


def test_knn_with_a_large_temperature_is_a_plain_majority_vote_of_the_k_nearest():
  rng = np.random.default_rng(1)
  bank = rng.normal(size=(50, 8)).astype(np.float32)
  bank_labels = rng.integers(0, 3, 50)
  queries = rng.normal(size=(6, 8)).astype(np.float32)
  result = knn.knn_classify(bank, bank_labels, queries, num_classes=3, k=5, temperature=1e6)
  _, indices = knn.nearest_neighbours(bank, queries, k=5)
  counts = np.stack([np.bincount(bank_labels[row], minlength=3) for row in np.asarray(indices)])
  np.testing.assert_allclose(result.scores, counts / 5, atol=1e-5)


def test_knn_classifies_separable_clusters_perfectly():
  rng = np.random.default_rng(2)
  features, labels = _clusters(rng, num_per_class=40, num_classes=4, channels=32)
  order = rng.permutation(len(labels))
  bank, queries = order[:100], order[100:]
  result = knn.knn_classify(features[bank], labels[bank], features[queries], num_classes=4)
  np.testing.assert_array_equal(result.predictions, labels[queries])
  np.testing.assert_allclose(np.sum(result.scores, axis=1), 1.0, rtol=1e-6)


def test_nearest_neighbours_are_sorted_by_cosine_and_ignore_feature_scale():
  rng = np.random.default_rng(3)
  bank = rng.normal(size=(30, 8)).astype(np.float32)
  similarities, indices = knn.nearest_neighbours(bank, 7.0 * bank[:4], k=3, chunk_size=3)
  np.testing.assert_array_equal(indices[:, 0], np.arange(4))
  np.testing.assert_allclose(similarities[:, 0], 1.0, rtol=1e-6)
  assert np.all(np.diff(np.asarray(similarities), axis=1) <= 0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(k=31), r"k must lie in \[1, bank size = 30\]"),
    (dict(queries=np.zeros((2, 5), np.float32)), "8 feature channels but queries have 5"),
    (dict(bank_labels=np.full(30, 3)), r"\[0, 3\)"),
    (dict(temperature=0.0), "temperature must be > 0"),
])
def test_knn_rejects_bad_input_with_a_clear_message(kwargs, message):
  args = dict(bank=np.ones((30, 8), np.float32), bank_labels=np.zeros(30, int),
              queries=np.ones((2, 8), np.float32))
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    knn.knn_classify(args.pop("bank"), args.pop("bank_labels"), args.pop("queries"), num_classes=3, **args)


# --- linear probe, fast mode ------------------------------------------------------------------

def _accuracy(head, features, labels) -> float:
  return float(np.mean(np.argmax(np.asarray(heads.linear_logits(head, features)), axis=1) == labels))


def test_fast_probe_learns_separable_clusters_and_its_objective_decreases():
  rng = np.random.default_rng(4)
  features, labels = _clusters(rng, num_per_class=30, num_classes=5, channels=24, spread=0.5)
  test_features, test_labels = features[1::2], labels[1::2]
  result = linear_probe.fit_fast(features[::2], labels[::2], num_classes=5, steps=100)
  assert result.head["kernel"].shape == (24, 5) and result.head["bias"].shape == (5,)
  assert _accuracy(result.head, test_features, test_labels) == 1.0
  losses = np.asarray(result.losses)
  assert losses.shape == (100,) and losses[0] == pytest.approx(np.log(5), rel=1e-5)
  assert losses[-1] < 0.1 * losses[0]


def test_fast_head_applies_to_raw_features_whatever_their_per_channel_scale_and_offset():
  """Standardisation is folded into the head: fitting on a * x + b gives the logits of fitting on x."""
  rng = np.random.default_rng(5)
  features, labels = _clusters(rng, num_per_class=20, num_classes=3, channels=12, spread=2.0)
  scale = rng.uniform(0.01, 100.0, size=12).astype(np.float32)
  offset = rng.uniform(-50.0, 50.0, size=12).astype(np.float32)
  head = linear_probe.fit_fast(features, labels, 3, steps=50).head
  moved_head = linear_probe.fit_fast(features * scale + offset, labels, 3, steps=50).head
  np.testing.assert_allclose(heads.linear_logits(moved_head, features * scale + offset),
                             heads.linear_logits(head, features), rtol=2e-3, atol=2e-3)


def test_fast_probe_takes_augmented_copies_as_3d_features_or_stacked_rows_with_repeated_labels():
  rng = np.random.default_rng(6)
  copies = rng.normal(size=(3, 40, 8)).astype(np.float32)
  labels = rng.integers(0, 4, 40)
  from_3d = linear_probe.fit_fast(copies, labels, 4, steps=20).head
  from_rows = linear_probe.fit_fast(copies.reshape(120, 8), np.tile(labels, 3), 4, steps=20).head
  np.testing.assert_allclose(from_3d["kernel"], from_rows["kernel"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(from_3d["bias"], from_rows["bias"], rtol=1e-5, atol=1e-6)


def test_fast_probe_with_random_minibatches_learns_separable_clusters():
  rng = np.random.default_rng(7)
  features, labels = _clusters(rng, num_per_class=30, num_classes=4, channels=16, spread=0.5)
  result = linear_probe.fit_fast(features, labels, 4, steps=100, batch_size=16, rng=jax.random.key(1))
  assert _accuracy(result.head, features, labels) == 1.0


def test_weight_decay_selection_holds_out_every_copy_of_an_image_together():
  """Random labels on identical copies: a split that leaked copies would let a memorising fit score ~100%."""
  rng = np.random.default_rng(8)
  images = rng.normal(size=(100, 64)).astype(np.float32)
  labels = rng.integers(0, 2, 100)
  selection = linear_probe.select_weight_decay(np.stack([images] * 3), labels, 2, candidates=(1e-6, 1e-1),
                                               steps=100, learning_rate=0.05)
  assert set(selection.accuracies) == {1e-6, 1e-1}
  assert max(selection.accuracies.values()) < 0.8
  best = max(selection.accuracies.values())
  assert selection.weight_decay == max(wd for wd, acc in selection.accuracies.items() if acc == best)


def test_weight_decay_selection_prefers_strong_decay_on_few_noisy_high_dimensional_examples():
  rng = np.random.default_rng(9)
  centres = 0.15 * rng.normal(size=(2, 256))
  labels = rng.integers(0, 2, 300)
  features = (centres[labels] + rng.normal(size=(300, 256))).astype(np.float32)
  selection = linear_probe.select_weight_decay(features, labels, 2, candidates=(1e-5, 1.0), steps=100)
  assert selection.weight_decay == 1.0
  assert selection.accuracies[1.0] > selection.accuracies[1e-5]


@pytest.mark.parametrize("kwargs, message", [
    (dict(labels=np.arange(10) % 4), r"\[0, 3\)"),
    (dict(labels=np.zeros(7, int)), r"labels must be \(N,\)"),
    (dict(features=np.zeros((2, 3, 4, 5), np.float32)), r"\(N, C\) or \(copies, N, C\)"),
    (dict(batch_size=11), r"batch_size must lie in \[1, 10\]"),
    (dict(steps=0), "steps must be >= 1"),
])
def test_fast_probe_rejects_bad_input_with_a_clear_message(kwargs, message):
  args = dict(features=np.zeros((10, 4), np.float32), labels=np.zeros(10, int))
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    linear_probe.fit_fast(args.pop("features"), args.pop("labels"), 3, **args)


def test_linear_logits_refuse_features_of_another_width():
  head = {"kernel": jnp.zeros((8, 3)), "bias": jnp.zeros(3)}
  with pytest.raises(ValueError, match="features have 5 channels but the head expects 8"):
    heads.linear_logits(head, np.zeros((2, 5)))


# --- linear probe, paper mode -----------------------------------------------------------------

def test_paper_schedule_is_torch_cosine_annealing_per_iteration_down_to_zero():
  schedule = linear_probe.paper_learning_rate(0.001, 200)
  for t in (0, 1, 57, 100, 199, 200):
    assert float(schedule(t)) == pytest.approx(0.001 * (1 + np.cos(np.pi * t / 200)) / 2, abs=1e-10)


def test_paper_probe_first_two_updates_equal_hand_computed_nesterov_sgd():
  """Nesterov SGD, torch semantics: buf = 0.9 buf + g (buf_1 = g); p -= lr_t (g + 0.9 buf)."""
  rng = np.random.default_rng(10)
  images = rng.normal(size=(2, 4, 6)).astype(np.float32)  # two batches of four "images"
  labels = rng.integers(0, 3, size=(2, 4))
  feature_fn = jax.jit(lambda x: 3.0 * x)
  init_rng = jax.random.key(3)
  result = linear_probe.fit_paper(feature_fn, lambda epoch: zip(images, labels), num_classes=3,
                                  steps_per_epoch=2, rng=init_rng, epochs=1, learning_rate=0.5)

  head = jax.tree.map(np.float64, linear_probe.init_paper_head(init_rng, 6, 3))
  assert np.std(head["kernel"]) == pytest.approx(0.01, rel=0.5) and not np.any(head["bias"])
  buffer = None
  for t, lr in enumerate([0.5, 0.5 * (1 + np.cos(np.pi / 2)) / 2]):
    x = 3.0 * images[t].astype(np.float64)
    logits = x @ head["kernel"] + head["bias"]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    dlogits = (probs - np.eye(3)[labels[t]]) / 4
    grads = {"kernel": x.T @ dlogits, "bias": dlogits.sum(0)}
    buffer = grads if buffer is None else {k: 0.9 * buffer[k] + grads[k] for k in grads}
    head = {k: head[k] - lr * (grads[k] + 0.9 * buffer[k]) for k in head}
  np.testing.assert_allclose(result.head["kernel"], head["kernel"], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(result.head["bias"], head["bias"], rtol=1e-5, atol=1e-7)


def test_paper_probe_learns_a_separable_problem_from_fresh_augmented_views_each_epoch():
  rng = np.random.default_rng(11)
  images, labels = _clusters(rng, num_per_class=16, num_classes=4, channels=10, spread=0.3)
  projection = jnp.asarray(rng.normal(size=(10, 12)), jnp.float32)
  feature_fn = jax.jit(lambda x: jnp.tanh(x @ projection))
  epochs_seen = []

  def make_train_batches(epoch):
    epochs_seen.append(epoch)
    epoch_rng = np.random.default_rng(100 + epoch)
    order = epoch_rng.permutation(len(labels))
    views = images + 0.1 * epoch_rng.normal(size=images.shape).astype(np.float32)
    return [(views[order[i:i + 16]], labels[order[i:i + 16]]) for i in range(0, len(labels), 16)]

  logged = []
  result = linear_probe.fit_paper(feature_fn, make_train_batches, num_classes=4, steps_per_epoch=4,
                                  rng=jax.random.key(0), epochs=15, learning_rate=0.5,
                                  on_epoch_end=lambda epoch, head, loss: logged.append((epoch, loss)))
  assert epochs_seen == list(range(15))
  assert [epoch for epoch, _ in logged] == epochs_seen
  np.testing.assert_allclose([loss for _, loss in logged], result.epoch_losses)
  assert result.epoch_losses[-1] < 0.2 * result.epoch_losses[0]
  assert _accuracy(result.head, feature_fn(images), labels) == 1.0


@pytest.mark.parametrize("num_batches, message", [
    (3, "epoch 0 yields more than steps_per_epoch = 2 batches"),
    (1, "epoch 0 yielded 1 batches, but steps_per_epoch = 2"),
])
def test_paper_probe_refuses_epochs_of_another_length_than_its_schedule(num_batches, message):
  batches = [(np.ones((2, 3), np.float32), np.zeros(2, int))] * num_batches
  with pytest.raises(ValueError, match=message):
    linear_probe.fit_paper(jax.jit(lambda x: x), lambda epoch: batches, num_classes=2, steps_per_epoch=2,
                           rng=jax.random.key(0), epochs=2)
