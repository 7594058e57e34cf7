"""ResNet-50 (torchvision v1.5) in Flax linen for inference, and import of PyTorch checkpoints.

The comparison with other self-supervised methods (METHOD.md, "The paper's baselines") linear-
probes public ImageNet ResNet-50 checkpoints. This is torchvision's `resnet50()` without `fc`:
the stride of a downsampling bottleneck is on its 3x3 convolution (v1.5), and BatchNorm is frozen
(inference mode: the checkpoint's running statistics, eps 1e-5), so the network is a fixed
function of its parameters. The running statistics are parameters here (`FrozenBatchNorm`'s
`mean` and `var`), so `{'params': ...}` is the whole state, as for ConvNeXt.

`ResNet.__call__` maps an NHWC image batch to the four stage outputs (layer1 ... layer4), as
`ConvNeXt` does; `features.pooled` averages the last one.

`torch_load` and `tensors_of` read a checkpoint file; `from_state_dict` takes the layouts the
public checkpoints use, recognised by their keys:

  torchvision    conv1.weight, bn1.*, layer1.0.conv1.weight, ... [fc.*]   (Barlow Twins, VICReg,
                                                                           DINO, BYOL/SimCLR
                                                                           conversions, timm)
  moco           [state_dict] module.encoder_q.<torchvision key>          (MoCo v1/v2)
  mmselfsup      state_dict: backbone.<torchvision key>, neck.*, head.*    (MMSelfSup/MMPretrain)
  module         module.<torchvision key>, module.projection_head.*,       (SwAV, DeepCluster-v2)
                 module.prototypes.*

A file of any other layout is refused in one line that names the keys found.
"""
from collections.abc import Callable, Mapping, Sequence
import os
import re
from typing import Any

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


# ---------------------------------------------------------------------------------------------
# Import of PyTorch state dicts.

_BLOCK = re.compile(r"layer(\d)\.(\d+)\.(.+)")
# BatchNorm's torch names (weight is `scale`, for a convolution `kernel`).
_BATCH_NORM_LEAVES = {"bias": "bias", "running_mean": "mean", "running_var": "var"}
_IGNORED_LEAVES = ("num_batches_tracked",)


class CheckpointError(ValueError):
  """A file that is not a ResNet checkpoint of a known format, or one that does not fit."""


def _conv_kernel(w: np.ndarray) -> np.ndarray:
  """torch Conv2d weight (out, in, kh, kw) -> flax HWIO."""
  return np.transpose(w, (2, 3, 1, 0))


def _our_path(key: str) -> tuple[tuple[str, ...], Callable[[np.ndarray], np.ndarray]] | None:
  """(path in our tree, conversion) of a torchvision backbone key; None for keys outside it."""
  module, _, leaf = key.rpartition(".")
  found = _BLOCK.fullmatch(module)
  if found:
    stage, block, inner = found.groups()
    prefix = (f"layer{stage}_{block}",)
    inner = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}.get(inner, inner)
  elif module in ("conv1", "bn1"):
    prefix, inner = (), module
  else:
    return None
  if inner not in ("conv1", "conv2", "conv3", "bn1", "bn2", "bn3", "downsample_conv", "downsample_bn"):
    return None
  is_conv = "conv" in inner
  if leaf == "weight":
    return prefix + (inner, "kernel" if is_conv else "scale"), _conv_kernel if is_conv else (lambda w: w)
  if leaf in _BATCH_NORM_LEAVES and not is_conv:
    return prefix + (inner, _BATCH_NORM_LEAVES[leaf]), lambda w: w
  return None


def stage_sizes_of(state_dict: Mapping[str, Any]) -> tuple[int, ...]:
  """Blocks per stage from torchvision keys (layer<s>.<b>.*)."""
  blocks: dict[int, set[int]] = {}
  for key in state_dict:
    found = _BLOCK.match(key)
    if found:
      blocks.setdefault(int(found.group(1)), set()).add(int(found.group(2)))
  sizes = tuple(len(blocks.get(stage, ())) for stage in (1, 2, 3, 4))
  if sorted(blocks) != [1, 2, 3, 4] or any(sorted(b) != list(range(len(b))) for b in blocks.values()):
    raise CheckpointError(f"cannot read the stages of a ResNet from the keys: blocks per layer {sizes}")
  if sizes not in SIZES.values():
    raise CheckpointError(f"a ResNet with {sizes} bottleneck blocks per stage is none of "
                          + ", ".join(f"{n} {s}" for n, s in SIZES.items()))
  return sizes


