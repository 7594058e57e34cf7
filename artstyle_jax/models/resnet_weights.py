"""ResNet weights from the layouts the public self-supervised checkpoints use.

`from_state_dict` takes a checkpoint's state dict (NumPy arrays), recognised by its keys:

  torchvision    conv1.weight, bn1.*, layer1.0.conv1.weight, ... [fc.*]   (Barlow Twins, VICReg,
                                                                           DINO, BYOL/SimCLR
                                                                           conversions, timm)
  moco           [state_dict] module.encoder_q.<torchvision key>          (MoCo v1/v2)
  mmselfsup      state_dict: backbone.<torchvision key>, neck.*, head.*    (MMSelfSup/MMPretrain)
  module         module.<torchvision key>, module.projection_head.*,       (SwAV, DeepCluster-v2)
                 module.prototypes.*

A file of any other layout is refused in one line that names the keys found
(`torch_weights.CheckpointError`).
"""
from collections.abc import Callable, Mapping, Sequence
import re
from typing import Any

import jax.numpy as jnp
import numpy as np

from artstyle_jax.models import torch_weights
from artstyle_jax.models.resnet import ResNet
from artstyle_jax.models.resnet import SIZES
from artstyle_jax.models.torch_weights import CheckpointError

_BLOCK = re.compile(r"layer(\d)\.(\d+)\.(.+)")
# BatchNorm's torch names (weight is `scale`, for a convolution `kernel`).
_BATCH_NORM_LEAVES = {"bias": "bias", "running_mean": "mean", "running_var": "var"}
_IGNORED_LEAVES = ("num_batches_tracked",)


def _our_path(key: str) -> tuple[tuple[str, ...], Callable[[np.ndarray], np.ndarray]] | None:
  """(path in our tree, conversion) of a torchvision backbone key; None for keys outside it."""
  module, _, leaf = key.rpartition(".")
  found = _BLOCK.fullmatch(module)
  if found:
    stage, block, inner = found.groups()
    prefix = (f"layer{stage}_{block}",)
    inner = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}.get(inner, inner)
  elif module in ("conv1", "bn1"):
    prefix, inner = (), module
  else:
    return None
  if inner not in ("conv1", "conv2", "conv3", "bn1", "bn2", "bn3", "downsample_conv", "downsample_bn"):
    return None
  is_conv = "conv" in inner
  if leaf == "weight":
    return prefix + (inner, "kernel" if is_conv else "scale"), torch_weights.conv_kernel if is_conv else torch_weights.same
  if leaf in _BATCH_NORM_LEAVES and not is_conv:
    return prefix + (inner, _BATCH_NORM_LEAVES[leaf]), torch_weights.same
  return None


def stage_sizes_of(state_dict: Mapping[str, Any]) -> tuple[int, ...]:
  """Blocks per stage from torchvision keys (layer<s>.<b>.*)."""
  blocks: dict[int, set[int]] = {}
  for key in state_dict:
    found = _BLOCK.match(key)
    if found:
      blocks.setdefault(int(found.group(1)), set()).add(int(found.group(2)))
  sizes = tuple(len(blocks.get(stage, ())) for stage in (1, 2, 3, 4))
  if sorted(blocks) != [1, 2, 3, 4] or any(sorted(b) != list(range(len(b))) for b in blocks.values()):
    raise CheckpointError(f"cannot read the stages of a ResNet from the keys: blocks per layer {sizes}")
  if sizes not in SIZES.values():
    raise CheckpointError(f"a ResNet with {sizes} bottleneck blocks per stage is none of "
                          + ", ".join(f"{n} {s}" for n, s in SIZES.items()))
  return sizes


def params_from_torchvision(module: ResNet, state_dict: Mapping[str, np.ndarray]) -> dict:
  """`module`'s parameter tree from a torchvision-keyed backbone state dict (numpy arrays, no fc).

  Raises:
    CheckpointError: naming the unexpected, missing and wrongly shaped keys; nothing partial.
  """
  state_dict = {k: v for k, v in state_dict.items() if k.rpartition(".")[2] not in _IGNORED_LEAVES}
  return torch_weights.fill_params(module.name_of_size, torch_weights.expected_shapes(module, 32),
                                   state_dict, _our_path)


def _strip(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
  return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}


def backbone_keys(state_dict: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
  """(format name, the torchvision-keyed backbone tensors) of a checkpoint's state dict.

  The classifier (`fc.*`) and the formats' heads (MoCo's key encoder and queue, SwAV's projection
  head and prototypes, MMSelfSup's neck and head) are left out.

  Raises:
    CheckpointError: no known format; the message names the keys found.
  """
  keys = list(state_dict)
  if any(k.startswith("module.encoder_q.") for k in keys):
    name, backbone = "moco", _strip(state_dict, "module.encoder_q.")
  elif any(k.startswith("backbone.") for k in keys):
    name, backbone = "mmselfsup", _strip(state_dict, "backbone.")
  elif "module.conv1.weight" in state_dict:
    backbone = _strip(state_dict, "module.")
    backbone = {k: v for k, v in backbone.items() if not k.startswith(("projection_head.", "prototypes"))}
    name = "module"
  elif "conv1.weight" in state_dict:
    name, backbone = "torchvision", dict(state_dict)
  else:
    raise CheckpointError("not a ResNet state dict of a known format (torchvision conv1.weight, MoCo "
                          "module.encoder_q., MMSelfSup backbone., SwAV/DeepCluster module.); its keys: "
                          + (torch_weights.describe(keys) or "none"))
  return name, {k: v for k, v in backbone.items() if not k.startswith("fc.")}


def from_state_dict(state_dict: Mapping[str, np.ndarray], dtype: Any = jnp.float32) -> tuple[str, ResNet, dict]:
  """(format name, module, params) of a checkpoint's state dict in one of the formats above."""
  name, backbone = backbone_keys(state_dict)
  module = ResNet(stage_sizes_of(backbone), dtype=dtype)
  return name, module, params_from_torchvision(module, backbone)


def is_resnet_state_dict(keys: Sequence[str]) -> bool:
  """Whether keys look like a ResNet checkpoint of one of the formats (before the full check)."""
  try:
    backbone_keys({key: None for key in keys})
  except CheckpointError:
    return False
  return True
