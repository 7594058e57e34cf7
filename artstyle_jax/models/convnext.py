"""ConvNeXt v1 (Liu et al. 2022) in Flax linen, laid out as timm's `ConvNeXt`.

The module maps an NHWC image batch to the four stage outputs, as timm's `features_only=True`
(no final norm). `pool` gives the (B, C) feature; `ConvNeXt.classify` applies timm's classifier
head (global average pool -> LayerNorm -> Linear) when the module has one.

Numerics: parameters are float32; convolutions and matmuls run in `dtype`; LayerNorm statistics
and the residual stream stay float32, so stage outputs are float32 whatever `dtype` is.

Forms: the depthwise convolution, the blocks' pointwise gradient and the patchify convolutions
each have a plain form and a CPU form (`forms.Forms`, the CPU's in `cpu/`); a program chooses
them for the platform it compiles for (`forms.resolve`) and passes them as `forms`. The default,
`forms.PLAIN`, is the accelerators'.

Weights from timm and transformers: `convnext_weights`.
"""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp
import numpy as np

from artstyle_jax.models.cpu.block_mlp import CompiledLayerNorm
from artstyle_jax.models.cpu.block_mlp import depthwise_block
from artstyle_jax.models.cpu.block_mlp import gelu
from artstyle_jax.models.cpu.block_mlp import LAYER_NORM_EPS
from artstyle_jax.models.cpu.block_mlp import MlpParams
from artstyle_jax.models.cpu.block_mlp import pointwise_mlp
from artstyle_jax.models.cpu.depthwise import shift_conv
from artstyle_jax.models.forms import Forms
from artstyle_jax.models.forms import PLAIN

# timm's model sizes: name -> (depths, dims).
SIZES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "convnext_atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "convnext_femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "convnext_pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "convnext_nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "convnext_tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext_small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "convnext_base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnext_large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "convnext_xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
}

LAYER_SCALE_INIT = 1e-6
DW_KERNEL = 7

_dense_init = nn.initializers.truncated_normal(0.02)

# What a rematerialised block keeps for its backward (`ConvNeXt.remat_policy`): the names of the
# block's intermediates (`checkpoint_name` in `Block`, 'autodiff' form) saved; the rest is recomputed.
REMAT_POLICIES: dict[str, tuple[str, ...]] = {
    "nothing": (),
    "matmuls": ("fc1", "fc2"),
}


def _layer_norm(name: str, dtype: Any) -> nn.LayerNorm:
  """LayerNorm over channels, eps 1e-6, statistics in float32 (two-pass variance), output `dtype`."""
  return nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=dtype, param_dtype=jnp.float32,
                      use_fast_variance=False, name=name)


def _norm(name: str | None, dtype: Any, forms: Forms) -> nn.Module:
  """The stem's and the downsampling layers' LayerNorm, a compiled kernel in the fused CPU forms."""
  return CompiledLayerNorm(name=name) if forms.fused_block else _layer_norm(name, dtype)


def pool(feature_map: jax.Array) -> jax.Array:
  """Global average over height and width: (B, h, w, C) -> (B, C) float32."""
  return jnp.mean(feature_map.astype(jnp.float32), axis=(1, 2))


def drop_path(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
  """Stochastic depth: zeroes whole samples with probability `rate`, scales survivors by 1/(1-rate)."""
  keep = 1.0 - rate
  mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))


def stochastic_depth_rates(depths: Sequence[int], rate: float) -> list[tuple[float, ...]]:
  """Per-stage tuples of per-block drop-path rates, rising linearly from 0 (first block) to
  `rate` (last block) over the whole network, as timm."""
  total = sum(depths)
  rates = [rate * n / max(total - 1, 1) for n in range(total)]
  starts = np.cumsum((0,) + tuple(depths))
  return [tuple(rates[start:stop]) for start, stop in zip(starts[:-1], starts[1:])]


