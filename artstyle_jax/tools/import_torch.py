"""Imports a checkpoint of the authors' PyTorch code as a workdir that eval, predict and train use.

  python -m artstyle_jax.tools.import_torch CHECKPOINT.pth --workdir=DIR \
      [--iters_per_epoch=N | --step=N] [--config=configs/paper.py] [--config.key=value ...]

The file is `torch.save({'model': state_dict, 'optimizer': SGD state_dict, 'epoch': int})`
(METHOD.md, "Other accidents in the published code"). It becomes the TrainState of a fresh
workdir, written as config.json and checkpoints/<step>/ with the single item 'state':

  net.net.<timm features-only key>, head_q.*      -> params (the student)
  encoder_k.net.*, head_k.*                       -> teachers['weak'] (teacher W)
  encoder_style.net.*, head_style.*               -> teachers['style'] (teacher S); when the two
                                                     teachers are identical one copy serves both
  queue (D, K), queue_ptr (1,) int64              -> queue (K, D), queue_ptr () int32
  the student's SGD momentum buffers              -> the momentum trace of opt_state (zero where
                                                     torch has none: torch starts a buffer at
                                                     the first gradient, which equals a zero one)
  epoch                                           -> step = epoch * iters_per_epoch

The config is `--config` (default configs/paper.py) with its overrides, and what the checkpoint
fixes: model.name (the ConvNeXt size, from the backbone's shapes), model.proj_hidden_dim and
model.proj_dim (from the heads), queue_size (K), optim.momentum and optim.weight_decay (from the
SGD state unless overridden), and share_teachers=False when the two teachers differ. An override
that contradicts the checkpoint's shapes is refused. The teachers' momenta are the config's.

Step. 'epoch' counts the epochs the authors' run completed (their loop resumes at it), so the
imported run stands at `epoch * iters_per_epoch`, iters_per_epoch being what train.py will count:
the training split's size // batch_size, read from the config's dataset when
--config.dataset.data_dir is given. Otherwise pass it with --iters_per_epoch, or give the step
itself with --step. The optimiser's step count in opt_state is set to the same step, so the learning
rate schedule continues where the authors' stopped (for the same batch size, epochs and warm-up).
The drop-path PRNG key is `fold_in(PRNGKey(config.seed), step)`.
"""
from collections.abc import Mapping, Sequence
import dataclasses
import functools
import pathlib
import shlex
import sys
from typing import Any

from absl import app
from absl import flags
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import optax

from artstyle_jax import checkpoints
from artstyle_jax import config_lib
from artstyle_jax import optim
from artstyle_jax import paths
from artstyle_jax import state as state_lib
from artstyle_jax import step as step_lib
from artstyle_jax.data import pipeline
from artstyle_jax.data import sources
from artstyle_jax.models import convnext

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "paper.py"

# Key prefixes of each network in the authors' model state_dict: (backbone, head).
NETWORK_PREFIXES = {
    "student": ("net.net.", "head_q."),
    "weak": ("encoder_k.net.", "head_k."),
    "style": ("encoder_style.net.", "head_style."),
}
HEAD_KEYS = ("linear.weight", "linear.bias", "out.weight", "out.bias")
QUEUE_KEYS = ("queue", "queue_ptr")
TOP_LEVEL_KEYS = ("model", "optimizer", "epoch")


class CheckpointError(ValueError):
  """A file that is not a checkpoint of the authors' code, or one this importer cannot represent."""


@dataclasses.dataclass(frozen=True)
class TorchNetwork:
  """One network's tensors as float32 NumPy arrays, in torch layout.

  Attributes:
    backbone: timm features-only keys ('stem_0.weight', 'stages_1.downsample.1.weight', ...).
    head: 'linear.weight' (H, C), 'linear.bias' (H,), 'out.weight' (D, H), 'out.bias' (D,).
  """
  backbone: dict[str, np.ndarray]
  head: dict[str, np.ndarray]

  def equals(self, other: "TorchNetwork") -> bool:
    pairs = [(self.backbone, other.backbone), (self.head, other.head)]
    return all(a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a) for a, b in pairs)


