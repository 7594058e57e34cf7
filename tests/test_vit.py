"""The DINOv2 and CLIP vision transformers against transformers' PyTorch models on random weights:
files written by save_pretrained load through `load_backbone`, and the last hidden state, the
pooled output and the evaluators' feature agree within 1e-4, at the native grid and at others."""
import json

import numpy as np
import pytest

from artstyle_jax import models
from artstyle_jax.method import features
from artstyle_jax.models import vit
from artstyle_jax.models import vit_weights

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 28, "patch_size": 7}


def _perturbed(model):
  """`model` in eval mode with every parameter moved off its initial value (zero biases, unit
  LayerScale and LayerNorm weights would hide a swapped or missing tensor)."""
  torch.manual_seed(0)
  with torch.no_grad():
    for parameter in model.parameters():
      parameter.add_(0.2 * torch.randn_like(parameter))
  return model.eval()


def _save(model, directory):
  model.save_pretrained(directory)
  return str(directory)


def _images(size: int, batch: int = 2) -> np.ndarray:
  return np.random.default_rng(size).normal(size=(batch, size, size, 3)).astype(np.float32)


def _ours(directory: str, images: np.ndarray) -> vit.Outputs:
  module, variables = models.load_backbone(directory)
  assert isinstance(module, vit.ViT)
  return module.apply(variables, images)


def _torch_images(images: np.ndarray):
  return torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


def _close(actual, expected) -> None:
  np.testing.assert_allclose(np.asarray(actual), expected.detach().numpy(), atol=1e-4, rtol=0)


def _dinov2(tmp_path, **overrides):
  config = transformers.Dinov2Config(**TINY, mlp_ratio=2, **overrides)
  reference = _perturbed(transformers.Dinov2Model(config))
  return reference, _save(reference, tmp_path / "dinov2")


@pytest.mark.parametrize("size", [28, 42, 21])
def test_dinov2_matches_transformers_at_its_grid_and_interpolated_to_others(tmp_path, size):
  """Sizes 28 (the native 4x4 grid), 42 (6x6, positions upsampled bicubically) and 21 (3x3, downsampled)."""
  reference, directory = _dinov2(tmp_path)
  images = _images(size)
  ours = _ours(directory, images)
  with torch.no_grad():
    expected = reference(pixel_values=_torch_images(images))
  _close(ours.last_hidden_state, expected.last_hidden_state)
  _close(ours.pooler_output, expected.pooler_output)
  tokens = expected.last_hidden_state
  _close(ours.feature, torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=1))


def test_dinov2_with_swiglu_and_no_qkv_bias_matches_transformers(tmp_path):
  """The MLP of DINOv2-giant (SwiGLU, saved as weights_in / weights_out) and attention without biases."""
  reference, directory = _dinov2(tmp_path, use_swiglu_ffn=True, qkv_bias=False)
  images = _images(28)
  ours = _ours(directory, images)
  assert ours.last_hidden_state.shape == (2, 17, 32)
  with torch.no_grad():
    expected = reference(pixel_values=_torch_images(images))
  _close(ours.last_hidden_state, expected.last_hidden_state)


@pytest.mark.parametrize("size", [28, 35])
def test_clip_vision_model_matches_transformers(tmp_path, size):
  """CLIPVisionModel (quick GELU, pre-norm, post-norm on the CLS only) at its grid and, as
  interpolate_pos_encoding=True does, at a 5x5 grid; its feature is the pooled output."""
  config = transformers.CLIPVisionConfig(**TINY, intermediate_size=48)
  reference = _perturbed(transformers.CLIPVisionModel(config))
  images = _images(size)
  ours = _ours(_save(reference, tmp_path / "clip"), images)
  with torch.no_grad():
    expected = reference(pixel_values=_torch_images(images), interpolate_pos_encoding=size != 28)
  _close(ours.last_hidden_state, expected.last_hidden_state)
  _close(ours.pooler_output, expected.pooler_output)
  _close(ours.feature, expected.pooler_output)


