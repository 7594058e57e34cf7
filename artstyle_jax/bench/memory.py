"""XLA's memory analysis of the train step, compiled for a Cloud TPU without one, or for this host.

  python -m artstyle_jax.bench memory --config=configs/paper.py [--config.key=value ...]
      [--topology=v5e:2x2 [--num_devices=1]] [--batch_sizes=8,32] [--limit_gib=16]

Compiles (never runs) the config's train step at each per-device batch size and prints XLA's
memory analysis per device: arguments + outputs - donated (aliased) buffers + temporaries.
Memory is affine in the batch, so a line through the figures gives the bytes per image, the
fixed bytes (train state, gradients, updates) and the largest per-device batch within
--limit_gib. JSON line last.

The network's forms ('auto' in the config) are those of the platform compiled for (the TPU's
with --topology), and the JSON line names them.

--topology compiles for the first --num_devices chips of a Cloud TPU topology
(`jax.experimental.topologies`, names as 'v4:2x2x1', 'v5e:2x2', 'v5p:2x2x1', 'v6e:2x2'),
deviceless: it needs libtpu (`pip install 'jax[tpu]'`) but no TPU, so it runs on a CPU host, and
the figures are those of the TPU compiler (fusion, layouts and scheduling of the accelerator,
where remat's saving shows). With mesh.fsdp 1 (replicated parameters) the memory per device
hardly depends on the number of devices, and one device compiles fastest (ConvNeXt-Base takes
10-20 minutes per batch size on a 2-core host).
Without it the step is compiled for the local backend; XLA:CPU's figures differ from an
accelerator's (its schedule keeps the activations that remat would free).
"""
from collections.abc import Sequence
import json
import os
import time

from absl import flags
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from artstyle_jax import cli
from artstyle_jax.bench import device_programs
from artstyle_jax.bench import step as bench_step
from artstyle_jax.method import sharding
from artstyle_jax.method import step

_GIB = 2**30


def topology_devices(name: str) -> list:
  """The devices of a Cloud TPU topology such as 'v5e:2x2', for compiling without a TPU."""
  # Compile-only use of libtpu on a host that is no TPU VM: do not ask the GCE metadata server.
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    return list(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)
  except RuntimeError as e:
    if "lockfile" in str(e):
      raise SystemExit(f"--topology={name}: another process holds libtpu (one deviceless compile at a time "
                       f"per host): {e}") from e
    raise SystemExit(f"--topology={name} needs libtpu (pip install 'jax[tpu]'): {e}") from e


def first_topology_devices(topology: str, num_devices: int) -> list:
  """The first `num_devices` devices of a Cloud TPU topology; SystemExit naming the range if it
  has fewer."""
  devices = topology_devices(topology)
  if not 1 <= num_devices <= len(devices):
    raise SystemExit(f"--num_devices must be in [1, {len(devices)}] for {topology}")
  return devices[:num_devices]


def fit_line(peak_bytes_by_batch: dict[int, int], limit_bytes: float) -> dict:
  """Least-squares line through (per-device batch, peak bytes); the largest batch under the limit.

  Raises:
    ValueError: fewer than two distinct batch sizes.
  """
  if len(peak_bytes_by_batch) < 2:
    raise ValueError(f"a line needs two batch sizes or more, got {sorted(peak_bytes_by_batch)}")
  batches = np.array(sorted(peak_bytes_by_batch), np.float64)
  peaks = np.array([peak_bytes_by_batch[b] for b in sorted(peak_bytes_by_batch)], np.float64)
  slope, fixed = np.polyfit(batches, peaks, 1)
  return {
      "bytes_per_image": float(slope),
      "fixed_bytes": float(fixed),
      "max_batch_per_device": max(0, int((limit_bytes - fixed) // slope)),
  }


def _define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> None:
  config_flags.DEFINE_config_file("config", None, "training config file (configs/*.py)",
                                  flag_values=flag_values, sys_argv=list(argv))
  flags.DEFINE_string("topology", None, "Cloud TPU topology to compile for without a TPU (needs libtpu), "
                      "e.g. v5e:2x2; default: the local devices", flag_values=flag_values)
  flags.DEFINE_integer("num_devices", 1, "with --topology: compile for this many of its devices",
                       flag_values=flag_values)
  flags.DEFINE_list("batch_sizes", ["8", "32"], "per-device batch sizes to compile", flag_values=flag_values)
  flags.DEFINE_float("limit_gib", 16.0, "memory per device for the largest batch", flag_values=flag_values)


def main(argv: Sequence[str]) -> int:
  flag_values = flags.FlagValues()
  _define_flags(flag_values, argv)
  cli.parse_command(argv, flag_values, __doc__)
  if flag_values.config is None:
    raise SystemExit("--config is required, e.g. --config=configs/paper.py")
  batch_sizes = sorted({int(b) for b in flag_values.batch_sizes})
  if len(batch_sizes) < 2 or batch_sizes[0] < 1:
    raise SystemExit(f"--batch_sizes needs two positive sizes or more, got {flag_values.batch_sizes}")
  config = ml_collections.ConfigDict(flag_values.config.to_dict())
  if flag_values.topology:
    devices = first_topology_devices(flag_values.topology, flag_values.num_devices)
  else:
    devices = jax.devices()
  mesh = sharding.create_mesh(config.mesh.fsdp, devices)
  result = {
      "model": config.model.name, "image_size": config.image_size, "dtype": config.model.dtype,
      "remat": config.model.remat, "forms": step.model_forms(config, mesh).as_dict(), "topology": flag_values.topology,
      "device_kind": devices[0].device_kind, "num_devices": mesh.size, "limit_gib": flag_values.limit_gib,
  }
  print(f"{config.model.name} {config.image_size}px {config.model.dtype} remat={config.model.remat} "
        f"compiled for {mesh.size} x {devices[0].device_kind}", flush=True)
  peaks, memory_by_batch = {}, {}
  for per_device in batch_sizes:
    start = time.perf_counter()
    program = device_programs.StepProgram(device_programs.with_batch(config, per_device * mesh.size), mesh)
    memory = bench_step.memory_analysis(program.lower().compile())
    peaks[per_device] = memory["peak_bytes"]
    memory_by_batch[str(per_device)] = memory
    print(f"per-device batch {per_device}: {memory['peak_bytes'] / _GIB:.2f} GiB "
          f"(compiled in {time.perf_counter() - start:.0f} s)", flush=True)
  result["memory_by_batch"] = memory_by_batch
  result.update(fit_line(peaks, flag_values.limit_gib * _GIB))
  print(f"{result['bytes_per_image'] / 2**20:.1f} MiB per image, {result['fixed_bytes'] / _GIB:.2f} GiB fixed: "
        f"at most {result['max_batch_per_device']} images per device in {flag_values.limit_gib:g} GiB", flush=True)
  print(json.dumps(result))
  return 0
