"""ResNet-50 (torchvision v1.5) in Flax linen for inference.

The comparison with other self-supervised methods (artstyle_jax/METHOD.md, "The paper's baselines") linear-
probes public ImageNet ResNet-50 checkpoints. This is torchvision's `resnet50()` without `fc`:
the stride of a downsampling bottleneck is on its 3x3 convolution (v1.5), and BatchNorm is frozen
(inference mode: the checkpoint's running statistics, eps 1e-5), so the network is a fixed
function of its parameters. The running statistics are parameters here (`FrozenBatchNorm`'s
`mean` and `var`), so `{'params': ...}` is the whole state, as for ConvNeXt.

`ResNet.__call__` maps an NHWC image batch to the four stage outputs (layer1 ... layer4), as
`ConvNeXt` does; `features.pooled` averages the last one.

Weight import from the public checkpoints' layouts: `resnet_weights`.
"""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Bottleneck blocks per stage.
SIZES: dict[str, tuple[int, ...]] = {
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnet152": (3, 8, 36, 3),
}
STAGE_WIDTHS = (64, 128, 256, 512)  # bottleneck widths; a stage outputs 4x as many channels
EXPANSION = 4
BATCH_NORM_EPS = 1e-5

# torchvision's init: Kaiming normal (fan_out, ReLU) for convolutions.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class FrozenBatchNorm(nn.Module):
  """BatchNorm in inference mode: (x - mean) / sqrt(var + eps) * scale + bias, per channel.

  Parameters `scale`, `bias`, `mean`, `var` (C,), float32: torch's weight, bias, running_mean,
  running_var. Output float32.
  """
  eps: float = BATCH_NORM_EPS

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    mean = self.param("mean", nn.initializers.zeros, (channels,), jnp.float32)
    var = self.param("var", nn.initializers.ones, (channels,), jnp.float32)
    multiplier = scale * jax.lax.rsqrt(var + self.eps)
    return x.astype(jnp.float32) * multiplier + (bias - mean * multiplier)


def _conv(features: int, kernel: int, stride: int, dtype: Any, name: str) -> nn.Conv:
  """torch Conv2d(kernel, stride, padding=kernel // 2, bias=False)."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                 use_bias=False, dtype=dtype, param_dtype=jnp.float32, kernel_init=_conv_init, name=name)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (stride here, v1.5) -> 1x1 (4x width), each with BatchNorm; ReLU; projection
  shortcut (1x1 conv with the stride, BatchNorm) where the shape changes."""
  width: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out = nn.relu(FrozenBatchNorm(name="bn1")(_conv(self.width, 1, 1, self.dtype, "conv1")(x.astype(self.dtype))))
    out = nn.relu(FrozenBatchNorm(name="bn2")(
        _conv(self.width, 3, self.stride, self.dtype, "conv2")(out.astype(self.dtype))))
    out = FrozenBatchNorm(name="bn3")(_conv(self.width * EXPANSION, 1, 1, self.dtype, "conv3")(out.astype(self.dtype)))
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.width * EXPANSION:
      shortcut = FrozenBatchNorm(name="downsample_bn")(
          _conv(self.width * EXPANSION, 1, self.stride, self.dtype, "downsample_conv")(x.astype(self.dtype)))
    return nn.relu(out + shortcut.astype(jnp.float32))


class ResNet(nn.Module):
  """Bottleneck ResNet (torchvision layout, no classifier), NHWC, frozen BatchNorm.

  Attributes:
    stage_sizes: bottleneck blocks per stage, (3, 4, 6, 3) for ResNet-50.
    dtype: compute dtype of the convolutions (parameters, BatchNorm and the residual stream stay
      float32).

  `__call__(x)` maps (B, H, W, 3) to the list of the four stage outputs (B, H / 2**(s+2),
  W / 2**(s+2), 256 * 2**s), float32 (for H and W multiples of 32; torch's rounding otherwise).
  """
  stage_sizes: Sequence[int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
    del train  # Frozen BatchNorm and no dropout: the same function in training and evaluation.
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"expected (B, H, W, 3) images, got {x.shape}")
    x = nn.relu(FrozenBatchNorm(name="bn1")(_conv(64, 7, 2, self.dtype, "conv1")(x.astype(self.dtype))))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    features = []
    for stage, (blocks, width) in enumerate(zip(self.stage_sizes, STAGE_WIDTHS)):
      for block in range(blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        x = Bottleneck(width, stride, self.dtype, name=f"layer{stage + 1}_{block}")(x)
      features.append(x)
    return features

  @property
  def name_of_size(self) -> str:
    """'resnet50', 'resnet101' or 'resnet152'."""
    return next(name for name, sizes in SIZES.items() if tuple(sizes) == tuple(self.stage_sizes))


def create(name: str, dtype: Any = jnp.float32) -> ResNet:
  """ResNet of one of torchvision's bottleneck sizes ('resnet50', 'resnet101', 'resnet152')."""
  if name not in SIZES:
    raise ValueError(f"unknown ResNet size {name!r}; known: {', '.join(SIZES)}")
  return ResNet(SIZES[name], dtype=dtype)