def test_a_clip_model_file_gives_its_vision_tower_and_the_projected_image_embedding(tmp_path):
  """A whole CLIPModel: its text tower is left out, and the feature is get_image_features."""
  config = transformers.CLIPConfig(
      text_config={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
                   "vocab_size": 64, "max_position_embeddings": 8},
      vision_config={**TINY, "intermediate_size": 48}, projection_dim=24)
  reference = _perturbed(transformers.CLIPModel(config))
  images = _images(28)
  directory = _save(reference, tmp_path / "clip_model")
  ours = _ours(directory, images)
  with torch.no_grad():
    embedding = reference.get_image_features(pixel_values=_torch_images(images))
  embedding = embedding if isinstance(embedding, torch.Tensor) else embedding.pooler_output
  assert ours.feature.shape == (2, 24)
  _close(ours.feature, embedding)
  module, variables = models.load_backbone(directory)
  np.testing.assert_allclose(features.pooled(module, variables, images), ours.feature, atol=1e-6)


def test_the_bicubic_matrix_is_torchs_interpolate():
  """Up and down, against torch.nn.functional.interpolate(mode='bicubic', align_corners=False)."""
  grid = np.random.default_rng(0).normal(size=(5, 5)).astype(np.float32)
  for size in (2, 3, 8, 11):
    expected = torch.nn.functional.interpolate(torch.from_numpy(grid)[None, None], size=(size, size),
                                               mode="bicubic", align_corners=False)[0, 0].numpy()
    matrix = vit.bicubic_matrix(5, size)
    np.testing.assert_allclose(matrix @ grid @ matrix.T, expected, atol=1e-5)


def test_each_family_brings_its_normalisation_and_a_patch_multiple_size(tmp_path):
  _, directory = _dinov2(tmp_path)
  dinov2, _ = models.load_backbone(directory)
  assert vit_weights.preprocessing(dinov2) == (vit_weights.IMAGENET_MEAN, vit_weights.IMAGENET_STD, 224)
  assert vit_weights.compatible_image_size(dinov2, 352) == 350 and vit_weights.compatible_image_size(dinov2, 3) == 7
  clip = vit.ViT("clip", patch_size=16, width=8, depth=1, num_heads=2, mlp_hidden=8, native_grid=14)
  assert vit_weights.preprocessing(clip) == (vit_weights.CLIP_MEAN, vit_weights.CLIP_STD, 224)


@pytest.mark.parametrize("config, message", [
    ({"model_type": "bert"}, "model_type 'bert'"),
    ({"model_type": "dinov2"}, "config.json is there but none of model.safetensors, pytorch_model.bin"),
])
def test_a_bad_directory_is_refused_naming_it(tmp_path, config, message):
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(models.BackboneError, match=message) as refused:
    models.load_backbone(str(tmp_path))
  assert str(tmp_path) in str(refused.value) and "\n" not in str(refused.value)


def test_weights_of_another_family_are_refused_naming_the_keys(tmp_path):
  """A DINOv2 config.json over a CLIP vision model's weights."""
  reference = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**TINY, intermediate_size=48))
  directory = tmp_path / "mixed"
  reference.save_pretrained(directory)
  (directory / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
  with pytest.raises(models.BackboneError, match="cannot read a dinov2 vision transformer.*embeddings.class_embedding"):
    models.load_backbone(str(directory))



def test_a_missing_tensor_is_refused_naming_it(tmp_path):
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file
  _, directory = _dinov2(tmp_path)
  weights = load_file(f"{directory}/model.safetensors")
  del weights["encoder.layer.1.norm2.weight"]
  save_file(weights, f"{directory}/model.safetensors")
  with pytest.raises(models.BackboneError, match=r"nothing was loaded: missing parameters \(1\): blocks_1/norm2/scale"):
    models.load_backbone(directory)


def test_a_hub_id_loads_from_the_local_cache_without_a_download(tmp_path, monkeypatch):
  """A snapshot laid out as huggingface_hub caches it (refs/main -> snapshots/<commit>/)."""
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  reference, _ = _dinov2(tmp_path)
  repository = tmp_path / "hub" / "models--someone--tiny-dinov2"
  (repository / "refs").mkdir(parents=True)
  (repository / "refs" / "main").write_text("0" * 40)
  reference.save_pretrained(repository / "snapshots" / ("0" * 40))
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  images = _images(28)
  with torch.no_grad():
    expected = reference(pixel_values=_torch_images(images))
  _close(_ours("someone/tiny-dinov2", images).pooler_output, expected.pooler_output)
