"""eval --weights=DIR of a DINOv2 or CLIP model's transformers files: the backbone's own
normalisation and image size (a multiple of its patch) win over the config's unless overridden,
and the program writes its results and a head predict applies."""
import json
import os
import pathlib

import pytest

from artstyle_jax.models import vit
from artstyle_jax.models import vit_weights
from artstyle_jax.runs import comparison
from artstyle_jax.runs import evaluation
from artstyle_jax.runs import prediction
from artstyle_jax.storage import checkpoints
from helpers import run_eval_weights
from helpers import tiny_data_config

transformers = pytest.importorskip("transformers")

_DINOV2 = vit.ViT("dinov2", patch_size=14, width=8, depth=1, num_heads=2, mlp_hidden=8, native_grid=37)
_CLIP = vit.ViT("clip", patch_size=14, width=8, depth=1, num_heads=2, mlp_hidden=8, native_grid=24)


def test_a_vit_is_evaluated_with_its_familys_normalisation_and_size(synthetic_data):
  """DINOv2: ImageNet constants at 224 px; CLIP: its constants at its native 336 px."""
  config = tiny_data_config(synthetic_data)
  dinov2, clip = evaluation.weights_config(config, _DINOV2), evaluation.weights_config(config, _CLIP)
  assert (dinov2.views.student.mean, dinov2.views.student.std, dinov2.image_size) == (
      vit_weights.IMAGENET_MEAN, vit_weights.IMAGENET_STD, 224)
  assert (clip.views.student.mean, clip.views.student.std, clip.image_size) == (
      vit_weights.CLIP_MEAN, vit_weights.CLIP_STD, 336)


def test_an_overridden_size_is_rounded_to_the_patch_and_overridden_constants_kept(synthetic_data):
  config = tiny_data_config(synthetic_data)  # image_size 64
  kept = evaluation.weights_config(config, _DINOV2, overridden=("image_size", "views.student.std"))
  assert kept.image_size == 70 and kept.views.student.std == config.views.student.std
  assert kept.views.student.mean == vit_weights.IMAGENET_MEAN


@pytest.fixture(scope="module")
def evaluated_dinov2(tmp_path_factory, synthetic_data):
  """eval --weights=dinov2 (a tiny Dinov2Model's save_pretrained directory, a relative path) from a
  fresh directory at --config.image_size=64: (cwd, process)."""
  cwd = tmp_path_factory.mktemp("vit")
  config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
                                     image_size=28, patch_size=7)
  transformers.Dinov2Model(config).save_pretrained(cwd / "dinov2")
  return cwd, run_eval_weights(cwd, "dinov2", synthetic_data)


def test_eval_of_a_dinov2_directory_writes_results_at_a_patch_multiple_and_a_head(evaluated_dinov2, synthetic_data):
  """64 px is rounded to 63 (9 x 9 patches of 7); the feature is [CLS, mean patch], 2 x 32 wide."""
  cwd, process = evaluated_dinov2
  assert process.returncode == 0, process.stderr[-3000:]
  out = cwd / "out" / "eval"
  assert {"knn.json", "linear_fast.json", "linear_head.npz", "config.json"} <= set(os.listdir(out))
  knn = json.loads((out / "knn.json").read_text())
  assert knn["weights"] == str(cwd / "dinov2") and knn["image_size"] == 63
  assert knn["model"] == "dinov2_vit(width=32, depth=2, patch=7)" and 0.0 <= knn["top1"] <= 1.0
  saved = checkpoints.load_config(str(out))
  assert saved.image_size == 63 and tuple(saved.views.student.mean) == vit_weights.IMAGENET_MEAN
  query = sorted(pathlib.Path(synthetic_data[0]).rglob("*.jpg"))[0]
  lines = prediction.predict(str(cwd / "out"), [str(query)], top_k=3)
  assert lines[0] == str(query) and len(lines) == 4


def test_compare_takes_a_transformers_directory_as_weights_and_a_workdir_as_a_workdir(tmp_path):
  """Both hold a config.json; only transformers' names a model_type."""
  transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
      hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, image_size=16,
      patch_size=8)).save_pretrained(tmp_path / "clip")
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "config.json").write_text(json.dumps({"model": {"name": "convnext_atto"}}))
  assert not comparison.Entry("clip", str(tmp_path / "clip")).is_workdir
  assert comparison.Entry("run", str(tmp_path / "run")).is_workdir
