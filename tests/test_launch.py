"""The launch scripts (launch/tpu.sh, launch/gpu.sh): the exact commands --dry-run prints, the
argument errors, and that a real run executes exactly the printed commands.

Every run puts recording stand-ins for gcloud, git, mkdir and python3 first on PATH, so no test
can reach Google Cloud or install anything; a dry run must leave the record empty.
"""
import os
import shlex
import shutil
import subprocess
import time

import pytest

from helpers import REPO
from launch_recorder import GPU
from launch_recorder import GPU_CHECK
from launch_recorder import RECORDER
from launch_recorder import TPU
from launch_recorder import write_executable

Q_REPO = shlex.quote(str(REPO))
VM = ["--name=art-pod", "--zone=us-central2-b"]
# What every worker runs after installing: it joins the slice as the programs do, then prints its
# process index, the process count, its local and the global device count.
DEVICE_REPORT = ("from artstyle_jax.runtime import multihost; multihost.start(); import jax;"
                 " print(jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())")


def test_shell_quoting_is_pythons_shlex_quote_and_round_trips():
  words = ["plain", "", "a b", "it's", "$HOME", "--x=(0.5, 0.5)", "tab\there", "new\nline",
           "naïve", "*", "~/x", '"q"', "a'b'c", "-_@%+=:,./", "gs://b/runs/x"]
  result = subprocess.run(
      ["bash", "-c", f"source {Q_REPO}/launch/lib.sh; shell_join \"$@\"", "_", *words],
      capture_output=True, text=True, check=True, timeout=30)
  assert result.stdout == shlex.join(words) + "\n"
  assert shlex.split(result.stdout) == words


def test_create_defaults_to_a_v4_32_slice_with_the_jax_runtime_and_autocheckpoint(launch):
  assert launch.dry_run(TPU, "create", *VM) == [
      "gcloud alpha compute tpus tpu-vm create art-pod --zone=us-central2-b --accelerator-type=v4-32"
      " --version=tpu-ubuntu2204-base --autocheckpoint-enabled"]


@pytest.mark.parametrize("accelerator_type, runtime_version, autocheckpoint", [
    ("v3-32", "tpu-ubuntu2204-base", True),
    ("v5litepod-16", "v2-alpha-tpuv5-lite", True),
    ("v5p-64", "v2-alpha-tpuv5", False),
    ("v6e-8", "v2-alpha-tpuv6e", False),
])
def test_create_picks_the_runtime_version_and_autocheckpoint_for_the_accelerator_type(
    launch, accelerator_type, runtime_version, autocheckpoint):
  """Autocheckpoint (gcloud's alpha track) where Cloud TPU offers it: v2 to v4 and v5e."""
  track, flag = ("alpha ", " --autocheckpoint-enabled") if autocheckpoint else ("", "")
  assert launch.dry_run(TPU, "create", *VM, f"--accelerator-type={accelerator_type}") == [
      f"gcloud {track}compute tpus tpu-vm create art-pod --zone=us-central2-b"
      f" --accelerator-type={accelerator_type} --version={runtime_version}{flag}"]


def test_create_spot_vm_with_explicit_runtime_version_in_a_project(launch):
  assert launch.dry_run(TPU, "create", "--name", "art-pod", "--zone", "europe-west4-a",
                        "--accelerator-type", "v5p-32", "--runtime-version", "v2-alpha-tpuv5",
                        "--spot", "--project", "my-project") == [
      "gcloud compute tpus tpu-vm create art-pod --zone=europe-west4-a --accelerator-type=v5p-32"
      " --version=v2-alpha-tpuv5 --spot --project=my-project"]


def test_install_ships_the_committed_head_and_installs_jax_tpu_with_python_3_11_on_every_worker(
    launch):
  assert launch.dry_run(TPU, "install", *VM) == [
      f"mkdir -p {REPO}/build",
      f"git -C {REPO} archive --format=tar.gz --prefix=artstyle-jax/"
      f" --output={REPO}/build/artstyle-jax.tar.gz HEAD",
      f"gcloud compute tpus tpu-vm scp {REPO}/build/artstyle-jax.tar.gz"
      " art-pod:artstyle-jax.tar.gz --zone=us-central2-b --worker=all",
      "gcloud compute tpus tpu-vm ssh art-pod --zone=us-central2-b --worker=all --command"
      " 'set -e; sudo apt-get -qq -o DPkg::Lock::Timeout=600 update;"
      " sudo apt-get -qq -o DPkg::Lock::Timeout=600 install -y python3.11 python3.11-venv;"
      " rm -rf artstyle-jax; tar -xzf artstyle-jax.tar.gz; python3.11 -m venv artstyle-venv;"
      " artstyle-venv/bin/pip install -q --upgrade pip;"
      " artstyle-venv/bin/pip install -q -e \"./artstyle-jax[tpu]\" gcsfs -c artstyle-jax/launch/constraints.txt;"
      f" artstyle-venv/bin/python -c \"{DEVICE_REPORT}\"'"]


