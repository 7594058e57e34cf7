"""A workdir in a bucket whose store fails one request in ten (503, or 429 every other time), and
is down for one checkpoint's writes for longer than any client retries: the GCS emulator behind
tests/fault_proxy.py. The clients retry the transient failures with backoff, quietly; the outage
ends train in one error line that names the newest complete checkpoint, which the same command
then resumes from; no output holds a traceback."""
import json
import textwrap

import fault_proxy
import gcs_emulator
from helpers import run_python
from helpers import tiny_train_flags

# The program named by the first argument, with gcsfs's backoff ten times shorter: gcsfs tries a
# request six times, sleeping 1, 2, 4, 8 and 16 s (each plus up to 1 s) before the retries, a
# schedule that no setting of gcsfs or fsspec changes; the outage's file is written twice, so at
# full length the backoff alone costs over a minute. Which failures are retried, how often, and
# what is logged stay gcsfs's own.
FAST_GCSFS_BACKOFF = textwrap.dedent("""
    import asyncio, runpy, sys, types
    from gcsfs import retry
    retry.asyncio = types.SimpleNamespace(sleep=lambda delay: asyncio.sleep(delay / 10))
    sys.argv = sys.argv[1:]
    runpy.run_module(f"artstyle_jax.{sys.argv[0]}", run_name="__main__", alter_sys=True)
""")


def run_program_with_short_backoff(program: str, *args, **kwargs):
  """`python -m artstyle_jax.PROGRAM ARGS` (run_python's keywords), gcsfs's backoff shortened."""
  return run_python("-c", FAST_GCSFS_BACKOFF, program, *args, **kwargs)


def test_a_failing_store_costs_no_traceback_and_an_outage_one_line_and_no_checkpoint(gcs, synthetic_data):
  """6 steps (checkpoints 2, 4 and 6, asynchronous) into gs://BUCKET/run, every request through
  the proxy, while checkpoint 4's metadata file cannot be written: train exits 1 with one
  `error:` line naming step 2 as the last complete checkpoint. The same command again (the
  outage over, the transient failures not) resumes from step 2 and finishes; then eval on it.
  Each start logs each of its steps once, the resumed one steps 3-6; eval's results are in the
  bucket; no traceback anywhere."""
  bucket = gcs.new_bucket("faulty-store")
  workdir = f"{bucket}/run"
  flags = tiny_train_flags(workdir, synthetic_data, "--config.num_steps=6", "--config.checkpoint_every_steps=2",
                           "--config.log_every_steps=1")
  outage = {"on": True}

  def checkpoint_4_metadata(method: str, target: str) -> bool:
    return outage["on"] and method in ("POST", "PUT") and "checkpoints/4/_CHECKPOINT_METADATA" in target

  with fault_proxy.running(gcs.url, checkpoint_4_metadata) as (url, injected):
    env = gcs_emulator.emulator_env(url)
    failed = run_program_with_short_backoff("train", *flags, env=env, timeout=600)
    outage["on"] = False
    resumed = run_program_with_short_backoff("train", *flags, env=env, timeout=300)
    evaluated = run_program_with_short_backoff("eval", f"--workdir={workdir}", env=env, timeout=300)
  assert failed.returncode == 1, failed.stderr[-3000:]
  errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "the last complete checkpoint is step 2" in errors[0], failed.stderr[-3000:]
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resumed from the checkpoint of step 2" in resumed.stderr + resumed.stdout
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert {503, 429} <= set(injected)
  for result in (failed, resumed, evaluated):
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
  run_dir = gcs.root / "faulty-store" / "run"
  steps_per_start = [[json.loads(line)["step"] for line in path.read_text().splitlines() if "loss" in json.loads(line)]
                     for path in sorted(run_dir.glob("metrics-*.jsonl"))]
  assert steps_per_start[-1] == [3, 4, 5, 6]
  assert all(len(steps) == len(set(steps)) for steps in steps_per_start)
  assert (run_dir / "eval" / "knn.json").exists()
