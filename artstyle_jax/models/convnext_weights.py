"""ConvNeXt weights from timm and transformers (PyTorch state dicts, safetensors files, the hub).

`from_timm`, `params_from_timm`, `from_hf` and `load_pretrained` convert PyTorch state dicts
(NumPy arrays or torch tensors) into `convnext.ConvNeXt`'s parameter tree, and refuse anything
that does not fill the tree exactly (`torch_weights.CheckpointError`, a ValueError). `to_timm`
and `to_hf` write the tree back as those state dicts, through the same rules (`TIMM_RULES`,
`HF_RULES`).
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
from artstyle_jax.models.convnext import LAYER_SCALE_INIT
from artstyle_jax.models.torch_weights import Leaf
from artstyle_jax.models.torch_weights import Rule
from artstyle_jax.models.torch_weights import same

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def _linear_kernel(w: np.ndarray) -> np.ndarray:
  """torch Linear (out, in), or timm's 1x1 Conv2d MLP (out, in, 1, 1), -> flax (in, out)."""
  if w.ndim == 4 and w.shape[2:] == (1, 1):
    w = w[:, :, 0, 0]
  return np.transpose(w) if w.ndim == 2 else w


_CONV, _NORM = torch_weights.CONV, torch_weights.NORM
_LINEAR = {**torch_weights.LINEAR, "weight": Leaf("kernel", _linear_kernel, np.transpose)}
_GAMMA = Leaf("gamma", same, same)

# timm's and transformers' layouts, each read (`params_from_timm`, `from_hf`) and written
# (`to_timm`, `to_hf`) through the same rules.
TIMM_RULES = (
    Rule("stem.0", ("stem_conv",), _CONV),
    Rule("stem.1", ("stem_norm",), _NORM),
    Rule("stages.{0}.downsample.0", ("stages_{0}", "downsample_norm"), _NORM),
    Rule("stages.{0}.downsample.1", ("stages_{0}", "downsample_conv"), _CONV),
    Rule("stages.{0}.blocks.{1}.conv_dw", ("stages_{0}", "blocks_{1}", "conv_dw"), _CONV),
    Rule("stages.{0}.blocks.{1}.norm", ("stages_{0}", "blocks_{1}", "norm"), _NORM),
    Rule("stages.{0}.blocks.{1}.mlp.fc1", ("stages_{0}", "blocks_{1}", "fc1"), _LINEAR),
    Rule("stages.{0}.blocks.{1}.mlp.fc2", ("stages_{0}", "blocks_{1}", "fc2"), _LINEAR),
    Rule("stages.{0}.blocks.{1}", ("stages_{0}", "blocks_{1}"), {"gamma": _GAMMA}),
    Rule("head.norm", ("head", "norm"), _NORM),
    Rule("head.fc", ("head", "fc"), _LINEAR),
)

# timm builds its smallest sizes with a 1x1-convolution MLP (`conv_mlp=True`): their fc1 and fc2
# weights are (out, in, 1, 1), which the rules above read as they read Linear's (out, in).
TIMM_CONV_MLP_SIZES = ("convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano")
_CONV_MLP = {**_LINEAR, "weight": Leaf("kernel", _linear_kernel, lambda kernel: np.transpose(kernel)[:, :, None, None])}
_TIMM_CONV_MLP_RULES = tuple(
    Rule(rule.torch, rule.ours, _CONV_MLP) if rule.torch.endswith((".mlp.fc1", ".mlp.fc2")) else rule
    for rule in TIMM_RULES)

HF_RULES = (
    Rule("embeddings.patch_embeddings", ("stem_conv",), _CONV),
    Rule("embeddings.layernorm", ("stem_norm",), _NORM),
    Rule("encoder.stages.{0}.downsampling_layer.0", ("stages_{0}", "downsample_norm"), _NORM),
    Rule("encoder.stages.{0}.downsampling_layer.1", ("stages_{0}", "downsample_conv"), _CONV),
    Rule("encoder.stages.{0}.layers.{1}.dwconv", ("stages_{0}", "blocks_{1}", "conv_dw"), _CONV),
    Rule("encoder.stages.{0}.layers.{1}.layernorm", ("stages_{0}", "blocks_{1}", "norm"), _NORM),
    Rule("encoder.stages.{0}.layers.{1}.pwconv1", ("stages_{0}", "blocks_{1}", "fc1"), _LINEAR),
    Rule("encoder.stages.{0}.layers.{1}.pwconv2", ("stages_{0}", "blocks_{1}", "fc2"), _LINEAR),
    Rule("encoder.stages.{0}.layers.{1}", ("stages_{0}", "blocks_{1}"), {"layer_scale_parameter": _GAMMA}),
)

# transformers' ConvNextModel pools and normalises the last stage with `layernorm.*`, a norm
# that is neither part of the features-only backbone nor timm's head (no classifier follows it):
# from_hf leaves it out by design, and to_hf writes it as the identity.
_HF_POOLER_KEYS = ("layernorm.weight", "layernorm.bias")


def _timm_key(key: str) -> str:
  """timm's features-only wrapper names the top modules stem_0, stem_1, stages_0, ...: undo that."""
  return re.sub(r"^(stem|stages)_(\d+)", r"\1.\2", key)


