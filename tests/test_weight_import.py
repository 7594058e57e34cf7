"""Weight import: numerical parity with timm and transformers, strict key checks, weight sources."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file
from safetensors.numpy import save_file
import torch
import transformers

from artstyle_jax.models import convnext
from artstyle_jax.models import convnext_weights
from artstyle_jax.models import forms
from helpers import assert_trees_equal
from helpers import FIXTURES
from helpers import relative_error
from helpers import run_python

TIMM_WEIGHTS = FIXTURES / "timm_convnext_small_random.safetensors"
TIMM_OUTPUTS = FIXTURES / "timm_convnext_small_random_io.npz"


def _nchw_to_nhwc(x):
  return np.transpose(np.asarray(x), (0, 2, 3, 1))


@pytest.fixture(scope="module")
def timm_state():
  return load_file(TIMM_WEIGHTS)


def test_from_timm_reads_the_architecture_from_keys_and_shapes(timm_state):
  module, params = convnext_weights.from_timm(timm_state)
  assert tuple(module.depths) == (1, 1, 2, 1) and tuple(module.dims) == (8, 16, 24, 32)
  assert module.num_classes == 5
  assert params["stem_conv"]["kernel"].shape == (4, 4, 3, 8)
  assert params["stages_2"]["blocks_1"]["conv_dw"]["kernel"].shape == (7, 7, 1, 24)
  assert params["head"]["fc"]["kernel"].shape == (32, 5)


@pytest.mark.parametrize("depthwise", ["shift", "conv"])
def test_outputs_match_timm_within_1e_4(timm_state, depthwise):
  """The four stage outputs, pre-logits and logits of timm's model, from its own state dict."""
  reference = np.load(TIMM_OUTPUTS)
  module, params = convnext_weights.from_timm(timm_state, forms=forms.resolve("cpu", jnp.float32, depthwise=depthwise))
  images = _nchw_to_nhwc(reference["input_nchw"])

  @jax.jit
  def outputs(params):
    features = module.apply({"params": params}, images)
    return features, module.apply({"params": params}, images, method="classify")

  features, (pre_logits, logits) = outputs(params)
  for stage, feature in enumerate(features):
    assert relative_error(feature, _nchw_to_nhwc(reference[f"stage{stage}"])) < 1e-4, stage
  assert relative_error(pre_logits, reference["pre_logits"]) < 1e-4
  assert relative_error(logits, reference["logits"]) < 1e-4


def test_features_only_naming_and_torch_tensors_load_the_same_backbone(timm_state):
  """timm's features-only keys (stem_0, stages_1, ...) without head, given as torch tensors."""
  _, params = convnext_weights.from_timm(timm_state)
  renamed = {key.replace("stem.", "stem_", 1).replace("stages.", "stages_", 1): torch.from_numpy(value)
             for key, value in timm_state.items() if not key.startswith("head.")}
  module, backbone = convnext_weights.from_timm(renamed)
  assert module.num_classes == 0
  assert_trees_equal(backbone, {k: v for k, v in params.items() if k != "head"})


def test_params_from_timm_fills_a_given_module_or_names_the_mismatch(timm_state):
  module, params = convnext_weights.from_timm(timm_state)
  assert_trees_equal(convnext_weights.params_from_timm(module, timm_state), params)
  wider = convnext.ConvNeXt(depths=(1, 1, 2, 1), dims=(8, 16, 24, 48), num_classes=5)
  with pytest.raises(ValueError, match=r"stages.3.blocks.0.norm.weight: \(32,\) gives \(32,\) for "
                     r"stages_3/blocks_0/norm/scale, which needs \(48,\)"):
    convnext_weights.params_from_timm(wider, timm_state)
  without_head = convnext.ConvNeXt(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))
  with pytest.raises(ValueError, match=r"unexpected keys \(4\): head.fc.bias, head.fc.weight, "
                     r"head.norm.bias, head.norm.weight"):
    convnext_weights.params_from_timm(without_head, timm_state)


def test_missing_keys_raise_and_name_every_missing_parameter(timm_state):
  incomplete = {k: v for k, v in timm_state.items()
                if k not in ("stages.2.blocks.1.gamma", "stem.1.bias")}
  with pytest.raises(ValueError) as error:
    convnext_weights.from_timm(incomplete)
  message = str(error.value)
  assert "nothing was loaded" in message
  assert "missing parameters (2): stages_2/blocks_1/gamma, stem_norm/bias" in message


def test_wrongly_shaped_and_unknown_keys_raise_and_are_named(timm_state):
  state = dict(timm_state)
  state["stages.1.blocks.0.mlp.fc1.weight"] = np.zeros((64, 15), np.float32)
  state["norm_pre.weight"] = np.ones(8, np.float32)
  state["stages.0.blocks.0.extra"] = np.ones(8, np.float32)
  with pytest.raises(ValueError) as error:
    convnext_weights.from_timm(state)
  message = str(error.value)
  assert "unexpected keys (2): norm_pre.weight, stages.0.blocks.0.extra" in message
  assert ("stages.1.blocks.0.mlp.fc1.weight: (64, 15) gives (15, 64) for stages_1/blocks_0/fc1/kernel, "
          "which needs (16, 64)") in message