def test_install_from_a_repository_clones_it_on_every_worker_with_the_chosen_python(launch):
  assert launch.dry_run(TPU, "install", *VM, "--repo=https://example.com/me/artstyle-jax.git",
                        "--ref=v0.1.0", "--python=python3.12", "--project=my-project") == [
      "gcloud compute tpus tpu-vm ssh art-pod --zone=us-central2-b --worker=all --command"
      " 'set -e; sudo apt-get -qq -o DPkg::Lock::Timeout=600 update;"
      " sudo apt-get -qq -o DPkg::Lock::Timeout=600 install -y python3.12 python3.12-venv;"
      " rm -rf artstyle-jax; git clone --quiet https://example.com/me/artstyle-jax.git"
      " artstyle-jax; git -C artstyle-jax checkout --quiet v0.1.0;"
      " python3.12 -m venv artstyle-venv; artstyle-venv/bin/pip install -q --upgrade pip;"
      " artstyle-venv/bin/pip install -q -e \"./artstyle-jax[tpu]\" gcsfs -c artstyle-jax/launch/constraints.txt;"
      f" artstyle-venv/bin/python -c \"{DEVICE_REPORT}\"' --project=my-project"]


def background(job, job_args, workdir, restarts=3):
  """The remote command that tpu.sh runs on every worker to start JOB in the background (train
  under launch/restarting.sh, with `restarts`), and beside it the watcher that copies its log
  into WORKDIR/logs every 5 minutes and at its end."""
  runner = "../artstyle-venv/bin/python"
  if job == "train":
    runner = f"bash launch/restarting.sh {restarts} {runner}"
  copy = f"gcloud storage cp --quiet ../artstyle-{job}.log {workdir}/logs/{job}-$(hostname).log"
  watcher = f"while ! timeout 300 tail --pid=\"$(cat ../artstyle-{job}.pid)\" -f /dev/null; do {copy}; done; {copy}"
  return (
      f"set -e; cd artstyle-jax; if kill -0 \"$(cat ../artstyle-{job}.pid 2>/dev/null)\""
      f" 2>/dev/null; then echo \"$(hostname): {job} is already running\" >&2; exit 1; fi;"
      f" nohup {runner} {job_args} >> ../artstyle-{job}.log 2>&1"
      f" < /dev/null & echo $! > ../artstyle-{job}.pid;"
      f" nohup bash -c {shlex.quote(watcher)} > /dev/null 2>&1 < /dev/null &"
      f" echo \"$(hostname): {job} started, log ~/artstyle-{job}.log\"")


SSH_ALL = "gcloud compute tpus tpu-vm ssh art-pod --zone=us-central2-b --worker=all --command "


def test_train_starts_the_paper_config_on_all_workers_with_workdir_and_data_in_the_bucket(
    launch):
  [line] = launch.dry_run(TPU, "train", *VM, "--bucket=gs://my-bucket/")
  assert line == SSH_ALL + shlex.quote(
      background("train", "-m artstyle_jax.train --config=configs/paper.py"
                 " --workdir=gs://my-bucket/runs/art-pod"
                 " --config.dataset.data_dir=gs://my-bucket/tensorflow_datasets",
                 "gs://my-bucket/runs/art-pod"))