def _architecture(state_dict: Mapping[str, np.ndarray], rules) -> dict[str, Any]:
  """Infers depths, dims and num_classes from the keys and shapes of a state dict."""
  blocks: dict[int, set[int]] = {}
  dims: dict[int, int] = {}
  num_classes = 0
  for key, value in state_dict.items():
    found = torch_weights.match_rules(rules, key)
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


def _description(module: ConvNeXt) -> str:
  return f"ConvNeXt(depths={tuple(module.depths)}, dims={tuple(module.dims)}, num_classes={module.num_classes})"


def _convert(module: ConvNeXt, state_dict: Mapping[str, Any], rules, ignored=()) -> dict:
  """Fills the module's whole parameter tree from the state dict, or raises listing every problem."""
  state_dict = {k: v for k, v in torch_weights.as_numpy(state_dict).items() if k not in ignored}
  expected = torch_weights.expected_shapes(module, 4 * 2 ** (len(module.dims) - 1))
  return torch_weights.fill_params(_description(module), expected, state_dict,
                                   lambda key: torch_weights.match_rules(rules, key))


def params_from_timm(module: ConvNeXt, state_dict: Mapping[str, Any]) -> dict:
  """Parameters for `module` from a timm ConvNeXt state dict (key -> numpy array or torch tensor).

  Accepts timm's own keys (`stem.0.weight`, `stages.1.blocks.0.mlp.fc1.weight`, `head.fc.bias`)
  and its features-only naming (`stem_0.weight`, `stages_1.blocks.0...`). `head.*` keys need a
  module with the same `num_classes`. Raises CheckpointError naming every unexpected, missing or
  wrongly shaped key; never returns a partial tree.
  """
  return _convert(module, {_timm_key(k): v for k, v in state_dict.items()}, TIMM_RULES)


def from_timm(state_dict: Mapping[str, Any], **overrides) -> tuple[ConvNeXt, dict]:
  """(module, params) from a timm ConvNeXt state dict; depths, dims and num_classes (from
  `head.fc`, 0 without head keys) are read from the keys and shapes. `overrides` sets the other
  module attributes (dtype, remat, drop_path_rate, forms)."""
  state_dict = {_timm_key(k): v for k, v in torch_weights.as_numpy(state_dict).items()}
  module = ConvNeXt(**_architecture(state_dict, TIMM_RULES), **overrides)
  return module, _convert(module, state_dict, TIMM_RULES)


def from_hf(state_dict: Mapping[str, Any], **overrides) -> tuple[ConvNeXt, dict]:
  """(module, params) from a transformers `ConvNextModel` state dict (`embeddings.*`,
  `encoder.stages.*`). Its pooler norm `layernorm.*` is not part of the backbone and is left out.
  Raises CheckpointError naming every unexpected, missing or wrongly shaped key."""
  state_dict = torch_weights.as_numpy(state_dict)
  module = ConvNeXt(**_architecture(state_dict, HF_RULES), **overrides)
  return module, _convert(module, state_dict, HF_RULES, ignored=_HF_POOLER_KEYS)


def to_timm(module: ConvNeXt, params: Any, conv_mlp: bool = False) -> dict[str, np.ndarray]:
  """timm's ConvNeXt state dict (its own keys, `head.*` when `module` has a classifier) of
  `module`'s parameters, the MLP's weights as 1x1 convolutions' with `conv_mlp` (as timm builds
  TIMM_CONV_MLP_SIZES): `params_from_timm` reads either back to the same tree."""
  return torch_weights.to_state_dict(_TIMM_CONV_MLP_RULES if conv_mlp else TIMM_RULES, params, _description(module))


def to_hf(module: ConvNeXt, params: Any) -> dict[str, np.ndarray]:
  """transformers' `ConvNextModel` state dict of `module`'s backbone parameters (a classifier
  head is no part of that model and is left out). Its pooler norm `layernorm.*`, which our
  backbone has not, gets the identity's affine parameters (scale 1, bias 0): `last_hidden_state`
  is our last stage and its global average our pooled feature; `pooler_output` is that average
  layer-normalised."""
  backbone = {name: tree for name, tree in params.items() if name != "head"}
  state_dict = torch_weights.to_state_dict(HF_RULES, backbone, _description(module))
  width = module.dims[-1]
  state_dict.update(zip(_HF_POOLER_KEYS, (np.ones(width, np.float32), np.zeros(width, np.float32))))
  return state_dict


def hf_config(module: ConvNeXt, image_size: int) -> dict[str, Any]:
  """config.json of transformers' `ConvNextModel` for `module` (and `image_size`, the side it
  was trained at)."""
  return {"architectures": ["ConvNextModel"], "model_type": "convnext", "num_channels": 3, "patch_size": 4,
          "num_stages": len(module.depths), "depths": list(module.depths), "hidden_sizes": list(module.dims),
          "hidden_act": "gelu", "layer_norm_eps": 1e-6, "layer_scale_init_value": LAYER_SCALE_INIT,
          "drop_path_rate": 0.0, "image_size": int(image_size), "torch_dtype": "float32"}


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