def depthwise_conv(x: jax.Array, kernel: jax.Array, forms: Forms = PLAIN) -> jax.Array:
  """Depthwise convolution of an NHWC batch, stride 1, 'SAME' padding, in the form `forms.depthwise`.

  Args:
    x: (B, H, W, C) input.
    kernel: (k, k, 1, C) per-channel weights (flax's HWIO layout for a grouped conv), k odd.
    forms: 'conv' is one grouped convolution, 'shift' the CPU's form (`cpu/depthwise.py`).

  Returns:
    (B, H, W, C) in the dtype of `x`: out[b, h, w, c] = sum_{i,j} x[b, h+i-p, w+j-p, c] *
    kernel[i, j, 0, c], p = (k - 1) // 2, zeros outside the image (cross-correlation, as torch).
  """
  k = kernel.shape[0]
  if kernel.ndim != 4 or kernel.shape[1] != k or kernel.shape[2] != 1 or k % 2 != 1:
    raise ValueError(f"kernel must have shape (k, k, 1, C) with k odd, got {kernel.shape}")
  if x.ndim != 4 or x.shape[-1] != kernel.shape[-1]:
    raise ValueError(f"x must be (B, H, W, {kernel.shape[-1]}), got {x.shape}")
  if forms.depthwise == "shift":
    return shift_conv(x, kernel, forms.compiled_kernels)
  pad = (k - 1) // 2
  return jax.lax.conv_general_dilated(
      x, kernel.astype(x.dtype), window_strides=(1, 1), padding=((pad, pad), (pad, pad)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])


class DepthwiseConv(nn.Module):
  """7x7 depthwise convolution with bias; params 'kernel' (7, 7, 1, C) and 'bias' (C,)."""
  features: int
  dtype: Any = jnp.float32
  forms: Forms = PLAIN

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", _dense_init, (DW_KERNEL, DW_KERNEL, 1, self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    x = depthwise_conv(x.astype(self.dtype), kernel.astype(self.dtype), self.forms)
    return x + bias.astype(self.dtype)