def test_train_passes_workdir_data_dir_config_restarts_and_overrides_through_quoted(launch):
  [line] = launch.dry_run(
      TPU, "train", *VM, "--workdir", "gs://runs/exp1", "--data-dir", "gs://data/tfds",
      "--config", "configs/tiny.py", "--restarts=5", "--config.batch_size=256",
      "--config.views.student.mean=(0.5, 0.5, 0.5)", "--config.note=it's")
  job_args = shlex.join([
      "-m", "artstyle_jax.train", "--config=configs/tiny.py", "--workdir=gs://runs/exp1",
      "--config.dataset.data_dir=gs://data/tfds", "--config.batch_size=256",
      "--config.views.student.mean=(0.5, 0.5, 0.5)", "--config.note=it's"])
  assert job_args.endswith(" '--config.views.student.mean=(0.5, 0.5, 0.5)' '--config.note=it'\"'\"'s'")
  assert line == SSH_ALL + shlex.quote(background("train", job_args, "gs://runs/exp1", restarts=5))
  assert shlex.split(line)[-1] == background("train", job_args, "gs://runs/exp1", restarts=5)


def test_eval_starts_the_linear_probe_on_all_workers(launch):
  assert launch.dry_run(TPU, "eval", *VM, "--bucket=my-bucket") == [SSH_ALL + shlex.quote(
      background("eval", "-m artstyle_jax.eval --workdir=gs://my-bucket/runs/art-pod", "gs://my-bucket/runs/art-pod"))]
  assert launch.dry_run(TPU, "eval", *VM, "--workdir=gs://runs/exp1", "--step=5000") == [SSH_ALL + shlex.quote(
      background("eval", "-m artstyle_jax.eval --workdir=gs://runs/exp1 --step=5000", "gs://runs/exp1"))]


def test_logs_follows_the_train_log_of_worker_0_or_the_chosen_job_and_worker(launch):
  assert launch.dry_run(TPU, "logs", *VM) == [
      "gcloud compute tpus tpu-vm ssh art-pod --zone=us-central2-b --worker=0"
      " --command 'tail -n 100 -F artstyle-train.log'"]
  assert launch.dry_run(TPU, "logs", *VM, "--job=eval", "--worker=3") == [
      "gcloud compute tpus tpu-vm ssh art-pod --zone=us-central2-b --worker=3"
      " --command 'tail -n 100 -F artstyle-eval.log'"]


def test_stop_kills_the_job_by_its_pid_file_on_all_workers(launch):
  assert launch.dry_run(TPU, "stop", *VM) == [
      "gcloud compute tpus tpu-vm ssh art-pod --zone=us-central2-b --worker=all --command"
      " 'if kill \"$(cat artstyle-train.pid 2>/dev/null)\" 2>/dev/null;"
      " then echo \"$(hostname): train stopped\";"
      " else echo \"$(hostname): train was not running\"; fi; rm -f artstyle-train.pid'"]


def test_check_measures_the_paper_steps_beside_their_estimates_on_one_worker_and_copies_the_json_here(launch):
  """The suite, bench cost --at_hand for the suite's two paper steps and check_report in one ssh
  session (each stage after a failure too), then the report copied back."""
  python = "../artstyle-venv/bin/python"
  estimate = ("{python} -m artstyle_jax.bench cost --config=configs/paper.py --config.init=random"
              " --config.model.dtype=bfloat16 --config.model.remat={remat} --at_hand --batch_sizes=16"
              " --out=../artstyle-check/cost_remat_{remat}.json")
  remote = "; ".join([
      "cd artstyle-jax || exit 1", "mkdir -p ../artstyle-check",
      f"{python} -m artstyle_jax.bench suite --platform=accelerator --out=../artstyle-check/suite.jsonl",
      estimate.format(python=python, remat="False"), estimate.format(python=python, remat="True"),
      f"{python} -m artstyle_jax.bench.check_report --out=../artstyle-check.json --suite=../artstyle-check/suite.jsonl"
      " --estimate=../artstyle-check/cost_remat_False.json --estimate=../artstyle-check/cost_remat_True.json"])
  assert launch.dry_run(TPU, "check", *VM, "--worker=2", "--out=v5e.json") == [
      "gcloud compute tpus tpu-vm ssh art-pod --zone=us-central2-b --worker=2 --command " + shlex.quote(remote),
      "gcloud compute tpus tpu-vm scp art-pod:artstyle-check.json v5e.json --zone=us-central2-b --worker=2"]
  assert launch.dry_run(TPU, "check", *VM)[1].split()[-3:] == ["tpu_check.json", "--zone=us-central2-b", "--worker=0"]


