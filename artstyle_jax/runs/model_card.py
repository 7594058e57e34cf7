"""The model card of an exported backbone, DIR/README.md (`model_card`): the network, its run's
config and dataset, the evaluation results found in the workdir, how each library loads the
export, and the licence of the weights the run started from.
"""
import json
from typing import TYPE_CHECKING

from etils import epath

from artstyle_jax import models
from artstyle_jax.data import geometry
from artstyle_jax.evaluators import label_efficiency
from artstyle_jax.models import convnext
from artstyle_jax.models import efficientnet_lite
from artstyle_jax.models import resnet
from artstyle_jax.runs import finetuning
from artstyle_jax.runs import saved_run
from artstyle_jax.storage import checkpoints

if TYPE_CHECKING:
  from artstyle_jax.runs import exporting

# The evaluation results a workdir's eval/ may hold, in the order the model card lists them.
_RESULT_FILES = ("knn.json", "linear_fast.json", "linear_paper.json", "linear_baseline.json", finetuning.RESULTS_FILE)


def _loading(backbone: "exporting.Backbone", fmt: str, with_classifier: bool) -> list[str]:
  """The model card's lines on loading DIR in `fmt`'s library, and which output is this package's feature."""
  module = backbone.module
  is_convnext, is_resnet = isinstance(module, convnext.ConvNeXt), isinstance(module, resnet.ResNet)
  if fmt == "timm":
    feature = ("`model.forward_features(x).mean((2, 3))` (the model's own output adds its head norm, written as "
               "the identity's affine parameters)" if is_convnext else "`model(x)`")
    if with_classifier:
      feature += (f"; with `num_classes={len(backbone.class_names)}` in place of 0, `model(x)` are the fine-tuned "
                  "classifier's logits")
    return ["```python", "import timm",
            f'model = timm.create_model("{backbone.model_name}", pretrained=True, '
            'pretrained_cfg_overlay=dict(file="DIR/model.safetensors"), num_classes=0)', "```",
            f"The feature this package evaluates is {feature}."]
  if fmt == "torchvision" and with_classifier:
    return ["```python", "import safetensors.torch, torchvision",
            f"model = torchvision.models.{backbone.model_name}(num_classes={len(backbone.class_names)})",
            'model.load_state_dict(safetensors.torch.load_file("DIR/model.safetensors"))', "```",
            "`model(x)` are the fine-tuned classifier's logits, of the classes "
            f"{', '.join(backbone.class_names)}; with `model.fc = torch.nn.Identity()` after loading, the "
            "feature this package evaluates."]
  if fmt == "torchvision":
    return ["```python", "import safetensors.torch, torch, torchvision",
            f"model = torchvision.models.{backbone.model_name}()",
            "model.fc = torch.nn.Identity()  # the backbone only: no classifier",
            'model.load_state_dict(safetensors.torch.load_file("DIR/model.safetensors"))', "```",
            "`model(x)` is the feature this package evaluates."]
  if fmt == "transformers":
    if is_convnext:
      feature = ("`outputs.last_hidden_state.mean((2, 3))` (`pooler_output` adds the model's final LayerNorm, "
                 "written as the identity's affine parameters)")
    elif is_resnet:
      feature = "`outputs.pooler_output.flatten(1)`"
    elif module.family == "dinov2":
      feature = ("`torch.cat([h[:, 0], h[:, 1:].mean(1)], -1)` of `h = outputs.last_hidden_state`")
    else:
      feature = ("`image_embeds` of `CLIPVisionModelWithProjection.from_pretrained(DIR)`" if module.projection_dim
                 else "`outputs.pooler_output`")
    return ["```python", "from transformers import AutoImageProcessor, AutoModel",
            'model = AutoModel.from_pretrained("DIR")', 'processor = AutoImageProcessor.from_pretrained("DIR")',
            'outputs = model(**processor(images, return_tensors="pt"))', "```",
            f"The feature this package evaluates is {feature}."]
  torch_lines = []
  if isinstance(module, efficientnet_lite.EfficientNetLite):
    torch_lines = ["In torch, `efficientnet-lite-pytorch`'s network takes the file (it has no classifier):",
                   "```python", "import safetensors.torch", "from efficientnet_lite_pytorch import EfficientNet",
                   f'model = EfficientNet.from_name("{backbone.model_name.replace("_", "-")}", '
                   f"image_size={backbone.image_size}).eval()",
                   'model.load_state_dict(safetensors.torch.load_file("DIR/model.safetensors"), strict=False)', "```",
                   "The feature this package evaluates is `model.extract_features(x).mean((2, 3))`."]
  return ["```sh", "python -m artstyle_jax.eval --weights=DIR --workdir=OUT --config.dataset.name=NAME "
          "--config.dataset.data_dir=DATA",
          "python -m artstyle_jax.train --config=CONFIG --workdir=RUN --config.init=DIR", "```",
          "`models.load_backbone(\"DIR\")` reads back the same parameters, bit for bit.", *torch_lines]


