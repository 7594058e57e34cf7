"""python -m artstyle_jax.export: a workdir's backbone loaded by transformers, timm's and
torchvision's layouts and this package's own reader, giving our features; a model card beside
it; and every refusal one error line that writes nothing."""
import io
import json
import os
import re
import shutil

import jax
import numpy as np
from PIL import Image
import pytest
from safetensors.numpy import load_file
import torch
import transformers

from artstyle_jax import cli
from artstyle_jax import models
from artstyle_jax.bench import torch_resnet
from artstyle_jax.data import sources
from artstyle_jax.data import views
from artstyle_jax.method import supervised_step
from artstyle_jax.models import convnext_weights
from artstyle_jax.models import efficientnet_lite
from artstyle_jax.models import resnet
from artstyle_jax.models import vit
from artstyle_jax.runs import exporting
from artstyle_jax.storage import checkpoints
from helpers import assert_trees_equal
from helpers import config_path
from helpers import file_contents
from helpers import FIXTURES
from helpers import load_config
from helpers import relative_error
from helpers import restored_state
from helpers import run_program
from helpers import tiny_train_flags

TOLERANCE = 1e-5  # max |theirs - ours| / max |ours|, float32


def _images(shape, seed=0) -> np.ndarray:
  """(B, H, W, 3) float32 standard normal images, as normalised inputs."""
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _nchw(images: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def _randomised(params, seed=1):
  """`params` with every leaf moved by N(0, 0.1) noise, so that scales, biases and BatchNorm
  statistics are not the initialisation's ones and zeros; variances kept positive."""
  rng = np.random.default_rng(seed)
  def move(path, leaf):
    noise = rng.normal(scale=0.1, size=np.shape(leaf)).astype(np.float32)
    return np.abs(leaf + noise) + 0.5 if path[-1].key == "var" else leaf + noise
  return jax.tree_util.tree_map_with_path(move, params)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_data):
  """A directory holding `run`, two train steps of configs/tiny.py run as a user runs them there."""
  root = tmp_path_factory.mktemp("export")
  data = (os.path.relpath(synthetic_data[0], root), synthetic_data[1])
  result = run_program("train", *tiny_train_flags("run", data, "--config.num_steps=2", config=config_path("tiny")),
                       cwd=root)
  assert result.returncode == 0, result.stderr[-3000:]
  return root


@pytest.fixture(scope="module")
def ours(trained):
  """The trained run's student as the exporter reads it."""
  return exporting.read_backbone(str(trained / "run"))


def test_transformers_convnext_of_a_trained_run_gives_our_stage_maps_and_features(trained, ours, synthetic_data):
  """The exported directory loads with AutoModel as a ConvNextModel and AutoImageProcessor with
  our normalisation and size, preparing a test painting as our evaluation does (to the rounding
  of 8-bit resampling); each stage's map and the pooled feature match ours within 1e-5 on images
  of sides 100 x 72, no multiple of 32 (each strided layer drops the rows past its last patch, as
  transformers' does)."""
  result = run_program("export", "--workdir=run", "--format=transformers", "--out=hf", cwd=trained)
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(os.listdir(trained / "hf")) == ["README.md", "config.json", "model.safetensors",
                                               "preprocessor_config.json"]
  model = transformers.AutoModel.from_pretrained(trained / "hf").eval()
  assert type(model).__name__ == "ConvNextModel"
  processor = transformers.AutoImageProcessor.from_pretrained(trained / "hf")
  assert (list(processor.image_mean), list(processor.image_std)) == (list(ours.mean), list(ours.std))
  assert processor.size["shortest_edge"] == ours.image_size == 64
  painting = sources.open_split(synthetic_data[1], synthetic_data[0], "test")[0]["image"]
  prepared = processor(Image.open(io.BytesIO(painting)).convert("RGB"), return_tensors="np")["pixel_values"][0]
  evaluated = views.EvalView(ours.image_size, ours.mean, ours.std)(painting)["image"]
  assert np.abs(prepared.transpose(1, 2, 0) - evaluated).max() <= 3 / 255 / min(ours.std)
  images = _images((2, 100, 72, 3))
  stages = ours.module.apply({"params": ours.params}, images)
  with torch.no_grad():
    outputs = model(_nchw(images), output_hidden_states=True)
  for theirs, mine in zip(outputs.hidden_states[1:], stages, strict=True):
    assert relative_error(theirs.numpy().transpose(0, 2, 3, 1), mine) <= TOLERANCE
  assert relative_error(outputs.last_hidden_state.numpy().mean((2, 3)), np.mean(stages[-1], (1, 2))) <= TOLERANCE


