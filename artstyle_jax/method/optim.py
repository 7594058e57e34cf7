"""The student's optimiser: torch-style SGD with momentum and L2 weight decay, and its schedule.

artstyle_jax/METHOD.md, "Optimisation": `g <- g + wd * p; buf <- momentum * buf + g; p <- p - lr * buf`
(torch.optim.SGD, dampening 0, no Nesterov), the learning rate set at every iteration by a
linear warm-up then a cosine. The published code's cosine starts at a tenth of the base rate
(`0.05 * base * (1 + cos)`), so the rate jumps from `base` to `0.1 * base` at the end of the
warm-up; schedule 'paper' reproduces that, schedule 'cosine' is the continuous
`0.5 * base * (1 + cos)`.
"""
import math

import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ("paper", "cosine")
# Peak of the cosine relative to the base rate after warm-up, per schedule.
_COSINE_PEAK = {"paper": 0.1, "cosine": 1.0}


def base_learning_rate(optim_config: ml_collections.ConfigDict, batch_size: int) -> float:
  """The base rate, scaled by `batch_size / reference_batch_size` when `linear_scaling` is on."""
  if optim_config.linear_scaling:
    return optim_config.base_lr * batch_size / optim_config.reference_batch_size
  return optim_config.base_lr


def warmup_cosine_schedule(
    base_lr: float, steps_per_epoch: int, num_epochs: int, warmup_epochs: int, kind: str = "paper"
) -> optax.Schedule:
  """Learning rate at 0-based iteration t, as the published code sets it.

  Warm-up: `base * t / (warmup_epochs * steps_per_epoch)`. Afterwards
  `peak / 2 * base * (1 + cos(pi * (t - warm) / ((num_epochs - warmup_epochs) * steps_per_epoch)))`
  with `peak` 0.1 ('paper', with its jump) or 1 ('cosine', continuous). Past the last
  iteration the rate stays at its final value.
  """
  if kind not in SCHEDULES:
    raise ValueError(f"unknown schedule {kind!r}; expected one of {SCHEDULES}")
  if steps_per_epoch < 1 or num_epochs < 1:
    raise ValueError(f"steps_per_epoch ({steps_per_epoch}) and num_epochs ({num_epochs}) must be positive")
  if not 0 <= warmup_epochs < num_epochs:
    raise ValueError(f"warmup_epochs ({warmup_epochs}) must be in [0, num_epochs={num_epochs})")
  warmup_steps = warmup_epochs * steps_per_epoch
  decay_steps = (num_epochs - warmup_epochs) * steps_per_epoch
  peak = _COSINE_PEAK[kind] * base_lr

  def schedule(step):
    t = jnp.asarray(step, jnp.float32)
    warmup = base_lr * t / max(warmup_steps, 1)
    progress = jnp.clip((t - warmup_steps) / decay_steps, 0.0, 1.0)
    decay = 0.5 * peak * (1 + jnp.cos(math.pi * progress))
    return jnp.where(t < warmup_steps, warmup, decay)

  return schedule


def torch_sgd(learning_rate: optax.ScalarOrSchedule, momentum: float = 0.9, weight_decay: float = 5e-4) -> optax.GradientTransformation:
  """`torch.optim.SGD(lr, momentum, weight_decay)` (dampening 0, no Nesterov) as an optax chain.

  Weight decay is added to the gradient of every parameter, before the momentum buffer.
  """
  return optax.chain(
      optax.add_decayed_weights(weight_decay),
      optax.trace(decay=momentum, nesterov=False),
      optax.scale_by_learning_rate(learning_rate),
  )


def create(config: ml_collections.ConfigDict, steps_per_epoch: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimiser and its schedule for a training config.

  Reads `config.optim.{base_lr, linear_scaling, reference_batch_size, schedule, warmup_epochs,
  momentum, weight_decay}`, `config.batch_size` and `config.num_epochs`.
  """
  schedule = warmup_cosine_schedule(
      base_learning_rate(config.optim, config.batch_size),
      steps_per_epoch,
      config.num_epochs,
      config.optim.warmup_epochs,
      config.optim.schedule,
  )
  return torch_sgd(schedule, config.optim.momentum, config.optim.weight_decay), schedule
