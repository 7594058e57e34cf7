"""The step gives the same result on 8, 2 and 1 devices, and with FSDP-sharded parameters.

tests/conftest.py gives this process 8 virtual CPU devices.
"""
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from artstyle_jax.method import config_lib
from artstyle_jax.method import optim
from artstyle_jax.method import sharding
from artstyle_jax.method import step
from artstyle_jax.models import convnext
from helpers import PLAIN_COSINE
from helpers import small_step_config

GLOBAL_BATCH = 8


def _config(*overrides):
  return small_step_config(*PLAIN_COSINE, *overrides, batch_size=GLOBAL_BATCH, queue_size=32)


def _batches(num):
  keys = jax.random.split(jax.random.PRNGKey(7), 3 * num)
  return [{view: np.asarray(jax.random.normal(keys[3 * i + j], (GLOBAL_BATCH, 32, 32, 3)))
           for j, view in enumerate(("student", "weak", "style"))} for i in range(num)]


def _run(mesh, config, batches, initial=None):
  """Steps from `initial` (a host state; by default created on `mesh` from seed 0).

  Returns the metrics of each step, the final state on the host, and the state's shardings.
  """
  backbone = convnext.ConvNeXt(depths=(1, 1), dims=(8, 16))
  head = step.build_head(config)
  optimizer, schedule = optim.create(config, steps_per_epoch=10)
  sharding.check_batch_divides(config.batch_size, mesh)
  if initial is None:
    state, shardings = step.create_state(jax.random.PRNGKey(0), config, backbone, head, optimizer, mesh)
  else:
    shardings = sharding.state_sharding(initial, mesh, config.mesh.fsdp_min_size)
    state = jax.device_put(initial, shardings)
  train_step = step.compile_train_step(
      step.make_train_step(config, backbone, head, optimizer, schedule, mesh=mesh), shardings, mesh)
  history = []
  for batch in batches:
    global_batch = sharding.shard_batch(batch, mesh)
    assert len(global_batch["student"].sharding.device_set) == mesh.size
    state, metrics = train_step(state, global_batch)
    history.append(jax.tree.map(np.asarray, metrics))
  return history, jax.tree.map(np.asarray, state), shardings


@pytest.fixture(scope="module")
def initial_state():
  config = _config()
  backbone = convnext.ConvNeXt(depths=(1, 1), dims=(8, 16))
  optimizer, _ = optim.create(config, steps_per_epoch=10)
  state, _ = step.create_state(jax.random.PRNGKey(0), config, backbone, step.build_head(config), optimizer,
                               sharding.create_mesh(devices=jax.devices()[:1]))
  return jax.tree.map(np.asarray, state)


@pytest.fixture(scope="module")
def single_device_run(initial_state):
  return _run(sharding.create_mesh(devices=jax.devices()[:1]), _config(), _batches(2), initial_state)


@pytest.mark.parametrize("num_devices", [8, 2])
def test_step_gives_the_same_loss_and_parameters_on_any_number_of_devices(num_devices, initial_state,
                                                                          single_device_run):
  assert jax.device_count() == 8
  mesh = sharding.create_mesh(devices=jax.devices()[:num_devices])
  history, state, _ = _run(mesh, _config(), _batches(2), initial_state)
  reference_history, reference, _ = single_device_run
  for metrics, expected in zip(history, reference_history):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), metrics, expected)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), state, reference)


def test_fsdp_creates_sharded_parameters_and_gives_the_same_result(single_device_run):
  mesh = sharding.create_mesh(fsdp=2)
  history, state, shardings = _run(mesh, _config("mesh.fsdp=2", "mesh.fsdp_min_size=256"), _batches(2))
  sharded = [s for s in jax.tree.leaves(shardings.params) if sharding.FSDP_AXIS in s.spec]
  assert len(sharded) >= 8
  reference_history, reference, _ = single_device_run
  for metrics, expected in zip(history, reference_history):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), metrics, expected)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), state, reference)


def test_mesh_has_data_and_fsdp_axes_over_all_devices():
  mesh = sharding.create_mesh(fsdp=2)
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
  with pytest.raises(ValueError, match="positive divisor"):
    sharding.create_mesh(fsdp=3)


def test_param_sharding_splits_the_largest_dimension_that_divides():
  mesh = sharding.create_mesh(fsdp=4)
  assert sharding.param_sharding((7, 7, 1, 512), mesh, min_size=1024).spec == P(None, None, None, "fsdp")
  assert sharding.param_sharding((1026, 512), mesh, min_size=1024).spec == P(None, "fsdp")
  assert sharding.param_sharding((512,), mesh, min_size=1024).spec == P()
  assert sharding.param_sharding((33, 35), mesh, min_size=1024).spec == P()
  assert sharding.param_sharding((1024, 512), sharding.create_mesh(fsdp=1), min_size=1).spec == P()


def test_batch_that_does_not_split_over_the_devices_is_refused_naming_one_that_does():
  """12 over 8 devices: a ConfigError (one line from the programs) naming batch_size 16 and the
  pod config sized per device."""
  with pytest.raises(config_lib.ConfigError, match="does not split evenly over the 8 devices") as e:
    sharding.check_batch_divides(12, sharding.create_mesh())
  assert "--config.batch_size=16 (2 per device" in str(e.value) and "configs/paper_pod.py:8" in str(e.value)


def test_shard_batch_builds_global_arrays_split_over_the_batch_axis():
  mesh = sharding.create_mesh()
  batch = sharding.shard_batch({"student": np.arange(16 * 3, dtype=np.float32).reshape(16, 3)}, mesh)
  array = batch["student"]
  assert array.shape == (16, 3)
  assert {shard.data.shape for shard in array.addressable_shards} == {(2, 3)}
  np.testing.assert_array_equal(jnp.asarray(array), np.arange(16 * 3).reshape(16, 3))