class PatchifyConv(nn.Module):
  """p x p convolution of stride p ('VALID'), the stem's and the downsampling layers', with
  nn.Conv's parameters: 'kernel' (p, p, C_in, features) and 'bias' (features,), float32; inputs,
  kernel and bias cast to `dtype`, output `dtype`.

  `form` 'conv' is the convolution, which GPU and TPU libraries run well; 'matmul' (the CPU's,
  `Forms.patchify`) one matmul of the non-overlapping patches ((B, H/p, W/p, p*p*C_in) @
  (p*p*C_in, features)): XLA:CPU's convolution of this shape took 4-14% of the forward more than
  the matmul at ConvNeXt-atto 128 px and -tiny 224 px.
  """
  features: int
  patch: int
  dtype: Any = jnp.float32
  form: str = "conv"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p, channels = self.patch, x.shape[-1]
    kernel = self.param("kernel", _dense_init, (p, p, channels, self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
    if self.form == "matmul":
      # The rows and columns past the last whole patch are dropped, as the 'VALID' convolution does.
      x = x[:, :x.shape[1] - x.shape[1] % p, :x.shape[2] - x.shape[2] % p]
      batch, height, width = x.shape[:3]
      patches = x.reshape(batch, height // p, p, width // p, p, channels).transpose(0, 1, 3, 2, 4, 5)
      y = patches.reshape(batch, height // p, width // p, p * p * channels) @ kernel.reshape(-1, self.features)
    else:
      y = jax.lax.conv_general_dilated(x, kernel, (p, p), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias


class _DepthwiseParams(nn.Module):
  """The parameters of `DepthwiseConv` (kernel, bias), as it creates them, without applying it."""
  features: int

  @nn.compact
  def __call__(self) -> tuple[jax.Array, jax.Array]:
    return (self.param("kernel", _dense_init, (DW_KERNEL, DW_KERNEL, 1, self.features), jnp.float32),
            self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32))


class _LayerNormParams(nn.Module):
  """The parameters of `_layer_norm` (scale, bias), as it creates them, without applying it."""
  features: int

  @nn.compact
  def __call__(self) -> tuple[jax.Array, jax.Array]:
    return (self.param("scale", nn.initializers.ones, (self.features,), jnp.float32),
            self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32))


class _DenseParams(nn.Module):
  """The parameters of this file's `nn.Dense` layers (kernel, bias), as it creates them."""
  in_features: int
  features: int

  @nn.compact
  def __call__(self) -> tuple[jax.Array, jax.Array]:
    return (self.param("kernel", _dense_init, (self.in_features, self.features), jnp.float32),
            self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32))


class Block(nn.Module):
  """ConvNeXt block: dwconv 7x7 -> LayerNorm -> Linear 4C -> GELU -> Linear C -> layer scale
  -> drop path -> residual. Input and output (B, H, W, C) float32.

  `forms.mlp_grad` picks how the pointwise part is differentiated ('autodiff', or 'manual',
  `block_mlp.pointwise_mlp`): the parameters and the outputs are the same either way. Where
  `forms.fused_block` holds, the block computes its convolution and LayerNorm as one kernel
  (`block_mlp.depthwise_block`).
  """
  dim: int
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  forms: Forms = PLAIN

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    gamma_init = nn.initializers.constant(LAYER_SCALE_INIT)
    if self.forms.fused_block:
      dw_kernel, dw_bias = _DepthwiseParams(self.dim, name="conv_dw")()
      y = depthwise_block(x, dw_kernel[:, :, 0, :], dw_bias, self._mlp_params(gamma_init))
    elif self.forms.mlp_grad == "manual":
      y = DepthwiseConv(self.dim, self.dtype, self.forms, name="conv_dw")(x)
      y = pointwise_mlp(y, self._mlp_params(gamma_init))
    else:
      y = DepthwiseConv(self.dim, self.dtype, self.forms, name="conv_dw")(x)
      y = _layer_norm("norm", self.dtype)(y)
      y = checkpoint_name(nn.Dense(4 * self.dim, dtype=self.dtype, kernel_init=_dense_init, name="fc1")(y), "fc1")
      with jax.named_scope("gelu"):
        y = gelu(y)
      y = checkpoint_name(nn.Dense(self.dim, dtype=self.dtype, kernel_init=_dense_init, name="fc2")(y), "fc2")
      gamma = self.param("gamma", gamma_init, (self.dim,), jnp.float32)
      with jax.named_scope("layer_scale"):
        y = y * gamma.astype(self.dtype)
    with jax.named_scope("residual"):
      if train and self.drop_path_rate > 0.0:
        y = drop_path(y, self.drop_path_rate, self.make_rng("dropout"))
      return x + y.astype(jnp.float32)

  def _mlp_params(self, gamma_init) -> MlpParams:
    """The pointwise part's parameters, created in the 'autodiff' form's order and names."""
    norm_scale, norm_bias = _LayerNormParams(self.dim, name="norm")()
    fc1_kernel, fc1_bias = _DenseParams(self.dim, 4 * self.dim, name="fc1")()
    fc2_kernel, fc2_bias = _DenseParams(4 * self.dim, self.dim, name="fc2")()
    gamma = self.param("gamma", gamma_init, (self.dim,), jnp.float32)
    return MlpParams(norm_scale, norm_bias, fc1_kernel, fc1_bias, fc2_kernel, fc2_bias, gamma)


class Stage(nn.Module):
  """Optional downsample (LayerNorm + 2x2 stride-2 conv) followed by `len(drop_path_rates)` blocks,
  each rematerialised with `remat` under `remat_policy` (`REMAT_POLICIES`)."""
  dim: int
  drop_path_rates: Sequence[float]
  downsample: bool
  dtype: Any = jnp.float32
  remat: bool = False
  remat_policy: str = "nothing"
  forms: Forms = PLAIN

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.downsample:
      x = _norm("downsample_norm", self.dtype, self.forms)(x)
      x = PatchifyConv(self.dim, 2, self.dtype, self.forms.patchify, name="downsample_conv")(x)
      x = x.astype(jnp.float32)
    if self.remat:
      policy = jax.checkpoint_policies.save_only_these_names(*REMAT_POLICIES[self.remat_policy])
      block = nn.remat(Block, static_argnums=(2,), policy=policy)
    else:
      block = Block
    for index, rate in enumerate(self.drop_path_rates):
      x = block(self.dim, rate, self.dtype, self.forms, name=f"blocks_{index}")(x, train)
    return x


class ClassifierHead(nn.Module):
  """timm's head after pooling: LayerNorm -> Linear. Returns (pre_logits, logits), float32."""
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pooled: jax.Array) -> tuple[jax.Array, jax.Array]:
    pre_logits = _layer_norm("norm", jnp.float32)(pooled)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=_dense_init, name="fc")(pre_logits)
    return pre_logits, logits.astype(jnp.float32)


