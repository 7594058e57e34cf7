"""The Vision Transformer of DINOv2 and of CLIP's image tower, as frozen feature extractors.

One network in two families, each computing exactly what transformers' PyTorch model does:

  'dinov2'  `Dinov2Model`: patch convolution with bias, CLS token, learned positions, pre-norm
            blocks with LayerScale, GELU (or SwiGLU) MLP; the final LayerNorm normalises every
            token. last_hidden_state: the normalised tokens; pooler_output: their CLS.
  'clip'    `CLIPVisionModel`: patch convolution without bias, class embedding, learned
            positions, a LayerNorm before the blocks (`pre_layrnorm`), blocks without LayerScale,
            quick-GELU MLP. last_hidden_state: the blocks' output, not normalised; pooler_output:
            its CLS through the final LayerNorm (`post_layernorm`).

The feature the evaluators read (`Outputs.feature`, (B, F)):
  dinov2  [CLS, mean of the patch tokens] of the normalised tokens, F = 2C: the input of the
          DINOv2 authors' linear classifiers (transformers' `Dinov2ForImageClassification`);
  clip    pooler_output, through `visual_projection` (F = its width) when the weights have one
          (a `CLIPModel` or `CLIPVisionModelWithProjection` file): CLIP's image embedding,
          what the CLIP paper's linear probes read; else pooler_output itself (F = C).

Any grid of patches runs: position embeddings learned for `native_grid` x `native_grid`
patches are resized to the input's grid as transformers' `interpolate_pos_encoding` does
(`torch.nn.functional.interpolate`, bicubic, align_corners=False, a = -0.75, no antialias),
here as two fixed interpolation matrices (`bicubic_matrix`).
"""
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FAMILIES = ("dinov2", "clip")
MLPS = ("gelu", "gelu_tanh", "quick_gelu", "swiglu")
_TORCH_BICUBIC_A = -0.75


class Outputs(NamedTuple):
  """What a ViT computes on (B, H, W, 3) images, float32; N = (H // patch) * (W // patch)."""
  last_hidden_state: jax.Array  # (B, 1 + N, C), as transformers' model returns it
  pooler_output: jax.Array  # (B, C), as transformers' model returns it
  feature: jax.Array  # (B, F), what the evaluators read (module docstring)


def _cubic_weights(t: np.ndarray) -> np.ndarray:
  """(..., 4) weights of the samples at offsets -1, 0, 1, 2 for fractions t, torch's cubic kernel."""
  a = _TORCH_BICUBIC_A
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # |x| <= 1
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_matrix(size_in: int, size_out: int) -> np.ndarray:
  """(size_out, size_in) float64 matrix of torch's 1-D bicubic resize, align_corners=False:
  out = M @ in along one axis; samples beyond the edges repeat the edge."""
  source = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
  first = np.floor(source)
  weights = _cubic_weights(source - first)
  matrix = np.zeros((size_out, size_in))
  for offset in range(4):
    columns = np.clip(first.astype(np.int64) - 1 + offset, 0, size_in - 1)
    np.add.at(matrix, (np.arange(size_out), columns), weights[:, offset])
  return matrix


def resize_positions(positions: jax.Array, native_grid: int, grid: tuple[int, int]) -> jax.Array:
  """(native_grid**2, C) patch position embeddings resized to (grid[0] * grid[1], C)."""
  if grid == (native_grid, native_grid):
    return positions
  square = positions.reshape(native_grid, native_grid, -1).astype(jnp.float32)
  rows = jnp.asarray(bicubic_matrix(native_grid, grid[0]), jnp.float32)
  columns = jnp.asarray(bicubic_matrix(native_grid, grid[1]), jnp.float32)
  resized = jnp.einsum("ij,jkc,lk->ilc", rows, square, columns, precision=jax.lax.Precision.HIGHEST)
  return resized.reshape(grid[0] * grid[1], -1)


def _activation(name: str):
  return {"gelu": lambda x: nn.gelu(x, approximate=False), "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
          "quick_gelu": lambda x: x * nn.sigmoid(1.702 * x)}[name]


class Attention(nn.Module):
  """Multi-head self-attention over (B, T, C) tokens, softmax in float32."""
  num_heads: int
  qkv_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    head_dim = width // self.num_heads
    split = lambda name: nn.Dense(width, use_bias=self.qkv_bias, dtype=self.dtype, name=name)(x).reshape(
        x.shape[:-1] + (self.num_heads, head_dim))
    query, key, value = split("query"), split("key"), split("value")
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key).astype(jnp.float32) * head_dim ** -0.5
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    attended = jnp.einsum("bhqk,bkhd->bqhd", weights, value).reshape(x.shape)
    return nn.Dense(width, dtype=self.dtype, name="out")(attended)


