"""The README's demo program, shortened: data, pretraining, both evaluations and the comparison
written and printed; a finished demo is not retrained; a config it cannot run is refused in one
line before anything is written."""
import json
import os

from PIL import Image
import pytest

from helpers import file_stamps
from helpers import run_program
from helpers import SHORT_DEMO as SHORT


def run_demo(workdir, *overrides):
  """The program as README runs it: from the workdir's parent directory, --workdir relative to it
  (the checkpoints saved asynchronously, as configs/demo.py has it)."""
  return run_program("demo", f"--workdir={workdir.name}", *overrides, cwd=workdir.parent)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  """(workdir, completed process) of one shortened demo."""
  workdir = tmp_path_factory.mktemp("demo")
  return workdir, run_demo(workdir, *SHORT)


def test_demo_writes_both_evaluations_and_their_margin(demo_run):
  """demo_results.json: top-1, top-5, mean per-class accuracy and macro-F1 of the fast linear probe
  and the kNN for the pretrained backbone (at the run's last step) and its random
  initialisation, their differences as the margin, the dataset's sizes; eval.py's files beside it
  for both backbones."""
  workdir, result = demo_run
  assert result.returncode == 0, result.stderr
  with open(workdir / "demo_results.json") as f:
    results = json.load(f)
  assert results["pretrained"]["step"] == 2 and results["random_init"]["step"] is None
  assert results["pretrain_steps"] == 2 and results["model"] == "convnext_atto" and results["image_size"] == 32
  figures = [f"{method}_{metric}" for method in ("linear", "knn")
             for metric in ("top1", "top5", "mean_per_class_accuracy", "macro_f1")]
  assert sorted(results["margin"]) == sorted([*figures, "effective_rank_ratio"])
  for key in figures:
    for backbone in ("pretrained", "random_init"):
      assert 0.0 <= results[backbone][key] <= 1.0
    assert results["margin"][key] == pytest.approx(results["pretrained"][key] - results["random_init"][key])
  # The test features' health: at most the 10 test images' rank 9, the first PC's share a fraction.
  for backbone in ("pretrained", "random_init"):
    assert 1.0 <= results[backbone]["effective_rank"] <= 9.0 and 0.0 < results[backbone]["first_pc_share"] <= 1.0
  assert results["margin"]["effective_rank_ratio"] == pytest.approx(
      results["pretrained"]["effective_rank"] / results["random_init"]["effective_rank"])
  assert {k: results["dataset"][k] for k in ("num_train", "num_test", "num_classes")} == {
      "num_train": 20, "num_test": 10, "num_classes": 10}
  assert results["dataset"]["name"].startswith("image_folder/synthetic_32px_2_1_")
  assert set(results["seconds"]) == {"data", "pretrain", "evaluate", "sheet", "export", "total"}

  pretrain = workdir / "pretrain"
  assert (pretrain / "checkpoints" / "2").is_dir() and (pretrain / "config.json").is_file()
  for eval_dir, backbone in ((pretrain / "eval", "pretrained"), (pretrain / "eval" / "random_init", "random_init")):
    assert results[backbone]["results_dir"] == str(eval_dir)
    for name in ("knn.json", "knn_confusion.png", "linear_fast.json", "linear_fast_confusion.png",
                 "linear_head.npz"):
      assert (eval_dir / name).is_file(), name
    with open(eval_dir / "linear_fast.json") as f:
      assert json.load(f)["top1"] == results[backbone]["linear_top1"]


def test_demo_prints_the_comparison_side_by_side(demo_run):
  """One row per backbone with both top-1 figures in percent and the test features' effective
  rank, then the margins in points and the ratio of the ranks."""
  workdir, result = demo_run
  with open(workdir / "demo_results.json") as f:
    results = json.load(f)
  lines = result.stdout.splitlines()
  header = next(i for i, line in enumerate(lines)
                if "linear probe top-1" in line and "kNN top-1" in line and "effective rank" in line)
  random_row, pretrained_row, margin_row = lines[header + 1:header + 4]
  for row, backbone in ((random_row, "random_init"), (pretrained_row, "pretrained")):
    r = results[backbone]
    assert row.split()[-3:] == [f"{100 * r['linear_top1']:.1f}%", f"{100 * r['knn_top1']:.1f}%",
                                f"{r['effective_rank']:.1f}"]
  assert random_row.startswith("random initialisation") and pretrained_row.startswith("pretrained (step 2)")
  margin = results["margin"]
  assert margin_row.split()[-3:] == [f"{100 * margin['linear_top1']:+.1f}", f"{100 * margin['knn_top1']:+.1f}",
                                     f"{margin['effective_rank_ratio']:.2f}"]


