"""A run of two processes (one CPU device each, joined by jax.distributed over 127.0.0.1) that
loses one: the survivor ends soon after, with one error line and the exit status that means
"restart me"."""
import subprocess
import sys
import time

import pytest

from artstyle_jax.runtime import multihost
from helpers import checkpoint_steps
from helpers import program_env
from helpers import reserved_port
from helpers import tiny_train_flags
from helpers import wait_all

PEER_TIMEOUT_S = 10


@pytest.mark.parametrize("killed, loss", [(1, "lost process 1 of 2"),
                                          (0, "lost the coordinator of the run (process 0)")])
def test_a_peer_killed_ends_the_survivor_with_one_line_and_the_restart_status(tmp_path, synthetic_data, killed, loss):
  """Process 1 (or 0, the coordinator) is SIGKILLed once checkpoint 4 is complete: the other exits
  within 60 s with RESTART_EXIT_CODE and one `error:` line naming the process lost, the newest
  complete checkpoint and what to run; no Python traceback, no Python crash dump (JAX's client
  logs its own fatal line first when the coordinator is gone)."""
  survivor = 1 - killed
  workdir = tmp_path / "run"
  flags = tiny_train_flags(workdir, synthetic_data, "--config.num_steps=400", "--config.checkpoint_every_steps=4",
                           "--config.log_every_steps=1", "--config.async_checkpointing=False",
                           f"--peer_timeout_s={PEER_TIMEOUT_S}")
  env = program_env({"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_backend_optimization_level=0"})
  logs = [tmp_path / f"process_{i}.log" for i in range(2)]
  with reserved_port() as port:
    processes = []
    for i, log_path in enumerate(logs):
      with open(log_path, "w") as log:
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "artstyle_jax.train", *flags, f"--coordinator_address=127.0.0.1:{port}",
             "--num_processes=2", f"--process_id={i}"], env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
      deadline = time.monotonic() + 300
      while 4 not in checkpoint_steps(workdir):
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes), logs[0].read_text()[-3000:]
        time.sleep(0.2)
      processes[killed].kill()
      killed_at = time.monotonic()
      processes[survivor].wait(timeout=90)
      survived_s = time.monotonic() - killed_at
    finally:
      wait_all(processes, timeout=1)
  output = logs[survivor].read_text()
  assert processes[survivor].returncode == multihost.RESTART_EXIT_CODE, output[-3000:]
  assert survived_s < 60
  errors = [line for line in output.splitlines() if line.startswith("error:")]
  newest = checkpoint_steps(workdir)[-1]
  assert len(errors) == 1, output[-3000:]
  assert errors[0].startswith(f"error: process {survivor}: {loss}")
  assert f"the newest complete checkpoint is step {newest} in {workdir}" in errors[0]
  assert "run the same command again to resume" in errors[0]
  assert "Traceback" not in output and "Extension modules" not in output and "Fatal Python" not in output
