"""ConvNeXt weights from timm and transformers (PyTorch state dicts, safetensors files, the hub).

`from_timm`, `params_from_timm`, `from_hf` and `load_pretrained` convert PyTorch state dicts
(NumPy arrays or torch tensors) into `convnext.ConvNeXt`'s parameter tree, and refuse anything
that does not fill the tree exactly (`torch_weights.CheckpointError`, a ValueError).
"""
from collections.abc import Mapping
import os
import re
from typing import Any

import huggingface_hub
import numpy as np
from safetensors.numpy import load_file

from artstyle_jax.models import torch_weights
from artstyle_jax.models.convnext import ConvNeXt
from artstyle_jax.models.torch_weights import conv_kernel
from artstyle_jax.models.torch_weights import same

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def _linear_kernel(w: np.ndarray) -> np.ndarray:
  """torch Linear (out, in), or timm's 1x1 Conv2d MLP (out, in, 1, 1), -> flax (in, out)."""
  if w.ndim == 4 and w.shape[2:] == (1, 1):
    w = w[:, :, 0, 0]
  return np.transpose(w) if w.ndim == 2 else w


# (module path suffix, torch leaf) -> (flax leaf, converter), per kind of layer.
_CONV = {"weight": ("kernel", conv_kernel), "bias": ("bias", same)}
_LINEAR = {"weight": ("kernel", _linear_kernel), "bias": ("bias", same)}
_NORM = {"weight": ("scale", same), "bias": ("bias", same)}

_TIMM_PATTERNS = [
    (r"stem\.0", ("stem_conv",), _CONV),
    (r"stem\.1", ("stem_norm",), _NORM),
    (r"stages\.(\d+)\.downsample\.0", ("stages_{0}", "downsample_norm"), _NORM),
    (r"stages\.(\d+)\.downsample\.1", ("stages_{0}", "downsample_conv"), _CONV),
    (r"stages\.(\d+)\.blocks\.(\d+)\.conv_dw", ("stages_{0}", "blocks_{1}", "conv_dw"), _CONV),
    (r"stages\.(\d+)\.blocks\.(\d+)\.norm", ("stages_{0}", "blocks_{1}", "norm"), _NORM),
    (r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc1", ("stages_{0}", "blocks_{1}", "fc1"), _LINEAR),
    (r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc2", ("stages_{0}", "blocks_{1}", "fc2"), _LINEAR),
    (r"stages\.(\d+)\.blocks\.(\d+)", ("stages_{0}", "blocks_{1}"), {"gamma": ("gamma", same)}),
    (r"head\.norm", ("head", "norm"), _NORM),
    (r"head\.fc", ("head", "fc"), _LINEAR),
]

_HF_PATTERNS = [
    (r"embeddings\.patch_embeddings", ("stem_conv",), _CONV),
    (r"embeddings\.layernorm", ("stem_norm",), _NORM),
    (r"encoder\.stages\.(\d+)\.downsampling_layer\.0", ("stages_{0}", "downsample_norm"), _NORM),
    (r"encoder\.stages\.(\d+)\.downsampling_layer\.1", ("stages_{0}", "downsample_conv"), _CONV),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.dwconv", ("stages_{0}", "blocks_{1}", "conv_dw"), _CONV),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layernorm", ("stages_{0}", "blocks_{1}", "norm"), _NORM),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.pwconv1", ("stages_{0}", "blocks_{1}", "fc1"), _LINEAR),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.pwconv2", ("stages_{0}", "blocks_{1}", "fc2"), _LINEAR),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)", ("stages_{0}", "blocks_{1}"),
     {"layer_scale_parameter": ("gamma", same)}),
]

# transformers' ConvNextModel pools and normalises the last stage with `layernorm.*`, a norm
# that is neither part of the features-only backbone nor timm's head (no classifier follows it):
# from_hf leaves it out by design.
_HF_POOLER_KEYS = ("layernorm.weight", "layernorm.bias")


def _match(key: str, patterns) -> tuple[tuple[str, ...], Any] | None:
  """Our (path, converter) for a torch key, or None if no pattern names it."""
  module, _, leaf = key.rpartition(".")
  for pattern, path, leaves in patterns:
    found = re.fullmatch(pattern, module)
    if found and leaf in leaves:
      name, convert = leaves[leaf]
      return tuple(part.format(*found.groups()) for part in path) + (name,), convert
  return None


def _timm_key(key: str) -> str:
  """timm's features-only wrapper names the top modules stem_0, stem_1, stages_0, ...: undo that."""
  return re.sub(r"^(stem|stages)_(\d+)", r"\1.\2", key)


def _architecture(state_dict: Mapping[str, np.ndarray], patterns) -> dict[str, Any]:
  """Infers depths, dims and num_classes from the keys and shapes of a state dict."""
  blocks: dict[int, set[int]] = {}
  dims: dict[int, int] = {}
  num_classes = 0
  for key, value in state_dict.items():
    found = _match(key, patterns)
    if found is None:
      continue
    path, _ = found
    if path[0].startswith("stages_"):
      stage = int(path[0].split("_")[1])
      blocks.setdefault(stage, set())
      if len(path) > 2 and path[1].startswith("blocks_"):
        blocks[stage].add(int(path[1].split("_")[1]))
        if path[2:] == ("conv_dw", "bias"):
          dims[stage] = value.shape[0]
    if path == ("head", "fc", "bias"):
      num_classes = value.shape[0]
  stages = sorted(blocks)
  if not stages or stages != list(range(len(stages))) or sorted(dims) != stages:
    raise torch_weights.CheckpointError(
        "cannot infer the ConvNeXt stages from the state dict: expected stages 0..S-1 each with blocks "
        f"and conv_dw biases, found stages {stages} with conv_dw biases for {sorted(dims)}")
  for stage in stages:
    if sorted(blocks[stage]) != list(range(len(blocks[stage]))):
      raise torch_weights.CheckpointError(f"stage {stage} has non-contiguous block indices {sorted(blocks[stage])}")
  return {"depths": tuple(len(blocks[s]) for s in stages),
          "dims": tuple(dims[s] for s in stages), "num_classes": num_classes}


