"""Roofline of the train step on a Cloud TPU or a GPU, estimated on this host without one.

  python -m artstyle_jax.bench cost --config=configs/paper.py [--config.key=value ...]
      (--topology=v5e:2x2 [--num_devices=1] | --gpu=h100 | --at_hand) [--batch_sizes=16,32] [--out=FILE]

--topology compiles the step for the first --num_devices chips of a Cloud TPU topology
('v4:2x2x1', 'v5e:2x2', 'v5p:2x2x1', 'v6e:2x2'), deviceless (libtpu, as `bench memory`), at each
per-device batch: XLA's memory analysis (peak bytes per device) and the compiled program's cost
analysis (FLOPs and bytes accessed per device, after the TPU compiler's fusion). Two batch sizes
or more give the line of memory against the batch and the largest batch in the chip's HBM.

--gpu (a, h100, h200, ... of `chips.GPUS`) has no deviceless compiler here: one device, the step
lowered for the GPU on this host, FLOPs and bytes accessed from XLA's cost analysis of that module
before optimisation (bytes count every op's operands and results: an upper bound, since fusion
keeps most in registers), memory from the train state and the student's VJP residuals
(`bench step`'s residual estimate).

--at_hand estimates for the accelerator JAX's default device is, on the machine that has it
(launch/gpu_check.sh, `launch/tpu.sh check`), so that the day's measurements sit beside the
estimate: a TPU's step compiled for its first --num_devices devices, a GPU as --gpu of its kind
(`chips.chip_of`).

Either way the network is in the forms of the platform compiled for ('auto' in the config), and
per batch the roofline with the chip's published peaks (`chips`): step time, images/s and the MFU
ceiling, whose model FLOPs are the step's without remat. Compiler estimates, not measurements.
Readable lines, then one JSON line (also written to --out).

--breakdown (with --topology) splits each compiled program's bytes and FLOPs by the part of the
network or the step whose ops make them (`breakdown`: stem, per stage each block layer and the
downsampling, projection head, losses, queue, EMA, optimiser, ...; bytes by pass: teachers,
student forward and backward), with each part's roofline time, and prints a Markdown table.
"""
from collections.abc import Sequence
import json
import time

from absl import flags
import jax
import ml_collections
from ml_collections import config_flags

from artstyle_jax import cli
from artstyle_jax.bench import breakdown
from artstyle_jax.bench import chips
from artstyle_jax.bench import device_programs
from artstyle_jax.bench import memory
from artstyle_jax.bench import step as bench_step
from artstyle_jax.method import sharding
from artstyle_jax.method import step

_GIB = 2**30
TPU_ESTIMATE = "XLA TPU compiler, deviceless: memory and cost analysis of the compiled step"
GPU_ESTIMATE = ("XLA cost analysis of the step lowered for the GPU, before optimisation (bytes: an upper bound); "
                "memory: train state + VJP residuals")


def _cost(analysis) -> tuple[float, float]:
  """(FLOPs, bytes accessed) of a cost analysis (a dict, or a list of one in some JAX versions)."""
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis["flops"]), float(analysis["bytes accessed"])


def host_lowered_cost(config: ml_collections.ConfigDict, platform: str) -> tuple[float, float]:
  """(FLOPs, bytes accessed) of the whole step in `platform`'s forms, lowered on one host device."""
  host_mesh = sharding.create_mesh(1, jax.devices("cpu")[:1])
  return _cost(device_programs.StepProgram(config, host_mesh, platform=platform).lower().cost_analysis())


def model_flops(config: ml_collections.ConfigDict, platform: str) -> float:
  """The step's FLOPs without rematerialisation, all devices (lowered on this host)."""
  plain = ml_collections.ConfigDict(config.to_dict())
  plain.model.remat = False
  return host_lowered_cost(plain, platform)[0]


