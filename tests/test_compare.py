"""The comparison program on the synthetic dataset: a workdir of ours, a ResNet-50 that torch wrote
in MoCo's format and a random initialisation become rows of one table, chart and JSON; an entry that
fails is reported and the others still run; a bad command is refused in one line."""
import json
import os

import numpy as np
from PIL import Image
import pytest
import scipy.ndimage
import torch

from artstyle_jax.bench import torch_resnet
from helpers import config_path
from helpers import FAST_COMPILING
from helpers import make_workdir
from helpers import run_program


@pytest.fixture(scope="module")
def compared(tmp_path_factory, synthetic_data):
  """compare run from a fresh directory with relative paths, the maps and two few-label settings of
  each kind over two label seeds asked for too: (its directory, the process)."""
  cwd = tmp_path_factory.mktemp("compare")
  make_workdir(cwd / "ours", synthetic_data)
  torch.manual_seed(0)
  encoder = torch_resnet.ResNet().state_dict()
  torch.save({"epoch": 200, "arch": "resnet50", "state_dict": {f"module.encoder_q.{k}": v for k, v in encoder.items()}},
             cwd / "moco_v2_200ep_pretrain.pth.tar")
  data_dir, name = synthetic_data
  process = run_program("compare", "--entry=ours=ours", "--entry=moco_v2=moco_v2_200ep_pretrain.pth.tar",
                        "--entry=missing=nowhere/moco.pth", "--entry=random=random", "--workdir=cmp", "--embedding",
                        "--label_fractions=0.5,1.0", "--shots=1,2", "--label_seeds=2",
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


# matplotlib's first two default colours, with which comparison.png draws the kNN and the linear bars.
KNN_BLUE, LINEAR_ORANGE = (31, 119, 180), (255, 127, 14)


def drawn_bars(chart, colour):
  """The horizontal bars of `colour` in the chart (an RGB array): [(top, bottom, left, right)] of
  each connected region of exactly that colour that starts at the plot's left edge (x = 0 of the
  axes, where every bar starts; the legend's patch of that colour does not), top to bottom."""
  regions = scipy.ndimage.find_objects(scipy.ndimage.label(np.all(chart == colour, axis=-1))[0])
  boxes = [(rows.start, rows.stop, cols.start, cols.stop) for rows, cols in regions]
  left = min(box[2] for box in boxes)
  return sorted(box for box in boxes if box[2] <= left + 1)


def test_the_table_and_the_chart_show_every_row(compared):
  """The table has a line per entry, the failed one saying so; the chart, read back from the PNG,
  has one kNN bar and one linear bar per evaluated entry, in the entries' order from the top at
  evenly spaced rows, the failed entry's row empty, each bar as long as its figure (one scale for
  all, within a pixel)."""
  cwd, process = compared
  table = (cwd / "cmp" / "comparison.md").read_text()
  assert table.startswith("# ") and "| method | backbone | params | kNN top-1 |" in table
  assert "| moco_v2 | resnet50 | 23.5M |" in table and "| missing | failed | - | - |" in table
  assert "- missing (nowhere/moco.pth) failed: " in table
  assert table in process.stdout
  assert ("| method | backbone | params | kNN top-1 | kNN top-5 | kNN per-class mean | kNN macro-F1 | linear top-1 "
          "| linear top-5 | linear per-class mean | linear macro-F1 |") in table
  entries = json.loads((cwd / "cmp" / "comparison.json").read_text())["entries"]
  evaluated = [i for i, r in enumerate(entries) if r["error"] is None]
  assert evaluated == [0, 1, 3] and all(entries[i]["knn_top1"] > 0 and entries[i]["linear_top1"] > 0 for i in evaluated)

  chart = np.asarray(Image.open(cwd / "cmp" / "comparison.png").convert("RGB"))
  knn, linear = drawn_bars(chart, KNN_BLUE), drawn_bars(chart, LINEAR_ORANGE)
  assert len(knn) == len(linear) == len(evaluated), (knn, linear)
  # Each entry's row: its kNN bar directly above its linear bar; the boundary between them marks the row.
  for (_, knn_bottom, _, _), (linear_top, _, _, _) in zip(knn, linear):
    assert abs(knn_bottom - linear_top) <= 2
  rows = np.array([bottom for _, bottom, _, _ in knn], float)
  pitch, first = np.polyfit(evaluated, rows, 1)
  assert pitch > 2 * (knn[0][1] - knn[0][0]) and np.max(np.abs(first + pitch * np.array(evaluated) - rows)) <= 1
  # Lengths: pixels = scale * percent + offset, one scale for all six bars, the offset the few pixels
  # of the bars' ends that the axis line and anti-aliasing leave out of the exact colour (measured:
  # 8.2 px per percent, -2 px, every bar on the line to the pixel; bound: 1 px, the PNG's resolution).
  lengths = np.array([right - left for _, _, left, right in knn + linear], float)
  percents = np.array([100 * entries[i][key] for key in ("knn_top1", "linear_top1") for i in evaluated])
  scale, offset = np.polyfit(percents, lengths, 1)
  assert len(set(percents)) >= 3 and abs(offset) <= 3, (lengths, percents)
  assert np.max(np.abs(lengths - (scale * percents + offset))) <= 1, (lengths, percents)


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


def test_few_label_json_table_and_chart_come_out_of_compare(compared):
  """Every evaluated entry has its label_efficiency.json, whose settings are its row's: the sizes the
  synthetic split's 8 images of each of 10 classes give, two seeds each (the whole split: the same
  subset for both, a kNN spread of 0, and seed 0's probe is the entry's fast probe); the table gains
  a few-label table, a cell per entry and setting, and label_efficiency.png is drawn; the failed
  entry's cells are empty."""
  cwd, _ = compared
  comparison = json.loads((cwd / "cmp" / "comparison.json").read_text())
  assert comparison["label_plan"] == {"settings": ["50%", "100%", "1-shot", "2-shot"], "seeds": 2}
  rows = {r["name"]: r for r in comparison["entries"]}
  for name in ("ours", "moco_v2", "random"):
    few_label = json.loads((cwd / "cmp" / "entries" / name / "label_efficiency.json").read_text())
    assert few_label["settings"] == rows[name]["label_efficiency"] and few_label["label_seeds"] == [0, 1]
    assert [s["num_labelled"] for s in few_label["settings"]] == [40, 80, 10, 20]
    for setting in few_label["settings"]:
      for method in ("knn", "linear"):
        assert len(setting[method]["top1"]["values"]) == 2 and 0.0 <= setting[method]["macro_f1"]["mean"] <= 1.0
    everything = few_label["settings"][1]
    assert everything["knn"]["top1"]["std"] == 0.0
    linear = json.loads((cwd / "cmp" / "entries" / name / "linear_fast.json").read_text())
    assert everything["linear"]["top1"]["values"][0] == linear["top1"]
    assert everything["linear_weight_decay"][0] == linear["weight_decay"]
  assert rows["missing"]["label_efficiency"] is None
  table = (cwd / "cmp" / "comparison.md").read_text()
  assert "| method | 50% | 100% | 1-shot | 2-shot |" in table and "| missing | - | - | - | - |" in table
  with Image.open(cwd / "cmp" / "label_efficiency.png") as image:
    assert (image.format, image.size) == ("PNG", (1200, 500))