def _convert(module: ConvNeXt, state_dict: Mapping[str, Any], patterns, ignored=()) -> dict:
  """Fills the module's whole parameter tree from the state dict, or raises listing every problem."""
  state_dict = {k: v for k, v in torch_weights.as_numpy(state_dict).items() if k not in ignored}
  description = (f"ConvNeXt(depths={tuple(module.depths)}, dims={tuple(module.dims)}, "
                 f"num_classes={module.num_classes})")
  expected = torch_weights.expected_shapes(module, 4 * 2 ** (len(module.dims) - 1))
  return torch_weights.fill_params(description, expected, state_dict, lambda key: _match(key, patterns))


def params_from_timm(module: ConvNeXt, state_dict: Mapping[str, Any]) -> dict:
  """Parameters for `module` from a timm ConvNeXt state dict (key -> numpy array or torch tensor).

  Accepts timm's own keys (`stem.0.weight`, `stages.1.blocks.0.mlp.fc1.weight`, `head.fc.bias`)
  and its features-only naming (`stem_0.weight`, `stages_1.blocks.0...`). `head.*` keys need a
  module with the same `num_classes`. Raises CheckpointError naming every unexpected, missing or
  wrongly shaped key; never returns a partial tree.
  """
  return _convert(module, {_timm_key(k): v for k, v in state_dict.items()}, _TIMM_PATTERNS)


def from_timm(state_dict: Mapping[str, Any], **overrides) -> tuple[ConvNeXt, dict]:
  """(module, params) from a timm ConvNeXt state dict; depths, dims and num_classes (from
  `head.fc`, 0 without head keys) are read from the keys and shapes. `overrides` sets the other
  module attributes (dtype, remat, drop_path_rate, forms)."""
  state_dict = {_timm_key(k): v for k, v in torch_weights.as_numpy(state_dict).items()}
  module = ConvNeXt(**_architecture(state_dict, _TIMM_PATTERNS), **overrides)
  return module, _convert(module, state_dict, _TIMM_PATTERNS)


def from_hf(state_dict: Mapping[str, Any], **overrides) -> tuple[ConvNeXt, dict]:
  """(module, params) from a transformers `ConvNextModel` state dict (`embeddings.*`,
  `encoder.stages.*`). Its pooler norm `layernorm.*` is not part of the backbone and is left out.
  Raises CheckpointError naming every unexpected, missing or wrongly shaped key."""
  state_dict = torch_weights.as_numpy(state_dict)
  module = ConvNeXt(**_architecture(state_dict, _HF_PATTERNS), **overrides)
  return module, _convert(module, state_dict, _HF_PATTERNS, ignored=_HF_POOLER_KEYS)


def _is_hf_layout(state_dict: Mapping[str, Any]) -> bool:
  return any(key.startswith("embeddings.") for key in state_dict)


def load_pretrained(source: str, **overrides) -> tuple[ConvNeXt, dict]:
  """(module, params) from pretrained weights in timm or transformers layout.

  Args:
    source: a local `.safetensors` file; a directory holding `model.safetensors`; or a Hugging
      Face hub id such as 'timm/convnext_base.fb_in22k_ft_in1k' (downloaded with huggingface_hub,
      or taken from its cache when offline, e.g. HF_HUB_OFFLINE=1).
    **overrides: module attributes other than the architecture (dtype, remat, drop_path_rate,
      forms).
  """
  state_dict = load_file(safetensors_path(source))
  if _is_hf_layout(state_dict):
    return from_hf(state_dict, **overrides)
  return from_timm(state_dict, **overrides)


def safetensors_path(source: str) -> str:
  """Local path of the safetensors file that `source` names (see `load_pretrained`)."""
  if os.path.isfile(source):
    if not source.endswith(".safetensors"):
      raise ValueError(f"{source} is not a .safetensors file")
    return source
  if os.path.isdir(source):
    path = os.path.join(source, "model.safetensors")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"directory {source} has no model.safetensors")
    return path
  if not HUB_ID.fullmatch(source):
    raise FileNotFoundError(f"{source!r} is neither a local file or directory nor a hub id "
                            "like 'timm/convnext_base.fb_in22k_ft_in1k'")
  try:
    return huggingface_hub.hf_hub_download(source, "model.safetensors")
  except Exception as error:  # Offline and not cached, no network, unknown repo, ...
    url = f"https://huggingface.co/{source}/resolve/main/model.safetensors"
    raise FileNotFoundError(
        f"cannot get model.safetensors of {source} from the Hugging Face hub or its cache "
        f"({type(error).__name__}: {error}).\nFetch {url} (on a machine with internet access) and "
        f"save it as DIR/model.safetensors, then pass DIR or the file as the source; or run "
        f"`hf download {source} model.safetensors` there and copy its Hugging Face cache to "
        f"HF_HOME here (now {huggingface_hub.constants.HF_HOME}).") from error