class ConvNeXt(nn.Module):
  """ConvNeXt v1 backbone (timm layout), NHWC.

  Attributes:
    depths: blocks per stage, e.g. (3, 3, 27, 3).
    dims: channels per stage, e.g. (128, 256, 512, 1024).
    drop_path_rate: stochastic depth rate of the last block; block n of N gets
      `drop_path_rate * n / (N - 1)` (timm's linear rule). Needs a 'dropout' rng when training.
    dtype: compute dtype of convolutions and matmuls (params stay float32).
    remat: rematerialise each block in the backward pass (`nn.remat`), to save memory.
    remat_policy: what a rematerialised block keeps (`REMAT_POLICIES`): 'nothing' recomputes the
      whole block from its input; 'matmuls' keeps the outputs of fc1 (B, H, W, 4C) and fc2
      (B, H, W, C) in the compute dtype, recomputing the depthwise convolution, the LayerNorm, the
      GELU and the layer scale around them, so the backward runs no matmul twice (10 bytes per
      element of the C-wide activation more per block in bfloat16). The CPU's 'manual' form has
      no such names: under 'matmuls' it recomputes the whole block, as under 'nothing'.
    forms: the form of the depthwise convolution, the blocks' pointwise gradient and the patchify
      convolutions (`forms.Forms`; `forms.resolve` chooses them for a platform).
    num_classes: size of the classifier head used by `classify`; 0 for none.

  `__call__(x, train=False)` maps (B, H, W, 3) to the list of the stage outputs
  (B, H_s, W_s, dims[s]), float32, H_0 = floor(H / 4) and H_s = floor(H_{s-1} / 2) (the rows
  past a layer's last whole patch dropped, as timm's and transformers' strided convolutions do);
  H and W at least 4 * 2**(S-1).
  """
  depths: Sequence[int]
  dims: Sequence[int]
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False
  remat_policy: str = "nothing"
  forms: Forms = PLAIN
  num_classes: int = 0

  def setup(self):
    if len(self.depths) != len(self.dims) or not self.depths:
      raise ValueError(f"depths {tuple(self.depths)} and dims {tuple(self.dims)} must be non-empty "
                       "and of equal length")
    if not isinstance(self.forms, Forms):
      raise TypeError(f"forms must be a forms.Forms, got {self.forms!r}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy must be one of {tuple(REMAT_POLICIES)}, got {self.remat_policy!r}")
    self.forms.check_dtype(self.dtype)
    self.stem_conv = PatchifyConv(self.dims[0], 4, self.dtype, self.forms.patchify)
    self.stem_norm = _norm(None, jnp.float32, self.forms)
    self.stages = [
        Stage(dim, rates, downsample=index > 0, dtype=self.dtype, remat=self.remat,
              remat_policy=self.remat_policy, forms=self.forms)
        for index, (dim, rates) in enumerate(
            zip(self.dims, stochastic_depth_rates(self.depths, self.drop_path_rate)))]
    if self.num_classes:
      self.head = ClassifierHead(self.num_classes, self.dtype)

  def __call__(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
    stride = 4 * 2 ** (len(self.dims) - 1)
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] < stride or x.shape[2] < stride:
      raise ValueError(f"expected (B, H, W, 3) with H and W at least {stride}, got {x.shape}")
    x = self.stem_conv(x.astype(self.dtype)).astype(jnp.float32)
    x = self.stem_norm(x)
    features = []
    for stage in self.stages:
      x = stage(x, train)
      features.append(x)
    if self.num_classes and self.is_initializing():
      self.head(pool(x))  # Creates the head's parameters with the rest.
    return features

  def classify(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """timm's classifier on (B, H, W, 3): returns (pre_logits (B, C), logits (B, num_classes))."""
    if not self.num_classes:
      raise ValueError("this ConvNeXt has no classifier head (num_classes=0)")
    return self.head(pool(self(x, train)[-1]))


def create(name: str, **overrides) -> ConvNeXt:
  """ConvNeXt of one of timm's sizes ('convnext_atto' ... 'convnext_xlarge'); `overrides` sets
  the other attributes (drop_path_rate, dtype, remat, remat_policy, forms, num_classes)."""
  if name not in SIZES:
    raise ValueError(f"unknown ConvNeXt size {name!r}; known: {', '.join(SIZES)}")
  depths, dims = SIZES[name]
  return ConvNeXt(depths=depths, dims=dims, **overrides)
