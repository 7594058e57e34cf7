"""The evaluation program: the checkpoint's student backbone restored, kNN and linear probes scored
on the test split, results and the probe written to DIR/eval/, bad input refused in one line with
the workdir untouched."""
import json
import os
import shutil

import numpy as np
from PIL import Image
import pytest

from artstyle_jax.data import sources
from artstyle_jax.data import views
from artstyle_jax.evaluators import linear_probe
from artstyle_jax.method import features
from artstyle_jax.method import health
from artstyle_jax.method import sharding
from artstyle_jax.method import step as step_lib
from artstyle_jax.models import heads
from artstyle_jax.runs import evaluation
from artstyle_jax.runs import head_file
from artstyle_jax.runs import saved_run
from artstyle_jax.storage import checkpoints
from helpers import assert_trees_equal
from helpers import file_stamps
from helpers import make_workdir
from helpers import run_program
from helpers import shifted


def assert_sane_results(result, num_test, class_names):
  assert result["num_examples"] == num_test
  assert result["class_names"] == class_names
  for key in ("top1", "top5", "mean_per_class_accuracy"):
    assert 0.0 <= result[key] <= 1.0
  assert result["top5"] >= result["top1"]
  confusion = np.asarray(result["confusion_matrix"])
  assert confusion.shape == (len(class_names), len(class_names))
  assert confusion.sum() == num_test
  assert result["top1"] == pytest.approx(np.trace(confusion) / num_test)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, synthetic_data):
  path = tmp_path_factory.mktemp("eval") / "run"
  config, initial = make_workdir(path, synthetic_data)
  return path, config, initial


@pytest.fixture(scope="module")
def evaluated(workdir, synthetic_data):
  """The program run on the workdir as a user runs it, from the workdir's parent with relative
  paths (the dataset's too, as an override): fast mode with one augmented copy, and the embedding map."""
  path, _, _ = workdir
  data_dir = os.path.relpath(synthetic_data[0], path.parent)
  return run_program("eval", f"--workdir={path.name}", "--augmented_copies=1", "--embedding",
                     f"--config.dataset.data_dir={data_dir}", cwd=path.parent)


@pytest.fixture(scope="module")
def dataset(synthetic_data):
  data_dir, name = synthetic_data
  return len(sources.open_split(name, data_dir, "test")), sources.label_names(name, data_dir)


def test_restore_reads_the_student_backbone_of_the_latest_or_the_asked_step(workdir):
  path, config, initial = workdir
  params, step = saved_run.restore_backbone(str(path), config)
  assert step == 2
  assert_trees_equal(params, shifted(initial, 2))
  params, step = saved_run.restore_backbone(str(path), config, step=1)
  assert step == 1
  assert_trees_equal(params, shifted(initial, 1))


