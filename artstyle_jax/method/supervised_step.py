"""The supervised fine-tuning step: a whole backbone plus a linear classifier on labels.

  optimizer, schedule = supervised_step.create_optimizer(config, steps_per_epoch)
  state, shardings = supervised_step.create_state(backbone, backbone_params, num_classes, config, optimizer, mesh)
  step = supervised_step.compile_step(supervised_step.make_step(backbone, optimizer, schedule, ...), shardings, mesh)
  state, metrics = step(state, sharding.shard_batch(batch, mesh))

The classifier is a head like the linear probe's ({'kernel': (C, K), 'bias': (K,)},
`heads.linear_logits`) on the backbone's pooled features (`features.pooled`). The optimiser
is AdamW with decoupled weight decay on kernels only (arrays of two or more dimensions); the
classifier follows the warm-up + cosine schedule (`optim.warmup_cosine_schedule`), the backbone
the same schedule times config.finetune.backbone_lr_scale. A ResNet's frozen BatchNorm
statistics (parameters named 'mean' and 'var') are not trained.
"""
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from artstyle_jax.method import features
from artstyle_jax.method import optim
from artstyle_jax.method import sharding
from artstyle_jax.models import heads

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]
_FROZEN = ("mean", "var")  # resnet.FrozenBatchNorm's running statistics


@flax.struct.dataclass
class FinetuneState:
  step: jax.Array  # int32 scalar, optimiser steps taken
  params: dict[str, Any]  # {'backbone': ..., 'classifier': {'kernel', 'bias'}}
  opt_state: Any


def _labels(params: Any) -> Any:
  """'classifier', 'backbone' or 'frozen' per leaf of {'backbone', 'classifier'} params."""
  def label(path, _):
    if path[0].key == "classifier":
      return "classifier"
    return "frozen" if getattr(path[-1], "key", None) in _FROZEN else "backbone"
  return jax.tree_util.tree_map_with_path(label, params)


def _decayed(params: Any) -> Any:
  return jax.tree.map(lambda x: x.ndim >= 2, params)


def create_optimizer(config: ml_collections.ConfigDict,
                     steps_per_epoch: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(AdamW over the classifier and backbone, the classifier's schedule) from config.optim
  (base_lr, linear_scaling, reference_batch_size, schedule, warmup_epochs, weight_decay),
  config.num_epochs and config.finetune."""
  schedule = optim.warmup_cosine_schedule(optim.base_learning_rate(config.optim, config.batch_size), steps_per_epoch,
                                          config.num_epochs, config.optim.warmup_epochs, config.optim.schedule)
  scale = float(config.finetune.backbone_lr_scale)

  def adamw(learning_rate):
    return optax.adamw(learning_rate, b2=config.finetune.adam_b2, weight_decay=config.optim.weight_decay,
                       mask=_decayed)

  optimizer = optax.multi_transform(
      {"classifier": adamw(schedule), "backbone": adamw(lambda t: scale * schedule(t)),
       "frozen": optax.set_to_zero()}, _labels)
  return optimizer, schedule


def init_classifier(key: jax.Array, channels: int, num_classes: int, stddev: float) -> heads.LinearHead:
  return {"kernel": stddev * jax.random.normal(key, (channels, num_classes), jnp.float32),
          "bias": jnp.zeros((num_classes,), jnp.float32)}


def create_state(backbone: nn.Module, backbone_params: Any, num_classes: int, config: ml_collections.ConfigDict,
                 optimizer: optax.GradientTransformation,
                 mesh: jax.sharding.Mesh) -> tuple[FinetuneState, FinetuneState]:
  """(state, its shardings): the backbone's parameters, a classifier drawn from config.seed, the
  optimiser's fresh state; parameters sharded as training's (`sharding.param_sharding`)."""
  probe = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
  channels = jax.eval_shape(lambda p: features.pooled(backbone, {"params": p}, probe), backbone_params).shape[-1]

  def create(backbone_params):
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
    params = {"backbone": backbone_params,
              "classifier": init_classifier(key, channels, num_classes, config.finetune.classifier_init_stddev)}
    return FinetuneState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

  abstract = jax.eval_shape(create, backbone_params)
  shardings = jax.tree.map(lambda x: sharding.param_sharding(x.shape, mesh, config.mesh.fsdp_min_size), abstract)
  return jax.jit(create, out_shardings=shardings)(backbone_params), shardings


def logits(backbone: nn.Module, params: Mapping[str, Any], images: jax.Array) -> jax.Array:
  """(B, K) float32 class logits of (B, S, S, 3) normalised images."""
  return heads.linear_logits(params["classifier"], features.pooled(backbone, {"params": params["backbone"]},
                                                                       images))


def make_step(backbone: nn.Module, optimizer: optax.GradientTransformation, schedule: optax.Schedule, *,
              num_classes: int, label_smoothing: float) -> Callable[[FinetuneState, Batch], tuple[FinetuneState, Metrics]]:
  """`step(state, batch) -> (state, metrics)`, pure, for `jax.jit`.

  The batch holds 'image' (B, S, S, 3) float32 normalised and 'label' (B,) int32. Metrics: 'loss'
  (label-smoothed cross-entropy), 'accuracy' (top-1 on the batch's augmented views), 'lr' (the
  classifier's rate of this step) and 'grad_norm'.
  """
  def step(state: FinetuneState, batch: Batch) -> tuple[FinetuneState, Metrics]:
    def loss_fn(params):
      batch_logits = logits(backbone, params, batch["image"])
      targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], num_classes), label_smoothing)
      return jnp.mean(optax.softmax_cross_entropy(batch_logits, targets)), batch_logits

    (loss, batch_logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              opt_state=opt_state)
    metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(batch_logits, -1) == batch["label"]),
               "lr": schedule(state.step), "grad_norm": optax.tree.norm(grads)}
    return new_state, metrics

  return step


def compile_step(step: Callable, state_shardings: FinetuneState, mesh: jax.sharding.Mesh):
  """`jax.jit` of a step: batch over the mesh's devices, state as `state_shardings`, metrics
  replicated, the input state's buffers donated."""
  return jax.jit(step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