def test_our_safetensors_export_reads_back_bit_for_bit(trained, ours, tmp_path):
  """The safetensors format, read by models.load_backbone (what config.init, eval --weights and
  predict read) as the directory or as its file, gives the checkpoint's parameters, bit for bit."""
  exporting.export(str(trained / "run"), "safetensors", str(tmp_path / "ours"))
  for source in (tmp_path / "ours", tmp_path / "ours" / "model.safetensors"):
    module, variables = models.load_backbone(str(source))
    assert models.model_name(module) == "convnext_atto"
    assert_trees_equal(variables["params"], ours.params)


def test_timm_export_has_timms_own_keys_and_a_hub_config(trained, ours, tmp_path):
  """The writer gives timm's own fixture file back key for key and bit for bit; the exported
  file has the key pattern of timm's ConvNeXt without classifier (the fixture's keys less
  head.fc, its indices aside), the MLP as timm builds convnext_atto's (1x1 convolutions), holds
  the checkpoint's parameters, and config.json is timm's hub config with the architecture,
  width, input size, mean and std."""
  fixture = load_file(FIXTURES / "timm_convnext_small_random.safetensors")
  written = convnext_weights.to_timm(*convnext_weights.from_timm(fixture))
  assert sorted(written) == sorted(fixture)
  for key, value in fixture.items():
    np.testing.assert_array_equal(written[key], value, err_msg=key)

  exporting.export(str(trained / "run"), "timm", str(tmp_path / "timm"))
  exported = load_file(tmp_path / "timm" / "model.safetensors")
  pattern = lambda keys: {re.sub(r"\.\d+\.", ".N.", key) for key in keys}
  assert pattern(exported) == pattern(fixture) - {"head.fc.weight", "head.fc.bias"}
  assert exported["stages.0.blocks.0.mlp.fc1.weight"].shape == (160, 40, 1, 1)  # timm's atto: a 1x1-conv MLP
  np.testing.assert_array_equal(exported["head.norm.weight"], 1.0)
  np.testing.assert_array_equal(exported["head.norm.bias"], 0.0)
  _, params = convnext_weights.from_timm({k: v for k, v in exported.items() if not k.startswith("head.")})
  assert_trees_equal(params, ours.params)
  config = json.loads((tmp_path / "timm" / "config.json").read_text())
  assert (config["architecture"], config["num_features"], config["num_classes"]) == ("convnext_atto", 320, 0)
  cfg = config["pretrained_cfg"]
  assert (cfg["input_size"], cfg["mean"], cfg["std"]) == ([3, 64, 64], list(ours.mean), list(ours.std))


CLASS_NAMES = tuple(f"style_{i}" for i in range(10))


def _finetuned_resnet_workdir(workdir, data):
  """A finished fine-tuning workdir of random:resnet50 as finetune leaves it, less the optimiser
  state, which export does not read: config.json, the checkpoint of step 3 whose backbone and
  classifier have every parameter and BatchNorm statistic moved off their initialisation, and
  eval/finetune.json naming the classes. Returns (backbone, classifier) parameters."""
  config = load_config("finetune", f"dataset.name={data[1]}", f"dataset.data_dir={data[0]}", "image_size=64")
  with config.unlocked():
    config.finetune.weights = "random:resnet50"
  module = resnet.create("resnet50")
  params = _randomised(models.backbones.init_params(module, config.seed))
  classifier = _randomised(supervised_step.init_classifier(jax.random.key(0), 2048, len(CLASS_NAMES), 0.01))
  state = supervised_step.FinetuneState(step=np.int32(3), params={"backbone": params, "classifier": classifier},
                                        opt_state=())
  checkpoints.save_config(str(workdir), config)
  with checkpoints.manager(str(workdir)) as mngr:
    checkpoints.save(mngr, 3, state, force=True)
    mngr.wait_until_finished()
  (workdir / "eval").mkdir()
  (workdir / "eval" / "finetune.json").write_text(json.dumps({"method": "finetune", "step": 3, "top1": 0.25,
                                                                "mean_per_class_accuracy": 0.2, "macro_f1": 0.1,
                                                                "class_names": list(CLASS_NAMES)}))
  return params, classifier


