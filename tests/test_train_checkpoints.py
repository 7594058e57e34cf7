"""The training program's checkpoints as users meet them: relative paths, asynchronous saves, a
damaged latest checkpoint, a save that cannot write. (Apart from test_train.py so that the two
run on different pytest workers.)"""
import json
import os
import shutil

import pytest

from helpers import assert_trees_equal
from helpers import checkpoint_steps
from helpers import config_path
from helpers import file_contents
from helpers import restored_state
from helpers import run_program
from helpers import run_python
from helpers import tiny_train_flags


def relative_train_flags(data, *overrides):
  """train.py's flags as a user gives them from a directory holding the dataset as tfds/:
  relative paths, asynchronous checkpoints every 2 steps."""
  return tiny_train_flags("run", ("tfds", data[1]), "--config.async_checkpointing=True",
                          "--config.checkpoint_every_steps=2", "--config.keep_checkpoints=3", *overrides,
                          config=config_path("tiny"))


@pytest.fixture(scope="module")
def relative_run(tmp_path_factory, synthetic_data):
  """(cwd, result) of 4 steps of `relative_train_flags` run from cwd: checkpoints 2 and 4."""
  cwd = tmp_path_factory.mktemp("cwd")
  os.symlink(synthetic_data[0], cwd / "tfds")
  result = run_program("train", *relative_train_flags(synthetic_data, "--config.num_steps=4"), cwd=cwd, timeout=300)
  assert result.returncode == 0, result.stderr
  return cwd, result


def copy_of(run_dir, tmp_path):
  """A copy of the fixture's cwd (its run/, its tfds link) for a test to change."""
  cwd = tmp_path / "cwd"
  shutil.copytree(run_dir, cwd, symlinks=True)
  return cwd


def test_relative_workdir_and_data_dir_work_from_the_current_directory(relative_run):
  """--workdir=run and dataset.data_dir=tfds: the run, its asynchronous checkpoints and the
  saved config land under the directory it started in, the config's data_dir absolute; no
  library chatter on stderr."""
  cwd, result = relative_run
  assert checkpoint_steps(cwd / "run") == [2, 4]
  with open(cwd / "run" / "config.json") as f:
    assert json.load(f)["dataset"]["data_dir"] == str(cwd / "tfds")
  for noise in ("Traceback", "read only", "orbax", "Load dataset info"):
    assert noise not in result.stderr


def test_a_damaged_latest_checkpoint_is_moved_aside_and_training_resumes_from_the_one_before(
    relative_run, synthetic_data, tmp_path):
  """A truncated file in checkpoint 4: one warning line naming step 4 and the reason, 4 moved
  to 4.corrupt intact, the run resumes from 2 and reaches the same step-4 state as the
  uninterrupted run did, bit for bit."""
  cwd = copy_of(relative_run[0], tmp_path)
  expected = restored_state(cwd / "run", 4)
  data_files = [os.path.join(d, f) for d, _, fs in os.walk(cwd / "run" / "checkpoints" / "4" / "state") for f in fs]
  largest = max(data_files, key=os.path.getsize)
  os.truncate(largest, os.path.getsize(largest) // 2)
  damaged = file_contents(cwd / "run" / "checkpoints" / "4")

  result = run_program("train", *relative_train_flags(synthetic_data, "--config.num_steps=4"), cwd=cwd, timeout=300)
  assert result.returncode == 0, result.stderr
  warnings = [line for line in result.stderr.splitlines() if " is damaged (" in line]
  assert len(warnings) == 1 and f"checkpoint 4 in {cwd / 'run' / 'checkpoints'} is damaged (" in warnings[0]
  assert "4.corrupt" in warnings[0]
  assert "Resumed from the checkpoint of step 2" in result.stderr
  assert "Traceback" not in result.stderr
  assert file_contents(cwd / "run" / "checkpoints" / "4.corrupt") == damaged
  assert_trees_equal(restored_state(cwd / "run", 4), expected)


def test_a_save_that_cannot_write_stops_the_run_in_one_line_and_keeps_the_complete_checkpoints(
    relative_run, synthetic_data, tmp_path):
  """Files limited to 1 MB (RLIMIT_FSIZE: writes past it fail with 'File too large', as a full
  disk fails with 'No space left on device'): resumed at 4, the save of step 6 fails; exit 1,
  one error line with the step, the OS reason and the last complete checkpoint, no traceback,
  checkpoints 2 and 4 unchanged."""
  cwd = copy_of(relative_run[0], tmp_path)
  before = file_contents(cwd / "run" / "checkpoints")
  train_flags = relative_train_flags(synthetic_data, "--config.num_steps=6")
  limited = ("import resource, runpy, sys; "
             "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1])); "
             "sys.argv = ['train'] + sys.argv[1:]; runpy.run_module('artstyle_jax.train', run_name='__main__')")
  result = run_python("-c", limited, *train_flags, cwd=cwd, timeout=300)
  assert result.returncode == 1, result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert errors == [f"error: saving checkpoint 6 in {cwd / 'run' / 'checkpoints'} failed: File too large; the last "
                    "complete checkpoint is step 4, nothing complete was removed"], result.stderr
  assert "Traceback" not in result.stderr
  after = file_contents(cwd / "run" / "checkpoints")
  assert {path: after.get(path) for path in before} == before
