"""launch/gpu.sh's memory settings and launch/gpu_check.sh: the commands --dry-run prints, the
argument errors, and that a check runs every stage after a failure (with the recording
stand-ins of tests/launch_recorder.py, so nothing is installed or run)."""
import os
import shlex

from helpers import REPO
import pytest

from launch_recorder import GPU
from launch_recorder import GPU_CHECK
from launch_recorder import GPU_CHECK_SCRIPT
from launch_recorder import RECORDER
from launch_recorder import write_executable


def test_gpu_shares_the_gpu_unless_told_to_take_a_fraction_of_its_memory(launch):
  """Allocation as used by default, so eval can run beside training; --mem-fraction takes that
  share up front; a setting of the caller's own is left as it is."""
  assert launch.dry_run(GPU, "--skip-install", "--data-dir=/d", "--mem-fraction=0.6")[:2] == [
      "export XLA_PYTHON_CLIENT_PREALLOCATE=true", "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.6"]
  launch.env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = ".45"
  assert launch.dry_run(GPU, "--skip-install", "--data-dir=/d")[0] == GPU_CHECK


def test_gpu_check_installs_cuda_and_pytest_then_tests_benchmarks_and_reports_in_one_json(launch):
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
      f"{venv_python} -m pytest -q {REPO}/tests/test_export.py --junitxml=gpu_check_runs/export_tests.xml",
      f"{venv_python} -m artstyle_jax.bench suite --platform=accelerator --out=gpu_check_runs/suite.jsonl",
      f"{venv_python} -m artstyle_jax.bench.check_report --out=gpu_check.json"
      " --tests=gpu=gpu_check_runs/gpu_tests.xml --tests=export=gpu_check_runs/export_tests.xml"
      " --suite=gpu_check_runs/suite.jsonl"]


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
