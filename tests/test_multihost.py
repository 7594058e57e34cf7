"""Multi-process training on this machine: two processes of two CPU devices each, joined by
jax.distributed over 127.0.0.1 (gloo collectives), train exactly as one process of four devices."""
import json
import os
import subprocess

import jax
import numpy as np
import orbax.checkpoint as ocp

from artstyle_jax.storage import metric_writer
from helpers import reserved_port
from helpers import start_program
from helpers import tiny_train_flags
from helpers import wait_all

NUM_STEPS = 4


def start_train(workdir, data, log_path, num_devices, *flags):
  """Starts the training program on `num_devices` CPU devices; its output goes to `log_path`."""
  # No LLVM optimisation and the grouped-conv form of the depthwise convolutions (tiny_train_flags
  # gives it): the same functions, each compiling several times faster on XLA:CPU; every run here
  # is compiled alike.
  env = {"JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={num_devices} --xla_backend_optimization_level=0"}
  flags = tiny_train_flags(workdir, data, f"--config.num_steps={NUM_STEPS}", "--config.log_every_steps=1",
                           "--config.async_checkpointing=False", *flags)
  with open(log_path, "w") as log:
    return start_program("train", *flags, env=env, stdout=log, stderr=subprocess.STDOUT)


def logged_losses(workdir):
  return [(r["step"], r["loss"]) for r in metric_writer.read_records(workdir) if "loss" in r]


def checkpointed_state(workdir, step):
  """The checkpoint's train state as arrays on one local device, whatever topology wrote it."""
  checkpointer = ocp.StandardCheckpointer()
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                        checkpointer.metadata(path).item_metadata)
  return checkpointer.restore(path, target)


def test_two_processes_of_two_devices_train_as_one_process_of_four(tmp_path, synthetic_data):
  """4 steps of the tiny config with the global batch over 2 processes x 2 devices (per-host data
  shards, gloo collectives) equal 4 steps on 1 process x 4 devices: the same loss at every step,
  logged once, by process 0; the same final checkpoint (parameters, teachers, optimiser state,
  queue), written jointly by both processes."""
  single_dir, multi_dir = tmp_path / "single", tmp_path / "multi"
  logs = [tmp_path / "single.log", tmp_path / "process_0.log", tmp_path / "process_1.log"]
  with reserved_port() as port:  # held until the run ends: no other process can take it first
    processes = [start_train(single_dir, synthetic_data, logs[0], 4)]
    processes += [start_train(multi_dir, synthetic_data, logs[1 + i], 2, f"--coordinator_address=127.0.0.1:{port}",
                              "--num_processes=2", f"--process_id={i}") for i in range(2)]
    wait_all(processes, timeout=420)
  outputs = [log.read_text() for log in logs]
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-3000:]

  single_losses, multi_losses = logged_losses(single_dir), logged_losses(multi_dir)
  assert [step for step, _ in multi_losses] == list(range(1, NUM_STEPS + 1))
  np.testing.assert_allclose([loss for _, loss in multi_losses], [loss for _, loss in single_losses], rtol=1e-5)
  assert f"step {NUM_STEPS}/{NUM_STEPS}" in outputs[1] and f"step {NUM_STEPS}/" not in outputs[2]
  with open(multi_dir / "config.json") as f:
    assert json.load(f)["num_steps"] == NUM_STEPS

  expected, got = checkpointed_state(single_dir, NUM_STEPS), checkpointed_state(multi_dir, NUM_STEPS)
  assert jax.tree.structure(expected) == jax.tree.structure(got)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(got)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))
