"""Speed, FLOPs and memory of the compiled train step.

  python -m artstyle_jax.bench step --config=configs/tiny.py [--config.key=value ...]
      [--steps=10] [--warmup=2] [--torch] [--memory_only] [--fit_memory_gib=16] [--peak_flops=F]

Times the train step of the config (random initialisation, random float32 views, the batch over
all devices) after warm-up: the median of `--steps` steps, each waited for. Prints, last, one
JSON line: step_s, images_per_s,
flops_per_step, achieved_flops_per_s, mfu (model FLOPs per second over the devices' peak: the
dense bfloat16 peak of the accelerator from the table of `chips`, or on CPU a measured large float32
matmul), the device kind and the peak used, the network's forms (those of the devices' platform)
and XLA's memory analysis of the compiled step per device.

FLOPs are XLA's cost analysis of the step as lowered (the program as written, all devices).
`compiled_flops_per_step` is the analysis of the compiled program (summed over devices); it
depends on the backend's rewrites (XLA:CPU counts ConvNeXt's backward convolutions about 2.5
times over). With remat the step recomputes activations: `flops_per_step` includes that work
(hfu), `model_flops_per_step` (the step lowered without remat) does not, and mfu uses the latter.

--memory_only compiles from abstract shapes without allocating or running (any model size on
any host). --fit_memory_gib=G searches, with that analysis, the largest per-device batch whose
step fits in G GiB, per the compiler of the backend it runs on; it also gives an estimate that
does not depend on the backend's scheduler: the train state, gradients and updates, plus per
image what the student's backward keeps from its forward (the residuals of its VJP). XLA:CPU's
schedule does not realise the saving of remat (its memory analysis of a rematerialised step is
no smaller), so on CPU the estimate is the figure to read for remat.
"""
from collections.abc import Sequence
import functools
import json
import math
import os
import time

from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from artstyle_jax import cli
from artstyle_jax.bench import chips
from artstyle_jax.bench import device_programs
from artstyle_jax.bench import timing
from artstyle_jax.method import config_lib
from artstyle_jax.method import optim
from artstyle_jax.method import sharding
from artstyle_jax.method import state as state_lib
from artstyle_jax.method import step

_GIB = 2**30


def peak_flops_per_device(device: jax.Device) -> float | None:
  """Dense bfloat16 peak FLOP/s of an accelerator from the table (`chips`); None if unknown."""
  chip = chips.chip_of(device)
  return None if chip is None else chip.peak_flops_per_s


def measured_matmul_flops(size: int = 2048, repeats: int = 5) -> float:
  """Best FLOP/s of a (size x size) @ (size x size) float32 matmul on the default device."""
  x = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  matmul(x).block_until_ready()
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(x).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best


def memory_analysis(compiled) -> dict[str, int]:
  """XLA's memory analysis of a compiled program, bytes per device."""
  stats = compiled.memory_analysis()
  memory = {
      "argument_bytes": stats.argument_size_in_bytes,
      "output_bytes": stats.output_size_in_bytes,
      "alias_bytes": stats.alias_size_in_bytes,
      "temp_bytes": stats.temp_size_in_bytes,
  }
  # Donated state buffers are reused for the output (aliased): count them once.
  memory["peak_bytes"] = memory["argument_bytes"] + memory["output_bytes"] - memory["alias_bytes"] + memory["temp_bytes"]
  return memory


def _flops(analysis) -> float:
  """FLOPs from a cost analysis (a dict, or a list of one dict in some JAX versions)."""
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis["flops"])


def _model_flops(config: ml_collections.ConfigDict, mesh, lowered_flops: float) -> float:
  """FLOPs of the step as lowered without rematerialisation."""
  if not config.model.remat:
    return lowered_flops
  plain = ml_collections.ConfigDict(config.to_dict())
  plain.model.remat = False
  return _flops(device_programs.StepProgram(plain, mesh).lower().cost_analysis())


