"""Times a backbone: ours (JAX, jitted) against the same network in PyTorch.

  python -m artstyle_jax.bench backbone [--model convnext_tiny|resnet50|...] [--image-size 224] [--batch 8]
      [--steps 5] [--warmup 2] [--dtype float32] [--depthwise auto] [--mlp-grad auto] [--patchify auto]
      [--no-torch]

ConvNeXt is timed against transformers' ConvNextModel, ResNet-50 against the plain-torch
torchvision ResNet-50 of `bench/torch_resnet.py` (BatchNorm in eval mode, as ours is frozen).
Both run the same architecture on the same input size: the forward pass (inference: jitted
apply / torch.no_grad in eval mode) and forward+backward (gradient of the sum of the last
stage's output with respect to all parameters). Each figure is the median over `--steps` timed
iterations after `--warmup` untimed ones (JAX: after compilation, with block_until_ready), ours
and PyTorch's calls alternating, so that a ratio compares the two under the same machine load.
Prints readable lines, then one JSON line with every figure.
"""
import json
import os
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from artstyle_jax import cli
from artstyle_jax.bench import timing
from artstyle_jax.models import convnext
from artstyle_jax.models import forms as forms_lib
from artstyle_jax.models import resnet


def _parse(argv: list[str]):
  flag_values = flags.FlagValues()
  flags.DEFINE_enum("model", "convnext_tiny", sorted(convnext.SIZES) + sorted(resnet.SIZES), "backbone",
                    flag_values=flag_values)
  flags.DEFINE_integer("image-size", 224, "image side, pixels", flag_values=flag_values)
  flags.DEFINE_integer("batch", 8, "images per call", flag_values=flag_values)
  flags.DEFINE_integer("steps", 5, "timed iterations per measurement", flag_values=flag_values)
  flags.DEFINE_integer("warmup", 2, "untimed iterations before timing", flag_values=flag_values)
  flags.DEFINE_enum("dtype", "float32", ("float32", "bfloat16"), "compute dtype of ours (PyTorch always runs "
                    "float32)", flag_values=flag_values)
  flags.DEFINE_enum("depthwise", "auto", ("auto", "conv", "shift"), "depthwise convolution's form",
                    flag_values=flag_values)
  flags.DEFINE_enum("mlp-grad", "auto", ("auto", "autodiff", "manual"), "gradient form of ConvNeXt blocks' "
                    "pointwise part (models/cpu/block_mlp.py)", flag_values=flag_values)
  flags.DEFINE_enum("patchify", "auto", ("auto", "conv", "matmul"), "form of the stem's and downsampling layers' "
                    "convolutions", flag_values=flag_values)
  flags.DEFINE_bool("no-torch", False, "time ours only", flag_values=flag_values)
  flags.DEFINE_bool("forward-only", False, "time the forward alone (feature extraction, what the probes run)",
                    flag_values=flag_values)
  args = cli.parse_command(argv, flag_values, __doc__)
  if args.steps < 1 or args.warmup < 0 or args.batch < 1:
    cli.fail("--steps and --batch must be >= 1 and --warmup >= 0")
  return args


def model_forms(args) -> forms_lib.Forms:
  """The ConvNeXt's forms the flags ask for, 'auto' chosen for the default device's platform."""
  return forms_lib.resolve(forms_lib.platform_of(jax.devices()[0]), jnp.dtype(args.dtype),
                           depthwise=args.depthwise, mlp_grad=args.mlp_grad, patchify=args.patchify)


def _jax_runs(args) -> tuple[dict, dict]:
  """Ours: ({'forward': run, 'train': run}, facts), each run timing one waited-for call of the
  compiled program; the programs are compiled (and called once; the train program not with
  --forward-only) here."""
  if args.model in resnet.SIZES:
    module = resnet.create(args.model, dtype=jnp.dtype(args.dtype))
  else:
    module = convnext.create(args.model, dtype=jnp.dtype(args.dtype), forms=model_forms(args))
  images = jax.random.normal(jax.random.key(0), (args.batch, args.image_size, args.image_size, 3))
  params = jax.jit(module.init)(jax.random.key(1), images)

  forward = jax.jit(lambda p, x: module.apply(p, x))

  def loss(p, x):
    return jnp.sum(module.apply(p, x, train=True)[-1])

  train = jax.jit(jax.grad(loss))
  start = time.perf_counter()
  jax.block_until_ready(forward(params, images))
  if not args.forward_only:
    jax.block_until_ready(train(params, images))
  runs = {"forward": timing.timed(lambda: jax.block_until_ready(forward(params, images))),
          "train": timing.timed(lambda: jax.block_until_ready(train(params, images)))}
  return runs, {"first_call_s": time.perf_counter() - start}