def _expected_shapes(module: ResNet) -> dict[tuple[str, ...], tuple[int, ...]]:
  shapes = jax.eval_shape(module.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  return {tuple(p.key for p in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(shapes["params"])}


def params_from_torchvision(module: ResNet, state_dict: Mapping[str, np.ndarray]) -> dict:
  """`module`'s parameter tree from a torchvision-keyed backbone state dict (numpy arrays, no fc).

  Raises:
    CheckpointError: naming the unexpected, missing and wrongly shaped keys; nothing partial.
  """
  expected = _expected_shapes(module)
  filled: dict[tuple[str, ...], np.ndarray] = {}
  unknown, wrong_shape = [], []
  for key, value in state_dict.items():
    if key.rpartition(".")[2] in _IGNORED_LEAVES:
      continue
    found = _our_path(key)
    if found is None or found[0] not in expected:
      unknown.append(key)
      continue
    path, convert = found
    leaf = np.asarray(convert(np.asarray(value, np.float32)))
    if leaf.shape != expected[path]:
      wrong_shape.append(f"{key} {tuple(np.shape(value))}")
      continue
    filled[path] = leaf
  missing = sorted(".".join(path) for path in expected if path not in filled)
  if unknown or missing or wrong_shape:
    problems = [f"{what} ({len(keys)}): {_describe(keys)}" for what, keys in
                (("unexpected", unknown), ("missing", missing), ("wrongly shaped", wrong_shape)) if keys]
    raise CheckpointError(f"the state dict does not fit {module.name_of_size}: " + "; ".join(problems))
  return jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(filled))


def _describe(keys: Sequence[str], limit: int = 6) -> str:
  keys = sorted(keys)
  shown = ", ".join(keys[:limit])
  return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def _strip(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
  return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}


def backbone_keys(state_dict: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
  """(format name, the torchvision-keyed backbone tensors) of a checkpoint's state dict.

  The classifier (`fc.*`) and the formats' heads (MoCo's key encoder and queue, SwAV's projection
  head and prototypes, MMSelfSup's neck and head) are left out.

  Raises:
    CheckpointError: no known format; the message names the keys found.
  """
  keys = list(state_dict)
  if any(k.startswith("module.encoder_q.") for k in keys):
    name, backbone = "moco", _strip(state_dict, "module.encoder_q.")
  elif any(k.startswith("backbone.") for k in keys):
    name, backbone = "mmselfsup", _strip(state_dict, "backbone.")
  elif "module.conv1.weight" in state_dict:
    backbone = _strip(state_dict, "module.")
    backbone = {k: v for k, v in backbone.items() if not k.startswith(("projection_head.", "prototypes"))}
    name = "module"
  elif "conv1.weight" in state_dict:
    name, backbone = "torchvision", dict(state_dict)
  else:
    raise CheckpointError("not a ResNet state dict of a known format (torchvision conv1.weight, MoCo "
                          "module.encoder_q., MMSelfSup backbone., SwAV/DeepCluster module.); its keys: "
                          + (_describe(keys) or "none"))
  return name, {k: v for k, v in backbone.items() if not k.startswith("fc.")}


def torch_load(path: str) -> Any:
  """What torch.save wrote to `path`, tensors on the CPU; only tensors and plain Python values
  are unpickled (weights_only=True).

  Raises:
    FileNotFoundError: no such file. CheckpointError: torch is missing, or cannot read the file.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no such checkpoint file: {path}")
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise CheckpointError("reading a PyTorch checkpoint needs torch (the CPU build is enough): pip install torch") from e
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise CheckpointError(f"{path}: torch.load(weights_only=True) cannot read it ({first}); if it pickles "
                          "Python objects besides tensors and you trust it, re-save its state_dict alone "
                          "with torch.save") from e


def tensors_of(loaded: Any, path: str) -> dict[str, np.ndarray]:
  """The flat name -> float32 array mapping of what `torch_load` read: a state dict, or a dict
  whose 'state_dict' is one (as MoCo and MMSelfSup save).

  Raises:
    CheckpointError: not a state dict.
  """
  if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
    loaded = loaded["state_dict"]
  if not isinstance(loaded, Mapping):
    raise CheckpointError(f"{path} holds a {type(loaded).__name__}, not a state dict")
  arrays = {str(key): value.detach().to("cpu").float().numpy()
            for key, value in loaded.items() if hasattr(value, "detach")}
  if not arrays:
    raise CheckpointError(f"{path} holds no tensors; its keys: {_describe([str(k) for k in loaded]) or 'none'}")
  return arrays


def from_state_dict(state_dict: Mapping[str, np.ndarray], dtype: Any = jnp.float32) -> tuple[str, ResNet, dict]:
  """(format name, module, params) of a checkpoint's state dict in one of the formats above."""
  name, backbone = backbone_keys(state_dict)
  module = ResNet(stage_sizes_of(backbone), dtype=dtype)
  return name, module, params_from_torchvision(module, backbone)


def is_resnet_state_dict(keys: Sequence[str]) -> bool:
  """Whether keys look like a ResNet checkpoint of one of the formats (before the full check)."""
  try:
    backbone_keys({key: None for key in keys})
  except CheckpointError:
    return False
  return True
