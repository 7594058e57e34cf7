"""DINOv2 and CLIP vision weights from transformers' files, into `vit.ViT`.

A directory as `save_pretrained` writes it, or a hub id whose snapshot is in the local Hugging Face
cache (`cached_directory`; nothing is downloaded): config.json and model.safetensors (or
pytorch_model.bin). config.json's `model_type` names the layout:

  dinov2              `Dinov2Model`: embeddings.*, encoder.layer.<i>.*, layernorm.*
  clip_vision_model   `CLIPVisionModel` or `CLIPVisionModelWithProjection`: [vision_model.]embeddings.*,
                      pre_layrnorm.*, encoder.layers.<i>.*, post_layernorm.*, [visual_projection.weight]
  clip                `CLIPModel`: its vision tower and visual_projection; the text tower, its
                      projection and logit_scale are left out

The architecture comes from the tensors' shapes (width, depth, patch size, native grid, MLP,
projection), the attention heads, activation and LayerNorm epsilon from config.json (its
omitted keys take transformers' defaults for the family).

Each family also says how its images are prepared (`Preprocessing`): DINOv2 the ImageNet
mean / std at 224 px (the crop of its image processor and the resolution of the DINOv2 paper's
linear evaluations; the positions are interpolated from its 518 px grid); CLIP its own mean / std
at the size its positions were learned for (224 or 336 px).
"""
from collections.abc import Mapping
import json
import os
import re
from typing import Any, NamedTuple

import huggingface_hub
import numpy as np

from artstyle_jax.models import torch_weights
from artstyle_jax.models.torch_weights import CheckpointError
from artstyle_jax.models.torch_weights import Leaf
from artstyle_jax.models.torch_weights import Rule
from artstyle_jax.models.torch_weights import same
from artstyle_jax.models.vit import ViT

CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
MODEL_TYPES = ("dinov2", "clip_vision_model", "clip")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
DINOV2_IMAGE_SIZE = 224
_ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
# transformers' defaults for the keys a config.json may leave out.
_DEFAULTS = {"dinov2": {"num_attention_heads": 12, "hidden_act": "gelu", "layer_norm_eps": 1e-6},
             "clip": {"num_attention_heads": 12, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}}


class Preprocessing(NamedTuple):
  """How a family's images are normalised, and the image side it is evaluated at by default."""
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  image_size: int


def preprocessing(module: ViT) -> Preprocessing:
  """The normalisation and default image size of `module`'s family (module docstring)."""
  if module.family == "dinov2":
    return Preprocessing(IMAGENET_MEAN, IMAGENET_STD, DINOV2_IMAGE_SIZE)
  return Preprocessing(CLIP_MEAN, CLIP_STD, module.native_image_size)


def compatible_image_size(module: ViT, image_size: int) -> int:
  """`image_size` rounded to the nearest multiple of the patch size (at least one patch)."""
  return max(1, round(image_size / module.patch_size)) * module.patch_size


_LINEAR, _NORM, _CONV = torch_weights.LINEAR, torch_weights.NORM, torch_weights.CONV
_ONE_TWO = {1: {"1": "1", "2": "2"}}
_QKV = {1: {"query": "query", "key": "key", "value": "value"}}
_FC = {1: {"fc1": "fc1", "fc2": "fc2"}}
# Each family's layout, read (`from_state_dict`) and written (`to_hf`) through the same rules.
_DINOV2_RULES = (
    Rule("embeddings", (), {"cls_token": Leaf("cls_token", np.ravel, lambda w: w.reshape(1, 1, -1)),
                            "position_embeddings": Leaf("pos_embed", lambda w: w.reshape(w.shape[-2:]),
                                                        lambda w: w[None])}),
    Rule("embeddings.patch_embeddings.projection", ("patch_embed",), _CONV),
    Rule("encoder.layer.{0}.norm{1}", ("blocks_{0}", "norm{1}"), _NORM, _ONE_TWO),
    Rule("encoder.layer.{0}.attention.attention.{1}", ("blocks_{0}", "attn", "{1}"), _LINEAR, _QKV),
    Rule("encoder.layer.{0}.attention.output.dense", ("blocks_{0}", "attn", "out"), _LINEAR),
    Rule("encoder.layer.{0}.layer_scale{1}", ("blocks_{0}",), {"lambda1": Leaf("layer_scale{1}", same, same)},
         _ONE_TWO),
    Rule("layernorm", ("norm",), _NORM),
)
_DINOV2_MLP_RULES = (Rule("encoder.layer.{0}.mlp.{1}", ("blocks_{0}", "mlp", "{1}"), _LINEAR, _FC),)
_DINOV2_SWIGLU_RULES = (Rule("encoder.layer.{0}.mlp.weights_in", ("blocks_{0}", "mlp", "fc1"), _LINEAR),
                        Rule("encoder.layer.{0}.mlp.weights_out", ("blocks_{0}", "mlp", "fc2"), _LINEAR))