def _tpu_batch(config, mesh, per_device: int, chip: chips.Chip, with_breakdown: bool = False) -> dict:
  batch_config = device_programs.with_batch(config, per_device * mesh.size)
  compiled = device_programs.StepProgram(batch_config, mesh).lower().compile()
  flops, bytes_accessed = _cost(compiled.cost_analysis())
  figures = {"peak_bytes": bench_step.memory_analysis(compiled)["peak_bytes"], "flops_per_device": flops,
             "bytes_accessed_per_device": bytes_accessed, "model_flops": model_flops(batch_config, "tpu")}
  figures |= chips.roofline(chip, flops, bytes_accessed, figures["model_flops"], batch_config.batch_size, mesh.size)
  if with_breakdown:
    figures["breakdown"] = breakdown.breakdown(compiled.as_text(), chip, flops, bytes_accessed)
    for time_key, ceiling_key in (("roofline_s", "mfu_ceiling"), ("hbm_step_s", "hbm_mfu_ceiling")):
      figures["breakdown"][ceiling_key] = figures["model_flops"] / (
          figures["breakdown"][time_key] * chip.peak_flops_per_s * mesh.size)
  return figures


def _gpu_batch(config, per_device: int, chip: chips.Chip) -> dict:
  batch_config = device_programs.with_batch(config, per_device)
  flops, bytes_accessed = host_lowered_cost(batch_config, "cuda")
  figures = {"flops_per_device": flops, "bytes_accessed_per_device": bytes_accessed,
             "model_flops": model_flops(batch_config, "cuda") if config.model.remat else flops}
  return figures | chips.roofline(chip, flops, bytes_accessed, figures["model_flops"], per_device, 1)


def _define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> None:
  config_flags.DEFINE_config_file("config", None, "training config file (configs/*.py)",
                                  flag_values=flag_values, sys_argv=list(argv))
  flags.DEFINE_string("topology", None, "Cloud TPU topology to compile for without a TPU (needs libtpu), "
                      "e.g. v5e:2x2", flag_values=flag_values)
  flags.DEFINE_integer("num_devices", 1, "with --topology: compile for this many of its chips", flag_values=flag_values)
  flags.DEFINE_enum("gpu", None, list(chips.GPUS), "GPU to estimate for, from the step lowered on this host",
                    flag_values=flag_values)
  flags.DEFINE_list("batch_sizes", ["16", "32"], "per-device batch sizes", flag_values=flag_values)
  flags.DEFINE_bool("at_hand", False, "estimate for the TPU or GPU JAX's default device is (instead of --topology "
                    "or --gpu)", flag_values=flag_values)
  cli.DEFINE_path("out", None, "also write the JSON line to this file", flag_values=flag_values)
  flags.DEFINE_bool("breakdown", False, "with --topology: the compiled program's bytes and FLOPs by the part of the "
                    "network or step that makes them (`breakdown`), a table per batch", flag_values=flag_values)


def _chip_and_tpu_devices(flag_values: flags.FlagValues) -> tuple[chips.Chip, list | None]:
  """The chip to estimate for and, for a TPU, the devices to compile for (None for a GPU)."""
  if flag_values.topology:
    chip = chips.tpu_of_topology(flag_values.topology)
    return chip, memory.first_topology_devices(flag_values.topology, flag_values.num_devices)
  if flag_values.gpu:
    return chips.GPUS[flag_values.gpu], None
  devices = jax.devices()
  chip = chips.chip_of(devices[0])
  if chip is None or devices[0].platform not in ("tpu", "gpu"):
    cli.fail(f"--at_hand needs a TPU or GPU of bench.chips; JAX's default device is {devices[0].device_kind}")
  if devices[0].platform == "gpu":
    return chip, None
  if not 1 <= flag_values.num_devices <= len(devices):
    cli.fail(f"--num_devices must be in [1, {len(devices)}] here")
  return chip, devices[:flag_values.num_devices]


def _summary(per_device: int, figures: dict) -> str:
  peak = f"peak {figures['peak_bytes'] / _GIB:.2f} GiB, " if "peak_bytes" in figures else ""
  return (f"per-device batch {per_device}: {peak}{figures['flops_per_device'] / 1e12:.3f} TFLOP and "
          f"{figures['bytes_accessed_per_device'] / 1e9:.1f} GB accessed per device; roofline "
          f"{figures['step_s'] * 1e3:.1f} ms ({figures['bound']}-bound), {figures['images_per_s']:.0f} images/s, "
          f"MFU ceiling {figures['mfu_ceiling']:.2f}")


