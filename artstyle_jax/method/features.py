"""Pooled backbone features of a dataset split, the input of every evaluator (kNN, linear probe)."""
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from artstyle_jax.data import pipeline
from artstyle_jax.method import sharding
from artstyle_jax.models import convnext
from artstyle_jax.models import vit

FeatureFn = Callable[[Any, jax.Array], jax.Array]


def pooled(module: nn.Module, variables: Mapping[str, Any], images: jax.Array) -> jax.Array:
  """(B, C) float32 features of a backbone (as `models.load_backbone` returns it) on (B, H, W, 3)
  float32 normalised images: a ConvNeXt's, ResNet's or EfficientNet-Lite's global average of its
  last map, a ViT's `feature` (`vit` says which vector)."""
  if isinstance(module, vit.ViT):
    return module.apply(variables, images).feature
  return convnext.pool(module.apply(variables, images, train=False)[-1])


def make_feature_fn(backbone: nn.Module, mesh: jax.sharding.Mesh) -> FeatureFn:
  """`feature_fn(backbone_params, images) -> (B, C)` float32 pooled features, jitted.

  images: (B, S, S, 3) float32 normalised, sharded over the mesh's batch axes.
  """
  def features(params, images):
    return pooled(backbone, {"params": params}, images)

  return jax.jit(features, out_shardings=sharding.batch_sharding(mesh))


def extract(feature_fn: FeatureFn, backbone_params: Any, batches: Iterable[Mapping[str, np.ndarray]],
            mesh: jax.sharding.Mesh, image_key: str = "image") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Features of every real example of an eval pass (`pipeline.eval_dataset`), on every process.

  Args:
    batches: this process's part of each batch, with `image_key`, 'label', 'index', 'mask'.

  Returns:
    (features (N, C) float32, labels (N,) int32, indices (N,) int64) of the N real examples,
    ordered by their index in the source, the same arrays on every process.
  """
  features, labels, indices = [], [], []
  for batch in batches:
    local = {"image": batch[image_key], "label": batch["label"], "index": batch["index"], "mask": batch["mask"]}
    arrays = sharding.shard_batch(local, mesh)
    batch_features = feature_fn(backbone_params, arrays["image"])
    gathered = multihost_utils.process_allgather(
        {"features": batch_features, "label": arrays["label"], "index": arrays["index"], "mask": arrays["mask"]},
        tiled=True)
    mask = np.asarray(gathered["mask"], bool)
    features.append(np.asarray(gathered["features"], np.float32)[mask])
    labels.append(np.asarray(gathered["label"], np.int32)[mask])
    indices.append(np.asarray(gathered["index"], np.int64)[mask])
  if not features:
    raise ValueError("no batches to extract features from")
  features, labels, indices = np.concatenate(features), np.concatenate(labels), np.concatenate(indices)
  order = np.argsort(indices, kind="stable")
  return features[order], labels[order], indices[order]


def extraction_batch_size(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> int:
  """config.batch_size rounded up to a multiple of the mesh's devices (which may not be training's)."""
  return -(-config.batch_size // mesh.size) * mesh.size


def extract_split(config: ml_collections.ConfigDict, feature_fn: FeatureFn, backbone_params: Any, source: Any,
                  transform: pipeline.Transform, mesh: jax.sharding.Mesh,
                  batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(features (N, C) float32, labels (N,) int32) of every record of `source`, in source order,
  each record through `transform` in one pass of `batch_size` images per step."""
  batches = pipeline.eval_dataset(source, transform, global_batch_size=batch_size,
                                  num_workers=config.dataset.num_workers, num_threads=config.dataset.num_threads)
  features, labels, _ = extract(feature_fn, backbone_params, batches, mesh)
  return features, labels
