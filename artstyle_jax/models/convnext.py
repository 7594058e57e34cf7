"""ConvNeXt v1 (Liu et al. 2022) in Flax linen, laid out as timm's `ConvNeXt`, and weight import.

The module maps an NHWC image batch to the four stage outputs, as timm's `features_only=True`
(no final norm). `pool` gives the (B, C) feature; `ConvNeXt.classify` applies timm's classifier
head (global average pool -> LayerNorm -> Linear) when the module has one.

Numerics: parameters are float32; convolutions and matmuls run in `dtype`; LayerNorm statistics
and the residual stream stay float32, so stage outputs are float32 whatever `dtype` is.

Weight import (`from_timm`, `params_from_timm`, `from_hf`, `load_pretrained`) converts PyTorch
state dicts (numpy arrays) into this module's parameter tree, and refuses anything that does not
fill the tree exactly.
"""
from collections.abc import Mapping, Sequence
import os
import re
from typing import Any

from flax import traverse_util
import flax.linen as nn
import huggingface_hub
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file

from artstyle_jax.models.block_mlp import (LAYER_NORM_EPS, MlpGrad, MlpParams, depthwise_block, depthwise_block_available,
                                          gelu, layer_norm, pointwise_mlp, resolve_mlp_grad)
from artstyle_jax.models.depthwise import Impl, depthwise_conv, resolve_depthwise

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


def _layer_norm(name: str, dtype: Any) -> nn.LayerNorm:
  """LayerNorm over channels, eps 1e-6, statistics in float32 (two-pass variance), output `dtype`."""
  return nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=dtype, param_dtype=jnp.float32,
                      use_fast_variance=False, name=name)