def test_a_damaged_latest_checkpoint_is_moved_aside_and_the_one_before_is_restored(tmp_path, workdir):
  """Checkpoint 2's array data truncated (every data file: eval reads the backbone alone): the
  backbone of step 1, checkpoint 2 kept as 2.corrupt; asking for step 2 by name is an error
  naming it."""
  path, config, initial = workdir
  copy = tmp_path / "run"
  shutil.copytree(path / "checkpoints", copy / "checkpoints")
  shutil.copy(path / checkpoints.CONFIG_FILE, copy)
  for d, _, fs in os.walk(copy / "checkpoints" / "2" / "state" / "ocdbt.process_0" / "d"):
    for f in fs:
      os.truncate(os.path.join(d, f), os.path.getsize(os.path.join(d, f)) // 2)
  with pytest.raises(checkpoints.DamagedCheckpointError, match="checkpoint 2 in .* is damaged"):
    saved_run.restore_backbone(str(copy), config, step=2)
  params, step = saved_run.restore_backbone(str(copy), config)
  assert step == 1
  assert_trees_equal(params, shifted(initial, 1))
  assert sorted(os.listdir(copy / "checkpoints")) == ["1", "2.corrupt"]


def test_random_init_is_the_students_initial_backbone(workdir):
  """--random_init evaluates exactly the backbone a config.init='random' run starts from."""
  _, config, initial = workdir
  params = saved_run.random_backbone_params(config, step_lib.build_backbone(config), sharding.create_mesh())
  assert_trees_equal(params, initial)


def test_fast_mode_writes_results_plots_and_the_head_of_the_checkpoint(workdir, evaluated, dataset):
  path, _, _ = workdir
  num_test, class_names = dataset
  assert evaluated.returncode == 0, evaluated.stderr
  out = path / "eval"
  assert sorted(os.listdir(out)) == ["embedding.png", "knn.json", "knn_confusion.png", "linear_fast.json",
                                     "linear_fast_confusion.png", "linear_head.npz"]
  for png in ("knn_confusion.png", "linear_fast_confusion.png", "embedding.png"):
    assert (out / png).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
  with Image.open(out / "embedding.png") as embedding:
    assert embedding.size == (1000, 700)
  knn_result = json.loads((out / "knn.json").read_text())
  linear_result = json.loads((out / "linear_fast.json").read_text())
  for result in (knn_result, linear_result):
    assert_sane_results(result, num_test, class_names)
    assert result["step"] == 2 and result["random_init"] is False
  assert knn_result["method"] == "knn" and knn_result["k"] == 20
  assert linear_result["method"] == "linear_fast" and linear_result["augmented_copies"] == 1
  assert linear_result["weight_decay"] in linear_probe.WEIGHT_DECAY_CANDIDATES
  assert evaluated.stdout.count("top-1") == 2 and "linear_fast: convnext_atto (step 2)" in evaluated.stdout
  assert evaluated.stdout.count("features: effective rank") == 2
  # The kNN's results also score retrieval: the test images ranking the training images.
  assert knn_result["representation"] == "whitened" and knn_result["retrieval_k"] == 5
  assert knn_result["num_queries"] == num_test
  assert 0.0 <= knn_result["precision_at_k"] <= 1.0 and 0.0 <= knn_result["map_at_k"] <= 1.0
  assert "retrieval of train images (whitened features): precision@5" in evaluated.stdout


def test_saved_head_is_the_one_scored_and_carries_its_inputs(workdir, evaluated, synthetic_data):
  """The head in linear_head.npz, on the step-2 backbone's test features, gives the reported top-1;
  the file names the classes, the step and the transform predict must use; the reported effective
  rank and first-PC share are those of the same features."""
  path, config, _ = workdir
  assert evaluated.returncode == 0, evaluated.stderr
  with np.load(path / "eval" / "linear_head.npz") as saved:
    head = {key: saved[key] for key in head_file.HEAD_KEYS}
  data_dir, name = synthetic_data
  assert list(head["class_names"]) == sources.label_names(name, data_dir)
  assert head["kernel"].shape == (320, 10) and head["bias"].shape == (10,)
  assert int(head["step"]) == 2 and str(head["mode"]) == "fast" and str(head["model_name"]) == "convnext_atto"
  assert int(head["image_size"]) == 64
  np.testing.assert_allclose(head["mean"], config.views.student.mean)

  mesh = sharding.create_mesh()
  params, _ = saved_run.restore_backbone(str(path), config, mesh=mesh)
  feature_fn = features.make_feature_fn(step_lib.build_backbone(config), mesh)
  transform = views.EvalView(64, config.views.student.mean, config.views.student.std)
  test_features, test_labels = features.extract_split(
      config, feature_fn, params, sources.open_split(name, data_dir, "test"), transform, mesh, 8)
  logits = heads.linear_logits({"kernel": head["kernel"], "bias": head["bias"]}, test_features)
  top1 = float(np.mean(np.argmax(np.asarray(logits), axis=1) == test_labels))
  result = json.loads((path / "eval" / "linear_fast.json").read_text())
  assert top1 == result["top1"]
  # The features' health the outputs report is that of these test features.
  assert result["feature_dim"] == 320
  assert result["effective_rank"] == pytest.approx(float(health.effective_rank(test_features)), rel=1e-4)
  assert result["first_pc_share"] == pytest.approx(float(health.first_pc_share(test_features)), rel=1e-4)
  assert 1.0 <= result["effective_rank"] <= 320 and 1 / 320 <= result["first_pc_share"] <= 1.0


def test_paper_mode_of_a_random_init_goes_to_its_own_directory(workdir, evaluated, dataset):
  """Paper protocol (1 epoch of batch 16 over the 80 training images) on the untrained backbone:
  results in eval/random_init/, marked as such, the checkpoint's results left alone."""
  path, config, _ = workdir
  num_test, class_names = dataset
  assert evaluated.returncode == 0, evaluated.stderr
  before = file_stamps(path / "eval")
  results = evaluation.evaluate_workdir(str(path), config, random_init=True, mode="paper", paper_epochs=1,
                                      verbose=False)
  assert file_stamps(path / "eval") == {**before, **file_stamps(path / "eval" / "random_init")}
  assert sorted(os.listdir(path / "eval" / "random_init")) == [
      "knn.json", "knn_confusion.png", "linear_head.npz", "linear_paper.json", "linear_paper_confusion.png"]
  linear_result = results["linear"]
  assert linear_result == json.loads((path / "eval" / "random_init" / "linear_paper.json").read_text())
  assert_sane_results(linear_result, num_test, class_names)
  assert linear_result["method"] == "linear_paper" and linear_result["random_init"] is True
  assert linear_result["step"] is None
  assert (linear_result["epochs"], linear_result["batch_size"], linear_result["steps_per_epoch"]) == (1, 16, 5)


def test_bad_input_on_the_command_line_gives_one_error_line_and_leaves_the_workdir_untouched(workdir, evaluated):
  """A dataset directory that is gone (given as a config override): exit 1, the reason in one line."""
  path, _, _ = workdir
  assert evaluated.returncode == 0, evaluated.stderr
  before = file_stamps(path)
  result = run_program("eval", f"--workdir={path}", "--config.dataset.data_dir=/nonexistent/tfds")
  assert result.returncode == 1
  assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
      "error: dataset.data_dir /nonexistent/tfds does not exist"]
  assert "Traceback" not in result.stderr and not result.stdout
  assert file_stamps(path) == before