def test_resnet50_of_a_finetuning_run_loads_in_transformers_and_torchvision(tmp_path, synthetic_data):
  """A fine-tuning workdir's ResNet-50 exports as transformers' ResNetModel and as a torchvision
  state dict with its classifier as `fc`, which a torchvision-named plain-torch ResNet-50 takes
  strictly; they give our pooled features, and `fc` our classifier's logits, within 1e-5 on
  72 x 88 images. timm's format holds the same tensors with timm's hub config."""
  params, classifier = _finetuned_resnet_workdir(tmp_path / "ft", synthetic_data)
  exporting.export(str(tmp_path / "ft"), "transformers", str(tmp_path / "hf"))
  backbone = exporting.export(str(tmp_path / "ft"), "torchvision", str(tmp_path / "tv"))
  assert backbone.finetuned and backbone.step == 3 and backbone.model_name == "resnet50"
  assert_trees_equal(backbone.params, params)

  assert backbone.class_names == CLASS_NAMES
  assert_trees_equal(backbone.classifier, classifier)

  images = _images((2, 72, 88, 3))
  mine = np.mean(resnet.create("resnet50").apply({"params": params}, images)[-1], (1, 2))
  my_logits = mine @ classifier["kernel"] + classifier["bias"]
  model = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
  assert type(model).__name__ == "ResNetModel"
  reference, fc = torch_resnet.ResNet().eval(), torch.nn.Linear(2048, len(CLASS_NAMES))
  state_dict = {k: torch.from_numpy(v.copy()) for k, v in load_file(tmp_path / "tv" / "model.safetensors").items()}
  fc.load_state_dict({"weight": state_dict.pop("fc.weight"), "bias": state_dict.pop("fc.bias")}, strict=True)
  reference.load_state_dict(state_dict, strict=True)
  with torch.no_grad():
    theirs = model(_nchw(images)).pooler_output.numpy()[:, :, 0, 0]
    torchvision_features = reference(_nchw(images))[-1].mean((2, 3))
    torchvision_logits = fc(torchvision_features)
  assert relative_error(theirs, mine) <= TOLERANCE
  assert relative_error(torchvision_features.numpy(), mine) <= TOLERANCE
  assert relative_error(torchvision_logits.numpy(), my_logits) <= TOLERANCE
  timm_files = exporting.format_files(backbone, "timm")  # timm's ResNet keys are torchvision's
  assert timm_files["model.safetensors"] == (tmp_path / "tv" / "model.safetensors").read_bytes()
  config = json.loads(timm_files["config.json"])
  assert (config["architecture"], config["num_features"], config["num_classes"], config["label_names"]) == (
      "resnet50", 2048, len(CLASS_NAMES), list(CLASS_NAMES))
  assert "num_classes=10" in (tmp_path / "tv" / "README.md").read_text()
@pytest.mark.parametrize("family", ["dinov2", "clip"])
def test_vit_exports_to_its_transformers_family_and_reads_back_bit_for_bit(family, tmp_path):
  """A DINOv2 (Dinov2Model) and a CLIP tower with projection (CLIPVisionModelWithProjection)
  load with AutoModel in their family and give our pooler output within 1e-5 on 40 x 56 images
  (patch 8); read back by models.load_backbone, the parameters are the same bits."""
  settings = {"dinov2": dict(mlp="gelu", layer_norm_eps=1e-6), "clip": dict(mlp="quick_gelu", layer_norm_eps=1e-5,
                                                                           projection_dim=8)}[family]
  module = vit.ViT(family=family, patch_size=8, width=16, depth=2, num_heads=2, mlp_hidden=64, native_grid=4,
                   **settings)
  params = _randomised(module.init(jax.random.key(0), _images((1, 32, 32, 3)))["params"])
  backbone = exporting.Backbone(module=module, params=params, network="student", step=1, config=load_config("tiny"),
                                workdir=str(tmp_path), finetuned=False, mean=(0.5,) * 3, std=(0.25,) * 3,
                                image_size=32)
  for name, data in exporting.format_files(backbone, "transformers").items():
    (tmp_path / name).write_bytes(data)
  expected = {"dinov2": "Dinov2Model", "clip": "CLIPVisionModel"}[family]
  model = transformers.AutoModel.from_pretrained(tmp_path).eval()
  assert type(model).__name__ == expected
  images = _images((2, 40, 56, 3))
  mine = module.apply({"params": params}, images)
  with torch.no_grad():
    theirs = model(pixel_values=_nchw(images), interpolate_pos_encoding=True).pooler_output.numpy()
  assert relative_error(theirs, mine.pooler_output) <= TOLERANCE
  _, variables = models.load_backbone(str(tmp_path))
  assert_trees_equal(variables["params"], params)


def test_a_teacher_exports_on_request_and_the_student_by_default(trained, ours):
  """--which picks the network: by default the checkpoint's student, else the weak teacher's
  copy, which the style teacher shares in configs/tiny.py (equal momenta); after two steps of
  EMA the teachers differ from the student."""
  state = restored_state(trained / "run", 2)
  assert_trees_equal(ours.params, state["params"]["backbone"])
  for network in ("weak_teacher", "style_teacher"):
    backbone = exporting.read_backbone(str(trained / "run"), network)
    assert (backbone.network, backbone.step) == (network, 2)
    assert_trees_equal(backbone.params, state["teachers"]["weak"]["backbone"])
  assert not np.array_equal(backbone.params["stem_conv"]["kernel"], ours.params["stem_conv"]["kernel"])


