"""Published peaks of the accelerators the paper step is sized for, and the roofline they give.

Peak FLOP/s are dense bfloat16 matmul rates of one JAX device (one chip; for GPUs the SXM board
without sparsity); HBM is the chip's memory and its bandwidth. Sources, as published by the makers:

  TPU v4     cloud.google.com/tpu/docs/v4   275 TFLOP/s, 32 GiB HBM2 at 1,228 GB/s
  TPU v5e    cloud.google.com/tpu/docs/v5e  197 TFLOP/s, 16 GiB HBM2 at 819 GB/s
  TPU v5p    cloud.google.com/tpu/docs/v5p  459 TFLOP/s, 95 GiB HBM2e at 2,765 GB/s
  TPU v6e    cloud.google.com/tpu/docs/v6e  918 TFLOP/s, 32 GiB HBM at 1,640 GB/s
  A100 SXM   NVIDIA A100 datasheet          312 TFLOP/s, 80 GB HBM2e at 2,039 GB/s
  H100 SXM   NVIDIA H100 datasheet          989 TFLOP/s, 80 GB HBM3 at 3.35 TB/s
  H200 SXM   NVIDIA H200 datasheet          989 TFLOP/s, 141 GB HBM3e at 4.8 TB/s
"""
import dataclasses

import jax

_GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator chip: what `device_kind` calls it, its peaks and its memory."""
  name: str
  device_kinds: tuple[str, ...]  # `jax.Device.device_kind` values (TPUs exact, GPUs substrings)
  peak_flops_per_s: float  # dense bfloat16
  hbm_bytes_per_s: float
  hbm_bytes: float


TPUS = {
    "v4": Chip("TPU v4", ("TPU v4",), 275e12, 1228e9, 32 * _GIB),
    "v5e": Chip("TPU v5e", ("TPU v5 lite", "TPU v5e"), 197e12, 819e9, 16 * _GIB),
    "v5p": Chip("TPU v5p", ("TPU v5", "TPU v5p"), 459e12, 2765e9, 95 * _GIB),
    "v6e": Chip("TPU v6e", ("TPU v6 lite", "TPU v6e"), 918e12, 1640e9, 32 * _GIB),
}
# The first whose substring a GPU's device_kind holds wins: PCIe and NVL boards before SXM's.
GPUS = {
    "a100": Chip("A100 SXM", ("A100",), 312e12, 2039e9, 80e9),
    "h100-pcie": Chip("H100 PCIe", ("H100 PCIe",), 756e12, 2000e9, 80e9),
    "h100-nvl": Chip("H100 NVL", ("H100 NVL",), 835e12, 3900e9, 94e9),
    "h100": Chip("H100 SXM", ("H100",), 989e12, 3350e9, 80e9),
    "h200": Chip("H200 SXM", ("H200",), 989e12, 4800e9, 141e9),
}


def tpu_of_topology(topology: str) -> Chip:
  """The chip of a Cloud TPU topology name such as 'v5e:2x2'."""
  generation = topology.split(":")[0].lower()
  if generation not in TPUS:
    raise ValueError(f"unknown TPU generation {generation!r} in {topology!r}; known: {', '.join(TPUS)}")
  return TPUS[generation]


def chip_of(device: jax.Device) -> Chip | None:
  """The table's chip of a device, None for one it does not list (a CPU, an unknown accelerator)."""
  kind = device.device_kind
  for chip in TPUS.values():
    if kind in chip.device_kinds:
      return chip
  for chip in GPUS.values():
    if any(name.lower() in kind.lower() for name in chip.device_kinds):
      return chip
  return None


def roofline(chip: Chip, flops_per_device: float, bytes_per_device: float, model_flops: float,
             global_batch: int, num_devices: int) -> dict:
  """The step's time bound on `chip`: its FLOPs at the peak rate or its HBM traffic at the peak
  bandwidth, whichever is longer, and what that allows.

  Args:
    flops_per_device, bytes_per_device: one device's FLOPs and bytes accessed per step (XLA's
      cost analysis; with remat the FLOPs include the recomputation).
    model_flops: the whole step's FLOPs without recomputation (all devices).
    global_batch: images per step over all devices.

  Returns:
    compute_s, memory_s, step_s (their maximum), bound ('compute' or 'memory'), images_per_s,
    mfu_ceiling (model FLOPs per second at that step time over the devices' peak).
  """
  compute_s = flops_per_device / chip.peak_flops_per_s
  memory_s = bytes_per_device / chip.hbm_bytes_per_s
  step_s = max(compute_s, memory_s)
  return {
      "compute_s": compute_s, "memory_s": memory_s, "step_s": step_s,
      "bound": "compute" if compute_s >= memory_s else "memory",
      "images_per_s": global_batch / step_s,
      "mfu_ceiling": model_flops / (step_s * chip.peak_flops_per_s * num_devices),
  }