def main(argv: Sequence[str]) -> int:
  flag_values = flags.FlagValues()
  _define_flags(flag_values, argv)
  cli.parse_command(argv, flag_values, __doc__)
  if flag_values.config is None:
    cli.fail("--config is required, e.g. --config=configs/paper.py")
  if (flag_values.topology is not None) + (flag_values.gpu is not None) + flag_values.at_hand != 1:
    cli.fail("give one of --topology (a Cloud TPU, e.g. v5e:2x2), --gpu (e.g. h100) or --at_hand")
  batch_sizes = sorted({int(b) for b in flag_values.batch_sizes})
  if not batch_sizes or batch_sizes[0] < 1:
    cli.fail(f"--batch_sizes must be positive, got {flag_values.batch_sizes}")
  config = ml_collections.ConfigDict(flag_values.config.to_dict())
  chip, tpu_devices = _chip_and_tpu_devices(flag_values)
  if flag_values.breakdown and tpu_devices is None:
    cli.fail("--breakdown needs --topology or --at_hand on a TPU: it reads the compiled program, which only the TPU "
             "path has")
  if tpu_devices is not None:
    mesh = sharding.create_mesh(config.mesh.fsdp, tpu_devices)
    forms, estimate, num_devices = step.model_forms(config, mesh), TPU_ESTIMATE, mesh.size
  else:
    forms, estimate, num_devices = step.model_forms(config, platform="cuda"), GPU_ESTIMATE, 1
  result = {
      "benchmark": "cost", "estimate": estimate, "chip": chip.name, "peak_flops_per_s": chip.peak_flops_per_s,
      "hbm_bytes_per_s": chip.hbm_bytes_per_s, "hbm_gib": chip.hbm_bytes / _GIB, "topology": flag_values.topology,
      "at_hand": flag_values.at_hand,
      "num_devices": num_devices, "model": config.model.name, "image_size": config.image_size,
      "dtype": config.model.dtype, "remat": config.model.remat, "remat_policy": config.model.remat_policy,
      "forms": forms.as_dict(),
  }
  print(f"{config.model.name} {config.image_size}px {config.model.dtype} remat={config.model.remat} on "
        f"{num_devices} x {chip.name} ({estimate}); forms {forms.as_dict()}", flush=True)
  by_batch = {}
  for per_device in batch_sizes:
    start = time.perf_counter()
    if tpu_devices is not None:
      by_batch[per_device] = _tpu_batch(config, mesh, per_device, chip, flag_values.breakdown)
    else:
      by_batch[per_device] = _gpu_batch(config, per_device, chip)
    print(_summary(per_device, by_batch[per_device]) + f" ({time.perf_counter() - start:.0f} s)", flush=True)
    if "breakdown" in by_batch[per_device]:
      figures = by_batch[per_device]["breakdown"]
      print(f"per-device batch {per_device} by part: ops one after the other, each at its own bound, "
            f"{figures['roofline_s'] * 1e3:.1f} ms, MFU ceiling {figures['mfu_ceiling']:.2f}; bytes in HBM "
            f"{figures['hbm_bytes'] / 1e9:.1f} GB, roofline {figures['hbm_step_s'] * 1e3:.1f} ms, MFU ceiling "
            f"{figures['hbm_mfu_ceiling']:.2f}\n" + breakdown.markdown(figures), flush=True)
  result["by_batch"] = {str(b): figures for b, figures in by_batch.items()}
  if tpu_devices is not None and len(batch_sizes) > 1:
    result.update(memory.fit_line({b: f["peak_bytes"] for b, f in by_batch.items()}, chip.hbm_bytes))
  elif tpu_devices is None:
    host_mesh = sharding.create_mesh(1, jax.devices("cpu")[:1])
    result.update(bench_step.residual_estimate(config, host_mesh, chip.hbm_bytes, platform="cuda"))
  if "max_batch_per_device" in result:
    print(f"largest batch per device in {chip.hbm_bytes / _GIB:.0f} GiB: {result['max_batch_per_device']}", flush=True)
  line = json.dumps(result)
  print(line)
  if flag_values.out:
    try:
      with open(flag_values.out, "w", encoding="utf-8") as f:
        f.write(line + "\n")
    except OSError as error:
      cli.fail(f"cannot write --out={flag_values.out}: {error.strerror}")
  return 0