def test_demo_draws_the_curves_both_feature_maps_and_a_retrieval_sheet_and_names_them(demo_run):
  """curves.png in the pretraining workdir, embedding.png beside each evaluation's confusion plots,
  a retrieval sheet of 4 test paintings of 4 styles against the 20 training paintings (top 5
  each): valid PNGs of their stated sizes, each named in the closing lines."""
  workdir, result = demo_run
  with open(workdir / "demo_results.json") as f:
    drawn = json.load(f)["pictures"]
  expected = {"curves": (workdir / "pretrain" / "curves.png", (1600, 1200)),
              "embedding_pretrained": (workdir / "pretrain" / "eval" / "embedding.png", (1000, 700)),
              "embedding_random_init": (workdir / "pretrain" / "eval" / "random_init" / "embedding.png", (1000, 700)),
              "retrieval_sheet": (workdir / "retrieval_sheet.png", (6 * 180, 4 * 260 + 60))}
  assert drawn == {name: str(path) for name, (path, _) in expected.items()}
  closing = result.stdout[result.stdout.index("Pictures:"):]
  for path, size in expected.values():
    with Image.open(path) as image:
      assert image.format == "PNG" and image.size == size, path
    assert str(path) in closing


def test_demo_exports_its_pretrained_student_for_transformers_with_a_model_card(demo_run):
  """WORKDIR/backbone_transformers holds transformers' files of the checkpoint's student, named
  in the closing lines, and a model card with the pretrained backbone's kNN figure."""
  workdir, result = demo_run
  with open(workdir / "demo_results.json") as f:
    results = json.load(f)
  export = workdir / "backbone_transformers"
  assert results["export"] == str(export) and str(export) in result.stdout
  assert sorted(os.listdir(export)) == ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
  with open(export / "config.json") as f:
    assert json.load(f)["model_type"] == "convnext"
  with open(export / "README.md") as f:
    card = f.read()
  assert f"| knn | 2 | {100 * results['pretrained']['knn_top1']:.2f} |" in card


def test_running_the_demo_again_reuses_the_finished_pretraining(demo_run):
  """A second run on the same workdir trains no step and rebuilds no data: it only evaluates, and
  gets the same figures."""
  workdir, _ = demo_run
  with open(workdir / "demo_results.json") as f:
    first = json.load(f)
  checkpoint = workdir / "pretrain" / "checkpoints" / "2"
  checkpoint_time = os.path.getmtime(checkpoint)
  result = run_demo(workdir, *SHORT)
  assert result.returncode == 0, result.stderr
  assert "step 1/2" not in result.stdout + result.stderr
  assert os.path.getmtime(checkpoint) == checkpoint_time
  with open(workdir / "demo_results.json") as f:
    second = json.load(f)
  for backbone in ("pretrained", "random_init"):
    assert second[backbone] == first[backbone]


@pytest.mark.parametrize("override, message", [
    ("--config.no_such_key=1", "unknown config key 'no_such_key'"),
    ("--config.init=timm/convnext_atto.d2_in1k", "random initialisation"),
    ("--config.knn_k=50", "knn_k=50"),
])
def test_a_config_the_demo_cannot_run_is_refused_in_one_line(tmp_path, override, message):
  """An unknown key, a pretrained init, more kNN neighbours than training images: exit 1, one
  error line that names the problem, nothing written."""
  workdir = tmp_path / "demo"
  result = run_demo(workdir, *SHORT, override)
  assert result.returncode == 1
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and message in errors[0], result.stderr
  assert "Traceback" not in result.stderr
  assert not workdir.exists()


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