def _random_hf_model(depths, hidden_sizes, seed):
  """A transformers ConvNextModel with every parameter (norms, layer scales too) N(0, 0.3^2)."""
  config = transformers.ConvNextConfig(depths=depths, hidden_sizes=hidden_sizes, num_stages=len(depths))
  model = transformers.ConvNextModel(config).eval()
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for parameter in model.parameters():
      parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
  return model


@pytest.mark.parametrize("depths, hidden_sizes, image_size", [
    ([1, 1, 2, 1], [8, 16, 24, 32], 64),
    ([2, 1, 1], [12, 20, 28], 48),
])
def test_outputs_match_transformers_hidden_states_within_1e_4(depths, hidden_sizes, image_size):
  """hidden_states[1:] of ConvNextModel are the stage outputs (hidden_states[0] is the stem's)."""
  model = _random_hf_model(depths, hidden_sizes, seed=len(depths))
  images = np.random.default_rng(0).standard_normal((2, 3, image_size, image_size), np.float32)
  with torch.no_grad():
    hidden_states = model(torch.from_numpy(images), output_hidden_states=True).hidden_states
  module, params = convnext_weights.from_hf({k: v.numpy() for k, v in model.state_dict().items()})
  assert tuple(module.depths) == tuple(depths) and tuple(module.dims) == tuple(hidden_sizes)
  features = jax.jit(module.apply)({"params": params}, _nchw_to_nhwc(images))
  assert len(features) == len(hidden_states) - 1
  for stage, feature in enumerate(features):
    assert relative_error(feature, _nchw_to_nhwc(hidden_states[stage + 1])) < 1e-4, stage


def test_from_hf_rejects_keys_of_another_layout(timm_state):
  model = _random_hf_model([1, 1], [8, 16], seed=0)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  state["stem.0.weight"] = timm_state["stem.0.weight"]
  with pytest.raises(ValueError, match=r"unexpected keys \(1\): stem.0.weight"):
    convnext_weights.from_hf(state)


def test_load_pretrained_reads_a_file_or_a_directory_in_either_layout(timm_state, tmp_path):
  _, expected = convnext_weights.from_timm(timm_state)
  _, from_file = convnext_weights.load_pretrained(str(TIMM_WEIGHTS))
  assert_trees_equal(from_file, expected)
  save_file(timm_state, str(tmp_path / "model.safetensors"))
  _, from_directory = convnext_weights.load_pretrained(str(tmp_path))
  assert_trees_equal(from_directory, expected)

  hf_state = {k: v.numpy() for k, v in _random_hf_model([1, 1], [8, 16], seed=0).state_dict().items()}
  hf_dir = tmp_path / "hf"
  hf_dir.mkdir()
  save_file(hf_state, str(hf_dir / "model.safetensors"))
  _, from_hf_dir = convnext_weights.load_pretrained(str(hf_dir))
  assert_trees_equal(from_hf_dir, convnext_weights.from_hf(hf_state)[1])

  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
    convnext_weights.load_pretrained(str(empty))
  with pytest.raises(ValueError, match="not a .safetensors file"):
    convnext_weights.load_pretrained(str(TIMM_OUTPUTS))


_OFFLINE_SCRIPT = """
from artstyle_jax.models import convnext_weights
module, params = convnext_weights.load_pretrained('timm/cached_fixture')
print('LOADED', tuple(module.dims), module.num_classes)
try:
  convnext_weights.load_pretrained('timm/convnext_base.fb_in22k_ft_in1k')
except FileNotFoundError as error:
  print('ERROR', error)
"""


def test_hub_id_offline_loads_from_the_cache_or_names_the_file_to_fetch(tmp_path):
  """With HF_HUB_OFFLINE=1: a cached repo loads; an uncached one raises naming URL and places."""
  hf_home = tmp_path / "hf_home"
  commit = "0123456789abcdef0123456789abcdef01234567"
  repo = hf_home / "hub" / "models--timm--cached_fixture"
  (repo / "snapshots" / commit).mkdir(parents=True)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text(commit)
  (repo / "snapshots" / commit / "model.safetensors").write_bytes(TIMM_WEIGHTS.read_bytes())
  env = {"HF_HUB_CACHE": None, "HUGGINGFACE_HUB_CACHE": None, "HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home),
         "JAX_PLATFORMS": "cpu"}
  result = run_python("-c", _OFFLINE_SCRIPT, env=env, timeout=300, check=True)
  assert "LOADED (8, 16, 24, 32) 5" in result.stdout
  error = result.stdout[result.stdout.index("ERROR"):]
  assert ("https://huggingface.co/timm/convnext_base.fb_in22k_ft_in1k/resolve/main/model.safetensors"
          in error)
  assert str(hf_home) in error and "DIR/model.safetensors" in error
