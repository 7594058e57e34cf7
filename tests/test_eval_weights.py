"""eval --weights: an external backbone evaluated with no training run (kNN, the probes, the paper's
baseline protocol), normalised for its family, its head usable by predict; bad input refused in one
line with nothing written."""
import json
import os
import pathlib

import pytest

from artstyle_jax.data import view_specs
from artstyle_jax.evaluators import probes
from artstyle_jax.method import step as step_lib
from artstyle_jax.models import resnet
from artstyle_jax.runs import evaluation
from artstyle_jax.runs import prediction
from artstyle_jax.storage import checkpoints
from helpers import run_eval_weights
from helpers import run_program
from helpers import tiny_data_config


def test_a_resnet_is_normalised_with_imagenet_constants_unless_they_are_overridden(synthetic_data):
  config = tiny_data_config(synthetic_data, "knn_k=5")
  resnet50, atto = resnet.create("resnet50"), step_lib.build_backbone(config)
  assert evaluation.weights_config(config, resnet50).views.student.mean == view_specs.IMAGENET_MEAN
  assert evaluation.weights_config(config, resnet50).views.student.std == view_specs.IMAGENET_STD
  assert evaluation.weights_config(config, atto).views.student == config.views.student
  kept = evaluation.weights_config(config, resnet50, overridden=("views.student.mean",))
  assert kept.views.student.mean == config.views.student.mean and kept.views.student.std == view_specs.IMAGENET_STD


def test_probe_options_are_the_papers_or_the_baselines_each_replaceable():
  assert probes.probe_options("paper") == {"learning_rate": 0.001, "momentum": 0.9, "weight_decay": 0.0,
                                             "init_stddev": 0.01}
  assert probes.probe_options("baseline")["learning_rate"] == 0.3
  assert probes.probe_options("baseline", momentum=0.5, weight_decay=1e-4) == {
      "learning_rate": 0.3, "momentum": 0.5, "weight_decay": 1e-4, "init_stddev": 0.01}


def test_baseline_mode_trains_the_head_with_the_baseline_protocol(tmp_path, synthetic_data):
  config = tiny_data_config(synthetic_data, "knn_k=5")
  results = evaluation.evaluate_weights("random:convnext_atto", config, tmp_path / "out", mode="baseline",
                                      paper_epochs=2, verbose=False)
  saved = json.loads((tmp_path / "out" / "linear_baseline.json").read_text())
  assert saved["method"] == "linear_baseline" and saved["learning_rate"] == 0.3 and saved["epochs"] == 2
  assert saved["top1"] == results["linear"]["top1"] and saved["weights"] == "random:convnext_atto"
  assert saved["random_init"] and saved["model"] == "convnext_atto"
  assert checkpoints.load_config(str(tmp_path / "out")).knn_k == 5


@pytest.fixture(scope="module")
def evaluated_weights(tmp_path_factory, synthetic_data):
  """eval --weights=random:convnext_atto from a fresh directory, relative paths: (cwd, process)."""
  cwd = tmp_path_factory.mktemp("weights")
  return cwd, run_eval_weights(cwd, "random:convnext_atto", synthetic_data)


def test_the_program_writes_results_the_config_and_a_head_predict_applies(evaluated_weights, synthetic_data):
  cwd, process = evaluated_weights
  assert process.returncode == 0, process.stderr[-3000:]
  out = cwd / "out" / "eval"
  assert {"knn.json", "linear_fast.json", "linear_head.npz", "config.json"} <= set(os.listdir(out))
  assert json.loads((out / "knn.json").read_text())["weights"] == "random:convnext_atto"
  query = sorted(pathlib.Path(synthetic_data[0]).rglob("*.jpg"))[0]
  lines = prediction.predict(str(cwd / "out"), [str(query)], top_k=3)
  assert lines[0] == str(query) and len(lines) == 4 and all(line.startswith("  style  ") for line in lines[1:])


@pytest.mark.parametrize("args, message", [
    (["--weights=random:convnext_atto", "--random_init"], "--random_init and --step belong to a training run"),
    (["--weights=random:convnext_atto", "--config.no_such_key=1"], "unknown config key 'no_such_key'"),
    (["--weights=random:vgg16"], "unknown model 'vgg16'"),
    (["--weights=nowhere/resnet50.pth"], "nowhere/resnet50.pth: no such file or directory"),
    (["--weights=random:convnext_atto", "--label_fractions=0.1", "--shots=1,0"],
     "--shots: '0' is not a whole number of images per class >= 1"),
])
def test_bad_input_is_refused_in_one_line_and_nothing_is_written(tmp_path, synthetic_data, args, message):
  data_dir, name = synthetic_data
  process = run_program("eval", *args, "--workdir=out", f"--config.dataset.name={name}",
                        f"--config.dataset.data_dir={data_dir}", cwd=tmp_path)
  errors = [line for line in process.stderr.splitlines() if line.startswith("error:")]
  assert process.returncode == 1 and len(errors) == 1 and message in errors[0], process.stderr[-2000:]
  assert "Traceback" not in process.stderr and not (tmp_path / "out").exists()
