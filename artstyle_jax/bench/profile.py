"""Where the backbone's time goes, per kind of op, ours (XLA) against PyTorch's.

  python -m artstyle_jax.bench profile [--model convnext_tiny] [--image-size 224] [--batch 8]
      [--steps 3] [--depthwise auto] [--no-torch]

Ours: the jitted forward and forward+backward programs (as `bench backbone`) run under
`jax.profiler.trace`; every executed XLA thunk (a fusion, a dot, a copy; named as its HLO
instruction) is attributed to the model layers its HLO metadata names (`conv_dw`, `norm`, `fc1`,
...) and to the backward pass when its name stack is a `transpose(...)` of the forward. A fusion
spanning several kinds is counted under their joint name (e.g. 'LayerNorm+pointwise Dense').
PyTorch: `torch.profiler` self CPU time of each aten op, by op name (convolutions by the shape of
their weight: (C, 1, 7, 7) is the depthwise one); its backward is the forward+backward run minus
the forward run. Seconds per iteration, median-free (the total over `--steps` runs / steps).
Prints a table, then one JSON line.
"""
import collections
import glob
import gzip
import json
import os
import re
import tempfile

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from artstyle_jax import cli
from artstyle_jax.models import convnext
from artstyle_jax.models import forms as forms_lib

DEPTHWISE, NORM, GELU, DENSE, PATCHIFY, TRANSPOSE, OTHER = (
    "7x7 depthwise", "LayerNorm", "GELU", "pointwise Dense", "stem/downsample conv",
    "transposes/copies", "other elementwise")

# Our layer names in the HLO name stack -> kind, in order of precedence.
_LAYER_KINDS = ((r"/conv_dw/", DEPTHWISE), (r"/(stem_conv|downsample_conv)/", PATCHIFY),
                (r"/fc[12]/", DENSE), (r"/(norm|stem_norm|downsample_norm)/", NORM),
                (r"/erf(_inv)?$", GELU))
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = .*? ([\w-]+)\(")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%(\S+) ")
_CONTAINERS = ("while", "conditional", "call")


def _parse(argv):
  flag_values = flags.FlagValues()
  flags.DEFINE_enum("model", "convnext_tiny", sorted(convnext.SIZES), "ConvNeXt size", flag_values=flag_values)
  flags.DEFINE_integer("image-size", 224, "image side, pixels", flag_values=flag_values)
  flags.DEFINE_integer("batch", 8, "images per call", flag_values=flag_values)
  flags.DEFINE_integer("steps", 3, "profiled iterations (after one warm-up)", flag_values=flag_values)
  flags.DEFINE_enum("depthwise", "auto", ("auto", "conv", "shift"), "depthwise convolution's form",
                    flag_values=flag_values)
  flags.DEFINE_bool("no-torch", False, "profile ours only", flag_values=flag_values)
  args = cli.parse_command(argv, flag_values, __doc__)
  if args.steps < 1 or args.batch < 1:
    cli.fail("--steps and --batch must be >= 1")
  return args


def hlo_instruction_kinds(hlo_text: str) -> dict[str, tuple[str, bool]]:
  """Instruction name -> (kind, is_backward) for every non-container instruction of a compiled
  module's text, from the op_name metadata of it and of the computations it calls."""
  computation = None
  ops_of = collections.defaultdict(list)  # computation -> [(opcode, op_name, called)]
  instructions = {}
  for line in hlo_text.splitlines():
    if (start := _COMPUTATION.match(line)) and line.rstrip().endswith("{"):
      computation = start.group(1)
      continue
    found = _INSTRUCTION.match(line)
    if not found or computation is None:
      continue
    name, opcode = found.groups()
    op_name = re.search(r'op_name="([^"]*)"', line)
    called = re.findall(r"(?:calls|to_apply|body)=%([\w.-]+)", line)
    entry = (opcode, op_name.group(1) if op_name else "", called)
    ops_of[computation].append(entry)
    instructions[name] = entry

  def op_names(entry, seen):
    opcode, op_name, called = entry
    names = [(opcode, op_name)]
    for callee in called:
      if callee not in seen:
        seen.add(callee)
        for inner in ops_of.get(callee, ()):
          names += op_names(inner, seen)
    return names

  kinds = {}
  for name, entry in instructions.items():
    if entry[0] in _CONTAINERS:
      continue
    found = set()
    names = op_names(entry, set())
    for opcode, op_name in names:
      kind = next((k for pattern, k in _LAYER_KINDS if re.search(pattern, op_name)), None)
      if kind is None and opcode in ("transpose", "copy"):
        kind = TRANSPOSE
      if kind is not None:
        found.add(kind)
    kind = "+".join(sorted(found)) if found else OTHER
    kinds[name] = (kind, any("transpose(" in op_name for _, op_name in names))
  return kinds


def _thunk_seconds(run, steps: int) -> collections.Counter:
  """Total seconds per executed thunk name over `steps` calls of `run`, from a profiler trace."""
  with tempfile.TemporaryDirectory(prefix="artstyle_profile_") as directory:
    with jax.profiler.trace(directory, create_perfetto_trace=True):
      for _ in range(steps):
        run()
    trace, = glob.glob(os.path.join(directory, "**", "perfetto_trace.json.gz"), recursive=True)
    with gzip.open(trace) as f:
      events = json.load(f)["traceEvents"]
  seconds = collections.Counter()
  for event in events:
    if event.get("ph") == "X" and "dur" in event:
      seconds[event["name"]] += event["dur"] * 1e-6
  return seconds


