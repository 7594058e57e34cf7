"""The demo's ablations (python -m artstyle_jax.tools.demo_ablations): each run pretrained in its
own workdir on one shared dataset, scored beside the random initialisation of its image size, the
table printed and kept; an unknown run refused in one line before anything is written."""
import json

import pytest

from artstyle_jax.tools import demo_ablations
from helpers import file_stamps
from helpers import run_program
from helpers import SHORT_SCRATCH_DEMO


@pytest.fixture(scope="module")
def ablations(tmp_path_factory):
  """(directory the program ran in, completed process) of two shortened runs, --workdir relative."""
  cwd = tmp_path_factory.mktemp("ablations")
  result = run_program("tools.demo_ablations", "--workdir=runs", "--runs=demo,cosine_0.6", *SHORT_SCRATCH_DEMO, cwd=cwd)
  return cwd, result


def test_each_run_is_pretrained_and_scored_beside_the_random_initialisation(ablations):
  """ablations.json: per run its overrides, the checkpoint step it was scored at, the test
  features' effective rank and first-PC share, kNN and linear top-1 as eval wrote them, the batch
  ranks of its first and last step and its last loss; one random initialisation row for the
  image size both runs share; the runs' own overrides reached their saved configs."""
  cwd, result = ablations
  assert result.returncode == 0, result.stderr[-3000:]
  root = cwd / "runs"
  with open(root / demo_ablations.RESULTS_FILE) as f:
    results = json.load(f)
  assert sorted(results) == ["cosine_0.6", "demo", "random_init_32"]
  for name in ("demo", "cosine_0.6"):
    row = results[name]
    assert row["overrides"] == list(demo_ablations.RUNS[name][1]) and row["step"] == 2
    with open(root / name / "eval" / "knn.json") as f:
      knn = json.load(f)
    with open(root / name / "eval" / "linear_fast.json") as f:
      linear = json.load(f)
    assert (row["knn_top1"], row["linear_top1"]) == (knn["top1"], linear["top1"])
    assert (row["effective_rank"], row["first_pc_share"]) == (knn["effective_rank"], knn["first_pc_share"])
    assert 1.0 <= row["batch_rank_first"] <= 7.0 and 1.0 <= row["batch_rank_last"] <= 7.0
    assert row["last_loss"] > 0
  with open(root / "cosine_0.6" / "config.json") as f:
    saved = json.load(f)
  assert saved["optim"]["base_lr"] == 0.3 and saved["optim"]["schedule"] == "cosine"
  with open(root / "random_init_32" / "knn.json") as f:
    assert json.load(f)["random_init"]
  assert (root / "data").is_dir() and len(list((root / "data" / "synthetic_trees").iterdir())) == 1


def test_the_table_is_printed_in_markdown_random_initialisation_first(ablations):
  """The printed table: a header, a separator, then one row per result, the random
  initialisation first, each with its effective rank and top-1 figures as the JSON holds them."""
  cwd, result = ablations
  with open(cwd / "runs" / demo_ablations.RESULTS_FILE) as f:
    results = json.load(f)
  lines = [line for line in result.stdout.splitlines() if line.startswith("|")]
  assert lines[0].startswith("| run | what changes | effective rank") and lines[1].startswith("| ---")
  names = [line.split("|")[1].strip() for line in lines[2:]]
  assert names == ["random_init_32", "demo", "cosine_0.6"]
  for line, name in zip(lines[2:], names):
    cells = [cell.strip() for cell in line.split("|")[1:-1]]
    assert cells[2:6] == [f"{results[name]['effective_rank']:.1f}", f"{100 * results[name]['first_pc_share']:.0f}%",
                          f"{100 * results[name]['knn_top1']:.1f}%", f"{100 * results[name]['linear_top1']:.1f}%"]


def test_an_unknown_run_is_refused_in_one_line_with_nothing_written(tmp_path):
  """--runs naming no run: exit 1, one error line listing the runs, no workdir made."""
  result = run_program("tools.demo_ablations", "--workdir=runs", "--runs=demo,baroque", *SHORT_SCRATCH_DEMO,
                       cwd=tmp_path)
  assert result.returncode == 1
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "unknown run 'baroque'" in errors[0] and "cosine_0.6" in errors[0], result.stderr
  assert not (tmp_path / "runs").exists()


def test_runs_pretrained_with_another_config_are_refused_before_anything_is_written(ablations):
  """Running the same runs again with another base config (here more steps) would go on from
  checkpoints neither config describes: exit 1, one error line naming the key, the directory as
  it was (the check comes before any run trains)."""
  cwd, _ = ablations
  before = file_stamps(cwd / "runs")
  result = run_program("tools.demo_ablations", "--workdir=runs", "--runs=demo,cosine_0.6", *SHORT_SCRATCH_DEMO,
                       "--config.num_steps=4", cwd=cwd)
  assert result.returncode == 1
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "another config" in errors[0] and "num_steps: 2 there, 4 here" in errors[0]
  assert file_stamps(cwd / "runs") == before
