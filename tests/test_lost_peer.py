"""A run of two processes (one CPU device each, joined by jax.distributed over 127.0.0.1) that
loses one: the survivor ends soon after, with one error line and the exit status that means
"restart me"."""
import os
import select
import subprocess
import sys
import time

import pytest

from artstyle_jax.runtime import multihost
from artstyle_jax.runtime import stderr_filter
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
  complete checkpoint and what to run; no Python traceback, no Python crash dump, and none of the
  fatal line and C++ stack trace JAX's client writes when the coordinator is gone."""
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
  assert "Check failure stack trace" not in output and "Terminating process" not in output


POLLED = b"E1207 07:08:39.049910   21615 coordination_service_agent.cc:289] Polled an error from coordination service\n"
CRASH_REPORT = (b"F1207 07:08:39.050042   21615 client.h:80] Terminating process because the JAX distributed service "
                b"detected fatal errors. absl::Status: UNAVAILABLE: Failed to send RPC to coordination service.\n"
                b":UNKNOWN:Error received from peer  {grpc_status:14}\n"
                b"*** Check failure stack trace: ***\n"
                b"    @     0x7f4cd8af0634  absl::lts_20260107::log_internal::LogMessage::SendToLog()\n")
OUR_LINE = (b"error: process 1: lost the coordinator of the run (process 0): 127.0.0.1:1 does not answer; "
            b"run the same command again to resume\n")


def start_filter() -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-S", stderr_filter.__file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def read_for(process: subprocess.Popen, seconds: float) -> bytes:
  """What the filter writes in the next `seconds`, its input left open."""
  out, deadline = b"", time.monotonic() + seconds
  while (left := deadline - time.monotonic()) > 0:
    if select.select([process.stdout], [], [], left)[0]:
      out += os.read(process.stdout.fileno(), 1 << 16)
  return out


def test_the_filter_passes_lines_and_a_partial_progress_bar_at_once():
  """Ordinary lines, and the first bytes of a line that no record of JAX's client starts (a
  progress bar's carriage return), are written as they come, the input still open."""
  process = start_filter()
  process.stdin.write(b"I1207 07:00:00.000000 1 train.py:10] step 1\n\r 50%|#####     | 5/10")
  process.stdin.flush()
  assert read_for(process, 2.0) == b"I1207 07:00:00.000000 1 train.py:10] step 1\n\r 50%|#####     | 5/10"
  out, _ = process.communicate(b"\r100%\n")
  assert out == b"\r100%\n"


def test_the_filter_drops_the_clients_crash_report_when_our_line_follows_it():
  """The client's error record and crash report, then the abort handler's line: of them, only
  the handler's line is written; the lines before them are all there."""
  out, _ = start_filter().communicate(b"step 7 saved\n" + POLLED + CRASH_REPORT + OUR_LINE)
  assert out == b"step 7 saved\n" + OUR_LINE


def test_the_filter_writes_a_crash_report_no_line_of_ours_explains():
  """Any other abort of the client keeps its whole report."""
  out, _ = start_filter().communicate(POLLED + CRASH_REPORT)
  assert out == POLLED + CRASH_REPORT


def test_the_filter_writes_a_client_error_no_crash_follows_after_its_hold():
  """A record of the client with no fatal line after it is written once HOLD_S has passed, the
  input still open, with the lines that came during the hold."""
  process = start_filter()
  process.stdin.write(POLLED + b"step 8\n")
  process.stdin.flush()
  assert read_for(process, stderr_filter.HOLD_S + 1.5) == POLLED + b"step 8\n"
  out, _ = process.communicate(b"step 9\n")
  assert out == b"step 9\n"
