"""The training program: checkpoints that survive kill -9 and SIGTERM, non-finite losses, bad input,
a workdir of another model. Relative paths, damaged checkpoints and failed saves: test_train_checkpoints.py."""
import json
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from artstyle_jax.runs import pretraining
from artstyle_jax.storage import metric_writer
from helpers import assert_trees_equal
from helpers import checkpoint_steps
from helpers import file_stamps
from helpers import restored_state
from helpers import run_program
from helpers import run_program_killed_after_step
from helpers import start_program
from helpers import tiny_train_flags


def train_flags(workdir, data, *overrides):
  """tiny_train_flags for a run from the repository root: every step logged, checkpoints saved
  synchronously."""
  return tiny_train_flags(workdir, data, "--config.log_every_steps=1", "--config.async_checkpointing=False",
                          *overrides)


def run_train(workdir, data, *overrides):
  return run_program("train", *train_flags(workdir, data, *overrides), timeout=300)


def logged_losses(workdir):
  """{step: loss} of every start of train on the workdir, a later start's record of a step winning."""
  return {r["step"]: r["loss"] for r in metric_writer.read_records(workdir) if "loss" in r}


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, synthetic_data):
  """The workdir of 6 uninterrupted steps, checkpoints 3 and 6 (tests copy it to change it)."""
  workdir = tmp_path_factory.mktemp("straight") / "run"
  result = run_train(workdir, synthetic_data, "--config.num_steps=6", "--config.checkpoint_every_steps=3")
  assert result.returncode == 0, result.stderr
  return workdir


def test_resumed_run_equals_uninterrupted_run_bit_for_bit(straight_run, tmp_path, synthetic_data):
  """6 steps straight == a run killed with SIGKILL right after its step 4 (checkpoint 3 written,
  step 4 done and logged, not checkpointed), then a restart that resumes at step 3 and runs 3 more:
  every array of the train state identical, and the same loss at every step."""
  straight = straight_run
  interrupted = tmp_path / "interrupted"
  killed = run_program_killed_after_step(
      "train", 4, *train_flags(interrupted, synthetic_data, "--config.num_steps=6", "--config.checkpoint_every_steps=3"),
      timeout=300)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert checkpoint_steps(interrupted) == [3]

  result = run_train(interrupted, synthetic_data, "--config.num_steps=6", "--config.checkpoint_every_steps=3")
  assert result.returncode == 0, result.stderr
  assert "Resumed from the checkpoint of step 3" in result.stderr

  assert_trees_equal(restored_state(interrupted, 6), restored_state(straight, 6))
  straight_losses, resumed_losses = logged_losses(straight), logged_losses(interrupted)
  assert [straight_losses[s] for s in (4, 5, 6)] == [resumed_losses[s] for s in (4, 5, 6)]
  with open(straight / "config.json") as f:
    recorded = json.load(f)
  assert recorded["num_steps"] == 6
  # The forms train chose for this CPU, beside the config's 'auto' and FAST_COMPILING's 'conv'.
  assert recorded["forms"] == {"depthwise": "conv", "mlp_grad": "manual", "patchify": "matmul",
                               "compiled_kernels": False}


def test_sigterm_saves_a_checkpoint_and_exits_zero(tmp_path, synthetic_data):
  """A preemption (SIGTERM) mid-run: exit status 0 within bounded time, a checkpoint of the step
  reached, and a restart resumes from it."""
  workdir = tmp_path / "run"
  process = start_program("train", *train_flags(workdir, synthetic_data, "--config.num_steps=100000"),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  metrics = workdir / metric_writer.START_FILE.format(start=1)
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


def test_on_several_processes_the_stop_is_agreed_every_log_interval_without_a_collective_between(monkeypatch):
  """Two processes (jax's count and all-gather stood in for), SIGTERM to the other one: no
  collective at steps between multiples of 5, so no step waits for the one before; at step 10
  one all-gather, and the answer is to stop, with the other process named as the reason."""
  gathered = []

  def allgather(value):
    gathered.append(bool(value))
    return np.array([bool(value), True])

  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(pretraining.multihost_utils, "process_allgather", allgather)
  stop = pretraining.StopRequest()
  assert [stop.agreed(step, 5) for step in range(6, 10)] == [False] * 4 and gathered == []
  assert stop.agreed(10, 5) and gathered == [False]
  assert stop.signal_name == "a stop signal to another process"


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


def test_workdir_of_another_model_size_is_refused_untouched(straight_run, tmp_path, synthetic_data):
  """Training convnext_femto in a workdir holding convnext_atto checkpoints: refused, every file
  of the workdir unchanged."""
  workdir = tmp_path / "run"
  shutil.copytree(straight_run, workdir)
  before = file_stamps(workdir)
  result = run_train(workdir, synthetic_data, "--config.num_steps=8", "--config.model.name=convnext_femto")
  assert result.returncode == 1
  assert "another model" in result.stderr and "convnext_femto" in result.stderr
  assert file_stamps(workdir) == before
