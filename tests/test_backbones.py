"""ResNet-50 against plain torch, the public checkpoint formats read from files torch wrote, and
`models.load_backbone` for every kind of source, refusing what it cannot load in one line."""
from authors_checkpoint import AUTHORS_DEPTHS
from authors_checkpoint import AUTHORS_DIMS
from authors_checkpoint import write_authors_checkpoint
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from safetensors.numpy import save_file
import torch

from artstyle_jax import models
from artstyle_jax.bench import torch_resnet
from artstyle_jax.method import config_lib
from artstyle_jax.method import features
from artstyle_jax.models import convnext
from artstyle_jax.models import resnet
from artstyle_jax.models import resnet_weights
from artstyle_jax.runs import pretraining
from helpers import assert_trees_equal
from helpers import FIXTURES
from helpers import relative_error


@pytest.fixture(scope="module")
def torch_model():
  """A torch ResNet-50, random weights and random BatchNorm statistics, in eval mode."""
  torch.manual_seed(0)
  model = torch_resnet.ResNet()
  torch_resnet.randomise_batch_norm(model, torch.Generator().manual_seed(1))
  return model.eval()


@pytest.fixture(scope="module")
def torch_state(torch_model):
  return torch_model.state_dict()


@pytest.fixture(scope="module")
def reference(torch_state):
  """Our (module, params) of the torch model, converted from its plain torchvision keys."""
  _, module, params = resnet_weights.from_state_dict({k: v.numpy() for k, v in torch_state.items()})
  return module, params


def test_stage_outputs_match_torch_within_1e4_relative(torch_model, reference):
  module, params = reference
  images = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    expected = [t.permute(0, 2, 3, 1).numpy() for t in torch_model(torch.from_numpy(images).permute(0, 3, 1, 2))]
  actual = module.apply({"params": params}, jnp.asarray(images))
  assert [a.shape for a in actual] == [(2, 16, 16, 256), (2, 8, 8, 512), (2, 4, 4, 1024), (2, 2, 2, 2048)]
  for a, e in zip(actual, expected):
    np.testing.assert_allclose(np.asarray(a), e, rtol=0, atol=1e-4 * np.abs(e).max())


def test_pooled_features_are_the_average_of_the_last_stage(reference):
  module, params = reference
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  pooled = features.pooled(module, {"params": params}, images)
  assert pooled.shape == (2, 2048)
  np.testing.assert_allclose(pooled, module.apply({"params": params}, images)[-1].mean(axis=(1, 2)), rtol=1e-6)


def _head(generator, *shape):
  return torch.randn(*shape, generator=generator)


def checkpoint_formats(state):
  """File name -> what torch.save writes for the same backbone in each public format."""
  g = torch.Generator().manual_seed(2)
  fc = {"fc.weight": _head(g, 1000, 2048), "fc.bias": _head(g, 1000)}
  moco = {f"module.encoder_q.{k}": v for k, v in state.items()}
  moco.update({"module.encoder_q.fc.0.weight": _head(g, 2048, 2048), "module.encoder_q.fc.2.weight": _head(g, 128, 2048),
               "module.encoder_k.conv1.weight": _head(g, 64, 3, 7, 7), "module.queue": _head(g, 128, 16)})
  swav = {f"module.{k}": v for k, v in state.items()}
  swav.update({"module.projection_head.0.weight": _head(g, 2048, 2048), "module.prototypes.weight": _head(g, 30, 128)})
  mmselfsup = {f"backbone.{k}": v for k, v in state.items()}
  mmselfsup.update({"head.fc_cls.weight": _head(g, 4, 2048), "head.fc_cls.bias": _head(g, 4)})
  return {
      "torchvision_with_fc.pth": {**state, **fc},  # a supervised torchvision or a SimCLR conversion
      "barlow_twins.pth": dict(state),  # torchvision keys without fc: Barlow Twins, VICReg, DINO
      "moco_v2.pth.tar": {"epoch": 800, "arch": "resnet50", "state_dict": moco},
      "swav.pth.tar": swav,
      "rotation-pred_resnet50_8xb16-steplr-70e_in1k.pth": {"meta": {"epoch": 70}, "state_dict": mmselfsup},
  }


@pytest.mark.parametrize("name", list(checkpoint_formats({})))
def test_each_public_checkpoint_format_loads_the_same_backbone(name, torch_state, reference, tmp_path,
                                                               monkeypatch):
  torch.save(checkpoint_formats(torch_state)[name], tmp_path / name)
  monkeypatch.chdir(tmp_path)
  module, variables = models.load_backbone(name)
  assert isinstance(module, resnet.ResNet) and models.model_name(module) == "resnet50"
  assert_trees_equal(variables["params"], reference[1])
  assert models.num_parameters(variables) == 23_508_032  # torchvision resnet50 without fc


def test_a_safetensors_file_of_torchvision_keys_is_a_resnet(torch_state, reference, tmp_path):
  path = tmp_path / "resnet50.safetensors"
  save_file({k: v.numpy() for k, v in torch_state.items()}, str(path))
  module, variables = models.load_backbone(str(path))
  assert isinstance(module, resnet.ResNet)
  assert_trees_equal(variables["params"], reference[1])


