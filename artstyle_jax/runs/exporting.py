"""A workdir's backbone written for other libraries: `export(workdir, format, out)`.

Formats (each DIR/model.safetensors, float32, with the files its library reads beside it):

  timm          timm's keys and DIR/config.json in timm's hub format (architecture, num_features,
                pretrained_cfg with input_size, mean, std): a ConvNeXt of a timm size, or a ResNet
  transformers  config.json, model.safetensors and preprocessor_config.json: `ConvNextModel`,
                `ResNetModel`, or the ViT's family (`Dinov2Model`, `CLIPVisionModel[WithProjection]`)
  torchvision   a ResNet's state dict in torchvision's keys, without `fc` (a torchvision ResNet
                whose `fc` is `torch.nn.Identity()` takes it whole)
  safetensors   what `models.load_backbone` reads, so config.init=DIR, eval --weights=DIR and
                predict take it: the timm keys of a ConvNeXt (no head), torchvision's of a
                ResNet, a ViT's transformers files, `efficientnet-lite-pytorch`'s of an
                EfficientNet-Lite (its BatchNorms as folded: running mean 0, variance 1 - eps);
                read back, the parameters are the same bits

Every format also writes DIR/README.md, a model card (`runs.model_card`). The workdir is a
pretraining workdir (its student, or a teacher: `saved_run.NETWORKS`) or a fine-tuning one (its
backbone).
Everything is checked and every file made in memory before the first is written: a refused export
(no checkpoint, a format that cannot hold the backbone, a DIR that is not empty) writes nothing.
The mappings of the keys are the readers' own (`convnext_weights`, `resnet_weights`,
`vit_weights`, `efficientnet_lite_weights`), run backwards.
"""
import dataclasses
import json
from typing import Any, Optional

from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from safetensors.numpy import save as safetensors_bytes

from artstyle_jax import models
from artstyle_jax.data import geometry
from artstyle_jax.data import view_specs
from artstyle_jax.method import features
from artstyle_jax.method import sharding
from artstyle_jax.method import step as step_lib
from artstyle_jax.models import convnext
from artstyle_jax.models import convnext_weights
from artstyle_jax.models import efficientnet_lite
from artstyle_jax.models import efficientnet_lite_weights
from artstyle_jax.models import forms as forms_lib
from artstyle_jax.models import resnet
from artstyle_jax.models import resnet_weights
from artstyle_jax.models import vit
from artstyle_jax.models import vit_weights
from artstyle_jax.models.torch_weights import CheckpointError
from artstyle_jax.runs import finetuning
from artstyle_jax.runs import model_card
from artstyle_jax.runs import saved_run
from artstyle_jax.storage import checkpoints
from artstyle_jax.storage import paths

FORMATS = ("timm", "transformers", "torchvision", "safetensors")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
CARD_FILE = "README.md"
# What transformers reads a safetensors file's tensors as.
_METADATA = {"format": "pt"}
_BICUBIC = 3  # PIL's resampling code, as transformers' image processors record it


@dataclasses.dataclass(frozen=True)
class Backbone:
  """A workdir's backbone as the writers take it.

  Attributes:
    module, params: the network and its float32 parameter tree.
    network: which network of the workdir's state ('student', 'weak_teacher', 'style_teacher').
    step: the checkpoint's step.
    config: the workdir's saved config.
    workdir: where it was read from.
    finetuned: whether the workdir is a fine-tuning's.
    mean, std: the RGB normalisation of its inputs (of pixels in [0, 1]).
    image_size: the side, in pixels, it was trained and evaluated at.
    classifier: a finished fine-tuning's classifier on the pooled feature ({'kernel': (C, K),
      'bias': (K,)}), None for a pretraining workdir or an unfinished fine-tuning.
    class_names: the classifier's K class names, in index order.
  """
  module: nn.Module
  params: Any
  network: str
  step: int
  config: ml_collections.ConfigDict
  workdir: str
  finetuned: bool
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  image_size: int
  classifier: Optional[dict[str, np.ndarray]] = None
  class_names: Optional[tuple[str, ...]] = None

  @property
  def model_name(self) -> str:
    return models.model_name(self.module)

  @property
  def initial_weights(self) -> str:
    """The weights the run started from: 'random' or the source it names."""
    return self.config.finetune.weights if self.finetuned else self.config.init


