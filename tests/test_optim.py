"""The optimiser equals torch's SGD and the schedule is the published one."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import torch

from artstyle_jax.method import optim


def test_torch_sgd_equals_torch_optim_sgd_over_five_steps_with_changing_lr():
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=(3,)).astype(np.float32)}
  grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()} for _ in range(5)]
  lrs = [0.1, 0.05, 0.2, 0.0, 0.01]

  torch_params = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
  torch_opt = torch.optim.SGD(list(torch_params.values()), lr=lrs[0], momentum=0.9, weight_decay=5e-4)
  for lr, g in zip(lrs, grads):
    for group in torch_opt.param_groups:
      group["lr"] = lr
    for k, p in torch_params.items():
      p.grad = torch.from_numpy(g[k])
    torch_opt.step()

  tx = optim.torch_sgd(lambda count: jnp.asarray(lrs)[count], momentum=0.9, weight_decay=5e-4)
  jax_params = jax.tree.map(jnp.asarray, params)
  opt_state = tx.init(jax_params)
  for g in grads:
    updates, opt_state = tx.update(jax.tree.map(jnp.asarray, g), opt_state, jax_params)
    jax_params = optax.apply_updates(jax_params, updates)

  for k, p in torch_params.items():
    np.testing.assert_allclose(jax_params[k], p.detach().numpy(), rtol=1e-6, atol=1e-7)


def _reference_lr(t, base, steps_per_epoch, epochs, warmup_epochs):
  """The published code's adjust_learning_rate, transcribed."""
  warm = warmup_epochs * steps_per_epoch
  if t < warm:
    return base * t / warm
  return 0.05 * base * (1 + math.cos(math.pi * (t - warm) / ((epochs - warmup_epochs) * steps_per_epoch)))


def test_paper_schedule_reproduces_the_published_jump_to_a_tenth_after_warmup():
  schedule = optim.warmup_cosine_schedule(1e-3, steps_per_epoch=7, num_epochs=25, warmup_epochs=5, kind="paper")
  for t in range(0, 25 * 7):
    np.testing.assert_allclose(schedule(t), _reference_lr(t, 1e-3, 7, 25, 5), rtol=1e-5, atol=1e-9)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(schedule(34), 1e-3 * 34 / 35, rtol=1e-6)
  np.testing.assert_allclose(schedule(35), 1e-4, rtol=1e-6)


def test_cosine_schedule_is_continuous_at_the_end_of_warmup_and_ends_at_zero():
  schedule = optim.warmup_cosine_schedule(1e-3, steps_per_epoch=10, num_epochs=4, warmup_epochs=1, kind="cosine")
  np.testing.assert_allclose(schedule(9), 0.9e-3, rtol=1e-6)
  np.testing.assert_allclose(schedule(10), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(schedule(40), 0.0, atol=1e-12)
  np.testing.assert_allclose(schedule(55), 0.0, atol=1e-12)


def test_schedule_without_warmup_starts_at_its_peak():
  schedule = optim.warmup_cosine_schedule(2e-3, steps_per_epoch=5, num_epochs=3, warmup_epochs=0, kind="cosine")
  np.testing.assert_allclose(schedule(0), 2e-3, rtol=1e-6)


def test_schedule_refuses_bad_arguments():
  with pytest.raises(ValueError, match="unknown schedule"):
    optim.warmup_cosine_schedule(1e-3, 10, 25, 5, kind="step")
  with pytest.raises(ValueError, match="warmup_epochs"):
    optim.warmup_cosine_schedule(1e-3, 10, 5, 5)


def _optim_config(linear_scaling):
  return ml_collections.ConfigDict(dict(
      base_lr=1e-3, linear_scaling=linear_scaling, reference_batch_size=16, schedule="cosine",
      warmup_epochs=0, momentum=0.9, weight_decay=5e-4))


def test_linear_scaling_rule_is_a_switch():
  assert optim.base_learning_rate(_optim_config(True), 256) == pytest.approx(1e-3 * 256 / 16)
  assert optim.base_learning_rate(_optim_config(False), 256) == pytest.approx(1e-3)


def test_create_uses_the_scaled_rate_in_its_schedule():
  config = ml_collections.ConfigDict(dict(optim=_optim_config(True), batch_size=64, num_epochs=2))
  _, schedule = optim.create(config, steps_per_epoch=3)
  np.testing.assert_allclose(schedule(0), 4e-3, rtol=1e-6)