def test_delete_asks_gcloud_for_confirmation_unless_yes(launch):
  assert launch.dry_run(TPU, "delete", *VM) == [
      "gcloud compute tpus tpu-vm delete art-pod --zone=us-central2-b"]
  assert launch.dry_run(TPU, "delete", *VM, "--yes") == [
      "gcloud compute tpus tpu-vm delete art-pod --zone=us-central2-b --quiet"]


def test_remote_train_command_runs_in_the_background_once_and_stop_ends_it(launch, tmp_path):
  """Plays a worker: the command tpu.sh sends over ssh, run by bash in the home directory; once
  stop has ended the job, the worker's log is copied into the workdir's logs/ (gcloud storage
  cp, a recording stand-in here)."""
  home = tmp_path / "home"
  (home / "artstyle-jax" / "launch").mkdir(parents=True)
  for script in ("restarting.sh", "lib.sh"):
    shutil.copy(REPO / "launch" / script, home / "artstyle-jax" / "launch" / script)
  write_executable(home / "bin" / "gcloud", RECORDER)
  copies = home / "gcloud-calls"
  write_executable(home / "artstyle-venv" / "bin" / "python",
                   "#!/usr/bin/env bash\necho training\n"
                   "printf '%s\\n' \"$PWD\" \"$@\" > ../argv.part\nmv ../argv.part ../argv\n"
                   "exec sleep 60\n")
  override = "--config.note=it's (1, 2)"
  [train_line] = launch.dry_run(TPU, "train", *VM, "--bucket=my-bucket", override)
  [stop_line] = launch.dry_run(TPU, "stop", *VM)

  def on_worker(line):
    return subprocess.run(["bash", "-c", shlex.split(line)[-1]], cwd=home, capture_output=True,
                          text=True, timeout=30, env=dict(os.environ, HOME=str(home), LAUNCH_TEST_CALLS=str(copies),
                                                          PATH=f"{home / 'bin'}{os.pathsep}{os.environ['PATH']}"))

  started = on_worker(train_line)
  assert started.returncode == 0, started.stderr
  assert started.stdout.endswith(": train started, log ~/artstyle-train.log\n")
  pid = int((home / "artstyle-train.pid").read_text())
  try:
    deadline = time.monotonic() + 10
    while not (home / "argv").exists() and time.monotonic() < deadline:
      time.sleep(0.05)
    assert (home / "argv").read_text().splitlines() == [
        str(home / "artstyle-jax"), "-m", "artstyle_jax.train", "--config=configs/paper.py",
        "--workdir=gs://my-bucket/runs/art-pod",
        "--config.dataset.data_dir=gs://my-bucket/tensorflow_datasets", override]
    log = (home / "artstyle-train.log").read_text().splitlines()
    assert log[1:] == ["restarting.sh: attempt 1 of 4", "training"], log

    again = on_worker(train_line)
    assert again.returncode == 1
    assert again.stderr.endswith(": train is already running\n")
    assert int((home / "artstyle-train.pid").read_text()) == pid
  finally:
    stopped = on_worker(stop_line)
  assert stopped.stdout.endswith(": train stopped\n")
  assert not (home / "artstyle-train.pid").exists()
  assert on_worker(stop_line).stdout.endswith(": train was not running\n")
  deadline = time.monotonic() + 10
  while not (copies.exists() and copies.read_text().endswith("\036")) and time.monotonic() < deadline:
    time.sleep(0.05)
  hostname = subprocess.run(["hostname"], capture_output=True, text=True, check=True).stdout.strip()
  assert copies.read_text() == "\037".join(
      ["gcloud", "storage", "cp", "--quiet", "../artstyle-train.log",
       f"gs://my-bucket/runs/art-pod/logs/train-{hostname}.log"]) + "\036"