class _CompiledLayerNorm(nn.Module):
  """`_layer_norm` in float32 as the CPU's compiled kernel (`block_mlp.layer_norm`): the same
  parameters, the same function."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
    return layer_norm(x.astype(jnp.float32), scale, bias)


def compiled_cpu_forms(depthwise: Impl, mlp_grad: MlpGrad, dtype: Any) -> bool:
  """Whether a network of these forms runs on the CPU's compiled kernels: blocks whose 'shift'
  convolution and LayerNorm are one kernel ('manual' pointwise gradient, float32;
  `block_mlp.depthwise_block`), and the stem's and downsampling layers' LayerNorms as kernels of
  their own (`block_mlp.layer_norm`)."""
  return (resolve_mlp_grad(mlp_grad, dtype) == "manual" and resolve_depthwise(depthwise) == "shift"
          and depthwise_block_available(DW_KERNEL))


def _norm(name: str | None, dtype: Any, compiled: bool) -> nn.Module:
  return _CompiledLayerNorm(name=name) if compiled else _layer_norm(name, dtype)


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


class DepthwiseConv(nn.Module):
  """7x7 depthwise convolution with bias; params 'kernel' (7, 7, 1, C) and 'bias' (C,)."""
  features: int
  dtype: Any = jnp.float32
  impl: Impl = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", _dense_init, (DW_KERNEL, DW_KERNEL, 1, self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    x = depthwise_conv(x.astype(self.dtype), kernel.astype(self.dtype), self.impl)
    return x + bias.astype(self.dtype)


class PatchifyConv(nn.Module):
  """p x p convolution of stride p ('VALID'), the stem's and the downsampling layers', with
  nn.Conv's parameters: 'kernel' (p, p, C_in, features) and 'bias' (features,), float32; inputs,
  kernel and bias cast to `dtype`, output `dtype`.

  On the CPU backend (`as_matmul=None`) it runs as one matmul of the non-overlapping patches
  ((B, H/p, W/p, p*p*C_in) @ (p*p*C_in, features)): XLA:CPU's convolution of this shape took
  4-14% of the forward more than the matmul at ConvNeXt-atto 128 px and -tiny 224 px. Elsewhere
  the convolution, which GPU and TPU libraries run well.
  """
  features: int
  patch: int
  dtype: Any = jnp.float32
  as_matmul: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p, channels = self.patch, x.shape[-1]
    kernel = self.param("kernel", _dense_init, (p, p, channels, self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
    as_matmul = jax.default_backend() == "cpu" if self.as_matmul is None else self.as_matmul
    if as_matmul:
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

  `mlp_grad` picks how the pointwise part is differentiated ('auto', 'autodiff', 'manual'; see
  `block_mlp`): the parameters and the outputs are the same either way. Where
  `compiled_cpu_forms` holds, the block computes its convolution and LayerNorm as one kernel
  (`block_mlp.depthwise_block`).
  """
  dim: int
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  depthwise: Impl = "auto"
  mlp_grad: MlpGrad = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    gamma_init = nn.initializers.constant(LAYER_SCALE_INIT)
    if compiled_cpu_forms(self.depthwise, self.mlp_grad, self.dtype):
      dw_kernel, dw_bias = _DepthwiseParams(self.dim, name="conv_dw")()
      y = depthwise_block(x, dw_kernel[:, :, 0, :], dw_bias, self._mlp_params(gamma_init))
    elif resolve_mlp_grad(self.mlp_grad, self.dtype) == "manual":
      y = DepthwiseConv(self.dim, self.dtype, self.depthwise, name="conv_dw")(x)
      y = pointwise_mlp(y, self._mlp_params(gamma_init))
    else:
      y = DepthwiseConv(self.dim, self.dtype, self.depthwise, name="conv_dw")(x)
      y = _layer_norm("norm", self.dtype)(y)
      y = nn.Dense(4 * self.dim, dtype=self.dtype, kernel_init=_dense_init, name="fc1")(y)
      y = gelu(y)
      y = nn.Dense(self.dim, dtype=self.dtype, kernel_init=_dense_init, name="fc2")(y)
      gamma = self.param("gamma", gamma_init, (self.dim,), jnp.float32)
      y = y * gamma.astype(self.dtype)
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
  """Optional downsample (LayerNorm + 2x2 stride-2 conv) followed by `len(drop_path_rates)` blocks."""
  dim: int
  drop_path_rates: Sequence[float]
  downsample: bool
  dtype: Any = jnp.float32
  remat: bool = False
  depthwise: Impl = "auto"
  mlp_grad: MlpGrad = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.downsample:
      x = _norm("downsample_norm", self.dtype, compiled_cpu_forms(self.depthwise, self.mlp_grad, self.dtype))(x)
      x = PatchifyConv(self.dim, 2, self.dtype, name="downsample_conv")(x)
      x = x.astype(jnp.float32)
    block = nn.remat(Block, static_argnums=(2,)) if self.remat else Block
    for index, rate in enumerate(self.drop_path_rates):
      x = block(self.dim, rate, self.dtype, self.depthwise, self.mlp_grad, name=f"blocks_{index}")(x, train)
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
    depthwise: 7x7 depthwise convolution form, 'auto' (by backend), 'conv' or 'shift'.
    mlp_grad: gradient form of the blocks' pointwise part, 'auto' (by backend and dtype),
      'autodiff' or 'manual' (`block_mlp`).
    num_classes: size of the classifier head used by `classify`; 0 for none.

  `__call__(x, train=False)` maps (B, H, W, 3) to the list of the stage outputs
  (B, H / 4 / 2**s, W / 4 / 2**s, dims[s]), float32. H and W must be multiples of 4 * 2**(S-1).
  """
  depths: Sequence[int]
  dims: Sequence[int]
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False
  depthwise: Impl = "auto"
  mlp_grad: MlpGrad = "auto"
  num_classes: int = 0

  def setup(self):
    if len(self.depths) != len(self.dims) or not self.depths:
      raise ValueError(f"depths {tuple(self.depths)} and dims {tuple(self.dims)} must be non-empty "
                       "and of equal length")
    resolve_depthwise(self.depthwise)
    resolve_mlp_grad(self.mlp_grad, self.dtype)
    self.stem_conv = PatchifyConv(self.dims[0], 4, self.dtype)
    self.stem_norm = _norm(None, jnp.float32, compiled_cpu_forms(self.depthwise, self.mlp_grad, self.dtype))
    self.stages = [
        Stage(dim, rates, downsample=index > 0, dtype=self.dtype, remat=self.remat,
              depthwise=self.depthwise, mlp_grad=self.mlp_grad)
        for index, (dim, rates) in enumerate(
            zip(self.dims, stochastic_depth_rates(self.depths, self.drop_path_rate)))]
    if self.num_classes:
      self.head = ClassifierHead(self.num_classes, self.dtype)

  def __call__(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
    stride = 4 * 2 ** (len(self.dims) - 1)
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] % stride or x.shape[2] % stride:
      raise ValueError(f"expected (B, H, W, 3) with H and W multiples of {stride}, got {x.shape}")
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
  the other attributes (drop_path_rate, dtype, remat, depthwise, mlp_grad, num_classes)."""
  if name not in SIZES:
    raise ValueError(f"unknown ConvNeXt size {name!r}; known: {', '.join(SIZES)}")
  depths, dims = SIZES[name]
  return ConvNeXt(depths=depths, dims=dims, **overrides)


