"""The programs a TPU or a GPU runs, lowered and exported from this CPU host: train's step, eval's
feature function and predict's probabilities for configs/paper.py (ConvNeXt-atto at 64 px), in
float32 and in bfloat16 with remat and FSDP over 4 devices. They hold none of the CPU's kernels
and no host callback, compute in the config's dtype, and keep its shardings and remat."""
import functools
import pathlib

import jax
import jax.numpy as jnp
import pytest

from artstyle_jax.bench import device_programs
from artstyle_jax.method import config_lib
from artstyle_jax.method import sharding
from artstyle_jax.models import convnext
from artstyle_jax.models import forms

PAPER = str(pathlib.Path(__file__).parent.parent / "configs" / "paper.py")
SMALL = ["model.name=convnext_atto", "image_size=64", "batch_size=8", "queue_size=64", "init=random"]
# (dtype, remat, mesh.fsdp, devices of the mesh)
VARIANTS = {"float32": ("float32", False, 1, 8), "bfloat16 remat fsdp4": ("bfloat16", True, 4, 4)}
DTYPE_NAMES = {"float32": "f32", "bfloat16": "bf16"}


@functools.cache
def _exported(variant: str, program_name: str, platform: str):
  dtype, remat, fsdp, devices = VARIANTS[variant]
  config = config_lib.load(PAPER, SMALL + [f"model.dtype={dtype}", f"model.remat={remat}", f"mesh.fsdp={fsdp}"])
  mesh = sharding.create_mesh(fsdp, jax.devices()[:devices])
  program = device_programs.BUILDERS[program_name](config, mesh, platform)
  exported = device_programs.export(program, (platform,))
  return config, mesh, program, exported, device_programs.scan(exported.mlir_module())


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
@pytest.mark.parametrize("program_name", device_programs.PROGRAMS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_accelerator_programs_export_without_cpu_kernels_or_callbacks_in_the_configs_dtype(
    variant, program_name, platform):
  config, mesh, program, exported, findings = _exported(variant, program_name, platform)
  assert program.forms == forms.PLAIN  # the accelerators' forms, whatever this host is
  assert exported.platforms == (platform,) and exported.nr_devices == mesh.size
  assert findings.own_custom_calls == () and findings.host_callbacks == ()
  assert not exported.ordered_effects and not exported.unordered_effects
  # Parameters and images stay float32 (integers: step, queue pointer, RNG key).
  assert {a.dtype for a in exported.in_avals if jnp.issubdtype(a.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}
  compute = DTYPE_NAMES[config.model.dtype]
  assert set(findings.convolution_dtypes) == {compute}
  blocks = sum(convnext.SIZES[config.model.name][0])
  assert findings.dot_general_dtypes.get(compute, 0) >= 2 * blocks  # each block's two Linear layers
  if compute == "f32":
    assert not {"bf16", "f16"} & set(findings.element_types)


def test_the_train_step_keeps_fsdp_shardings_and_remat_in_the_exported_module():
  *_, exported, _ = _exported("bfloat16 remat fsdp4", "train_step", "tpu")
  text = exported.mlir_module()
  assert '{"fsdp"}' in text  # parameters split over the fsdp axis
  assert "optimization_barrier" in text  # jax.checkpoint's rematerialised blocks
  *_, plain, _ = _exported("float32", "train_step", "tpu")
  assert "optimization_barrier" not in plain.mlir_module()


def test_the_cpu_forms_are_custom_calls_that_scan_finds_and_export_refuses():
  """The check has teeth: the train step in this host's forms holds the C++ kernels."""
  config = config_lib.load(PAPER, SMALL)
  program = device_programs.train_step_program(config, sharding.create_mesh(1, jax.devices()[:1]), "cpu")
  assert program.forms.fused_block, "this machine has a C++ compiler: the kernels must build"
  findings = device_programs.scan(program.jitted.trace(*program.args).lower().as_text())
  assert {"artstyle_depthwise_norm", "artstyle_layer_norm", "artstyle_depthwise_kernel_grad"} <= set(
      findings.own_custom_calls)
  with pytest.raises(ValueError, match="custom calls whose targets have no compatibility guarantees"):
    device_programs.export(program, ("cpu",))


def test_scan_reads_custom_calls_callbacks_and_dtypes():
  text = "\n".join([
      '%0 = stablehlo.custom_call @artstyle_layer_norm(%a) : (tensor<2x3xf32>) -> tensor<2x3xf32>',
      '%1 = stablehlo.custom_call @xla_ffi_python_cpu_callback(%0) : (tensor<2x3xf32>) -> tensor<2x3xf32>',
      '%2 = stablehlo.convolution(%x, %k) : (tensor<1x8x8x3xbf16>, tensor<4x4x3x8xbf16>) -> tensor<1x2x2x8xbf16>',
      '%3 = stablehlo.dot_general %p, %q : (tensor<4x8xf32>, tensor<8x2xf32>) -> tensor<4x2xf32>',
      '%4 = stablehlo.add %s, %t : tensor<i32>'])
  findings = device_programs.scan(text)
  assert findings.own_custom_calls == ("artstyle_layer_norm",)
  assert findings.host_callbacks == ("xla_ffi_python_cpu_callback",)
  assert findings.convolution_dtypes == {"bf16": 1} and findings.dot_general_dtypes == {"f32": 1}
  assert findings.element_types == ("bf16", "f32", "i32")