@pytest.mark.parametrize("args, message", [
    (["create", "--zone=us-central2-b"], "--name is required (the TPU VM's name)"),
    (["create", "--name=art-pod"], "--zone is required (e.g. us-central2-b)"),
    (["create", "--name=Art_Pod", "--zone=z"], "--name 'Art_Pod' is not a valid TPU name"),
    (["create", *VM, "--accelerator-type=v9-8"],
     "no default runtime version for accelerator type 'v9-8'; pass --runtime-version"),
    (["create", *VM, "--spot=yes"], "--spot takes no value"),
    (["delete", "--name=art-pod", "--zone"], "--zone needs a value"),
    (["delete", *VM, "--bucket=my-bucket"], "--bucket does not apply to 'delete'"),
    (["install", *VM, "--ref=v1"], "--ref needs --repo"),
    (["install", *VM, "--python=/usr/bin/python3"],
     "--python must be python3 or python3.N, not '/usr/bin/python3'"),
    (["train", *VM], "--bucket or --workdir is required"),
    (["train", *VM, "--workdir=gs://runs/x"], "--bucket or --data-dir is required"),
    (["train", *VM, "--bucket=my-bucket", "--workdir=/tmp/run"],
     "--workdir must be a gs:// path: the workers of a pod slice share no disk"),
    (["train", *VM, "--bucket=my-bucket", "--data-dir=~/tensorflow_datasets"],
     "--data-dir must be a gs:// path: the workers of a pod slice share no disk"),
    (["train", *VM, "--bucket=My Bucket"], "--bucket 'My Bucket' is not a bucket name"),
    (["train", *VM, "--bucket=my-bucket", "--config=/home/me/paper.py"],
     "--config must be a path inside the repository (e.g. configs/paper.py)"),
    (["train", *VM, "--bucket=my-bucket", "--config.batch_size"],
     "write config overrides as --config.batch_size=VALUE"),
    (["eval", *VM], "--bucket or --workdir is required"),
    (["train", *VM, "--bucket=my-bucket", "--restarts=-1"],
     "--restarts must be a non-negative integer, not '-1'"),
    (["eval", *VM, "--bucket=my-bucket", "--restarts=2"], "--restarts does not apply to 'eval'"),
    (["eval", *VM, "--bucket=my-bucket", "--step=latest"],
     "--step must be a non-negative integer, not 'latest'"),
    (["logs", *VM, "--worker=all"], "--worker must be a worker index (0, 1, ...), not 'all'"),
    (["logs", *VM, "--job=bench"], "--job must be train or eval, not 'bench'"),
    (["check", *VM, "--out=check.txt"], "--out must name a .json file, got 'check.txt'"),
    (["train", *VM, "--bucket=my-bucket", "--out=a.json"], "--out does not apply to 'train'"),
    (["launch", *VM], "unknown command 'launch'"),
    (["create", *VM, "--acelerator-type=v4-8"], "unknown flag '--acelerator-type=v4-8'"),
])
def test_tpu_argument_errors_exit_2_with_a_clear_message_before_running_anything(
    launch, args, message):
  result, calls = launch(TPU, *args)
  assert result.returncode == 2
  assert result.stdout == ""
  assert message in result.stderr.splitlines()[0]
  assert calls == []


def test_tpu_without_a_command_prints_usage_and_fails(launch):
  result, calls = launch(TPU)
  assert result.returncode == 2
  assert result.stderr.startswith("Usage: launch/tpu.sh COMMAND")
  assert calls == []
  help_text, _ = launch(TPU, "--help")
  assert help_text.returncode == 0
  for command in ("create", "install", "train", "eval", "logs", "stop", "check", "delete"):
    assert f"\n  {command} " in help_text.stdout


def test_gpu_installs_jax_cuda_in_a_venv_checks_the_gpu_then_trains_and_evaluates(launch):
  assert launch.dry_run(GPU, "--data-dir=/data/tfds") == [
      "export XLA_PYTHON_CLIENT_PREALLOCATE=false",
      "python3 -c 'import sys; assert sys.version_info >= (3, 11),"
      " \"JAX needs Python 3.11+: pass --python\"'",
      f"python3 -m venv {REPO}/.venv",
      f"{REPO}/.venv/bin/python -m pip install --upgrade pip",
      f"{REPO}/.venv/bin/python -m pip install -e '{REPO}[cuda]' -c {REPO}/launch/constraints.txt",
      GPU_CHECK,
      f"{REPO}/.venv/bin/python -m artstyle_jax.train --config=configs/paper.py"
      " --workdir=workdir/paper --config.dataset.data_dir=/data/tfds",
      f"{REPO}/.venv/bin/python -m artstyle_jax.eval --workdir=workdir/paper"]