def fit_batch(config: ml_collections.ConfigDict, mesh, limit_bytes: float) -> dict:
  """Largest per-device batch (a multiple of 8) whose compiled step fits `limit_bytes` per device.

  Memory is close to affine in the batch: two compiles give the line, a third checks its
  prediction, which is lowered by 8 until it fits.
  """
  devices = mesh.size
  tried = {}

  def peak(per_device: int) -> int:
    if per_device not in tried:
      program = device_programs.StepProgram(device_programs.with_batch(config, per_device * devices), mesh)
      tried[per_device] = memory_analysis(program.lower().compile())["peak_bytes"]
      print(f"per-device batch {per_device}: {tried[per_device] / _GIB:.2f} GiB", flush=True)
    return tried[per_device]

  low, high = 8, 16
  slope = (peak(high) - peak(low)) / (high - low)
  fixed = peak(low) - slope * low
  guess = max(8, int((limit_bytes - fixed) / slope) // 8 * 8)
  while guess > 8 and peak(guess) > limit_bytes:
    guess -= 8
  fits = peak(guess) <= limit_bytes
  return {
      "max_batch_per_device": guess if fits else 0,
      "limit_gib": limit_bytes / _GIB,
      "bytes_per_image": slope,
      "fixed_bytes": fixed,
      "peak_gib_by_batch": {str(b): p / _GIB for b, p in sorted(tried.items())},
  }


def _tree_bytes(tree) -> int:
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def residual_estimate(config: ml_collections.ConfigDict, mesh, limit_bytes: float, platform: str | None = None) -> dict:
  """Largest batch per device (replicated parameters) from the state's size and the student's
  VJP residuals per image (from abstract batches of 1 and 2 images; nothing is compiled), the
  network in the forms of `platform`, else of `mesh`'s."""
  backbone, head = step.build_backbone(config, mesh, platform=platform), step.build_head(config)
  optimizer, _ = optim.create(config, steps_per_epoch=1000)
  state = jax.eval_shape(
      functools.partial(state_lib.create, config=config, backbone=backbone, head=head, optimizer=optimizer),
      jax.random.PRNGKey(0))

  def student_loss(params, images):
    f, z = step.forward(backbone, head, params, images, train=True, rng=jax.random.PRNGKey(0))
    return jnp.sum(f) + jnp.sum(z)

  def residual_bytes(batch_size):
    images = jax.ShapeDtypeStruct((batch_size, config.image_size, config.image_size, 3), jnp.float32)
    return _tree_bytes(jax.eval_shape(lambda p, x: jax.vjp(student_loss, p, x)[1], state.params, images))

  per_image = residual_bytes(2) - residual_bytes(1)
  # State (student, teachers, optimiser), plus the gradients and the updates of the student.
  fixed = _tree_bytes(state) + 2 * _tree_bytes(state.params)
  return {
      "residual_bytes_per_image": per_image,
      "state_and_update_bytes": fixed,
      "max_batch_per_device": max(0, int((limit_bytes - fixed) // per_image)),
  }


class _TorchReference:
  """The PyTorch reference step on `batch` (the same views as ours, NCHW); a call runs one step."""

  def __init__(self, config: ml_collections.ConfigDict, batch: dict[str, jax.Array]):
    import torch  # pylint: disable=import-outside-toplevel

    from artstyle_jax.bench import torch_step  # pylint: disable=import-outside-toplevel

    self.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(self.threads)
    self.version = torch.__version__
    self.step = torch_step.TorchStep(config)
    self.batch = {view: torch.from_numpy(np.asarray(images).transpose(0, 3, 1, 2).copy())
                  for view, images in batch.items()}

  def __call__(self) -> None:
    self.step(self.batch)


def _define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> None:
  config_flags.DEFINE_config_file("config", None, "training config file (configs/*.py)",
                                  flag_values=flag_values, sys_argv=list(argv))
  flags.DEFINE_integer("steps", 10, "timed steps, after warm-up", flag_values=flag_values)
  flags.DEFINE_integer("warmup", 2, "untimed steps after compiling", flag_values=flag_values)
  flags.DEFINE_bool("torch", False, "also time the step in plain PyTorch, interleaved with ours",
                    flag_values=flag_values)
  flags.DEFINE_bool("memory_only", False, "compile from abstract shapes, report XLA's memory and FLOPs, "
                    "do not run", flag_values=flag_values)
  flags.DEFINE_float("fit_memory_gib", None, "find the largest per-device batch whose step fits this many "
                     "GiB per device (implies --memory_only)", flag_values=flag_values)
  flags.DEFINE_float("peak_flops", None, "peak FLOP/s of one device for mfu, instead of the built-in table",
                     flag_values=flag_values)


def main(argv: Sequence[str]) -> int:
  flag_values = flags.FlagValues()
  _define_flags(flag_values, argv)
  cli.parse_command(argv, flag_values, __doc__)
  if flag_values.config is None:
    raise SystemExit("--config is required, e.g. --config=configs/tiny.py")
  config = config_lib.validate(flag_values.config)
  if flag_values.steps < 1 or flag_values.warmup < 0:
    raise SystemExit(f"--steps must be >= 1 and --warmup >= 0, got {flag_values.steps} and {flag_values.warmup}")
  if flag_values.torch and (config.model.dtype != "float32" or config.model.remat):
    raise SystemExit("--torch compares float32 steps without remat: set --config.model.dtype=float32 "
                     "--config.model.remat=False")
  mesh = sharding.create_mesh(config.mesh.fsdp)
  device = jax.devices()[0]
  result = {
      "benchmark": "step", "model": config.model.name, "image_size": config.image_size, "batch_size": config.batch_size,
      "dtype": config.model.dtype, "remat": config.model.remat, "remat_policy": config.model.remat_policy,
      "device_kind": device.device_kind,
      "platform": device.platform, "num_devices": mesh.size, "forms": step.model_forms(config, mesh).as_dict(),
  }
  print(f"{config.model.name} {config.image_size}px batch {config.batch_size} {config.model.dtype} "
        f"remat={config.model.remat} on {mesh.size} x {device.device_kind}", flush=True)

  if flag_values.fit_memory_gib:
    limit = flag_values.fit_memory_gib * _GIB
    result["residual_estimate"] = residual_estimate(config, mesh, limit)
    print(f"estimate from residuals: {result['residual_estimate']}", flush=True)
    result["xla_memory_analysis"] = fit_batch(config, mesh, limit)
    print(json.dumps(result))
    return 0

  program = device_programs.StepProgram(config, mesh)
  start = time.perf_counter()
  lowered = program.lower()
  compiled = lowered.compile()
  result["compile_s"] = time.perf_counter() - start
  result["flops_per_step"] = _flops(lowered.cost_analysis())
  result["model_flops_per_step"] = _model_flops(config, mesh, result["flops_per_step"])
  result["compiled_flops_per_step"] = _flops(compiled.cost_analysis()) * mesh.size
  result["memory"] = memory_analysis(compiled)
  result["memory_peak_gib"] = result["memory"]["peak_bytes"] / _GIB
  print(f"compiled in {result['compile_s']:.1f} s; {result['flops_per_step'] / 1e9:.2f} GFLOP per step; "
        f"{result['memory_peak_gib']:.2f} GiB per device", flush=True)
  if flag_values.memory_only:
    print(json.dumps(result))
    return 0

  state, _ = program.create(jax.random.PRNGKey(0))
  batch = program.random_batch()
  reference = _TorchReference(config, batch) if flag_values.torch else None
  carry = {"state": state}

  def ours() -> None:
    carry["state"], carry["metrics"] = compiled(carry["state"], batch)
    jax.block_until_ready(carry["metrics"])

  runs = {"ours": timing.timed(ours)}
  if reference is not None:
    runs["torch"] = timing.timed(reference)
  medians = timing.interleaved_medians(runs, flag_values.steps, flag_values.warmup)
  metrics = carry["metrics"]
  step_s = medians["ours"]
  if reference is not None:
    result["torch"] = {"step_s": medians["torch"], "images_per_s": config.batch_size / medians["torch"],
                       "threads": reference.threads, "version": reference.version}
    result["speedup"] = medians["torch"] / step_s

  if flag_values.peak_flops:
    peak, source = flag_values.peak_flops, "--peak_flops"
  elif (peak := peak_flops_per_device(device)) is not None:
    source = "table: dense bfloat16"
  elif device.platform == "cpu":
    peak, source = measured_matmul_flops(), "measured float32 matmul 2048^3"
  else:
    peak, source = math.nan, "unknown device: pass --peak_flops"
  result.update({
      "step_s": step_s,
      "images_per_s": config.batch_size / step_s,
      "achieved_flops_per_s": result["flops_per_step"] / step_s,
      "peak_flops_per_s_per_device": peak,
      "peak_source": source,
      "mfu": result["model_flops_per_step"] / step_s / (peak * mesh.size),
      "hfu": result["flops_per_step"] / step_s / (peak * mesh.size),
      "loss": float(metrics["loss"]),
  })
  print(f"{step_s * 1e3:.1f} ms/step, {result['images_per_s']:.1f} images/s, mfu {result['mfu']:.3f} "
        f"(peak {peak / 1e12:.2f} TFLOP/s per device, {source})", flush=True)
  if reference is not None:
    print(f"PyTorch {result['torch']['step_s'] * 1e3:.1f} ms/step ({reference.threads} threads): ours is "
          f"{result['speedup']:.2f}x its speed", flush=True)
  print(json.dumps(result))
  return 0
