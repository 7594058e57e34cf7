"""The training program: checkpoints that survive kill -9, SIGTERM, non-finite losses, damaged
files, a failed save and bad input; relative paths as users type them."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_command(workdir, data, *overrides):
  data_dir, name = data
  return [sys.executable, "-m", "artstyle_jax.train", "--config=configs/tiny.py", f"--workdir={workdir}",
          f"--config.dataset.name={name}", f"--config.dataset.data_dir={data_dir}", "--config.log_every_steps=1",
          "--config.async_checkpointing=False", *overrides]


def run_train(workdir, data, *overrides, timeout=300):
  return subprocess.run(train_command(workdir, data, *overrides), cwd=REPO, capture_output=True, text=True,
                        timeout=timeout)


def restored_state(workdir, step):
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  return ocp.StandardCheckpointer().restore(path)


def checkpoint_steps(workdir):
  root = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(root) if d.isdigit()) if os.path.isdir(root) else []


def logged_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def tree_files(workdir):
  return {os.path.join(d, f): os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(workdir) for f in fs}


def test_resumed_run_equals_uninterrupted_run_bit_for_bit(tmp_path, synthetic_data):
  """6 steps straight == 3 steps, kill -9, then a restart that resumes at step 3 and runs 3 more:
  every array of the train state identical, and the same loss at every step."""
  straight = tmp_path / "straight"
  result = run_train(straight, synthetic_data, "--config.num_steps=6", "--config.checkpoint_every_steps=3")
  assert result.returncode == 0, result.stderr

  interrupted = tmp_path / "interrupted"
  process = subprocess.Popen(train_command(interrupted, synthetic_data, "--config.num_steps=6",
                                           "--config.checkpoint_every_steps=3"),
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 240
  while 3 not in checkpoint_steps(interrupted) and process.poll() is None and time.monotonic() < deadline:
    time.sleep(0.005)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert checkpoint_steps(interrupted) == [3], "the first run had to die between its checkpoints 3 and 6"

  result = run_train(interrupted, synthetic_data, "--config.num_steps=6", "--config.checkpoint_every_steps=3")
  assert result.returncode == 0, result.stderr
  assert "Resumed from the checkpoint of step 3" in result.stderr

  expected, got = restored_state(straight, 6), restored_state(interrupted, 6)
  assert jax.tree.structure(expected) == jax.tree.structure(got)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  straight_losses, resumed_losses = logged_losses(straight), logged_losses(interrupted)
  assert [straight_losses[s] for s in (4, 5, 6)] == [resumed_losses[s] for s in (4, 5, 6)]
  with open(straight / "config.json") as f:
    assert json.load(f)["num_steps"] == 6


def test_sigterm_saves_a_checkpoint_and_exits_zero(tmp_path, synthetic_data):
  """A preemption (SIGTERM) mid-run: exit status 0 within bounded time, a checkpoint of the step
  reached, and a restart resumes from it."""
  workdir = tmp_path / "run"
  process = subprocess.Popen(train_command(workdir, synthetic_data, "--config.num_steps=100000"),
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  metrics = workdir / "metrics.jsonl"
  deadline = time.monotonic() + 240
  while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.monotonic() < deadline:
    assert process.poll() is None, process.stderr.read()
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=60)
  assert process.returncode == 0, stderr
  assert "SIGTERM received" in stderr
  steps = checkpoint_steps(workdir)
  assert len(steps) == 1 and 2 <= steps[0] < 100000
  assert max(logged_losses(workdir)) == steps[0]


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, synthetic_data):
  """An exploding learning rate: exit status 1, a message naming the non-finite loss and the last
  good checkpoint, whose parameters are all finite."""
  workdir = tmp_path / "run"
  result = run_train(workdir, synthetic_data, "--config.num_steps=60", "--config.checkpoint_every_steps=1",
                     "--config.optim.base_lr=1e12", "--config.optim.warmup_epochs=0")
  assert result.returncode == 1
  error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(error_lines) == 1 and "non-finite loss" in error_lines[0]
  steps = checkpoint_steps(workdir)
  assert steps, "no good step was checkpointed"
  assert f"last good checkpoint is step {steps[-1]}" in error_lines[0]
  state = restored_state(workdir, steps[-1])
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


@pytest.mark.parametrize("override, message", [
    ("--config.no_such_key=1", "no_such_key"),
    ("--config.dataset.data_dir=/nonexistent/tfds", "does not exist"),
    ("--config.queue_size=100", "multiple of the global batch_size"),
])
def test_bad_input_fails_with_one_clear_error_line(tmp_path, synthetic_data, override, message):
  """Unknown config keys, a missing dataset directory, an unusable value: non-zero exit, the
  reason in one line, nothing written to the workdir."""
  workdir = tmp_path / "run"
  result = run_train(workdir, synthetic_data, override)
  assert result.returncode != 0
  assert message in result.stderr
  assert "Traceback" not in result.stderr
  assert not workdir.exists() or not any(workdir.iterdir())


def test_workdir_of_another_model_size_is_refused_untouched(tmp_path, synthetic_data):
  """Training convnext_femto in a workdir holding convnext_atto checkpoints: refused, every file
  of the workdir unchanged."""
  workdir = tmp_path / "run"
  assert run_train(workdir, synthetic_data, "--config.num_steps=2").returncode == 0
  before = tree_files(workdir)
  result = run_train(workdir, synthetic_data, "--config.num_steps=4", "--config.model.name=convnext_femto")
  assert result.returncode == 1
  assert "another model" in result.stderr and "convnext_femto" in result.stderr
  assert tree_files(workdir) == before


def relative_train_command(data, *overrides):
  """train.py as a user runs it from a directory holding the dataset as tfds/: relative paths,
  asynchronous checkpoints every 2 steps."""
  return [sys.executable, "-m", "artstyle_jax.train", f"--config={os.path.join(REPO, 'configs', 'tiny.py')}",
          "--workdir=run", f"--config.dataset.name={data[1]}", "--config.dataset.data_dir=tfds",
          "--config.async_checkpointing=True", "--config.checkpoint_every_steps=2", "--config.keep_checkpoints=3",
          *overrides]


def file_bytes(directory):
  return {os.path.relpath(os.path.join(d, f), directory): open(os.path.join(d, f), "rb").read()
          for d, _, fs in os.walk(directory) for f in fs}


@pytest.fixture(scope="module")
def relative_run(tmp_path_factory, synthetic_data):
  """(cwd, result) of 4 steps of `relative_train_command` run from cwd: checkpoints 2 and 4."""
  cwd = tmp_path_factory.mktemp("cwd")
  os.symlink(synthetic_data[0], cwd / "tfds")
  result = subprocess.run(relative_train_command(synthetic_data, "--config.num_steps=4"), cwd=cwd,
                          capture_output=True, text=True, timeout=300)
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
  damaged = file_bytes(cwd / "run" / "checkpoints" / "4")

  result = subprocess.run(relative_train_command(synthetic_data, "--config.num_steps=4"), cwd=cwd,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  warnings = [line for line in result.stderr.splitlines() if " is damaged (" in line]
  assert len(warnings) == 1 and f"checkpoint 4 in {cwd / 'run' / 'checkpoints'} is damaged (" in warnings[0]
  assert "4.corrupt" in warnings[0]
  assert "Resumed from the checkpoint of step 2" in result.stderr
  assert "Traceback" not in result.stderr
  assert file_bytes(cwd / "run" / "checkpoints" / "4.corrupt") == damaged
  got = restored_state(cwd / "run", 4)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_save_that_cannot_write_stops_the_run_in_one_line_and_keeps_the_complete_checkpoints(
    relative_run, synthetic_data, tmp_path):
  """Files limited to 1 MB (RLIMIT_FSIZE: writes past it fail with 'File too large', as a full
  disk fails with 'No space left on device'): resumed at 4, the save of step 6 fails; exit 1,
  one error line with the step, the OS reason and the last complete checkpoint, no traceback,
  checkpoints 2 and 4 unchanged."""
  cwd = copy_of(relative_run[0], tmp_path)
  before = file_bytes(cwd / "run" / "checkpoints")
  train_flags = relative_train_command(synthetic_data, "--config.num_steps=6")[3:]  # after -m artstyle_jax.train
  limited = ("import resource, runpy, sys; "
             "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1])); "
             "sys.argv = ['train'] + sys.argv[1:]; runpy.run_module('artstyle_jax.train', run_name='__main__')")
  result = subprocess.run([sys.executable, "-c", limited, *train_flags], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 1, result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert errors == [f"error: saving checkpoint 6 in {cwd / 'run' / 'checkpoints'} failed: File too large; the last "
                    "complete checkpoint is step 4, nothing complete was removed"], result.stderr
  assert "Traceback" not in result.stderr
  after = file_bytes(cwd / "run" / "checkpoints")
  assert {path: after.get(path) for path in before} == before
