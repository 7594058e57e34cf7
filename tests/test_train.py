"""The training program: checkpoints that survive kill -9 and SIGTERM, non-finite losses, bad input,
a workdir of another model. Relative paths, damaged checkpoints and failed saves: test_train_checkpoints.py."""
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
# The programs the tests start use the grouped-convolution form of the depthwise convolutions:
# the same function, tested equal to the 'shift' form by test_convnext.py, and at the tests' 64
# px it traces and compiles in a third less time (a warm start of 4 train steps: 25 s against
# 36 s), which is most of what each of those tests costs.
FAST_COMPILING = "model.depthwise=conv"


def train_command(workdir, data, *overrides):
  data_dir, name = data
  return [sys.executable, "-m", "artstyle_jax.train", "--config=configs/tiny.py", f"--workdir={workdir}",
          f"--config.dataset.name={name}", f"--config.dataset.data_dir={data_dir}", "--config.log_every_steps=1",
          "--config.async_checkpointing=False", f"--config.{FAST_COMPILING}", *overrides]


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


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, synthetic_data):
  """The workdir of 6 uninterrupted steps, checkpoints 3 and 6 (tests copy it to change it)."""
  workdir = tmp_path_factory.mktemp("straight") / "run"
  result = run_train(workdir, synthetic_data, "--config.num_steps=6", "--config.checkpoint_every_steps=3")
  assert result.returncode == 0, result.stderr
  return workdir


def test_resumed_run_equals_uninterrupted_run_bit_for_bit(straight_run, tmp_path, synthetic_data):
  """6 steps straight == 3 steps, kill -9, then a restart that resumes at step 3 and runs 3 more:
  every array of the train state identical, and the same loss at every step."""
  straight = straight_run
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
    recorded = json.load(f)
  assert recorded["num_steps"] == 6
  # The forms train chose for this CPU, beside the config's 'auto' and FAST_COMPILING's 'conv'.
  assert recorded["forms"] == {"depthwise": "conv", "mlp_grad": "manual", "patchify": "matmul",
                               "compiled_kernels": False}


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


def test_workdir_of_another_model_size_is_refused_untouched(straight_run, tmp_path, synthetic_data):
  """Training convnext_femto in a workdir holding convnext_atto checkpoints: refused, every file
  of the workdir unchanged."""
  workdir = tmp_path / "run"
  shutil.copytree(straight_run, workdir)
  before = tree_files(workdir)
  result = run_train(workdir, synthetic_data, "--config.num_steps=8", "--config.model.name=convnext_femto")
  assert result.returncode == 1
  assert "another model" in result.stderr and "convnext_femto" in result.stderr
  assert tree_files(workdir) == before
