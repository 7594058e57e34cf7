"""The checkpoints the authors' PyTorch code saves, read and checked.

The file is `torch.save({'model': state_dict, 'optimizer': SGD state_dict, 'epoch': int})`
(artstyle_jax/METHOD.md, "Other accidents in the published code"): the student (`net.net.<timm features-only
key>`, `head_q.*`), teacher W (`encoder_k.net.*`, `head_k.*`), teacher S (`encoder_style.net.*`,
`head_style.*`), the queue (D, K) and its pointer, and the student's SGD momentum buffers.
`read` returns them as float32 NumPy arrays in torch layout (`TorchCheckpoint`), or raises
`torch_weights.CheckpointError` listing what is missing or unexpected. Turning one into a train
state is `tools/import_torch.py`'s work; `backbones.load_backbone` takes its student backbone.
"""
from collections.abc import Mapping, Sequence
import dataclasses
from typing import Any

import numpy as np

from artstyle_jax.models import convnext
from artstyle_jax.models import torch_weights
from artstyle_jax.models.torch_weights import CheckpointError
from artstyle_jax.models.torch_weights import describe

# Key prefixes of each network in the authors' model state_dict: (backbone, head).
NETWORK_PREFIXES = {
    "student": ("net.net.", "head_q."),
    "weak": ("encoder_k.net.", "head_k."),
    "style": ("encoder_style.net.", "head_style."),
}
HEAD_KEYS = ("linear.weight", "linear.bias", "out.weight", "out.bias")
QUEUE_KEYS = ("queue", "queue_ptr")
TOP_LEVEL_KEYS = ("model", "optimizer", "epoch")


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


def _split_model(model: Mapping[str, Any]) -> tuple[dict[str, TorchNetwork], list[str]]:
  """The model state_dict split by network; problems (missing, unexpected, inconsistent keys)."""
  problems = []
  non_tensors = [k for k, v in model.items() if not isinstance(v, torch_weights.torch_module().Tensor)]
  if non_tensors:
    problems.append(f"'model' entries that are not tensors: {describe(non_tensors)}")
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
      problems.append(f"missing {describe(missing_head)}")
    networks[name] = TorchNetwork(backbone, head)
  missing_queue = [k for k in QUEUE_KEYS if k not in model]
  if missing_queue:
    problems.append(f"missing {describe(missing_queue)}")
  unexpected = [k for k in model if k not in claimed]
  if unexpected:
    problems.append(f"unexpected model keys {describe(unexpected)}")
  if problems:
    return networks, problems

  student = networks["student"]
  for name in ("weak", "style"):
    teacher = networks[name]
    for part in ("backbone", "head"):
      prefix = NETWORK_PREFIXES[name][part == "head"]
      s, t = getattr(student, part), getattr(teacher, part)
      if s.keys() != t.keys():
        problems.append(f"{prefix}* has keys the student lacks ({describe(t.keys() - s.keys()) or 'none'}) "
                        f"and lacks keys the student has ({describe(s.keys() - t.keys()) or 'none'})")
        continue
      reshaped = [f"{prefix}{k} {tuple(t[k].shape)} (student {tuple(s[k].shape)})"
                  for k in s if tuple(s[k].shape) != tuple(t[k].shape)]
      if reshaped:
        problems.append(f"teacher shapes differ from the student's: {describe(reshaped)}")
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
  checkpoint = torch_weights.load(path)
  if not isinstance(checkpoint, Mapping):
    raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not the authors' checkpoint dict "
                          f"with {list(TOP_LEVEL_KEYS)}")
  missing = [k for k in TOP_LEVEL_KEYS if k not in checkpoint]
  unexpected = [str(k) for k in checkpoint if k not in TOP_LEVEL_KEYS]
  if missing or unexpected:
    raise CheckpointError(f"{path} is not a checkpoint of the authors' code (expected exactly the keys "
                          f"{', '.join(TOP_LEVEL_KEYS)}): missing {', '.join(missing) or 'nothing'}; "
                          f"unexpected {describe(unexpected) or 'nothing'}")
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
    return {k: torch_weights.float32(buffers[prefix + k]) if prefix + k in buffers else np.zeros(v.shape, np.float32)
            for k, v in part.items()}

  backbone_prefix, head_prefix = NETWORK_PREFIXES["student"]
  student = networks["student"]
  return TorchCheckpoint(
      networks={name: TorchNetwork({k: torch_weights.float32(v) for k, v in n.backbone.items()},
                                   {k: torch_weights.float32(v) for k, v in n.head.items()})
                for name, n in networks.items()},
      momentum=TorchNetwork(momentum_of(backbone_prefix, student.backbone), momentum_of(head_prefix, student.head)),
      queue=torch_weights.float32(model["queue"]),
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