def check_out(out: str) -> None:
  """Raises WorkdirError when `out` exists and is not an empty directory."""
  path = epath.Path(out)
  if path.exists() and (not path.is_dir() or any(path.iterdir())):
    raise checkpoints.WorkdirError(f"--out {out} exists and is not empty: give a new directory (nothing was written)")


def check_format_name(fmt: str) -> None:
  """Raises CheckpointError when `fmt` is none of FORMATS."""
  if fmt not in FORMATS:
    raise CheckpointError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")


def check_format(module: nn.Module, fmt: str) -> None:
  """Raises CheckpointError when `fmt` is no format (FORMATS), or one that cannot hold `module`."""
  check_format_name(fmt)
  name = models.model_name(module)
  if isinstance(module, efficientnet_lite.EfficientNetLite) and fmt != "safetensors":
    raise CheckpointError(f"{fmt}'s format here holds no EfficientNet-Lite: export the {name} as safetensors")
  if fmt == "torchvision" and not isinstance(module, resnet.ResNet):
    raise CheckpointError(f"torchvision's format holds a ResNet, not a {name}: export it as timm, transformers "
                          "or safetensors")
  if fmt == "timm" and isinstance(module, vit.ViT):
    raise CheckpointError(f"timm's format here holds a ConvNeXt or a ResNet, not a {name}: export it as "
                          "transformers or safetensors")
  if fmt == "timm" and isinstance(module, convnext.ConvNeXt) and name not in convnext.SIZES:
    raise CheckpointError(f"timm names no ConvNeXt of {name}: export it as transformers or safetensors")


def _plain(module: nn.Module) -> nn.Module:
  """`module` computing in float32 in the accelerators' forms: the network a file describes."""
  if isinstance(module, convnext.ConvNeXt):
    return convnext.ConvNeXt(depths=tuple(module.depths), dims=tuple(module.dims))
  if isinstance(module, efficientnet_lite.EfficientNetLite):
    return module.clone(dtype=jnp.float32, forms=forms_lib.PLAIN)
  return module.clone(dtype=jnp.float32)