@dataclasses.dataclass(frozen=True)
class TorchCheckpoint:
  """The parts of an authors' checkpoint, checked for completeness and consistent shapes.

  Attributes:
    networks: 'student', 'weak' (teacher W) and 'style' (teacher S).
    momentum: the student's SGD momentum buffers, zeros where the file has none.
    queue: (D, K) float32, keys as columns (the published layout).
    queue_ptr: column where the next keys are written.
    epoch: the checkpoint's 'epoch'.
    sgd_momentum, weight_decay: the SGD hyper-parameters the file was trained with.
  """
  networks: dict[str, TorchNetwork]
  momentum: TorchNetwork
  queue: np.ndarray
  queue_ptr: int
  epoch: int
  sgd_momentum: float
  weight_decay: float


def _torch():
  """The torch module: only reading checkpoints needs it, so it is no dependency of artstyle_jax."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise CheckpointError("reading PyTorch checkpoints needs torch (the CPU build is enough): "
                          "pip install torch") from e
  return torch


def _float32(tensor: Any) -> np.ndarray:
  return tensor.detach().to(device="cpu", dtype=_torch().float32).numpy()


def _load(path: str) -> Any:
  torch = _torch()
  if not epath.Path(path).exists():
    raise FileNotFoundError(f"no such checkpoint file: {path}")
  try:
    with epath.Path(path).open("rb") as f:
      return torch.load(f, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"{path} is not a PyTorch checkpoint torch.load can read "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e


def _describe(keys: Sequence[str], limit: int = 8) -> str:
  keys = sorted(keys)
  shown = ", ".join(keys[:limit])
  return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def _split_model(model: Mapping[str, Any]) -> tuple[dict[str, TorchNetwork], list[str]]:
  """The model state_dict split by network; problems (missing, unexpected, inconsistent keys)."""
  problems = []
  non_tensors = [k for k, v in model.items() if not isinstance(v, _torch().Tensor)]
  if non_tensors:
    problems.append(f"'model' entries that are not tensors: {_describe(non_tensors)}")
  claimed = set(QUEUE_KEYS)
  networks = {}
  for name, (backbone_prefix, head_prefix) in NETWORK_PREFIXES.items():
    backbone = {k[len(backbone_prefix):]: v for k, v in model.items() if k.startswith(backbone_prefix)}
    head = {k[len(head_prefix):]: v for k, v in model.items()
            if k.startswith(head_prefix) and k[len(head_prefix):] in HEAD_KEYS}
    claimed.update(backbone_prefix + k for k in backbone)
    claimed.update(head_prefix + k for k in head)
    if not backbone:
      problems.append(f"missing the backbone {backbone_prefix}*")
    missing_head = [head_prefix + k for k in HEAD_KEYS if k not in head]
    if missing_head:
      problems.append(f"missing {_describe(missing_head)}")
    networks[name] = TorchNetwork(backbone, head)
  missing_queue = [k for k in QUEUE_KEYS if k not in model]
  if missing_queue:
    problems.append(f"missing {_describe(missing_queue)}")
  unexpected = [k for k in model if k not in claimed]
  if unexpected:
    problems.append(f"unexpected model keys {_describe(unexpected)}")
  if problems:
    return networks, problems

  student = networks["student"]
  for name in ("weak", "style"):
    teacher = networks[name]
    for part in ("backbone", "head"):
      prefix = NETWORK_PREFIXES[name][part == "head"]
      s, t = getattr(student, part), getattr(teacher, part)
      if s.keys() != t.keys():
        problems.append(f"{prefix}* has keys the student lacks ({_describe(t.keys() - s.keys()) or 'none'}) "
                        f"and lacks keys the student has ({_describe(s.keys() - t.keys()) or 'none'})")
        continue
      reshaped = [f"{prefix}{k} {tuple(t[k].shape)} (student {tuple(s[k].shape)})"
                  for k in s if tuple(s[k].shape) != tuple(t[k].shape)]
      if reshaped:
        problems.append(f"teacher shapes differ from the student's: {_describe(reshaped)}")
  return networks, problems


def _check_head_and_queue(head: Mapping[str, Any], queue: Any, queue_ptr: Any) -> list[str]:
  shapes = {k: tuple(v.shape) for k, v in head.items()}
  if len(shapes["linear.weight"]) != 2 or len(shapes["out.weight"]) != 2:
    return [f"head weights are not matrices: {shapes}"]
  hidden, _ = shapes["linear.weight"]
  dim, out_in = shapes["out.weight"]
  problems = []
  if (shapes["linear.bias"], out_in, shapes["out.bias"]) != ((hidden,), hidden, (dim,)):
    problems.append(f"head layers do not chain (Linear(C -> H) then Linear(H -> D)): {shapes}")
  if queue.ndim != 2 or queue.shape[0] != dim:
    problems.append(f"queue has shape {tuple(queue.shape)}, expected (D, K) with D={dim}, the heads' output")
  if tuple(queue_ptr.shape) != (1,) or queue_ptr.is_floating_point():
    problems.append(f"queue_ptr should be one integer, got a {queue_ptr.dtype} tensor of shape {tuple(queue_ptr.shape)}")
  elif queue.ndim == 2 and not 0 <= int(queue_ptr[0]) < queue.shape[1]:
    problems.append(f"queue_ptr {int(queue_ptr[0])} is outside the queue of {queue.shape[1]} keys")
  return problems


def _sgd_state(optimizer: Any, model: Mapping[str, Any]) -> tuple[dict[str, Any], float, float]:
  """The student's momentum buffers by model key, and the SGD momentum and weight decay.

  torch numbers the optimiser's parameters in the order they were given to it. The authors'
  code gives `model.parameters()`, whose order is the state_dict's with the buffers (queue,
  queue_ptr) left out; an optimiser given only the student's parameters is recognised too.
  """
  if not isinstance(optimizer, Mapping) or set(optimizer) != {"state", "param_groups"}:
    keys = sorted(optimizer) if isinstance(optimizer, Mapping) else type(optimizer).__name__
    raise CheckpointError(f"'optimizer' is not a torch optimizer state_dict with 'state' and 'param_groups': {keys}")
  groups = optimizer["param_groups"]
  hparams = {(g.get("momentum"), g.get("weight_decay"), g.get("dampening"), g.get("nesterov"), g.get("maximize"))
             for g in groups}
  if len(hparams) != 1:
    raise CheckpointError(f"the optimizer's parameter groups differ in momentum, weight decay, dampening, nesterov "
                          f"or maximize: {sorted(hparams, key=str)}; artstyle_jax's SGD has one setting for all")
  momentum, weight_decay, dampening, nesterov, maximize = hparams.pop()
  if momentum is None or weight_decay is None or dampening not in (0, 0.0) or nesterov or maximize:
    raise CheckpointError(f"the optimizer is not torch SGD with momentum, dampening 0, no Nesterov "
                          f"(momentum={momentum}, weight_decay={weight_decay}, dampening={dampening}, "
                          f"nesterov={nesterov}, maximize={maximize}); artstyle_jax's SGD cannot continue it")

  indices = [i for g in groups for i in g["params"]]
  parameters = [k for k in model if k not in QUEUE_KEYS]
  student = [k for k in parameters if k.startswith(NETWORK_PREFIXES["student"])]
  if len(indices) == len(parameters):
    order = parameters
  elif len(indices) == len(student):
    order = student
  else:
    raise CheckpointError(f"the optimizer holds {len(indices)} parameters, neither the model's {len(parameters)} "
                          f"nor the student's {len(student)}: its momentum buffers cannot be matched to tensors")
  key_of = dict(zip(indices, order))
  buffers, problems = {}, []
  for index, entry in optimizer["state"].items():
    buffer = entry.get("momentum_buffer") if isinstance(entry, Mapping) else None
    if buffer is None:
      continue
    key = key_of.get(index)
    if key is None or key not in student:
      problems.append(f"a momentum buffer for {key or f'parameter {index}'}, which is not the student's")
    elif tuple(buffer.shape) != tuple(model[key].shape):
      problems.append(f"the momentum buffer of {key} has shape {tuple(buffer.shape)}, the tensor {tuple(model[key].shape)}")
    else:
      buffers[key] = buffer
  if problems:
    raise CheckpointError("the optimizer state does not fit the model in the order torch gave them: "
                          + "; ".join(problems[:4]) + (f" ({len(problems)} in all)" if len(problems) > 4 else ""))
  return buffers, float(momentum), float(weight_decay)


def read(path: str) -> TorchCheckpoint:
  """Reads and checks an authors' checkpoint.

  Raises:
    FileNotFoundError: no such file.
    CheckpointError: not such a checkpoint; the message lists what is missing or unexpected.
  """
  checkpoint = _load(path)
  if not isinstance(checkpoint, Mapping):
    raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not the authors' checkpoint dict "
                          f"with {list(TOP_LEVEL_KEYS)}")
  missing = [k for k in TOP_LEVEL_KEYS if k not in checkpoint]
  unexpected = [str(k) for k in checkpoint if k not in TOP_LEVEL_KEYS]
  if missing or unexpected:
    raise CheckpointError(f"{path} is not a checkpoint of the authors' code (expected exactly the keys "
                          f"{', '.join(TOP_LEVEL_KEYS)}): missing {', '.join(missing) or 'nothing'}; "
                          f"unexpected {_describe(unexpected) or 'nothing'}")
  model, epoch = checkpoint["model"], checkpoint["epoch"]
  if not isinstance(model, Mapping):
    raise CheckpointError(f"{path}: 'model' is a {type(model).__name__}, not a state_dict")
  if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
    raise CheckpointError(f"{path}: 'epoch' is {epoch!r}, not a non-negative integer")
  networks, problems = _split_model(model)
  if not problems:
    problems = _check_head_and_queue(networks["student"].head, model["queue"], model["queue_ptr"])
  if problems:
    raise CheckpointError(f"{path} is not a checkpoint of the authors' code: " + "; ".join(problems))
  buffers, sgd_momentum, weight_decay = _sgd_state(checkpoint["optimizer"], model)

  def momentum_of(prefix, part):
    return {k: _float32(buffers[prefix + k]) if prefix + k in buffers else np.zeros(v.shape, np.float32)
            for k, v in part.items()}

  backbone_prefix, head_prefix = NETWORK_PREFIXES["student"]
  student = networks["student"]
  return TorchCheckpoint(
      networks={name: TorchNetwork({k: _float32(v) for k, v in n.backbone.items()},
                                   {k: _float32(v) for k, v in n.head.items()})
                for name, n in networks.items()},
      momentum=TorchNetwork(momentum_of(backbone_prefix, student.backbone), momentum_of(head_prefix, student.head)),
      queue=_float32(model["queue"]),
      queue_ptr=int(model["queue_ptr"][0]),
      epoch=epoch,
      sgd_momentum=sgd_momentum,
      weight_decay=weight_decay,
  )


def model_name(depths: Sequence[int], dims: Sequence[int]) -> str:
  """The config model.name of the ConvNeXt with these stage depths and widths."""
  for name, (size_depths, size_dims) in convnext.SIZES.items():
    if (tuple(size_depths), tuple(size_dims)) == (tuple(depths), tuple(dims)):
      return name
  raise CheckpointError(f"the checkpoint's ConvNeXt (depths {tuple(depths)}, dims {tuple(dims)}) is none of the "
                        f"sizes artstyle_jax knows: {', '.join(convnext.SIZES)}")


def checkpoint_config(
    checkpoint: TorchCheckpoint, config: ml_collections.ConfigDict, overridden: Sequence[str] = ()
) -> ml_collections.ConfigDict:
  """`config` with what the checkpoint fixes (see the module docstring), validated.

  Args:
    overridden: the dotted keys the user set on the command line. Those of optim.momentum and
      optim.weight_decay win over the checkpoint; those of the state's shapes must agree with it.

  Raises:
    CheckpointError: an override contradicts the checkpoint.
    ConfigError: the resulting config is unusable (e.g. K not a multiple of batch_size).
  """
  try:
    module, _ = convnext.from_timm(checkpoint.networks["student"].backbone)
  except ValueError as e:
    raise CheckpointError(f"the student backbone {NETWORK_PREFIXES['student'][0]}* is not a timm ConvNeXt: {e}") from e
  hidden_dim, _ = checkpoint.networks["student"].head["linear.weight"].shape
  proj_dim, queue_size = checkpoint.queue.shape
  fixed = {
      "model.name": model_name(module.depths, module.dims),
      "model.proj_hidden_dim": hidden_dim,
      "model.proj_dim": proj_dim,
      "queue_size": queue_size,
  }
  if not checkpoint.networks["weak"].equals(checkpoint.networks["style"]):
    fixed["share_teachers"] = False
  trained_with = {"optim.momentum": checkpoint.sgd_momentum, "optim.weight_decay": checkpoint.weight_decay}

  config = config.copy_and_resolve_references()
  contradicting = [f"--config.{key}={_get(config, key)!r} (the checkpoint has {value!r})"
                   for key, value in fixed.items() if key in overridden and _get(config, key) != value]
  if contradicting:
    raise CheckpointError(f"overrides contradict the checkpoint: {'; '.join(contradicting)}"
                          + ("; its two teachers differ, so they need two copies" if "share_teachers" in fixed
                             and "share_teachers" in overridden else ""))
  for key, value in {**trained_with, **fixed}.items():
    if key not in overridden:
      _set(config, key, value)
  return config_lib.validate(config)


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
  *parents, leaf = dotted.split(".")
  for part in parents:
    config = config[part]
  return config[leaf]


def _set(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  *parents, leaf = dotted.split(".")
  for part in parents:
    config = config[part]
  config[leaf] = value


def train_steps_per_epoch(config: ml_collections.ConfigDict) -> int | None:
  """Steps per epoch as train.py counts them (the training split's size // batch_size); None when
  the config names no dataset directory."""
  if not config.dataset.data_dir:
    return None
  try:
    source = sources.open_split(config.dataset.name, config.dataset.data_dir, config.dataset.train_split)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from e
  return pipeline.steps_per_epoch(len(source), config.batch_size)


def import_step(checkpoint: TorchCheckpoint, config: ml_collections.ConfigDict, *,
                iters_per_epoch: int | None = None, step: int | None = None) -> int:
  """The imported state's step: `step` when given, else `epoch * iters_per_epoch` (0 at epoch 0),
  iters_per_epoch defaulting to what train.py will count on the config's dataset."""
  if step is not None and iters_per_epoch is not None:
    raise CheckpointError("give either --step or --iters_per_epoch, not both")
  if step is not None:
    if step < 0:
      raise CheckpointError(f"--step must be non-negative, got {step}")
    return step
  if checkpoint.epoch == 0:
    return 0
  if iters_per_epoch is None:
    iters_per_epoch = train_steps_per_epoch(config)
  if iters_per_epoch is None:
    raise CheckpointError(f"the checkpoint is at epoch {checkpoint.epoch}; to know the step, give "
                          "--config.dataset.data_dir (steps per epoch as train.py counts them), --iters_per_epoch "
                          "or --step")
  if iters_per_epoch < 1:
    raise CheckpointError(f"--iters_per_epoch must be positive, got {iters_per_epoch}")
  return checkpoint.epoch * iters_per_epoch


def _head_params(head: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
  """torch Linear (out, in) weights as flax Dense (in, out) kernels."""
  return {layer: {"kernel": np.ascontiguousarray(head[f"{layer}.weight"].T), "bias": head[f"{layer}.bias"]}
          for layer in ("linear", "out")}


def to_state(checkpoint: TorchCheckpoint, config: ml_collections.ConfigDict, step: int) -> state_lib.TrainState:
  """The TrainState of `config` (from `checkpoint_config`) holding the checkpoint at `step`.

  Raises:
    CheckpointError: the converted arrays do not have the shapes of the config's state.
  """
  backbone, head = step_lib.build_backbone(config), step_lib.build_head(config)
  # The optimiser state's structure does not depend on the schedule's length.
  optimizer, _ = optim.create(config, steps_per_epoch=1)

  def network(n: TorchNetwork, name: str):
    try:
      backbone_params = convnext.params_from_timm(backbone, n.backbone)
    except ValueError as e:
      raise CheckpointError(f"{NETWORK_PREFIXES[name][0]}* does not fit {config.model.name}: {e}") from e
    return {"backbone": backbone_params, "head": _head_params(n.head)}

  params = network(checkpoint.networks["student"], "student")
  opt_state = optax.tree_utils.tree_set(
      optimizer.init(params), trace=network(checkpoint.momentum, "student"), count=jnp.asarray(step, jnp.int32))
  state = state_lib.TrainState(
      step=jnp.asarray(step, jnp.int32),
      params=params,
      teachers={name: network(checkpoint.networks[name], name) for name in state_lib.teacher_names(config)},
      opt_state=opt_state,
      queue=jnp.asarray(checkpoint.queue.T),
      queue_ptr=jnp.asarray(checkpoint.queue_ptr, jnp.int32),
      rng=jax.random.fold_in(jax.random.PRNGKey(config.seed), step),
  )
  state = jax.tree.map(jnp.asarray, state)
  abstract = jax.eval_shape(functools.partial(
      state_lib.create, config=config, backbone=backbone, head=head, optimizer=optimizer), jax.random.PRNGKey(0))
  _check_fits(state, abstract)
  return state


def _check_fits(state: state_lib.TrainState, abstract: state_lib.TrainState) -> None:
  got = jax.tree_util.tree_flatten_with_path(jax.tree.map(lambda x: (x.shape, x.dtype), state))
  want = jax.tree_util.tree_flatten_with_path(jax.tree.map(lambda x: (x.shape, x.dtype), abstract))
  def names(leaves):
    return {jax.tree_util.keystr(path) for path, _ in leaves[0]}

  if jax.tree.structure(state) != jax.tree.structure(abstract):
    raise CheckpointError(f"the converted state's layout differs from the model's: it has "
                          f"{_describe(names(got) - names(want)) or 'nothing'} extra and lacks "
                          f"{_describe(names(want) - names(got)) or 'nothing'}")
  differing = [f"{jax.tree_util.keystr(path)} {g} (model {w})"
               for (path, g), (_, w) in zip(got[0], want[0]) if g != w]
  if differing:
    raise CheckpointError(f"converted arrays differ in shape or dtype from the model's: {_describe(differing, 4)}")


def check_new_workdir(workdir: str) -> None:
  """Raises WorkdirError when the workdir already holds a config or checkpoints."""
  path = epath.Path(workdir)
  checkpoint_dir = path / checkpoints.CHECKPOINT_DIR
  if (path / checkpoints.CONFIG_FILE).exists() or (checkpoint_dir.exists() and any(checkpoint_dir.iterdir())):
    raise checkpoints.WorkdirError(f"{workdir} already holds a run ({checkpoints.CONFIG_FILE} or checkpoints); "
                                   "import into a new --workdir (nothing was overwritten)")


def import_checkpoint(
    path: str,
    workdir: str,
    config: ml_collections.ConfigDict,
    overridden: Sequence[str] = (),
    *,
    iters_per_epoch: int | None = None,
    step: int | None = None,
) -> tuple[ml_collections.ConfigDict, state_lib.TrainState]:
  """Converts the authors' checkpoint at `path` into a new `workdir`; returns (config, state).

  Everything is read and converted before the workdir is touched, so a refused import leaves
  nothing behind.
  """
  check_new_workdir(workdir)
  checkpoint = read(path)
  config = checkpoint_config(checkpoint, config, overridden)
  step = import_step(checkpoint, config, iters_per_epoch=iters_per_epoch, step=step)
  state = to_state(checkpoint, config, step)
  check_new_workdir(workdir)  # Again: a large conversion takes a while, and someone may have started a run.
  checkpoints.save_config(workdir, config)
  with checkpoints.manager(workdir) as mngr:
    checkpoints.save(mngr, step, state, force=True)
    mngr.wait_until_finished()
  return config, state


def _define_flags() -> None:
  """The program's flags; defined only when it runs as a program, so that importing the converter
  does not claim flag names (config, workdir, step) that the other programs define too."""
  config_flags.DEFINE_config_file("config", str(DEFAULT_CONFIG), "Config the imported run continues with.")
  paths.DEFINE_path("workdir", None, "New directory for the imported run.", required=True)
  flags.DEFINE_integer("iters_per_epoch", None, "Steps per epoch: the step is epoch * iters_per_epoch. "
                       "Default: counted on the config's dataset as train.py counts them.")
  flags.DEFINE_integer("step", None, "The imported state's step, instead of epoch * iters_per_epoch.")


def main(argv):
  if len(argv) != 2:
    raise app.UsageError(f"give exactly one checkpoint file, got {argv[1:]}")
  flag_values = flags.FLAGS
  overridden = tuple(config_flags.get_override_values(flag_values["config"]))
  try:
    config, state = import_checkpoint(paths.resolve(argv[1]), flag_values.workdir, flag_values.config, overridden,
                                      iters_per_epoch=flag_values.iters_per_epoch, step=flag_values.step)
  except (CheckpointError, config_lib.ConfigError, checkpoints.WorkdirError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  config_file = config_flags.get_config_filename(flag_values["config"])
  print(f"imported {argv[1]} into {flag_values.workdir}: {config.model.name}, step {int(state.step)}, "
        f"teacher copies {' and '.join(state.teachers)}, queue {config.queue_size} x {config.model.proj_dim}\n"
        f"continue training with: {continue_command(config_file, config, flag_values.workdir)}")


def continue_command(config_file: str, config: ml_collections.ConfigDict, workdir: str) -> str:
  """The train.py command line that continues the imported run: `config_file` with an override
  for every key where the imported config differs from it."""
  base = config_lib.flatten(config_lib.load(config_file).to_dict())
  overrides = [f"--config.{key}={value}" for key, value in sorted(config_lib.flatten(config.to_dict()).items())
               if base.get(key) != value]
  return shlex.join(["python", "-m", "artstyle_jax.train", f"--config={config_file}", f"--workdir={workdir}",
                     *overrides])


if __name__ == "__main__":
  _define_flags()
  app.run(main)