@pytest.mark.parametrize("case, error, message", [
    ("no_checkpoint", checkpoints.WorkdirError, "holds no checkpoint"),
    ("missing_step", checkpoints.WorkdirError, "has no checkpoint of step 7; it has steps [1, 2]"),
    ("dataset_not_built", FileNotFoundError, "no built dataset 'image_folder/not_built'"),
    ("missing_split", sources.DatasetError, "has no split 'validation'"),
])
def test_bad_input_is_refused_in_one_line_before_anything_is_written(tmp_path, workdir, evaluated, synthetic_data,
                                                                      case, error, message):
  path, config, _ = workdir
  assert evaluated.returncode == 0, evaluated.stderr
  step = 7 if case == "missing_step" else None
  config = config.copy_and_resolve_references()
  with config.unlocked():
    if case == "no_checkpoint":
      path = tmp_path / "run"
      checkpoints.save_config(str(path), config)
    elif case == "dataset_not_built":
      config.dataset.name = "image_folder/not_built"
    elif case == "missing_split":
      config.dataset.eval_split = "validation"
  before = file_stamps(path)
  with pytest.raises(error) as raised:
    evaluation.evaluate_workdir(str(path), config, step=step)
  assert message in str(raised.value) and "\n" not in str(raised.value)
  assert file_stamps(path) == before
