"""Device mesh and shardings for the train step.

The mesh has two named axes, `data` and `fsdp`. The batch is split over both (every device
holds B / num_devices images). Parameters, teachers and optimiser state are replicated when
`fsdp` has size 1; otherwise each array of at least `min_size` elements is split over `fsdp`
along its largest dimension that `fsdp` divides (FSDP / ZeRO-3 style), and XLA gathers it where
it is used. The queue, its pointer, the step and the RNG key are replicated.
"""
from collections.abc import Mapping, Sequence

import jax
from jax.experimental import mesh_utils
from jax.sharding import AxisType
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from artstyle_jax.method import config_lib
from artstyle_jax.method import state as state_lib

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)


def create_mesh(fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (num_devices / fsdp, fsdp) mesh over `devices` (default: all devices of all hosts)."""
  devices = list(jax.devices() if devices is None else devices)
  if fsdp < 1 or len(devices) % fsdp:
    raise ValueError(f"mesh.fsdp={fsdp} must be a positive divisor of the {len(devices)} devices")
  shape = (len(devices) // fsdp, fsdp)
  return Mesh(mesh_utils.create_device_mesh(shape, devices), BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over all devices; the rest of each array whole."""
  return NamedSharding(mesh, P(BATCH_AXES))


def check_batch_divides(batch_size: int, mesh: Mesh) -> None:
  """Raises ConfigError, naming a batch_size that splits, when `batch_size` does not split evenly
  over the mesh's devices."""
  if batch_size % mesh.size:
    fit = max(1, round(batch_size / mesh.size)) * mesh.size
    raise config_lib.ConfigError(
        f"the global batch_size {batch_size} does not split evenly over the {mesh.size} devices: pass "
        f"--config.batch_size={fit} ({fit // mesh.size} per device; queue_size must stay a multiple of it), or "
        f"start from configs/paper_pod.py:{mesh.size}, which sizes the batch per device")


def param_sharding(shape: Sequence[int], mesh: Mesh, min_size: int) -> NamedSharding:
  """Splits the largest dimension that the `fsdp` axis divides; replicates small arrays."""
  fsdp = mesh.shape[FSDP_AXIS]
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return replicated(mesh)
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp == 0:
      spec = [None] * len(shape)
      spec[dim] = FSDP_AXIS
      return NamedSharding(mesh, P(*spec))
  return replicated(mesh)


def state_sharding(abstract_state: state_lib.TrainState, mesh: Mesh, fsdp_min_size: int = 2**16) -> state_lib.TrainState:
  """Shardings for every leaf of a TrainState (as given by `jax.eval_shape(state.create, ...)`)."""
  def shard_params(tree):
    return jax.tree.map(lambda x: param_sharding(x.shape, mesh, fsdp_min_size), tree)

  return state_lib.TrainState(
      step=replicated(mesh),
      params=shard_params(abstract_state.params),
      teachers=shard_params(abstract_state.teachers),
      opt_state=shard_params(abstract_state.opt_state),
      queue=replicated(mesh),
      queue_ptr=replicated(mesh),
      rng=replicated(mesh),
  )


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Global arrays from this process's part of the batch (the whole batch on one host)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