def _available_cores() -> int:
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def _torch_runs(args) -> tuple[dict, dict]:
  """PyTorch's: ({'forward': run, 'train': run}, facts). The forward runs the model in
  eval mode under no_grad; forward+backward in train mode (a ResNet stays in eval mode: its
  BatchNorm is frozen, as ours)."""
  import torch

  torch.set_num_threads(_available_cores())
  if args.model in resnet.SIZES:
    from artstyle_jax.bench import torch_resnet
    model = torch_resnet.ResNet(resnet.SIZES[args.model])

    def last_stage(images):
      return model(images)[-1]
  else:
    import transformers
    depths, dims = convnext.SIZES[args.model]
    config = transformers.ConvNextConfig(depths=list(depths), hidden_sizes=list(dims),
                                         drop_path_rate=0.0)
    model = transformers.ConvNextModel(config)

    def last_stage(images):
      return model(images).last_hidden_state
  images = torch.from_numpy(
      np.random.default_rng(0).standard_normal((args.batch, 3, args.image_size, args.image_size),
                                               dtype=np.float32))
  train_mode = args.model not in resnet.SIZES

  def forward():
    model.eval()
    with torch.no_grad():
      model(images)

  def train():
    model.train(train_mode)
    model.zero_grad(set_to_none=True)
    last_stage(images).sum().backward()

  runs = {"forward": timing.timed(forward), "train": timing.timed(train)}
  return runs, {"threads": torch.get_num_threads(), "version": torch.__version__}


def _time(args) -> tuple[dict, dict | None]:
  """Median seconds of ours and PyTorch's (None with --no-torch) forward and forward+backward,
  each pair interleaved call by call."""
  sides = {"ours": _jax_runs(args)}
  if not args.no_torch:
    sides["torch"] = _torch_runs(args)
  for _, timings in sides.values():
    timings["train_s"] = None
  for kind in ("forward",) if args.forward_only else ("forward", "train"):
    medians = timing.interleaved_medians({side: runs[kind] for side, (runs, _) in sides.items()},
                                         args.steps, args.warmup)
    for side, (_, timings) in sides.items():
      timings[f"{kind}_s"] = medians[side]
  for _, timings in sides.values():
    timings["forward_images_per_s"] = args.batch / timings["forward_s"]
    timings["train_images_per_s"] = timings["train_s"] and args.batch / timings["train_s"]
  return sides["ours"][1], sides["torch"][1] if "torch" in sides else None


def _train_text(timings: dict) -> str:
  if timings["train_s"] is None:
    return ""
  return f"  forward+backward {timings['train_s']:.4f} s/it ({timings['train_images_per_s']:.1f} img/s)"


def depthwise_description(forms: forms_lib.Forms) -> str:
  """The depthwise convolution's form, e.g. 'shift, C++, fused with LayerNorm'."""
  if forms.fused_block:
    return "shift, C++, fused with LayerNorm"
  if forms.depthwise == "shift":
    return "shift, C++" if forms.compiled_kernels else "shift, XLA"
  return forms.depthwise


def main(argv: list[str]) -> int:
  args = _parse(argv)
  forms = None if args.model in resnet.SIZES else model_forms(args)
  result = {"benchmark": "backbone", "model": args.model, "image_size": args.image_size,
            "batch": args.batch, "steps": args.steps, "dtype": args.dtype,
            "backend": jax.default_backend(), "depthwise": "" if forms is None else depthwise_description(forms),
            "forms": None if forms is None else forms.as_dict(), "cores": _available_cores()}
  forms_text = "" if forms is None else (f", depthwise={result['depthwise']}, mlp_grad={forms.mlp_grad}, "
                                         f"patchify={forms.patchify}")
  print(f"{args.model} {args.image_size}px batch {args.batch}, {result['cores']} cores, "
        f"JAX on {result['backend']} ({args.dtype}{forms_text})")
  ours, theirs = _time(args)
  result["jax"] = ours
  print(f"  jax    forward {ours['forward_s']:.4f} s/it ({ours['forward_images_per_s']:.1f} img/s)"
        + _train_text(ours) + f"  first calls incl. compile {ours['first_call_s']:.1f} s")
  if args.no_torch:
    result["torch"] = None
  else:
    result["torch"] = theirs
    result["forward_speedup"] = theirs["forward_s"] / ours["forward_s"]
    result["train_speedup"] = None if args.forward_only else theirs["train_s"] / ours["train_s"]
    print(f"  torch  forward {theirs['forward_s']:.4f} s/it ({theirs['forward_images_per_s']:.1f} "
          f"img/s)" + _train_text(theirs) + f"  {theirs['threads']} threads")
    print(f"  speed-up of ours over PyTorch (>1 is faster): forward {result['forward_speedup']:.2f}x"
          + ("" if args.forward_only else f", forward+backward {result['train_speedup']:.2f}x"))
  print(json.dumps(result))
  return 0
