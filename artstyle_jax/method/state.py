"""The training state pytree, the teachers' EMA and the key queue (artstyle_jax/METHOD.md steps 1 and 7).

Parameters of a network are `{'backbone': backbone params, 'head': projection head params}`.
Teachers are stored by name in `TrainState.teachers`: always 'weak'; 'style' only when the
style teacher needs its own copy, i.e. its momentum differs from the weak teacher's (or
`share_teachers` is off). Otherwise the weak copy serves both: with equal momenta and equal
initialisation the two stay bit-identical.
"""
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from artstyle_jax.models import heads

Params = Any


@flax.struct.dataclass
class TrainState:
  """Everything a train step reads and writes.

  Attributes:
    step: () int32, optimiser steps taken.
    params: the student's parameters.
    teachers: {'weak': params} or {'weak': params, 'style': params}.
    opt_state: optax state of the student's optimiser.
    queue: (K, D) float32 keys, rows of unit norm.
    queue_ptr: () int32, row where the next keys are written.
    rng: (2,) uint32 PRNG key for stochastic layers (drop-path) of the student.
  """
  step: jax.Array
  params: Params
  teachers: dict[str, Params]
  opt_state: optax.OptState
  queue: jax.Array
  queue_ptr: jax.Array
  rng: jax.Array


def teacher_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Names of the teacher parameter copies the state keeps for this config."""
  if not config.style_teacher:
    return ("weak",)
  if config.share_teachers and config.momentum_weak == config.momentum_style:
    return ("weak",)
  return ("weak", "style")


def teacher_momenta(config: ml_collections.ConfigDict) -> dict[str, float]:
  """EMA momentum of each stored teacher copy."""
  momenta = {"weak": config.momentum_weak, "style": config.momentum_style}
  return {name: momenta[name] for name in teacher_names(config)}


def style_teacher_params(teachers: dict[str, Params]) -> Params:
  """The style teacher's parameters: its own copy, or the shared weak copy."""
  return teachers.get("style", teachers["weak"])


def ema_update(teacher: Params, student: Params, momentum: float) -> Params:
  """`theta_T <- m * theta_T + (1 - m) * theta_student`, leaf by leaf."""
  return jax.tree.map(lambda t, s: momentum * t + (1.0 - momentum) * s, teacher, student)


def init_queue(rng: jax.Array, size: int, dim: int) -> jax.Array:
  """(size, dim) standard normal rows, each L2-normalised."""
  return heads.l2_normalize(jax.random.normal(rng, (size, dim), jnp.float32))


def enqueue(queue: jax.Array, ptr: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Writes `keys` (B, D) at row `ptr` of the ring `queue` (K, D); the pointer advances by B mod K.

  K must be a multiple of B, so a batch never straddles the end of the ring.
  """
  size, batch = queue.shape[0], keys.shape[0]
  if size % batch:
    raise ValueError(f"queue of {size} rows is not a multiple of the {batch} keys enqueued per batch")
  if keys.shape[1:] != queue.shape[1:]:
    raise ValueError(f"keys of shape {keys.shape} do not fit a queue of shape {queue.shape}")
  queue = jax.lax.dynamic_update_slice(queue, keys.astype(queue.dtype), (ptr, jnp.zeros_like(ptr)))
  return queue, (ptr + batch) % size


def _select_backbone_params(backbone_params: Params, expected: Params) -> Params:
  """Keeps the subtrees the backbone uses (a checkpoint's classifier is dropped), checking shapes."""
  missing = [k for k in expected if k not in backbone_params]
  if missing:
    raise ValueError(f"backbone parameters lack {missing}")
  selected = {k: backbone_params[k] for k in expected}
  got = jax.tree.map(jnp.shape, selected)
  want = jax.tree.map(lambda x: x.shape, expected)
  if got != want:
    raise ValueError(f"backbone parameter shapes differ from the model's: got {got}, expected {want}")
  return selected


def create(
    rng: jax.Array,
    config: ml_collections.ConfigDict,
    backbone: nn.Module,
    head: nn.Module,
    optimizer: optax.GradientTransformation,
    backbone_params: Params | None = None,
) -> TrainState:
  """A fresh state: student initialised (backbone from `backbone_params` when given), each
  teacher an exact copy of it, optimiser state zero, a random unit-norm queue, step 0.

  Pure: jit it with `out_shardings` to create large states directly sharded.
  """
  backbone_key, head_key, queue_key, state_key = jax.random.split(rng, 4)
  images = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
  if backbone_params is None:
    backbone_params = backbone.init(backbone_key, images, train=False)["params"]
  else:
    expected = jax.eval_shape(lambda: backbone.init(backbone_key, images, train=False)["params"])
    backbone_params = _select_backbone_params(backbone_params, expected)
  feature_map = backbone.apply({"params": backbone_params}, images, train=False)[-1]
  head_params = head.init(head_key, jnp.zeros((1, feature_map.shape[-1]), jnp.float32))["params"]
  params = {"backbone": backbone_params, "head": head_params}
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      teachers={name: jax.tree.map(jnp.copy, params) for name in teacher_names(config)},
      opt_state=optimizer.init(params),
      queue=init_queue(queue_key, config.queue_size, config.model.proj_dim),
      queue_ptr=jnp.zeros((), jnp.int32),
      rng=state_key,
  )
