"""Checkpoints of a run on two processes (one CPU device each, joined by jax.distributed over
127.0.0.1): a read that fails on one process only condemns nothing, and a run saved by two
processes resumes on one, at the same global example."""
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from artstyle_jax.storage import metric_writer
from helpers import checkpoint_steps
from helpers import file_contents
from helpers import program_env
from helpers import reserved_port
from helpers import run_program
from helpers import tiny_train_flags
from helpers import wait_all

# XLA:CPU without LLVM optimisation: the same functions, compiled several times faster.
FAST_CPU = "--xla_backend_optimization_level=0"

# The training program, except that process 1 cannot read checkpoint 4's arrays: each try
# raises TensorStore's error for a truncated file, as a flaky mount seen by one host would.
FAILING_ON_PROCESS_1 = textwrap.dedent("""
    import runpy, sys
    import jax
    import orbax.checkpoint as ocp
    restore = ocp.StandardCheckpointHandler.restore
    def restore_failing_on_process_1(self, directory, *args, **kwargs):
      if jax.process_index() == 1 and directory.parent.name == "4":
        raise Exception('OUT_OF_RANGE: Error reading "params" in OCDBT database: cut short on process 1')
      return restore(self, directory, *args, **kwargs)
    ocp.StandardCheckpointHandler.restore = restore_failing_on_process_1
    sys.argv = ["train"] + sys.argv[1:]
    runpy.run_module("artstyle_jax.train", run_name="__main__", alter_sys=True)
""")


def train_flags(workdir, data, *overrides):
  """4 steps of the tiny config, every step logged, synchronous checkpoints at steps 2 and 4."""
  return tiny_train_flags(workdir, data, "--config.num_steps=4", "--config.checkpoint_every_steps=2",
                          "--config.log_every_steps=1", "--config.async_checkpointing=False", *overrides)


def start_two_processes(port, log_dir, flags, code=None):
  """The training program (or `code`, a `python -c` stand-in for it) as process 0 and 1 of a job
  of two processes of one CPU device each; each one's output goes to log_dir/process_<i>.log."""
  env = program_env({"JAX_PLATFORMS": "cpu", "XLA_FLAGS": FAST_CPU})
  command = [sys.executable, "-m", "artstyle_jax.train"] if code is None else [sys.executable, "-c", code]
  processes = []
  for i in range(2):
    with open(log_dir / f"process_{i}.log", "w") as log:
      processes.append(subprocess.Popen(
          [*command, *flags, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
          env=env, stdout=log, stderr=subprocess.STDOUT))
  return processes


def checkpointed_state(workdir, step):
  """The checkpoint's train state as arrays on one local device, whatever topology wrote it."""
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                        ocp.StandardCheckpointer().metadata(path).item_metadata)
  return ocp.StandardCheckpointer().restore(path, target)


def logged_losses(workdir):
  """{step: loss} of every start of train on the workdir, a later start's value for a step logged twice."""
  return {r["step"]: r["loss"] for r in metric_writer.read_records(workdir) if "loss" in r}


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, synthetic_data):
  """The workdir of `train_flags` run by two processes: checkpoints 2 and 4."""
  root = tmp_path_factory.mktemp("two_processes")
  with reserved_port() as port:
    processes = start_two_processes(port, root, train_flags(root / "run", synthetic_data))
    wait_all(processes, timeout=420)
  for i, process in enumerate(processes):
    assert process.returncode == 0, (root / f"process_{i}.log").read_text()[-3000:]
  assert checkpoint_steps(root / "run") == [2, 4]
  return root / "run"


def test_a_read_failing_on_one_process_only_moves_nothing_and_stops_every_process(
    two_process_run, synthetic_data, tmp_path):
  """Process 1 cannot read checkpoint 4 (twice), process 0 can: both processes exit 1 in
  bounded time (no hang in a collective), each with one error line naming checkpoint 4, process
  1 and its reason, and that it is left in place; every file of the workdir's checkpoints is
  as it was, nothing moved aside."""
  workdir = tmp_path / "run"
  shutil.copytree(two_process_run, workdir)
  before = file_contents(workdir / "checkpoints")
  with reserved_port() as port:
    processes = start_two_processes(port, tmp_path, train_flags(workdir, synthetic_data, "--config.num_steps=6"),
                                    code=FAILING_ON_PROCESS_1)
    wait_all(processes, timeout=240)
  logs = [(tmp_path / f"process_{i}.log").read_text() for i in range(2)]
  for process, log in zip(processes, logs):
    assert process.returncode == 1, log[-3000:]
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "checkpoint 4 in " in errors[0], log[-3000:]
    assert "process 1 of 2 could not read it" in errors[0] and "left in place" in errors[0]
    assert "Traceback" not in log
  assert "cut short on process 1" in [line for line in logs[1].splitlines() if line.startswith("error:")][0]
  assert file_contents(workdir / "checkpoints") == before
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]


def test_a_run_saved_by_two_processes_resumes_on_one_at_the_same_global_example(
    two_process_run, synthetic_data, tmp_path):
  """Checkpoint 2 of the two-process run, resumed by one process of two devices: one line says
  the input continues at global batch 2 of a position saved by 2 processes; steps 3 and 4 give
  the losses and the step-4 state of the uninterrupted two-process run."""
  workdir = tmp_path / "run"
  shutil.copytree(two_process_run, workdir)
  shutil.rmtree(workdir / "checkpoints" / "4")
  two_devices = f"--xla_force_host_platform_device_count=2 {FAST_CPU}"
  result = run_program("train", *train_flags(workdir, synthetic_data), timeout=300,
                       env={"JAX_PLATFORMS": "cpu", "XLA_FLAGS": two_devices})
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Resumed from the checkpoint of step 2" in result.stderr
  lines = [line for line in result.stderr.splitlines() if "was saved by 2 processes, this run has 1" in line]
  assert len(lines) == 1 and "continues at global batch 2" in lines[0]

  expected_losses, losses = logged_losses(two_process_run), logged_losses(workdir)
  np.testing.assert_allclose([losses[s] for s in (3, 4)], [expected_losses[s] for s in (3, 4)], rtol=1e-5)
  expected, got = checkpointed_state(two_process_run, 4), checkpointed_state(workdir, 4)
  assert jax.tree.structure(expected) == jax.tree.structure(got)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(got)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))
