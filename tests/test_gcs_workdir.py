"""A workdir in a bucket, as on a Cloud TPU VM, against a real GCS emulator (tests/gcs_emulator.py):
train with --workdir=gs://..., killed with kill -9 mid-run, resumed, then eval and predict on it.
Nothing a run logged up to its last checkpoint is lost, no start overwrites another's records,
and the result is the uninterrupted run's."""
import json
import re
import signal

import pytest

from artstyle_jax.data import sources
from artstyle_jax.storage import metric_writer
from helpers import assert_trees_equal
from helpers import restored_state
from helpers import run_program
from helpers import run_program_killed_after_step
from helpers import tiny_train_flags

NUM_STEPS, CHECKPOINT_EVERY, KILLED_AFTER = 6, 2, 5


def train_flags(workdir, data):
  """tiny_train_flags, every step logged, checkpoints every 2 steps saved asynchronously (the
  config's default)."""
  return tiny_train_flags(workdir, data, f"--config.num_steps={NUM_STEPS}", "--config.log_every_steps=1",
                          f"--config.checkpoint_every_steps={CHECKPOINT_EVERY}", "--config.async_checkpointing=True")


@pytest.fixture(scope="module")
def bucket_run(gcs, synthetic_data, tmp_path_factory):
  """(the run's objects as files of the emulator, stderr of the resumed start): 6 steps trained
  into gs://BUCKET/run, killed with SIGKILL right after logging step 5 (checkpoint 4 saved or
  still being written), then started again to the end; then eval and predict on it."""
  bucket = gcs.new_bucket("artstyle-run")
  workdir = f"{bucket}/run"
  killed = run_program_killed_after_step("train", KILLED_AFTER, *train_flags(workdir, synthetic_data), env=gcs.env,
                                         timeout=300)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  resumed = run_program("train", *train_flags(workdir, synthetic_data), env=gcs.env, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  evaluated = run_program("eval", f"--workdir={workdir}", env=gcs.env, timeout=300)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  data_dir, name = synthetic_data
  image = tmp_path_factory.mktemp("query") / "query.jpg"
  image.write_bytes(sources.open_split(name, data_dir, "test")[0]["image"])
  predicted = run_program("predict", f"--workdir={workdir}", "--top_k=2", str(image), env=gcs.env, timeout=300)
  assert predicted.returncode == 0, predicted.stderr[-3000:]
  assert predicted.stdout.splitlines()[0] == str(image) and len(predicted.stdout.splitlines()) == 3
  return gcs.root / "artstyle-run" / "run", resumed.stderr


def steps_of(path):
  return [json.loads(line)["step"] for line in path.read_text().splitlines() if "loss" in json.loads(line)]


def test_every_record_of_both_starts_is_in_the_bucket_once(bucket_run):
  """The killed start's object holds steps 1-4, each once: all it logged up to its last
  checkpoint (the record of step 5, logged after it, was lost with the process); the resumed
  start's object holds each step from the checkpoint it resumed from to the end, once."""
  objects, stderr = bucket_run
  resumed_from = int(re.search(r"Resumed from the checkpoint of step (\d+)", stderr).group(1))
  assert resumed_from in (2, 4)  # 4 unless the kill came before its asynchronous save was committed
  assert sorted(path.name for path in objects.glob("metrics*")) == ["metrics-001.jsonl", "metrics-002.jsonl"]
  assert steps_of(objects / "metrics-001.jsonl") == [1, 2, 3, 4]
  assert steps_of(objects / "metrics-002.jsonl") == list(range(resumed_from + 1, NUM_STEPS + 1))


def test_curves_tensorboard_and_eval_outputs_are_in_the_bucket(bucket_run):
  """curves.png (drawn after the last start's writer closed), TensorBoard's event files of
  both starts, eval's results and the head predict read."""
  objects, _ = bucket_run
  assert (objects / "curves.png").read_bytes().startswith(b"\x89PNG")
  assert len(list((objects / "tb").glob("events.out.tfevents*"))) == 2
  for name in ("knn.json", "linear_fast.json", "linear_head.npz", "knn_confusion.png"):
    assert (objects / "eval" / name).exists(), name
  assert json.loads((objects / "eval" / "linear_fast.json").read_text())["step"] == NUM_STEPS


def test_the_resumed_bucket_run_ends_in_the_uninterrupted_local_runs_state(bucket_run, synthetic_data, tmp_path):
  """The same 6 steps run straight into a local workdir: every array of the final train state
  identical to the bucket's checkpoint 6."""
  local = tmp_path / "straight"
  straight = run_program("train", *train_flags(local, synthetic_data), timeout=300)
  assert straight.returncode == 0, straight.stderr[-3000:]
  objects, _ = bucket_run
  assert_trees_equal(restored_state(objects, NUM_STEPS), restored_state(local, NUM_STEPS))
  assert steps_of(local / metric_writer.START_FILE.format(start=1)) == list(range(1, NUM_STEPS + 1))