# ---------------------------------------------------------------------------------------------
# Weight import.
#
# A converter turns one PyTorch tensor into one leaf of our tree: a path (tuple of names) and a
# function of the numpy array. PyTorch layouts: Conv2d (out, in/groups, kh, kw) -> flax HWIO;
# Linear (out, in) -> (in, out); timm's small models use 1x1 Conv2d for the MLP (out, in, 1, 1).


def _conv_kernel(w: np.ndarray) -> np.ndarray:
  return np.transpose(w, (2, 3, 1, 0))


def _linear_kernel(w: np.ndarray) -> np.ndarray:
  if w.ndim == 4 and w.shape[2:] == (1, 1):
    w = w[:, :, 0, 0]
  return np.transpose(w) if w.ndim == 2 else w


def _same(w: np.ndarray) -> np.ndarray:
  return w


# (module path suffix, torch leaf) -> (flax leaf, converter), per kind of layer.
_CONV = {"weight": ("kernel", _conv_kernel), "bias": ("bias", _same)}
_LINEAR = {"weight": ("kernel", _linear_kernel), "bias": ("bias", _same)}
_NORM = {"weight": ("scale", _same), "bias": ("bias", _same)}

_TIMM_PATTERNS = [
    (r"stem\.0", ("stem_conv",), _CONV),
    (r"stem\.1", ("stem_norm",), _NORM),
    (r"stages\.(\d+)\.downsample\.0", ("stages_{0}", "downsample_norm"), _NORM),
    (r"stages\.(\d+)\.downsample\.1", ("stages_{0}", "downsample_conv"), _CONV),
    (r"stages\.(\d+)\.blocks\.(\d+)\.conv_dw", ("stages_{0}", "blocks_{1}", "conv_dw"), _CONV),
    (r"stages\.(\d+)\.blocks\.(\d+)\.norm", ("stages_{0}", "blocks_{1}", "norm"), _NORM),
    (r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc1", ("stages_{0}", "blocks_{1}", "fc1"), _LINEAR),
    (r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc2", ("stages_{0}", "blocks_{1}", "fc2"), _LINEAR),
    (r"stages\.(\d+)\.blocks\.(\d+)", ("stages_{0}", "blocks_{1}"), {"gamma": ("gamma", _same)}),
    (r"head\.norm", ("head", "norm"), _NORM),
    (r"head\.fc", ("head", "fc"), _LINEAR),
]

_HF_PATTERNS = [
    (r"embeddings\.patch_embeddings", ("stem_conv",), _CONV),
    (r"embeddings\.layernorm", ("stem_norm",), _NORM),
    (r"encoder\.stages\.(\d+)\.downsampling_layer\.0", ("stages_{0}", "downsample_norm"), _NORM),
    (r"encoder\.stages\.(\d+)\.downsampling_layer\.1", ("stages_{0}", "downsample_conv"), _CONV),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.dwconv", ("stages_{0}", "blocks_{1}", "conv_dw"), _CONV),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layernorm", ("stages_{0}", "blocks_{1}", "norm"), _NORM),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.pwconv1", ("stages_{0}", "blocks_{1}", "fc1"), _LINEAR),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.pwconv2", ("stages_{0}", "blocks_{1}", "fc2"), _LINEAR),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)", ("stages_{0}", "blocks_{1}"),
     {"layer_scale_parameter": ("gamma", _same)}),
]

# transformers' ConvNextModel pools and normalises the last stage with `layernorm.*`, a norm
# that is neither part of the features-only backbone nor timm's head (no classifier follows it):
# from_hf leaves it out by design.
_HF_POOLER_KEYS = ("layernorm.weight", "layernorm.bias")