def _model_forms(args) -> forms_lib.Forms:
  """The forms of the profiled float32 ConvNeXt, 'auto' chosen for the default device's platform."""
  return forms_lib.resolve(forms_lib.platform_of(jax.devices()[0]), jnp.float32, depthwise=args.depthwise)


def _profile_jax(args, forms: forms_lib.Forms) -> dict[str, dict[str, float]]:
  module = convnext.create(args.model, forms=forms)
  images = jax.random.normal(jax.random.key(0), (args.batch, args.image_size, args.image_size, 3))
  params = jax.jit(module.init)(jax.random.key(1), images)
  forward = jax.jit(lambda p, x: module.apply(p, x)).lower(params, images).compile()
  train = jax.jit(jax.grad(lambda p, x: jnp.sum(module.apply(p, x, train=True)[-1]))).lower(
      params, images).compile()
  out = {}
  for label, program in (("forward", forward), ("forward+backward", train)):
    kinds = hlo_instruction_kinds(program.as_text())
    jax.block_until_ready(program(params, images))
    seconds = _thunk_seconds(lambda: jax.block_until_ready(program(params, images)), args.steps)
    by_kind = collections.Counter()
    for name, total in seconds.items():
      if name in kinds:
        kind, backward = kinds[name]
        by_kind[(kind, backward)] += total / args.steps
    if label == "forward":
      out["forward"] = {kind: s for (kind, _), s in by_kind.items()}
    else:
      out["train_forward"] = {kind: s for (kind, backward), s in by_kind.items() if not backward}
      out["train_backward"] = {kind: s for (kind, backward), s in by_kind.items() if backward}
  return out


def _torch_kind(name: str, shapes) -> str:
  if "convolution" in name or "conv2d" in name:
    weights = [s for s in shapes if len(s) == 4]
    return DEPTHWISE if any(s[1] == 1 and s[2:] == [7, 7] for s in weights) else PATCHIFY
  if "layer_norm" in name:
    return NORM
  if "gelu" in name:
    return GELU
  if re.search(r"aten::(addmm|mm|bmm|matmul|linear)$", name):
    return DENSE
  if re.search(r"aten::(permute|contiguous|copy_|clone|transpose|t)$", name):
    return TRANSPOSE
  return OTHER


def _profile_torch(args) -> dict[str, dict[str, float]]:
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
  depths, dims = convnext.SIZES[args.model]
  model = transformers.ConvNextModel(transformers.ConvNextConfig(
      depths=list(depths), hidden_sizes=list(dims), drop_path_rate=0.0)).train()
  images = torch.from_numpy(np.random.default_rng(0).standard_normal(
      (args.batch, 3, args.image_size, args.image_size), dtype=np.float32))

  def forward():
    model(images)

  def train():
    model.zero_grad(set_to_none=True)
    model(images).last_hidden_state.sum().backward()

  out = {}
  for label, run in (("forward", forward), ("forward+backward", train)):
    run()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                record_shapes=True) as profiler:
      for _ in range(args.steps):
        run()
    by_kind = collections.Counter()
    for event in profiler.key_averages(group_by_input_shape=True):
      by_kind[_torch_kind(event.key, event.input_shapes)] += event.self_cpu_time_total * 1e-6 / args.steps
    out[label] = dict(by_kind)
  out["backward"] = {kind: out["forward+backward"].get(kind, 0.0) - out["forward"].get(kind, 0.0)
                     for kind in out["forward+backward"]}
  return out


def _cell(table: dict, kind: str) -> str:
  return f"{table[kind]:.3f}" if kind in table else "-"


def main(argv) -> int:
  args = _parse(argv)
  forms = _model_forms(args)
  result = {"benchmark": "profile", "model": args.model, "image_size": args.image_size,
            "batch": args.batch, "steps": args.steps, "depthwise": forms.depthwise, "forms": forms.as_dict()}
  ours = _profile_jax(args, forms)
  result["jax"] = ours
  theirs = None if args.no_torch else _profile_torch(args)
  result["torch"] = theirs
  columns = [("ours fwd", ours["forward"]), ("ours fwd (in fwd+bwd)", ours["train_forward"]),
             ("ours bwd", ours["train_backward"])]
  if theirs is not None:
    columns += [("PyTorch fwd", theirs["forward"]), ("PyTorch bwd", theirs["backward"])]
  kinds = sorted(set().union(*(table for _, table in columns)),
                 key=lambda k: -sum(table.get(k, 0.0) for _, table in columns))
  print(f"{args.model} {args.image_size}px batch {args.batch}: seconds per iteration by kind of op")
  print("| kind | " + " | ".join(name for name, _ in columns) + " |")
  print("| --- |" + " --- |" * len(columns))
  for kind in kinds:
    print(f"| {kind} | " + " | ".join(_cell(table, kind) for _, table in columns) + " |")
  print("| total | " + " | ".join(f"{sum(table.values()):.3f}" for _, table in columns) + " |")
  print(json.dumps(result))
  return 0
