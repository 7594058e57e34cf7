"""Runs the launch scripts with recording stand-ins for gcloud, git, mkdir and python3 first on
PATH, so no test can reach Google Cloud or install anything; a dry run must leave the record
empty."""
import os
import subprocess

from helpers import REPO

TPU = REPO / "launch" / "tpu.sh"
GPU = REPO / "launch" / "gpu.sh"
GPU_CHECK_SCRIPT = REPO / "launch" / "gpu_check.sh"
RESTARTING = REPO / "launch" / "restarting.sh"
# What gpu.sh runs to check that JAX sees the GPU.
GPU_CHECK = f"{REPO}/.venv/bin/python -c 'import jax; print(jax.devices()); assert jax.default_backend() == \"gpu\", \"JAX sees no GPU\"'"

# Appends its program name and arguments (unit- and record-separated) to $LAUNCH_TEST_CALLS.
RECORDER = """#!/usr/bin/env bash
{ printf '%s' "${0##*/}"; printf '\\037%s' "$@"; printf '\\036'; } >> "$LAUNCH_TEST_CALLS"
"""
FAKED_PROGRAMS = ("gcloud", "git", "mkdir", "python3")


class Launch:
  """Runs a launch script with the recording stand-ins; returns its result and the calls."""

  def __init__(self, tmp_path):
    self.tmp_path = tmp_path
    self.calls_file = tmp_path / "calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in FAKED_PROGRAMS:
      write_executable(bin_dir / name, RECORDER)
    self.env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                    LAUNCH_TEST_CALLS=str(self.calls_file))

  def __call__(self, script, *args):
    result = subprocess.run([str(script), *args], env=self.env, cwd=self.tmp_path,
                            capture_output=True, text=True, timeout=30)
    calls = self.calls()
    self.calls_file.unlink(missing_ok=True)
    if "--dry-run" in args:
      assert calls == [], f"--dry-run ran {calls}"
    return result, calls

  def calls(self):
    if not self.calls_file.exists():
      return []
    records = self.calls_file.read_text().split("\036")[:-1]
    return [record.split("\037") for record in records]

  def dry_run(self, script, *args):
    """The printed lines of a successful dry run."""
    result, _ = self(script, *args, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout.splitlines()


def write_executable(path, text):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  path.chmod(0o755)
