"""A workdir in a bucket whose store fails one request in ten (503, or 429 every other time):
the GCS emulator behind tests/fault_proxy.py. The clients retry with backoff, quietly: train and
eval succeed, every step logged once, with no traceback in their output."""
import json

import fault_proxy
import gcs_emulator
from helpers import run_program
from helpers import tiny_train_flags


def test_train_and_eval_through_a_failing_store_succeed_without_a_traceback(gcs, synthetic_data):
  """4 steps (checkpoints 2 and 4, asynchronous) into gs://BUCKET/run, then eval on it, every
  request of both through the proxy: both exit 0 with no traceback while the proxy fails requests
  with 503 and 429; metrics hold steps 1-4 once each, and eval's results are in the bucket."""
  bucket = gcs.new_bucket("faulty-store")
  workdir = f"{bucket}/run"
  flags = tiny_train_flags(workdir, synthetic_data, "--config.num_steps=4", "--config.checkpoint_every_steps=2",
                           "--config.log_every_steps=1")
  with fault_proxy.running(gcs.url) as (url, injected):
    env = gcs_emulator.emulator_env(url)
    trained = run_program("train", *flags, env=env, timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]
    evaluated = run_program("eval", f"--workdir={workdir}", env=env, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert {503, 429} <= set(injected)
  for result in (trained, evaluated):
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
  run_dir = gcs.root / "faulty-store" / "run"
  records = [json.loads(line) for path in run_dir.glob("metrics-*.jsonl") for line in path.read_text().splitlines()]
  assert sorted(r["step"] for r in records if "loss" in r) == [1, 2, 3, 4]
  assert (run_dir / "eval" / "knn.json").exists()