def _restore_finetuned(workdir: str, module: nn.Module, initial: Any, image_size: int, num_classes: int,
                       step: Optional[int], mesh: jax.sharding.Mesh) -> tuple[dict[str, Any], int]:
  """({'backbone': ..., and when `num_classes` 'classifier': ...}, step) of a fine-tuning
  checkpoint, the backbone shaped as the `initial` params of `module` it started from."""
  replicated = sharding.replicated(mesh)
  abstract = {"backbone": initial}
  if num_classes:
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    pooled = jax.eval_shape(lambda p: features.pooled(module, {"params": p}, images), initial)
    abstract["classifier"] = {"kernel": jax.ShapeDtypeStruct((pooled.shape[-1], num_classes), jnp.float32),
                              "bias": jax.ShapeDtypeStruct((num_classes,), jnp.float32)}
  target = {"params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract)}
  read = lambda s: checkpoints.restore_subtree(workdir, s, target)["params"]
  with checkpoints.manager(workdir, read_only=True) as mngr:
    restored = checkpoints.restore_newest(mngr, read, step)
  if restored is None:
    raise checkpoints.WorkdirError(f"{workdir} holds no checkpoint that reads back")
  return restored


def read_backbone(workdir: str, network: str = "student", step: Optional[int] = None) -> Backbone:
  """The backbone of `network` in `workdir`'s checkpoint of `step` (the newest that reads back
  when None). A fine-tuning workdir's backbone is shaped by the weights it started from
  (config finetune.weights), which are read again for that.

  Raises:
    WorkdirError: no config.json or checkpoint, no such step or network.
  """
  config = saved_run.saved_config(workdir)
  saved_run.checkpoint_step(workdir, step)
  mesh = sharding.create_mesh(devices=jax.devices()[:1])  # one copy of the parameters, on one device
  finetuned = finetuning.is_finetune_workdir(workdir)
  if finetuned:
    if network != "student":
      raise checkpoints.WorkdirError(f"{workdir} is a fine-tuning workdir: it holds one network, its backbone "
                                     "(--which=student)")
    module, initial, _ = finetuning.load_weights(config.finetune.weights, config, mesh, overridden=())
    results_path = finetuning.results_path(workdir)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    class_names = tuple(results.get("class_names", ())) or None
    restored, step = _restore_finetuned(workdir, module, initial, int(config.image_size),
                                        len(class_names or ()), step, mesh)
    params, classifier = restored["backbone"], restored.get("classifier")
  else:
    saved_run.network_path(config, network)
    module, classifier, class_names = step_lib.build_backbone(config, mesh), None, None
    params, step = saved_run.restore_backbone(workdir, config, step, mesh, network=network)
  mean, std = view_specs.student_normalisation(config)
  as_numpy = lambda tree: None if tree is None else jax.tree.map(lambda x: np.asarray(x, np.float32), tree)
  return Backbone(module=_plain(module), params=as_numpy(params), network=network, step=int(step), config=config,
                  workdir=workdir, finetuned=finetuned, mean=tuple(mean), std=tuple(std),
                  image_size=int(config.image_size), classifier=as_numpy(classifier), class_names=class_names)


def _json(record: Any) -> bytes:
  return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()


def _weights(state_dict: dict[str, np.ndarray]) -> bytes:
  return safetensors_bytes(state_dict, metadata=_METADATA)


def timm_config(backbone: Backbone) -> dict[str, Any]:
  """DIR/config.json as timm's hub files have it, for `timm.create_model(ARCH, pretrained=True, ...)`."""
  module = backbone.module
  width = module.dims[-1] if isinstance(module, convnext.ConvNeXt) else 64 * resnet.EXPANSION * 2 ** 3
  size = backbone.image_size
  num_classes = len(backbone.class_names) if _has_fc(backbone) else 0
  labels = {"label_names": list(backbone.class_names)} if num_classes else {}
  return {"architecture": backbone.model_name, "num_classes": num_classes, "num_features": int(width),
          "global_pool": "avg", **labels,
          "pretrained_cfg": {"input_size": [3, size, size], "fixed_input_size": False, "interpolation": "bicubic",
                             "crop_pct": geometry.EVAL_CROP_FRACTION, "crop_mode": "center",
                             "mean": list(backbone.mean), "std": list(backbone.std), "num_classes": num_classes,
                             "pool_size": [max(1, size // 32)] * 2,
                             "first_conv": "stem.0" if isinstance(module, convnext.ConvNeXt) else "conv1",
                             "classifier": "head.fc" if isinstance(module, convnext.ConvNeXt) else "fc"}}


def preprocessor_config(backbone: Backbone) -> dict[str, Any]:
  """preprocessor_config.json: transformers' image processor of the family, preparing images as
  this package's evaluation does (`views.EvalView`: the shorter side resized to S / 0.875,
  bicubic, the centre S x S, then the mean and std)."""
  size = backbone.image_size
  common = {"do_resize": True, "resample": _BICUBIC, "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "image_mean": list(backbone.mean), "image_std": list(backbone.std)}
  if isinstance(backbone.module, vit.ViT):
    processor = "BitImageProcessor" if backbone.module.family == "dinov2" else "CLIPImageProcessor"
    return {**common, "image_processor_type": processor,
            "size": {"shortest_edge": round(size / geometry.EVAL_CROP_FRACTION)}, "do_center_crop": True,
            "crop_size": {"height": size, "width": size}, "do_convert_rgb": True}
  return {**common, "image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": size},
          "crop_pct": geometry.EVAL_CROP_FRACTION}


def _has_fc(backbone: Backbone) -> bool:
  """Whether the export holds the classifier: a fine-tuned ResNet's, as torchvision's and timm's
  `fc` (a ConvNeXt's heads in timm and transformers normalise the pooled feature before their
  classifier, which ours does not: no head of theirs computes it)."""
  return backbone.classifier is not None and isinstance(backbone.module, resnet.ResNet)


def format_files(backbone: Backbone, fmt: str) -> dict[str, bytes]:
  """{file name: bytes} of `fmt` for `backbone`, the model card aside; a fine-tuned ResNet's
  classifier goes with it in torchvision's and timm's formats, as `fc` (`_has_fc`).

  Raises:
    CheckpointError: a format that cannot hold the backbone (`check_format`).
  """
  check_format(backbone.module, fmt)
  module, params = backbone.module, backbone.params
  if isinstance(module, vit.ViT):  # transformers and safetensors: the family's transformers files
    config, state_dict = vit_weights.to_hf(module, params)
    files = {CONFIG_FILE: _json(config), WEIGHTS_FILE: _weights(state_dict)}
    if fmt == "transformers":
      files[PREPROCESSOR_FILE] = _json(preprocessor_config(backbone))
    return files
  if isinstance(module, efficientnet_lite.EfficientNetLite):  # safetensors, the one format that holds it
    return {WEIGHTS_FILE: _weights(efficientnet_lite_weights.to_state_dict(module, params))}
  is_convnext = isinstance(module, convnext.ConvNeXt)
  if fmt == "transformers":
    config = (convnext_weights.hf_config(module, backbone.image_size) if is_convnext
              else resnet_weights.hf_config(module))
    state_dict = convnext_weights.to_hf(module, params) if is_convnext else resnet_weights.to_hf(module, params)
    return {CONFIG_FILE: _json(config), WEIGHTS_FILE: _weights(state_dict),
            PREPROCESSOR_FILE: _json(preprocessor_config(backbone))}
  if is_convnext:
    conv_mlp = fmt == "timm" and backbone.model_name in convnext_weights.TIMM_CONV_MLP_SIZES
    state_dict = convnext_weights.to_timm(module, params, conv_mlp=conv_mlp)
  else:
    state_dict = resnet_weights.to_torchvision(module, params)
  if _has_fc(backbone) and fmt in ("timm", "torchvision"):
    state_dict.update(resnet_weights.classifier_to_torchvision(backbone.classifier))
  if fmt == "timm":
    if is_convnext:
      # timm's ConvNeXt without a classifier still normalises the pooled feature (head.norm), which
      # this backbone has not: the identity's affine parameters, for timm's strict load.
      width = module.dims[-1]
      state_dict.update({"head.norm.weight": np.ones(width, np.float32),
                         "head.norm.bias": np.zeros(width, np.float32)})
    return {CONFIG_FILE: _json(timm_config(backbone)), WEIGHTS_FILE: _weights(state_dict)}
  return {WEIGHTS_FILE: _weights(state_dict)}


def export(workdir: str, fmt: str, out: str, *, network: str = "student", step: Optional[int] = None) -> Backbone:
  """Writes `workdir`'s backbone to the directory `out` in `fmt` (module docstring), with its
  model card; returns what was written.

  Raises:
    WorkdirError: `out` not empty, no checkpoint, no such step or network.
    CheckpointError: an unknown format, or one that cannot hold the backbone.
    Nothing is written then.
  """
  check_out(out)
  check_format_name(fmt)
  backbone = read_backbone(workdir, network, step)
  files = format_files(backbone, fmt)
  with_classifier = _has_fc(backbone) and fmt in ("timm", "torchvision")
  files[CARD_FILE] = model_card.model_card(backbone, fmt, with_classifier).encode()
  check_out(out)
  directory = epath.Path(out)
  directory.mkdir(parents=True, exist_ok=True)
  for name, data in files.items():
    paths.write_atomically(directory / name, data)
  return backbone