def _match(key: str, patterns) -> tuple[tuple[str, ...], Any] | None:
  """Our (path, converter) for a torch key, or None if no pattern names it."""
  module, _, leaf = key.rpartition(".")
  for pattern, path, leaves in patterns:
    found = re.fullmatch(pattern, module)
    if found and leaf in leaves:
      name, convert = leaves[leaf]
      return tuple(part.format(*found.groups()) for part in path) + (name,), convert
  return None


def _timm_key(key: str) -> str:
  """timm's features-only wrapper names the top modules stem_0, stem_1, stages_0, ...: undo that."""
  return re.sub(r"^(stem|stages)_(\d+)", r"\1.\2", key)


def _as_numpy(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  out = {}
  for key, value in state_dict.items():
    if hasattr(value, "detach"):  # A torch tensor.
      value = value.detach().cpu().float().numpy()
    out[key] = np.asarray(value)
  return out


def _architecture(state_dict: Mapping[str, np.ndarray], patterns) -> dict[str, Any]:
  """Infers depths, dims and num_classes from the keys and shapes of a state dict."""
  blocks: dict[int, set[int]] = {}
  dims: dict[int, int] = {}
  num_classes = 0
  for key, value in state_dict.items():
    found = _match(key, patterns)
    if found is None:
      continue
    path, _ = found
    if path[0].startswith("stages_"):
      stage = int(path[0].split("_")[1])
      blocks.setdefault(stage, set())
      if len(path) > 2 and path[1].startswith("blocks_"):
        blocks[stage].add(int(path[1].split("_")[1]))
        if path[2:] == ("conv_dw", "bias"):
          dims[stage] = value.shape[0]
    if path == ("head", "fc", "bias"):
      num_classes = value.shape[0]
  stages = sorted(blocks)
  if not stages or stages != list(range(len(stages))) or sorted(dims) != stages:
    raise ValueError("cannot infer the ConvNeXt stages from the state dict: expected stages "
                     f"0..S-1 each with blocks and conv_dw biases, found stages {stages} with "
                     f"conv_dw biases for {sorted(dims)}")
  for stage in stages:
    if sorted(blocks[stage]) != list(range(len(blocks[stage]))):
      raise ValueError(f"stage {stage} has non-contiguous block indices {sorted(blocks[stage])}")
  return {"depths": tuple(len(blocks[s]) for s in stages),
          "dims": tuple(dims[s] for s in stages), "num_classes": num_classes}


def _expected_shapes(module: ConvNeXt) -> dict[tuple[str, ...], tuple[int, ...]]:
  stride = 4 * 2 ** (len(module.dims) - 1)
  image = jax.ShapeDtypeStruct((1, stride, stride, 3), jnp.float32)
  shapes = jax.eval_shape(module.init, jax.random.key(0), image)["params"]
  return {tuple(p.key for p in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(shapes)}


def _convert(module: ConvNeXt, state_dict: Mapping[str, Any], patterns, ignored=()) -> dict:
  """Fills the module's whole parameter tree from the state dict, or raises listing every problem."""
  state_dict = _as_numpy(state_dict)
  expected = _expected_shapes(module)
  filled: dict[tuple[str, ...], np.ndarray] = {}
  unknown, wrong_shape = [], []
  for key, value in state_dict.items():
    if key in ignored:
      continue
    found = _match(key, patterns)
    if found is None or found[0] not in expected:
      unknown.append(key)
      continue
    path, convert = found
    leaf = convert(value)
    if tuple(leaf.shape) != expected[path]:
      wrong_shape.append(f"{key}: {tuple(value.shape)} gives {tuple(leaf.shape)} for "
                         f"{'/'.join(path)}, which needs {expected[path]}")
      continue
    filled[path] = leaf.astype(np.float32)
  missing = sorted("/".join(path) for path in expected if path not in filled)
  if unknown or missing or wrong_shape:
    lines = [f"state dict does not match ConvNeXt(depths={tuple(module.depths)}, "
             f"dims={tuple(module.dims)}, num_classes={module.num_classes}); nothing was loaded."]
    if unknown:
      lines.append(f"unexpected keys ({len(unknown)}): {', '.join(sorted(unknown))}")
    if missing:
      lines.append(f"missing parameters ({len(missing)}): {', '.join(missing)}")
    if wrong_shape:
      lines.append(f"wrongly shaped ({len(wrong_shape)}): {'; '.join(wrong_shape)}")
    raise ValueError("\n".join(lines))
  return jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(filled))


def params_from_timm(module: ConvNeXt, state_dict: Mapping[str, Any]) -> dict:
  """Parameters for `module` from a timm ConvNeXt state dict (key -> numpy array or torch tensor).

  Accepts timm's own keys (`stem.0.weight`, `stages.1.blocks.0.mlp.fc1.weight`, `head.fc.bias`)
  and its features-only naming (`stem_0.weight`, `stages_1.blocks.0...`). `head.*` keys need a
  module with the same `num_classes`. Raises ValueError naming every unexpected, missing or
  wrongly shaped key; never returns a partial tree.
  """
  return _convert(module, {_timm_key(k): v for k, v in state_dict.items()}, _TIMM_PATTERNS)


def from_timm(state_dict: Mapping[str, Any], **overrides) -> tuple[ConvNeXt, dict]:
  """(module, params) from a timm ConvNeXt state dict; depths, dims and num_classes (from
  `head.fc`, 0 without head keys) are read from the keys and shapes. `overrides` sets the other
  module attributes (dtype, remat, drop_path_rate, depthwise)."""
  state_dict = {_timm_key(k): v for k, v in _as_numpy(state_dict).items()}
  module = ConvNeXt(**_architecture(state_dict, _TIMM_PATTERNS), **overrides)
  return module, _convert(module, state_dict, _TIMM_PATTERNS)


def from_hf(state_dict: Mapping[str, Any], **overrides) -> tuple[ConvNeXt, dict]:
  """(module, params) from a transformers `ConvNextModel` state dict (`embeddings.*`,
  `encoder.stages.*`). Its pooler norm `layernorm.*` is not part of the backbone and is left out.
  Raises ValueError naming every unexpected, missing or wrongly shaped key."""
  state_dict = _as_numpy(state_dict)
  module = ConvNeXt(**_architecture(state_dict, _HF_PATTERNS), **overrides)
  return module, _convert(module, state_dict, _HF_PATTERNS, ignored=_HF_POOLER_KEYS)


def _is_hf_layout(state_dict: Mapping[str, Any]) -> bool:
  return any(key.startswith("embeddings.") for key in state_dict)


def load_pretrained(source: str, **overrides) -> tuple[ConvNeXt, dict]:
  """(module, params) from pretrained weights in timm or transformers layout.

  Args:
    source: a local `.safetensors` file; a directory holding `model.safetensors`; or a Hugging
      Face hub id such as 'timm/convnext_base.fb_in22k_ft_in1k' (downloaded with huggingface_hub,
      or taken from its cache when offline, e.g. HF_HUB_OFFLINE=1).
    **overrides: module attributes other than the architecture (dtype, remat, drop_path_rate,
      depthwise).
  """
  path = _resolve_source(source)
  state_dict = load_file(path)
  if _is_hf_layout(state_dict):
    return from_hf(state_dict, **overrides)
  return from_timm(state_dict, **overrides)


def _resolve_source(source: str) -> str:
  """Local path of the safetensors file that `source` names (see `load_pretrained`)."""
  if os.path.isfile(source):
    if not source.endswith(".safetensors"):
      raise ValueError(f"{source} is not a .safetensors file")
    return source
  if os.path.isdir(source):
    path = os.path.join(source, "model.safetensors")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"directory {source} has no model.safetensors")
    return path
  if not re.fullmatch(r"[\w.-]+/[\w.-]+", source):
    raise FileNotFoundError(f"{source!r} is neither a local file or directory nor a hub id "
                            "like 'timm/convnext_base.fb_in22k_ft_in1k'")
  try:
    return huggingface_hub.hf_hub_download(source, "model.safetensors")
  except Exception as error:  # Offline and not cached, no network, unknown repo, ...
    url = f"https://huggingface.co/{source}/resolve/main/model.safetensors"
    raise FileNotFoundError(
        f"cannot get model.safetensors of {source} from the Hugging Face hub or its cache "
        f"({type(error).__name__}: {error}).\nFetch {url} (on a machine with internet access) and "
        f"save it as DIR/model.safetensors, then pass DIR or the file as the source; or run "
        f"`hf download {source} model.safetensors` there and copy its Hugging Face cache to "
        f"HF_HOME here (now {huggingface_hub.constants.HF_HOME}).") from error