def test_an_unknown_layout_is_refused_in_one_line_naming_its_keys(tmp_path):
  path = tmp_path / "vit.pth"
  torch.save({"patch_embed.proj.weight": torch.zeros(8, 3, 4, 4), "blocks.0.attn.qkv.weight": torch.zeros(24, 8)},
             path)
  with pytest.raises(models.BackboneError) as error:
    models.load_backbone(str(path))
  message = str(error.value)
  assert "\n" not in message and "not a ResNet state dict of a known format" in message
  assert "blocks.0.attn.qkv.weight, patch_embed.proj.weight" in message


def test_a_checkpoint_that_does_not_fill_the_tree_is_refused_naming_the_keys(torch_state, tmp_path):
  state = {k: v for k, v in torch_state.items() if k != "layer4.2.bn3.running_var"}
  state["layer4.2.extra.weight"] = torch.zeros(3)
  path = tmp_path / "broken.pth"
  torch.save(state, path)
  with pytest.raises(models.BackboneError, match=r"unexpected keys \(1\): layer4.2.extra.weight; "
                                                 r"missing parameters \(1\): layer4_2/bn3/var"):
    models.load_backbone(str(path))


def test_a_file_torch_cannot_read_safely_and_a_missing_file_are_refused(tmp_path):
  path = tmp_path / "garbage.pth"
  path.write_bytes(b"not a checkpoint")
  with pytest.raises(models.BackboneError, match="torch.load.weights_only=True. cannot read it"):
    models.load_backbone(str(path))
  with pytest.raises(FileNotFoundError, match="no such file"):
    models.load_backbone(str(tmp_path / "missing.pth"))


def test_random_sources_name_their_model_and_follow_the_seed():
  module, variables = models.load_backbone("random:convnext_atto", seed=3)
  again = models.load_backbone("random:convnext_atto", seed=3)[1]
  assert isinstance(module, convnext.ConvNeXt) and models.model_name(module) == "convnext_atto"
  assert_trees_equal(variables, again)
  other = models.load_backbone("random:convnext_atto", seed=4)[1]
  assert not np.array_equal(variables["params"]["stem_conv"]["kernel"], other["params"]["stem_conv"]["kernel"])
  for source in ("random", "random:", "random:vgg16"):
    with pytest.raises(models.BackboneError, match="convnext_atto, .*resnet50"):
      models.load_backbone(source)


# timm's own outputs for the fixture's weights, stored beside them: its four stage maps of an image.
# Measured against them: at most 7.0e-7 relative (relative_error, stage 3); bound 7x that.
TIMM_STAGES_RTOL = 5e-6


def assert_computes_timms_stages(module, variables):
  """The backbone on the fixture's image gives timm's stored stage maps (NCHW there, NHWC here)."""
  io = np.load(FIXTURES / "timm_convnext_small_random_io.npz")
  stages = module.apply(variables, np.transpose(io["input_nchw"], (0, 2, 3, 1)))
  assert len(stages) == 4
  for index, stage in enumerate(stages):
    expected = np.transpose(io[f"stage{index}"], (0, 2, 3, 1))
    assert stage.shape == expected.shape and relative_error(stage, expected) <= TIMM_STAGES_RTOL, index


def test_a_convnext_safetensors_file_loads_timms_network_less_the_classifier():
  """timm's ConvNeXt file (with its classifier) gives a backbone without one, no 'head' parameters,
  that computes timm's stage maps."""
  module, variables = models.load_backbone(str(FIXTURES / "timm_convnext_small_random.safetensors"))
  assert isinstance(module, convnext.ConvNeXt) and module.num_classes == 0
  assert "head" not in variables["params"]
  assert (tuple(module.depths), tuple(module.dims)) == (AUTHORS_DEPTHS, AUTHORS_DIMS)
  assert_computes_timms_stages(module, variables)


def test_an_authors_checkpoint_gives_its_student_backbone(tmp_path):
  """The authors' .pth (student = the timm fixture, teachers perturbed copies) gives the student:
  timm's stage maps, not a teacher's."""
  path = tmp_path / "bgt-wikiart.pth"
  model, _ = write_authors_checkpoint(path)
  module, variables = models.load_backbone(str(path))
  assert isinstance(module, convnext.ConvNeXt)
  assert_computes_timms_stages(module, variables)
  io = np.load(FIXTURES / "timm_convnext_small_random_io.npz")
  with torch.no_grad():
    teacher = model.encoder_k.net(torch.from_numpy(io["input_nchw"]))[-1].numpy()
  assert relative_error(np.transpose(teacher, (0, 2, 3, 1)), np.transpose(io["stage3"], (0, 2, 3, 1))) > 100 * TIMM_STAGES_RTOL


def test_a_path_that_is_neither_a_file_nor_a_hub_id_is_not_found(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(FileNotFoundError, match="not a hub id"):
    models.load_backbone("./runs/missing.pth")


def test_trainings_init_takes_a_convnext_source_and_refuses_a_resnet(torch_state, tmp_path):
  path = str(FIXTURES / "timm_convnext_small_random.safetensors")
  student, variables = models.load_backbone(path)
  params = pretraining.load_backbone_params(ml_collections.ConfigDict({"init": path}), student)
  assert_trees_equal(params, variables["params"])
  torch.save(dict(torch_state), tmp_path / "resnet50.pth")
  config = ml_collections.ConfigDict({"init": str(tmp_path / "resnet50.pth")})
  with pytest.raises(config_lib.ConfigError, match="is a resnet50; the student is a ConvNeXt"):
    pretraining.load_backbone_params(config, student)