def test_the_model_card_describes_the_network_its_training_results_and_loading(trained, tmp_path, synthetic_data):
  """DIR/README.md names the architecture, parameter count, input size and normalisation, the
  dataset and its size, the steps, which network it is, the workdir's evaluation results with
  their step, the loading lines of the format and the initial weights' licence."""
  workdir = tmp_path / "run"
  shutil.copytree(trained / "run", workdir)
  results = {"method": "knn", "step": 2, "top1": 0.5, "mean_per_class_accuracy": 0.4, "macro_f1": 0.3,
             "effective_rank": 7.5, "num_train": 80}
  (workdir / "eval").mkdir(exist_ok=True)
  (workdir / "eval" / "knn.json").write_text(json.dumps(results))
  backbone = exporting.export(str(workdir), "transformers", str(tmp_path / "out"))
  card = (tmp_path / "out" / "README.md").read_text()
  for text in ("convnext_atto", f"{models.num_parameters({'params': backbone.params}):,}", "64 x 64 px",
               str(list(backbone.mean)), synthetic_data[1], "80 images", "student of the checkpoint of step 2",
               "| knn | 2 | 50.00 | 40.00 | 30.00 |, effective rank 7.5 |", 'AutoModel.from_pretrained("DIR")',
               "random initialisation"):
    assert text in card, text


REFUSALS = {"no checkpoint": "holds no checkpoint", "unknown format": "unknown format 'onnx'",
            "torchvision for a ConvNeXt": "holds a ResNet, not a convnext_atto", "out not empty": "is not empty"}


def _refused_export(case: str, trained, tmp_path) -> tuple[str, str]:
  """(workdir, format) of a refused export of `case`, its files made in tmp_path."""
  workdir, fmt = "run", "transformers"
  if case == "no checkpoint":
    checkpoints.save_config(str(tmp_path / "empty"), load_config("tiny"))
    workdir = str(tmp_path / "empty")
  elif case == "unknown format":
    fmt = "onnx"
  elif case == "torchvision for a ConvNeXt":
    fmt = "torchvision"
  else:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("kept")
  return workdir, fmt


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_export_is_a_one_line_user_error_and_writes_nothing(case, trained, tmp_path):
  """No checkpoint in the workdir, an unknown format, a format that cannot hold the backbone and
  an --out that is not empty each raise one of the errors the programs print as one `error:`
  line (cli.USER_ERRORS), saying so in one line, and write nothing."""
  workdir, fmt = _refused_export(case, trained, tmp_path)
  before = file_contents(tmp_path)
  with pytest.raises(cli.USER_ERRORS) as raised:
    exporting.export(str(trained / workdir), fmt, str(tmp_path / "out"))
  assert REFUSALS[case] in str(raised.value) and "\n" not in str(raised.value)
  assert file_contents(tmp_path) == before
  assert case == "out not empty" or not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ["timm", "transformers", "torchvision"])
def test_an_efficientnet_lite_is_refused_by_the_formats_without_its_layout(fmt):
  """No format but our safetensors holds an EfficientNet-Lite here: each other one is refused in
  one line that names the one that does."""
  module = efficientnet_lite.EfficientNetLite()
  with pytest.raises(cli.USER_ERRORS, match="holds no EfficientNet-Lite: export the efficientnet_lite0 as safetensors"):
    exporting.check_format(module, fmt)
  exporting.check_format(module, "safetensors")


def test_the_program_ends_a_refused_export_with_one_error_line_and_exit_1(trained, tmp_path):
  """`python -m artstyle_jax.export` on a refused export (here an --out that is not empty): exit
  status 1, stderr ending in its one `error:` line, nothing written."""
  workdir, fmt = _refused_export("out not empty", trained, tmp_path)
  before = file_contents(tmp_path)
  result = run_program("export", f"--workdir={workdir}", f"--format={fmt}", f"--out={tmp_path / 'out'}",
                       cwd=trained)
  assert result.returncode == 1
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr[-2000:]
  assert REFUSALS["out not empty"] in errors[0]
  assert file_contents(tmp_path) == before


def test_an_export_into_a_bucket_holds_the_same_files(trained, gcs, tmp_path):
  """--out=gs://BUCKET/DIR writes the objects a local export writes, byte for byte."""
  bucket = gcs.new_bucket("artstyle-export")
  result = run_program("export", "--workdir=run", "--format=safetensors", f"--out={bucket}/ours", cwd=trained,
                       env=gcs.env)
  assert result.returncode == 0, result.stderr[-3000:]
  exporting.export(str(trained / "run"), "safetensors", str(tmp_path / "ours"))
  local = file_contents(tmp_path / "ours")
  in_bucket = file_contents(gcs.root / "artstyle-export" / "ours")
  assert sorted(in_bucket) == sorted(local) == ["README.md", "model.safetensors"]
  assert in_bucket["model.safetensors"] == local["model.safetensors"]
