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
from collections.abc import Mapping, Sequence
import re
from typing import Any

import jax.numpy as jnp
import numpy as np

from artstyle_jax.models import torch_weights
from artstyle_jax.models.resnet import EXPANSION
from artstyle_jax.models.resnet import ResNet
from artstyle_jax.models.resnet import SIZES
from artstyle_jax.models.torch_weights import CheckpointError
from artstyle_jax.models.torch_weights import Rule

_BLOCK = re.compile(r"layer(\d)\.(\d+)\.(.+)")
_IGNORED_LEAVES = ("num_batches_tracked",)
_CONV = {"weight": torch_weights.CONV["weight"]}
_BATCH_NORM = torch_weights.BATCH_NORM
_LAYER_OF_STAGE = {0: {str(stage): str(stage + 1) for stage in range(4)}}
_ONE_TWO_THREE = {2: {n: n for n in "123"}}

# torchvision's and transformers' (`ResNetModel`) layouts of the backbone, each read and written
# (`to_torchvision`, `to_hf`) through the same rules.
TORCHVISION_RULES = (
    Rule("conv1", ("conv1",), _CONV),
    Rule("bn1", ("bn1",), _BATCH_NORM),
    Rule("layer{0}.{1}.conv{2}", ("layer{0}_{1}", "conv{2}"), _CONV, _ONE_TWO_THREE),
    Rule("layer{0}.{1}.bn{2}", ("layer{0}_{1}", "bn{2}"), _BATCH_NORM, _ONE_TWO_THREE),
    Rule("layer{0}.{1}.downsample.0", ("layer{0}_{1}", "downsample_conv"), _CONV),
    Rule("layer{0}.{1}.downsample.1", ("layer{0}_{1}", "downsample_bn"), _BATCH_NORM),
)
HF_RULES = (
    Rule("embedder.embedder.convolution", ("conv1",), _CONV),
    Rule("embedder.embedder.normalization", ("bn1",), _BATCH_NORM),
    *(Rule(f"encoder.stages.{{0}}.layers.{{1}}.layer.{i}.{torch}", ("layer{0}_{1}", f"{ours}{i + 1}"), leaves,
           _LAYER_OF_STAGE)
      for i in range(3) for torch, ours, leaves in (("convolution", "conv", _CONV),
                                                    ("normalization", "bn", _BATCH_NORM))),
    Rule("encoder.stages.{0}.layers.{1}.shortcut.convolution", ("layer{0}_{1}", "downsample_conv"), _CONV,
         _LAYER_OF_STAGE),
    Rule("encoder.stages.{0}.layers.{1}.shortcut.normalization", ("layer{0}_{1}", "downsample_bn"), _BATCH_NORM,
         _LAYER_OF_STAGE),
)


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
                                   state_dict, lambda key: torch_weights.match_rules(TORCHVISION_RULES, key))


# A classifier on the pooled feature ({'kernel': (C, K), 'bias': (K,)}, fine-tuning's) as
# torchvision's and timm's `fc`.
CLASSIFIER_RULES = (Rule("fc", ("classifier",), torch_weights.LINEAR),)


def classifier_to_torchvision(classifier: Any) -> dict[str, np.ndarray]:
  """torchvision's `fc.weight` (K, C) and `fc.bias` (K,) of a classifier on the pooled feature."""
  return torch_weights.to_state_dict(CLASSIFIER_RULES, {"classifier": classifier}, "the classifier")


def _with_batch_counts(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """`state_dict` with each BatchNorm's `num_batches_tracked` (0), a buffer torch's modules have."""
  counts = {key.removesuffix("running_mean") + "num_batches_tracked": np.zeros((), np.int64)
            for key in state_dict if key.endswith(".running_mean")}
  return {**state_dict, **counts}


def to_torchvision(module: ResNet, params: Any) -> dict[str, np.ndarray]:
  """torchvision's ResNet state dict of `module`'s backbone parameters, without `fc.*` (a
  torchvision ResNet whose `fc` is `torch.nn.Identity()` takes it whole): `params_from_torchvision`
  reads it back to the same tree."""
  return _with_batch_counts(torch_weights.to_state_dict(TORCHVISION_RULES, params, module.name_of_size))


def to_hf(module: ResNet, params: Any) -> dict[str, np.ndarray]:
  """transformers' `ResNetModel` state dict of `module`'s backbone parameters."""
  return _with_batch_counts(torch_weights.to_state_dict(HF_RULES, params, module.name_of_size))


def params_from_hf(module: ResNet, state_dict: Mapping[str, np.ndarray]) -> dict:
  """`module`'s parameter tree from transformers' `ResNetModel` state dict; raises as
  `params_from_torchvision`."""
  state_dict = {k: v for k, v in state_dict.items() if k.rpartition(".")[2] not in _IGNORED_LEAVES}
  return torch_weights.fill_params(module.name_of_size, torch_weights.expected_shapes(module, 32), state_dict,
                                   lambda key: torch_weights.match_rules(HF_RULES, key))


def hf_config(module: ResNet) -> dict[str, Any]:
  """config.json of transformers' `ResNetModel` for `module` (torchvision's ResNet v1.5: the
  stride in the 3x3 convolution)."""
  widths = [64 * EXPANSION * 2 ** stage for stage in range(4)]
  return {"architectures": ["ResNetModel"], "model_type": "resnet", "num_channels": 3, "embedding_size": 64,
          "hidden_sizes": widths, "depths": list(module.stage_sizes), "layer_type": "bottleneck",
          "hidden_act": "relu", "downsample_in_first_stage": False, "downsample_in_bottleneck": False,
          "torch_dtype": "float32"}


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
