"""launch/gpu.sh's memory settings and launch/gpu_check.sh: the commands --dry-run prints, the
argument errors, its restarts of training, and that a check runs every stage after a failure (with the recording
stand-ins of tests/launch_recorder.py, so nothing is installed or run)."""
import os
import shlex
import signal
import subprocess

import pytest

from helpers import REPO
from launch_recorder import GPU
from launch_recorder import GPU_CHECK
from launch_recorder import GPU_CHECK_SCRIPT
from launch_recorder import RECORDER
from launch_recorder import RESTARTING
from launch_recorder import write_executable


def test_gpu_shares_the_gpu_unless_told_to_take_a_fraction_of_its_memory(launch):
  """Allocation as used by default, so eval can run beside training; --mem-fraction takes that
  share up front; a setting of the caller's own is left as it is."""
  assert launch.dry_run(GPU, "--skip-install", "--data-dir=/d", "--mem-fraction=0.6")[:2] == [
      "export XLA_PYTHON_CLIENT_PREALLOCATE=true", "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.6"]
  launch.env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = ".45"
  assert launch.dry_run(GPU, "--skip-install", "--data-dir=/d")[0] == GPU_CHECK


def test_gpu_check_installs_cuda_and_pytest_then_tests_benchmarks_estimates_and_reports_in_one_json(launch):
  venv_python = f"{REPO}/.venv/bin/python"
  assert launch.dry_run(GPU_CHECK_SCRIPT) == [
      "export XLA_PYTHON_CLIENT_PREALLOCATE=false",
      "python3 -c 'import sys; assert sys.version_info >= (3, 11),"
      " \"JAX needs Python 3.11+: pass --python\"'",
      f"python3 -m venv {REPO}/.venv",
      f"{venv_python} -m pip install --upgrade pip",
      f"{venv_python} -m pip install -e '{REPO}[cuda]' pytest -c {REPO}/launch/constraints.txt",
      GPU_CHECK,
      "mkdir -p gpu_check_runs",
      f"env JAX_PLATFORMS=cuda,cpu {venv_python} -m pytest -q {REPO}/tests/test_gpu.py"
      " --junitxml=gpu_check_runs/gpu_tests.xml",
      f"{venv_python} -m pytest -q {REPO}/tests/test_device_programs.py --junitxml=gpu_check_runs/export_tests.xml",
      f"{venv_python} -m artstyle_jax.bench suite --platform=accelerator --out=gpu_check_runs/suite.jsonl",
      *[f"{venv_python} -m artstyle_jax.bench cost --config={REPO}/configs/paper.py --config.init=random"
        f" --config.model.dtype=bfloat16 --config.model.remat={remat} --at_hand --batch_sizes=16"
        f" --out=gpu_check_runs/cost_remat_{remat}.json" for remat in ("False", "True")],
      f"{venv_python} -m artstyle_jax.bench.check_report --out=gpu_check.json"
      " --tests=gpu=gpu_check_runs/gpu_tests.xml --tests=export=gpu_check_runs/export_tests.xml"
      " --suite=gpu_check_runs/suite.jsonl --estimate=gpu_check_runs/cost_remat_False.json"
      " --estimate=gpu_check_runs/cost_remat_True.json"]


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unknown flag '--bogus'"),
    (["--out=check.txt"], "--out must name a .json file, got 'check.txt'"),
    (["--skip-install", "--venv=/nonexistent/venv"], "--skip-install, but /nonexistent/venv/bin/python does not exist"),
])
def test_gpu_check_argument_errors_exit_2_before_running_anything(launch, args, message):
  result, calls = launch(GPU_CHECK_SCRIPT, *args)
  assert result.returncode == 2 and message in result.stderr.splitlines()[0] and calls == []


def test_gpu_check_runs_every_stage_after_a_failure_and_exits_1(launch, tmp_path):
  """A failing GPU test run does not stop the export test, the suite or the report."""
  venv = tmp_path / "venv"
  failing_tests = RECORDER + 'if [[ " $* " == *test_gpu.py* ]]; then exit 1; fi\n'
  write_executable(venv / "bin" / "python", failing_tests)
  write_executable(tmp_path / "bin" / "env", RECORDER + 'shift; exec "$@"\n')
  args = ["--skip-install", f"--venv={venv}", f"--out={tmp_path / 'check.json'}"]
  printed = launch.dry_run(GPU_CHECK_SCRIPT, *args)
  result, calls = launch(GPU_CHECK_SCRIPT, *args)
  assert result.returncode == 1
  expected = []
  for line in printed[1:]:
    argv = shlex.split(line)
    expected.append([os.path.basename(argv[0])] + argv[1:])
    if argv[0] == "env":  # env's recorder, then the program it starts
      expected.append([os.path.basename(argv[2])] + argv[3:])
  assert calls == expected


# A venv's python for gpu.sh: recorded; as the trainer, it exits with the next status of the
# file ./train_statuses (one per line), as an attempt of training would.
TRAINING_WITH_STATUSES = RECORDER + """if [[ " $* " == *" artstyle_jax.train "* ]]; then
  read -r status < train_statuses
  sed -i 1d train_statuses
  exit "$status"
fi
"""


@pytest.mark.parametrize("restarts, statuses, trained, status", [
    (3, [75, 143, 0], 3, 0),  # a lost peer, then a SIGTERM before the handler, then done: evaluated
    (3, [1], 1, 1),  # a user error: never retried
    (3, [75, 75, 75, 75, 0], 4, 75),  # bounded: the first and three restarts
    (0, [75, 0], 1, 75),
])
def test_gpu_restarts_training_on_75_and_143_a_bounded_number_of_times(launch, tmp_path, restarts, statuses,
                                                                       trained, status):
  """Training exiting 75 (restart me) or 143 (SIGTERM before it could save) runs again, at most
  --restarts more times, each attempt counted on stderr; any other status ends it; eval follows a
  training that ended with 0 only."""
  venv = tmp_path / "venv"
  write_executable(venv / "bin" / "python", TRAINING_WITH_STATUSES)
  (tmp_path / "train_statuses").write_text("".join(f"{s}\n" for s in statuses))
  result, calls = launch(GPU, "--skip-install", f"--venv={venv}", "--data-dir=/", f"--restarts={restarts}")
  assert result.returncode == status
  programs = [call[2] for call in calls if call[1] == "-m"]
  assert programs == ["artstyle_jax.train"] * trained + (["artstyle_jax.eval"] if status == 0 else [])
  attempts = [line for line in result.stderr.splitlines() if line.startswith("gpu.sh: attempt ")]
  assert attempts == [f"gpu.sh: attempt {i} of {restarts + 1}" for i in range(1, trained + 1)]


def test_a_sigterm_to_the_restarting_launcher_reaches_the_job_and_ends_the_loop(tmp_path):
  """launch/restarting.sh passes a SIGTERM (tpu.sh stop, a preemption notice) to its job, which
  saves and exits 0 here, and does not start it again."""
  job = "trap 'echo saved; kill $!; exit 0' TERM; echo started; sleep 30 > /dev/null 2>&1 & wait"
  process = subprocess.Popen([str(RESTARTING), "3", "bash", "-c", job], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  assert process.stdout.readline() == "started\n"
  process.send_signal(signal.SIGTERM)
  stdout, stderr = process.communicate(timeout=10)
  assert process.returncode == 0
  assert stdout == "saved\n"
  assert stderr.count("attempt ") == 1
