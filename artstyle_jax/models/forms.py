"""Which form of each ConvNeXt part a program computes, chosen once for the devices it compiles for.

The network is one function; some of its parts have several forms that compute it, each fast on
some platforms only:

- depthwise: the 7x7 depthwise convolution. 'conv': one grouped `lax.conv_general_dilated`,
  which GPU and TPU convolution libraries run well and XLA:CPU very slowly. 'shift': the sum of
  shifted slices with a hand-written gradient (`cpu/depthwise.py`), the CPU's form.
- mlp_grad: the gradient of a block's pointwise part (LayerNorm -> Linear -> GELU -> Linear ->
  layer scale). 'autodiff': flax's modules differentiated by JAX. 'manual': a hand-written
  gradient that keeps fewer intermediates (`cpu/block_mlp.py`), the CPU's form for float32.
- patchify: the stem's and the downsampling layers' stride-p convolution. 'conv': a convolution.
  'matmul': one matmul of the non-overlapping patches, which XLA:CPU runs faster.
- compiled_kernels: the 'shift' form (and with 'manual', the fused block and the LayerNorms) runs
  as the C++ kernels of `cpu/kernels.py`, XLA:CPU custom calls that no other platform has.

EfficientNet-Lite's depthwise convolutions (3x3 and 5x5, stride 1 and 2) follow `depthwise` and
`compiled_kernels` too (`efficientnet_lite.depthwise_conv`); its other parts have one form.

Every form computes the same function (tests hold them to 1e-5). The choice follows the platform
of the devices the program is compiled for (a mesh's devices, or a platform named for export),
never the process's default backend: a TPU program lowered on a CPU host gets the TPU's forms.

  forms = resolve(platform_of(mesh), jnp.bfloat16)   # 'auto' for each part
  module = convnext.create("convnext_base", dtype=jnp.bfloat16, forms=forms)
"""
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from artstyle_jax.models.cpu import kernels as cpu_kernels

AUTO = "auto"
DEPTHWISE_FORMS = ("conv", "shift")
MLP_GRAD_FORMS = ("autodiff", "manual")
PATCHIFY_FORMS = ("conv", "matmul")
# Platforms as `jax.Device.platform` and `lowering_platforms` name them.
ACCELERATOR_PLATFORMS = ("tpu", "gpu", "cuda", "rocm")


def _check_choice(part: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{part} must be {', '.join(repr(c) for c in choices[:-1])} or {choices[-1]!r}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Forms:
  """The form of each ConvNeXt part (see the module docstring); hashable, a static module attribute.

  The defaults are the plain forms, the ones an accelerator runs; any platform computes them.
  """
  depthwise: str = "conv"
  mlp_grad: str = "autodiff"
  patchify: str = "conv"
  compiled_kernels: bool = False

  def __post_init__(self):
    _check_choice("depthwise", self.depthwise, DEPTHWISE_FORMS)
    _check_choice("mlp_grad", self.mlp_grad, MLP_GRAD_FORMS)
    _check_choice("patchify", self.patchify, PATCHIFY_FORMS)
    if self.compiled_kernels and self.depthwise != "shift":
      raise ValueError("compiled_kernels are the 'shift' depthwise form's; depthwise is 'conv'")

  @property
  def fused_block(self) -> bool:
    """Whether a block's convolution and LayerNorm run as one compiled kernel and the stem's and
    downsampling layers' LayerNorms as kernels of their own (`cpu/block_mlp.py`)."""
    return self.compiled_kernels and self.depthwise == "shift" and self.mlp_grad == "manual"

  def check_dtype(self, dtype: Any) -> None:
    """Raises ValueError when a form cannot compute in `dtype` ('manual' is float32 only)."""
    if self.mlp_grad == "manual" and jnp.dtype(dtype) != jnp.float32:
      raise ValueError(f"mlp_grad='manual' computes in float32; the network's dtype is {jnp.dtype(dtype).name} "
                       "(use 'auto' or 'autodiff')")

  def as_dict(self) -> dict[str, Any]:
    """{'depthwise': ..., 'mlp_grad': ..., 'patchify': ..., 'compiled_kernels': ...} for JSON."""
    return dataclasses.asdict(self)


PLAIN = Forms()


def platform_of(devices: jax.sharding.Mesh | jax.Device) -> str:
  """The platform ('cpu', 'tpu', 'gpu', ...) of a mesh's devices or of one device."""
  device = devices.devices.flat[0] if isinstance(devices, jax.sharding.Mesh) else devices
  return device.platform


def resolve(platform: str, dtype: Any, *, depthwise: str = AUTO, mlp_grad: str = AUTO,
            patchify: str = AUTO) -> Forms:
  """The forms for programs compiled for `platform` that compute in `dtype`.

  Args:
    platform: 'cpu', or an accelerator: 'tpu', 'gpu' (a device's name for CUDA and ROCm),
      'cuda', 'rocm' (lowering platforms).
    dtype: the network's compute dtype.
    depthwise, mlp_grad, patchify: a form, or 'auto': on the CPU 'shift', 'manual' (float32;
      'autodiff' otherwise) and 'matmul'; on an accelerator the plain forms.

  The compiled kernels are used on the CPU with the 'shift' form where they build
  (`cpu_kernels.available()`: a C++ compiler, and ARTSTYLE_JAX_COMPILED_KERNELS is not 0).

  Raises:
    ValueError: an unknown platform or form, or 'manual' with a dtype other than float32.
  """
  _check_choice("platform", platform, ("cpu",) + ACCELERATOR_PLATFORMS)
  _check_choice("depthwise", depthwise, (AUTO,) + DEPTHWISE_FORMS)
  _check_choice("mlp_grad", mlp_grad, (AUTO,) + MLP_GRAD_FORMS)
  _check_choice("patchify", patchify, (AUTO,) + PATCHIFY_FORMS)
  on_cpu = platform == "cpu"
  if depthwise == AUTO:
    depthwise = "shift" if on_cpu else "conv"
  if mlp_grad == AUTO:
    mlp_grad = "manual" if on_cpu and jnp.dtype(dtype) == jnp.float32 else "autodiff"
  if patchify == AUTO:
    patchify = "matmul" if on_cpu else "conv"
  forms = Forms(depthwise, mlp_grad, patchify)
  forms.check_dtype(dtype)
  if on_cpu and depthwise == "shift" and cpu_kernels.available():
    forms = dataclasses.replace(forms, compiled_kernels=True)
  return forms
