"""The forms of the ConvNeXt's parts: chosen from the platform a program compiles for (never this
host's default backend), from the config's choices, and recorded where the program says what ran."""
import json

import jax
import jax.numpy as jnp
import pytest
from test_device_programs import PAPER
from test_device_programs import SMALL

from artstyle_jax.method import config_lib
from artstyle_jax.method import sharding
from artstyle_jax.method import step
from artstyle_jax.models import forms
from artstyle_jax.storage import checkpoints

CPU_FLOAT32 = forms.Forms("shift", "manual", "matmul", compiled_kernels=True)


def test_the_cpu_gets_its_forms_and_every_accelerator_the_plain_ones():
  assert forms.resolve("cpu", jnp.float32) == CPU_FLOAT32  # this machine builds the kernels
  assert forms.resolve("cpu", jnp.bfloat16) == forms.Forms("shift", "autodiff", "matmul", compiled_kernels=True)
  for platform in forms.ACCELERATOR_PLATFORMS:
    for dtype in (jnp.float32, jnp.bfloat16):
      assert forms.resolve(platform, dtype) == forms.PLAIN, (platform, dtype)
  assert forms.PLAIN == forms.Forms("conv", "autodiff", "conv", compiled_kernels=False)


def test_forms_asked_for_win_over_auto_and_the_kernels_stay_on_the_cpu():
  assert forms.resolve("tpu", jnp.float32, depthwise="shift", mlp_grad="manual", patchify="matmul") == forms.Forms(
      "shift", "manual", "matmul", compiled_kernels=False)
  assert forms.resolve("cpu", jnp.float32, depthwise="conv") == forms.Forms("conv", "manual", "matmul")
  assert not forms.resolve("cpu", jnp.float32, depthwise="conv").fused_block
  assert not forms.resolve("cpu", jnp.bfloat16).fused_block and CPU_FLOAT32.fused_block


def test_unknown_platforms_and_forms_and_manual_bfloat16_are_refused():
  with pytest.raises(ValueError, match="platform must be"):
    forms.resolve("metal", jnp.float32)
  with pytest.raises(ValueError, match=r"patchify must be 'auto', 'conv' or 'matmul', got 'fft'"):
    forms.resolve("cpu", jnp.float32, patchify="fft")
  with pytest.raises(ValueError, match="mlp_grad='manual' computes in float32"):
    forms.resolve("tpu", jnp.bfloat16, mlp_grad="manual")
  with pytest.raises(ValueError, match="compiled_kernels are the 'shift' depthwise form's"):
    forms.Forms(depthwise="conv", compiled_kernels=True)


def test_a_program_takes_the_forms_of_its_meshs_platform_or_of_the_platform_it_exports_for():
  config = config_lib.load(PAPER, SMALL)
  mesh = sharding.create_mesh(1, jax.devices()[:1])
  assert forms.platform_of(mesh) == "cpu" and forms.platform_of(jax.devices()[0]) == "cpu"
  assert step.model_forms(config, mesh) == CPU_FLOAT32
  assert step.build_backbone(config, mesh).forms == CPU_FLOAT32
  assert step.build_backbone(config, mesh, platform="tpu").forms == forms.PLAIN
  bfloat16 = config_lib.load(PAPER, SMALL + ["model.dtype=bfloat16", "model.patchify=conv"])
  assert step.model_forms(bfloat16, mesh) == forms.Forms("shift", "autodiff", "conv", compiled_kernels=True)


def test_configs_ask_for_forms_and_saved_configs_without_the_keys_mean_auto():
  with pytest.raises(config_lib.ConfigError, match=r"model.patchify must be one of \('auto', 'conv', 'matmul'\)"):
    config_lib.load(PAPER, SMALL + ["model.patchify=fft"])
  with pytest.raises(config_lib.ConfigError, match="model.mlp_grad='manual' computes in float32"):
    config_lib.load(PAPER, SMALL + ["model.dtype=bfloat16", "model.mlp_grad=manual"])
  config = config_lib.load(PAPER, SMALL)
  with config.unlocked():
    del config.model["mlp_grad"], config.model["patchify"]
  assert config_lib.requested_forms(config) == {"depthwise": "auto", "mlp_grad": "auto", "patchify": "auto"}


def test_the_config_dump_records_the_forms_beside_the_config(tmp_path):
  config = config_lib.load(PAPER, SMALL)
  checkpoints.save_config(str(tmp_path), config, forms=CPU_FLOAT32.as_dict())
  recorded = json.loads((tmp_path / "config.json").read_text())
  assert recorded["forms"] == {"depthwise": "shift", "mlp_grad": "manual", "patchify": "matmul",
                               "compiled_kernels": True}
  assert recorded["model"]["depthwise"] == "auto" and recorded["image_size"] == 64
  # A record of what ran, not part of the config that programs read back and compare.
  assert "forms" not in checkpoints.load_config(str(tmp_path))
  assert checkpoints.load_forms(str(tmp_path)) == CPU_FLOAT32.as_dict()