def _images(backbone: "exporting.Backbone") -> str:
  """', N images' when an evaluation result in the workdir records the training split's size."""
  for name in _RESULT_FILES:
    path = saved_run.eval_dir(backbone.workdir) / name
    if path.exists() and "num_train" in (result := json.loads(path.read_text())):
      return f", {result['num_train']} images"
  return ""


def _figures(backbone: "exporting.Backbone") -> list[str]:
  """The model card's lines on the evaluation results in the workdir's eval/ (none: one line saying so)."""
  directory = saved_run.eval_dir(backbone.workdir)
  lines = []
  for name in _RESULT_FILES:
    path = directory / name
    if not path.exists():
      continue
    result = json.loads(path.read_text())
    health = (f", effective rank {result['effective_rank']:.1f}" if result.get("effective_rank") is not None
              else "")
    lines.append(f"| {result.get('method', name)} | {result.get('step')} | {100 * result['top1']:.2f} | "
                 f"{100 * result['mean_per_class_accuracy']:.2f} | {100 * result['macro_f1']:.2f} |{health} |")
  few = directory / label_efficiency.RESULTS_FILE
  few_lines = []
  if few.exists():
    result = json.loads(few.read_text())
    for setting in result.get("settings", []):
      top1 = {kind: setting[kind]["top1"]["mean"] for kind in ("knn", "linear") if kind in setting}
      few_lines.append(f"- {setting['name']} ({setting['num_labelled']} labelled images): "
                       + ", ".join(f"{kind} top-1 {100 * value:.2f}" for kind, value in top1.items()))
  if not lines and not few_lines:
    return [f"No evaluation results in {directory} (run `python -m artstyle_jax.eval --workdir=...`)."]
  table = ["| evaluation | step | top-1 % | mean per-class % | macro-F1 % | feature health |",
           "|---|---|---|---|---|---|", *lines] if lines else []
  return [f"From {directory}, on {backbone.config.dataset.name} {backbone.config.dataset.eval_split}:", "",
          *table, *([""] + ["Few labels (mean over draws):"] + few_lines if few_lines else [])]


def model_card(backbone: "exporting.Backbone", fmt: str, with_classifier: bool) -> str:
  """DIR/README.md: what the exported network is, how it was trained and scored, how to load it
  in `fmt`'s library; `with_classifier`: the export holds the fine-tuned classifier too (`fc`)."""
  config = backbone.config
  module = backbone.module
  kind = "fine-tuning" if backbone.finetuned else "self-supervised pretraining"
  if config.num_steps:
    length = f"{int(config.num_steps)} steps (config num_steps)"
  else:
    length = f"{int(config.num_epochs)} epochs"
  initial = backbone.initial_weights
  if initial == "random" or initial.startswith(models.RANDOM_PREFIX):
    licence = "The run started from a random initialisation: no other weights' licence applies."
  else:
    licence = (f"The run started from `{initial}`: those weights' licence applies to this export too; see "
               "their model card.")
  lines = [
      f"# {backbone.model_name}: the {backbone.network.replace('_', ' ')} of an artstyle-jax {kind} run", "",
      f"- Architecture: {backbone.model_name} ({type(module).__name__}), "
      + (f"the backbone and the fine-tuned classifier of {len(backbone.class_names)} classes (`fc`)"
         if with_classifier else
         "the backbone only (no projection head or classifier)"),
      f"- Parameters: {models.num_parameters({'params': backbone.params}):,}",
      f"- Input: RGB, {backbone.image_size} x {backbone.image_size} px, pixels in [0, 1] "
      f"normalised with mean {list(backbone.mean)} and std {list(backbone.std)}; evaluated on the shorter side "
      f"resized to {backbone.image_size} / {geometry.EVAL_CROP_FRACTION} (bicubic), then the centre crop",
      f"- Network: the {backbone.network.replace('_', ' ')} of the checkpoint of step {backbone.step}"
      + ("" if backbone.finetuned else " (the paper evaluates the student: artstyle_jax/METHOD.md)"),
      f"- Trained on: dataset {config.dataset.name} (split {config.dataset.train_split}{_images(backbone)}), "
      f"{length} in all, "
      f"batch {int(config.batch_size)}, at {backbone.image_size} px",
      f"- Config: {epath.Path(backbone.workdir) / checkpoints.CONFIG_FILE} (initial weights {initial})",
      f"- Format: {fmt}", "",
      "## Evaluation", "", *_figures(backbone), "",
      f"## Loading ({fmt})", "", "DIR is this directory.", "", *_loading(backbone, fmt, with_classifier), "",
      "## Licence", "", licence, ""]
  return "\n".join(lines)
