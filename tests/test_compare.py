"""The comparison program on the synthetic dataset: a workdir of ours, a ResNet-50 that torch wrote
in MoCo's format and a random initialisation become rows of one table, chart and JSON; an entry that
fails is reported and the others still run; a bad command is refused in one line."""
import json
import os

import numpy as np
from PIL import Image
import pytest
import torch

from artstyle_jax.bench import torch_resnet
from helpers import FAST_COMPILING, config_path, make_workdir, run_program


@pytest.fixture(scope="module")
def compared(tmp_path_factory, synthetic_data):
  """compare run from a fresh directory with relative paths, the maps asked for too: (its directory,
  the process)."""
  cwd = tmp_path_factory.mktemp("compare")
  make_workdir(cwd / "ours", synthetic_data)
  torch.manual_seed(0)
  encoder = torch_resnet.ResNet().state_dict()
  torch.save({"epoch": 200, "arch": "resnet50", "state_dict": {f"module.encoder_q.{k}": v for k, v in encoder.items()}},
             cwd / "moco_v2_200ep_pretrain.pth.tar")
  data_dir, name = synthetic_data
  process = run_program("compare", "--entry=ours=ours", "--entry=moco_v2=moco_v2_200ep_pretrain.pth.tar",
                        "--entry=missing=nowhere/moco.pth", "--entry=random=random", "--workdir=cmp", "--embedding",
                        f"--config={config_path('tiny')}", f"--config.dataset.name={name}",
                        f"--config.dataset.data_dir={os.path.relpath(data_dir, cwd)}", "--config.knn_k=5",
                        f"--config.{FAST_COMPILING}", cwd=cwd)
  return cwd, process


def test_every_entry_becomes_a_row_and_a_failing_one_does_not_stop_the_others(compared):
  cwd, process = compared
  assert process.returncode == 1, process.stderr[-3000:]
  comparison = json.loads((cwd / "cmp" / "comparison.json").read_text())
  rows = {r["name"]: r for r in comparison["entries"]}
  assert [r["name"] for r in comparison["entries"]] == ["ours", "moco_v2", "missing", "random"]
  assert comparison["mode"] == "fast" and comparison["test_split"] == "test"
  assert (rows["ours"]["kind"], rows["ours"]["model"], rows["ours"]["step"]) == ("workdir", "convnext_atto", 2)
  assert (rows["moco_v2"]["model"], rows["moco_v2"]["num_parameters"]) == ("resnet50", 23_508_032)
  assert rows["random"]["model"] == "convnext_atto" and rows["random"]["num_parameters"] == rows["ours"]["num_parameters"]
  for name in ("ours", "moco_v2", "random"):
    assert rows[name]["error"] is None
    for key in ("knn_top1", "linear_top1", "linear_top5", "linear_mean_per_class_accuracy"):
      assert 0.0 <= rows[name][key] <= 1.0
    assert rows[name]["linear_top5"] >= rows[name]["linear_top1"]
    assert (cwd / "cmp" / "entries" / name / "linear_fast.json").exists()
  assert rows["missing"]["knn_top1"] is None and "no such file" in rows["missing"]["error"]
  assert "[3/4] missing failed: " in process.stderr
  assert "[4/4] random: convnext_atto, kNN top-1" in process.stdout


def test_the_ours_row_is_what_eval_gives_for_the_workdir(compared):
  """The eval program run by itself on the same workdir (its own process, the same kNN k) scores
  it exactly as the comparison's row says: kNN top-1 and the fast linear probe's top-1, top-5 and
  mean per-class accuracy, of the same checkpoint step."""
  cwd, _ = compared
  process = run_program("eval", "--workdir=ours", "--config.knn_k=5", cwd=cwd)
  assert process.returncode == 0, process.stderr[-3000:]
  knn = json.loads((cwd / "ours" / "eval" / "knn.json").read_text())
  linear = json.loads((cwd / "ours" / "eval" / "linear_fast.json").read_text())
  row = {r["name"]: r for r in json.loads((cwd / "cmp" / "comparison.json").read_text())["entries"]}["ours"]
  assert knn["k"] == 5 and knn["step"] == row["step"] == 2
  assert row["knn_top1"] == knn["top1"]
  assert (row["linear_top1"], row["linear_top5"], row["linear_mean_per_class_accuracy"]) == (
      linear["top1"], linear["top5"], linear["mean_per_class_accuracy"])


def test_the_table_and_the_chart_show_every_row(compared):
  cwd, process = compared
  table = (cwd / "cmp" / "comparison.md").read_text()
  assert table.startswith("# ") and "| method | backbone | params | kNN top-1 |" in table
  assert "| moco_v2 | resnet50 | 23.5M |" in table and "| missing | failed | - | - |" in table
  assert "- missing (nowhere/moco.pth) failed: " in table
  assert table in process.stdout
  chart = np.asarray(Image.open(cwd / "cmp" / "comparison.png"))
  assert chart.ndim == 3 and chart.shape[0] > 200 and chart.std() > 0


def test_every_evaluated_entry_has_its_feature_map(compared):
  cwd, _ = compared
  for name in ("ours", "moco_v2", "random"):
    with Image.open(cwd / "cmp" / "entries" / name / "embedding.png") as image:
      assert (image.format, image.size) == ("PNG", (1000, 700))
  assert not (cwd / "cmp" / "entries" / "missing" / "embedding.png").exists()


def test_a_bad_command_is_refused_in_one_line_and_writes_nothing(tmp_path, synthetic_data):
  data_dir, name = synthetic_data
  for args, message in ((["--workdir=out"], "give at least one --entry"),
                        (["--workdir=out", "--entry=ours"], "expected NAME=SOURCE_OR_WORKDIR"),
                        (["--workdir=out", "--entry=a=random", "--entry=a=random"], "given twice"),
                        (["--workdir=out", "--entry=a=random", "--config.dataset.data_dir=nowhere"], "does not exist")):
    process = run_program("compare", *args, f"--config.dataset.name={name}", cwd=tmp_path)
    assert process.returncode == 1 and process.stderr.strip().splitlines()[-1].startswith("error: "), process.stderr
    assert message in process.stderr.strip().splitlines()[-1]
  assert not (tmp_path / "out").exists()