def test_gpu_passes_config_workdir_data_dir_and_overrides_through(launch):
  assert launch.dry_run(
      GPU, "--skip-install", "--venv=/opt/my venv/", "--config=configs/tiny.py",
      "--data-dir", "/data/tfds", "--config.batch_size=64",
      "--config.views.student.mean=(0.5, 0.5, 0.5)") == [
      "export XLA_PYTHON_CLIENT_PREALLOCATE=false",
      "'/opt/my venv/bin/python' -c 'import jax; print(jax.devices());"
      " assert jax.default_backend() == \"gpu\", \"JAX sees no GPU\"'",
      "'/opt/my venv/bin/python' -m artstyle_jax.train --config=configs/tiny.py"
      " --workdir=workdir/tiny --config.dataset.data_dir=/data/tfds --config.batch_size=64"
      " '--config.views.student.mean=(0.5, 0.5, 0.5)'",
      "'/opt/my venv/bin/python' -m artstyle_jax.eval --workdir=workdir/tiny"]
  assert launch.dry_run(GPU, "--skip-install", "--data-dir=gs://b/tfds", "--workdir=runs/a b")[-1] == (
      f"{REPO}/.venv/bin/python -m artstyle_jax.eval '--workdir=runs/a b'")


@pytest.mark.parametrize("args, message", [
    ([], "--data-dir=DIR is required: the TFDS data_dir that holds the config's dataset"),
    (["--data-dir=/d", "--bogus"], "unknown flag '--bogus'"),
    (["--data-dir=/d", "--workdir"], "--workdir needs a value"),
    (["--data-dir=/d", "--config="], "--config needs a value"),
    (["--data-dir=/d", "--config.batch_size"], "write config overrides as --config.batch_size=VALUE"),
    (["--data-dir=/d", "--skip-install=yes"], "--skip-install takes no value"),
    (["--data-dir=/d", "--mem-fraction=1.5"], "--mem-fraction must be in (0, 1), got '1.5'"),
    (["--data-dir=/d", "--restarts=x"], "--restarts must be a non-negative integer, got 'x'"),
    (["--data-dir=/nonexistent/tfds"], "--data-dir=/nonexistent/tfds: no such directory"),
    (["--data-dir=/", "--skip-install", "--venv=/nonexistent/venv"],
     "--skip-install, but /nonexistent/venv/bin/python does not exist"),
])
def test_gpu_argument_errors_exit_2_with_a_clear_message_before_running_anything(
    launch, args, message):
  result, calls = launch(GPU, *args)
  assert result.returncode == 2
  assert result.stdout == ""
  assert message in result.stderr.splitlines()[0]
  assert calls == []


@pytest.mark.parametrize("args", [
    ["create", *VM, "--accelerator-type=v6e-16", "--spot", "--project=p"],
    ["install", *VM],
    ["install", *VM, "--repo=https://example.com/r.git"],
    ["train", *VM, "--bucket=my-bucket", "--config.note=it's"],
    ["eval", *VM, "--bucket=my-bucket", "--step=10"],
    ["logs", *VM, "--worker=1"],
    ["stop", *VM, "--job=eval"],
    ["check", *VM],
    ["delete", *VM, "--yes"],
], ids=lambda args: args[0])
def test_tpu_real_run_executes_exactly_the_dry_run_commands(launch, args):
  printed = launch.dry_run(TPU, *args)
  result, calls = launch(TPU, *args)
  assert result.returncode == 0, result.stderr
  assert calls == [shlex.split(line) for line in printed]
  assert result.stderr.splitlines() == ["+ " + line for line in printed]


def test_gpu_real_run_executes_exactly_the_dry_run_commands(launch, tmp_path):
  """The printed export lines set the environment the commands run in."""
  venv = tmp_path / "venv"
  # The stand-ins also record the memory setting they were started with.
  recorder = RECORDER.replace('"$@"; printf', '"$@" "PREALLOCATE=$XLA_PYTHON_CLIENT_PREALLOCATE"; printf')
  write_executable(venv / "bin" / "python", recorder)
  write_executable(tmp_path / "bin" / "python3", recorder)
  (tmp_path / "tfds").mkdir()
  args = ["--venv", str(venv), f"--data-dir={tmp_path / 'tfds'}", "--config.seed=1"]
  printed = launch.dry_run(GPU, *args)
  result, calls = launch(GPU, *args)
  assert result.returncode == 0, result.stderr
  exports = [line for line in printed if line.startswith("export ")]
  assert exports == ["export XLA_PYTHON_CLIENT_PREALLOCATE=false"]
  expected = [shlex.split(line) for line in printed if not line.startswith("export ")]
  for argv in expected:
    argv[0] = os.path.basename(argv[0])
    argv.append("PREALLOCATE=false")
  assert calls == expected