_CLIP_RULES = (
    Rule("embeddings", (), {"class_embedding": Leaf("cls_token", same, same)}),
    Rule("embeddings.patch_embedding", ("patch_embed",), _CONV),
    Rule("embeddings.position_embedding", (), {"weight": Leaf("pos_embed", same, same)}),
    Rule("pre_layrnorm", ("pre_norm",), _NORM),
    Rule("encoder.layers.{0}.layer_norm{1}", ("blocks_{0}", "norm{1}"), _NORM, _ONE_TWO),
    Rule("encoder.layers.{0}.self_attn.{1}_proj", ("blocks_{0}", "attn", "{1}"), _LINEAR,
         {1: {"q": "query", "k": "key", "v": "value"}}),
    Rule("encoder.layers.{0}.self_attn.out_proj", ("blocks_{0}", "attn", "out"), _LINEAR),
    Rule("encoder.layers.{0}.mlp.{1}", ("blocks_{0}", "mlp", "{1}"), _LINEAR, _FC),
    Rule("post_layernorm", ("norm",), _NORM),
    Rule("visual_projection", ("projection",), {"weight": Leaf("kernel", np.transpose, np.transpose)}),
)
_RULES = {"dinov2": _DINOV2_RULES + _DINOV2_MLP_RULES + _DINOV2_SWIGLU_RULES, "clip": _CLIP_RULES}
# Keys of the files that are no part of the image features: DINOv2's masked-image-modelling token,
# CLIP's text tower and the position ids buffer older transformers saved.
_LEFT_OUT = re.compile(r"embeddings\.mask_token|text_model\..*|text_projection\..*|logit_scale|.*position_ids")


def _match(family: str, key: str) -> tuple[tuple[str, ...], Any] | None:
  """Our (path, conversion) for a torch key of `family`'s layout, or None."""
  return torch_weights.match_rules(_RULES[family], key)


def read_config(directory: str) -> dict[str, Any]:
  """`directory`'s config.json as a dict; CheckpointError if there is none that reads as JSON."""
  try:
    with open(os.path.join(directory, CONFIG_FILE), encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"no readable {CONFIG_FILE} ({type(e).__name__}: {e})") from e


def read_weights(directory: str) -> dict[str, np.ndarray]:
  """The weights of a transformers directory as float32 NumPy arrays (the first of WEIGHT_FILES).

  Raises:
    CheckpointError: none of WEIGHT_FILES, or one torch cannot read.
  """
  for name in WEIGHT_FILES:
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      if name.endswith(".safetensors"):
        from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
        return torch_weights.as_numpy(load_file(path))
      return torch_weights.tensors_of(torch_weights.load(path), path)
  raise CheckpointError(f"{CONFIG_FILE} is there but none of {', '.join(WEIGHT_FILES)}")


def model_type(config: Mapping[str, Any]) -> str:
  """config.json's model_type, if it is one of MODEL_TYPES.

  Raises:
    CheckpointError: another model type, naming the ones that load.
  """
  found = config.get("model_type") if isinstance(config, Mapping) else None
  if found not in MODEL_TYPES:
    raise CheckpointError(f"{CONFIG_FILE} describes model_type {found!r}; a directory of transformers files "
                          f"loads for model_type {', '.join(MODEL_TYPES)}")
  return found