class Mlp(nn.Module):
  """fc2(act(fc1(x))), or with 'swiglu' fc2(silu(gate) * up), gate and up the halves of fc1."""
  hidden: int
  kind: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.kind == "swiglu":
      gate, up = jnp.split(nn.Dense(2 * self.hidden, dtype=self.dtype, name="fc1")(x), 2, axis=-1)
      hidden = nn.silu(gate) * up
    else:
      hidden = _activation(self.kind)(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x))
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(hidden)


class Block(nn.Module):
  """Pre-norm transformer block; with `layer_scale` each branch is scaled per channel (DINOv2)."""
  num_heads: int
  mlp_hidden: int
  mlp: str
  layer_norm_eps: float
  layer_scale: bool
  qkv_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    norm = lambda name: nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name=name)
    scale = lambda name, y: y * self.param(name, nn.initializers.ones, (x.shape[-1],)) if self.layer_scale else y
    x = x + scale("layer_scale1", Attention(self.num_heads, self.qkv_bias, self.dtype, name="attn")(norm("norm1")(x)))
    return x + scale("layer_scale2", Mlp(self.mlp_hidden, self.mlp, self.dtype, name="mlp")(norm("norm2")(x)))


class ViT(nn.Module):
  """A DINOv2 or CLIP vision transformer (module docstring); `__call__` -> `Outputs`.

  Attributes:
    family: 'dinov2' or 'clip'.
    patch_size: pixels per patch side (the patch convolution's kernel and stride).
    width, depth, num_heads: token channels C, blocks, attention heads.
    mlp_hidden: the MLP's hidden width (for 'swiglu', of each of gate and up).
    native_grid: patches per side the position embeddings were learned for.
    mlp: the MLP's activation, one of MLPS.
    layer_norm_eps: every LayerNorm's epsilon.
    qkv_bias: whether query, key and value have biases.
    projection_dim: CLIP's `visual_projection` width; 0 for none.
    dtype: compute dtype (parameters stay float32).
  """
  family: str
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_hidden: int
  native_grid: int
  mlp: str = "gelu"
  layer_norm_eps: float = 1e-6
  qkv_bias: bool = True
  projection_dim: int = 0
  dtype: Any = jnp.float32

  @property
  def native_image_size(self) -> int:
    """The image side, in pixels, the position embeddings were learned for."""
    return self.native_grid * self.patch_size

  @nn.compact
  def __call__(self, images: jax.Array) -> Outputs:
    """`Outputs` of (B, H, W, 3) float32 normalised images, H and W multiples of patch_size."""
    if self.family not in FAMILIES or self.mlp not in MLPS:
      raise ValueError(f"family must be one of {FAMILIES} and mlp one of {MLPS}, got {self.family!r}, {self.mlp!r}")
    dinov2 = self.family == "dinov2"
    norm = lambda name: nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name=name)
    patches = nn.Conv(self.width, (self.patch_size,) * 2, strides=(self.patch_size,) * 2, padding="VALID",
                      use_bias=dinov2, dtype=self.dtype, name="patch_embed")(images.astype(self.dtype))
    batch, rows, columns, _ = patches.shape
    cls_token = self.param("cls_token", nn.initializers.normal(0.02), (self.width,))
    positions = self.param("pos_embed", nn.initializers.normal(0.02), (1 + self.native_grid ** 2, self.width))
    positions = jnp.concatenate([positions[:1], resize_positions(positions[1:], self.native_grid, (rows, columns))])
    tokens = jnp.concatenate([jnp.broadcast_to(cls_token.astype(self.dtype), (batch, 1, self.width)),
                              patches.reshape(batch, rows * columns, self.width)], axis=1)
    tokens = tokens + positions.astype(self.dtype)
    if not dinov2:
      tokens = norm("pre_norm")(tokens)
    for index in range(self.depth):
      tokens = Block(self.num_heads, self.mlp_hidden, self.mlp, self.layer_norm_eps, layer_scale=dinov2,
                     qkv_bias=self.qkv_bias, dtype=self.dtype, name=f"blocks_{index}")(tokens)
    if dinov2:
      tokens = norm("norm")(tokens)
      pooled = tokens[:, 0]
      feature = jnp.concatenate([pooled, jnp.mean(tokens[:, 1:].astype(jnp.float32), axis=1)], axis=-1)
    else:
      pooled = norm("norm")(tokens[:, 0])
      feature = pooled
      if self.projection_dim:
        feature = nn.Dense(self.projection_dim, use_bias=False, dtype=self.dtype, name="projection")(pooled)
    return Outputs(tokens.astype(jnp.float32), pooled.astype(jnp.float32), feature.astype(jnp.float32))