def _architecture(family: str, config: Mapping[str, Any], state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """ViT attributes from the tensors' shapes and config.json."""
  settings = {**_DEFAULTS[family], **config}
  paths = {key: found[0] for key in state_dict if (found := _match(family, key))}
  shapes = {path: state_dict[key].shape for key, path in paths.items()}
  depth = len({path[0] for path in paths.values() if path[0].startswith("blocks_")})
  kernel, positions = shapes.get(("patch_embed", "kernel")), shapes.get(("pos_embed",))
  fc1, fc2 = shapes.get(("blocks_0", "mlp", "fc1", "kernel")), shapes.get(("blocks_0", "mlp", "fc2", "kernel"))
  if not depth or kernel is None or positions is None or fc1 is None or fc2 is None:
    raise CheckpointError(f"cannot read a {family} vision transformer from the weights (patch embedding, "
                          f"positions, blocks); its keys: {torch_weights.describe(state_dict)}")
  # torch shapes: Conv2d (C, 3, p, p), Linear (out, in), positions ([1,] 1 + N, C).
  native_grid = round((positions[-2] - 1) ** 0.5)
  if native_grid ** 2 != positions[-2] - 1:
    raise CheckpointError(f"{positions[-2] - 1} patch positions are no square grid")
  activation = settings["hidden_act"]
  if family == "dinov2" and settings.get("use_swiglu_ffn"):
    mlp, mlp_hidden = "swiglu", fc2[1]
  elif activation in _ACTIVATIONS:
    mlp, mlp_hidden = _ACTIVATIONS[activation], fc1[0]
  else:
    raise CheckpointError(f"hidden_act {activation!r} is none of {', '.join(_ACTIVATIONS)}")
  projection = shapes.get(("projection", "kernel"))
  return {"family": family, "patch_size": kernel[2], "width": kernel[0], "depth": depth,
          "num_heads": int(settings["num_attention_heads"]), "mlp_hidden": mlp_hidden, "native_grid": native_grid,
          "mlp": mlp, "layer_norm_eps": float(settings["layer_norm_eps"]),
          "qkv_bias": family == "clip" or bool(settings.get("qkv_bias", True)),
          "projection_dim": 0 if projection is None else projection[0]}


def from_state_dict(config: Mapping[str, Any], state_dict: Mapping[str, Any], **overrides) -> tuple[ViT, dict]:
  """(module, params) from config.json's dict and a transformers state dict (NumPy arrays or
  torch tensors); `overrides` sets other module attributes (dtype).

  Raises:
    CheckpointError: an unknown model_type, or tensors that do not fill the module exactly
      (naming every unexpected, missing and wrongly shaped key).
  """
  kind = model_type(config)
  family = "dinov2" if kind == "dinov2" else "clip"
  if kind == "clip":
    config = config.get("vision_config") or {}
  state_dict = {key.removeprefix("vision_model."): value
                for key, value in torch_weights.as_numpy(state_dict).items() if not _LEFT_OUT.fullmatch(key)}
  module = ViT(**_architecture(family, config, state_dict), **overrides)
  expected = torch_weights.expected_shapes(module, module.native_image_size)
  description = (f"a {family} ViT (width {module.width}, depth {module.depth}, patch {module.patch_size}, "
                 f"{module.native_grid}x{module.native_grid} positions)")
  return module, torch_weights.fill_params(description, expected, state_dict, lambda key: _match(family, key))


def directory_model_type(directory: str) -> str | None:
  """The model_type of `directory`'s config.json when it is one of MODEL_TYPES, else None (no
  config.json, an unreadable one, another model: a ConvNeXt's transformers directory)."""
  try:
    return model_type(read_config(directory))
  except CheckpointError:
    return None


def cached_directory(hub_id: str) -> str | None:
  """The local Hugging Face cache's snapshot of `hub_id` (its main revision) when it holds a
  config.json of MODEL_TYPES; None otherwise. Nothing is downloaded."""
  try:
    config = huggingface_hub.try_to_load_from_cache(hub_id, CONFIG_FILE)
  except ValueError:  # Not a valid repository id.
    return None
  if not isinstance(config, str):
    return None
  directory = os.path.dirname(config)
  return directory if directory_model_type(directory) else None


def load_directory(directory: str, **overrides) -> tuple[ViT, dict]:
  """(module, params) of a directory of transformers files (module docstring).

  Raises:
    CheckpointError: no config.json of MODEL_TYPES, no weights file, or weights that do not fit.
  """
  config = read_config(directory)
  model_type(config)
  return from_state_dict(config, read_weights(directory), **overrides)


_HF_ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_tanh": "gelu_pytorch_tanh"}


def to_hf(module: ViT, params: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(config.json, state dict) of `module`'s family in transformers: `Dinov2Model`, or for CLIP
  `CLIPVisionModelWithProjection` when it has a projection, else `CLIPVisionModel` (model_type
  clip_vision_model); `load_directory` reads them back to the same tree.

  Raises:
    CheckpointError: a DINOv2 whose MLP transformers' config cannot describe (its hidden width is
      the width times an integer `mlp_ratio`, for SwiGLU rounded as well).
  """
  if module.family == "dinov2" and (module.mlp == "swiglu" or module.mlp_hidden % module.width):
    raise CheckpointError(f"transformers' Dinov2Config cannot describe a {module.mlp} MLP of {module.mlp_hidden} "
                          f"hidden units on width {module.width} (its mlp_ratio is an integer)")
  description = f"a {module.family} ViT (width {module.width}, depth {module.depth})"
  common = {"hidden_size": module.width, "num_hidden_layers": module.depth, "num_attention_heads": module.num_heads,
            "hidden_act": _HF_ACTIVATIONS[module.mlp], "layer_norm_eps": module.layer_norm_eps,
            "image_size": module.native_image_size, "patch_size": module.patch_size, "num_channels": 3,
            "torch_dtype": "float32"}
  if module.family == "dinov2":
    state_dict = torch_weights.to_state_dict(_DINOV2_RULES + _DINOV2_MLP_RULES, params, description)
    # Dinov2Model's masked-image-modelling token, used only with bool_masked_pos: no part of the features.
    state_dict["embeddings.mask_token"] = np.zeros((1, module.width), np.float32)
    config = {**common, "architectures": ["Dinov2Model"], "model_type": "dinov2",
              "mlp_ratio": module.mlp_hidden // module.width, "qkv_bias": module.qkv_bias, "layerscale_value": 1.0,
              "use_swiglu_ffn": False}
    return config, state_dict
  state_dict = torch_weights.to_state_dict(_CLIP_RULES, params, description)
  state_dict = {key if key.startswith("visual_projection.") else f"vision_model.{key}": value
                for key, value in state_dict.items()}
  architecture = "CLIPVisionModelWithProjection" if module.projection_dim else "CLIPVisionModel"
  config = {**common, "architectures": [architecture], "model_type": "clip_vision_model",
            "intermediate_size": module.mlp_hidden}
  if module.projection_dim:
    config["projection_dim"] = module.projection_dim
  return config, state_dict
