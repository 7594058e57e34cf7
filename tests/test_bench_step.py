"""bench step --torch: the PyTorch reference step computes our step, and the bench times both."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from artstyle_jax import optim
from artstyle_jax import state as state_lib
from artstyle_jax import step
from artstyle_jax.bench import step as bench_step
from artstyle_jax.bench import timing
from artstyle_jax.bench import torch_step
from artstyle_jax.models import convnext
from helpers import small_step_config

# Two stages of one block (4x4 last maps): the step is the same for any depth, and compiles fast.
DEPTHS, DIMS = (1, 1), (8, 16)


def test_torch_reference_step_has_our_loss_terms_and_gradient_from_the_same_weights():
  """Our step started from the PyTorch step's weights and queue: the four loss terms, the loss
  and the gradient norm (before weight decay) agree to float32 rounding."""
  torch.set_num_threads(1)
  config = small_step_config(batch_size=4, queue_size=16)
  reference = torch_step.TorchStep(config, seed=0, depths=DEPTHS, dims=DIMS)
  views = jax.random.normal(jax.random.PRNGKey(3), (3, 4, 32, 32, 3), jnp.float32)
  batch = dict(zip(("student", "weak", "style"), views))

  torch_loss, torch_terms = reference.loss_terms(
      {view: torch.from_numpy(np.asarray(images).transpose(0, 3, 1, 2).copy())
       for view, images in batch.items()})
  torch_loss.backward()
  # transformers' pooler norm (unused by the features) gets no gradient.
  torch_grad_norm = torch.sqrt(sum(torch.sum(p.grad**2) for p in reference.student.parameters()
                                   if p.grad is not None))

  backbone = convnext.ConvNeXt(depths=DEPTHS, dims=DIMS)
  head = step.build_head(config)
  optimizer, schedule = optim.create(config, steps_per_epoch=10)
  params = jax.tree.map(jnp.asarray, reference.params_for_jax())
  state = state_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=params, teachers={"weak": params},
      opt_state=optimizer.init(params), queue=jnp.asarray(reference.queue_for_jax()),
      queue_ptr=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(0))
  train_step = jax.jit(step.make_train_step(config, backbone, head, optimizer, schedule))
  _, metrics = train_step(state, batch)

  for term, value in torch_terms.items():
    assert float(metrics[term]) == pytest.approx(float(value), rel=1e-4, abs=1e-6), term
  assert float(metrics["loss"]) == pytest.approx(float(torch_loss), rel=1e-4)
  assert float(metrics["grad_norm"]) == pytest.approx(float(torch_grad_norm), rel=1e-3)


def test_interleaved_timing_alternates_the_runs_and_takes_medians_after_warmup():
  calls = []
  seconds = {"ours": iter([9.0, 1.0, 3.0, 2.0]), "torch": iter([9.0, 4.0, 6.0, 5.0])}

  def run(name):
    def timed():
      calls.append(name)
      return next(seconds[name])
    return timed

  medians = timing.interleaved_medians({"ours": run("ours"), "torch": run("torch")}, steps=3, warmup=1)
  assert calls == ["ours", "torch"] * 4
  assert medians == {"ours": 2.0, "torch": 5.0}


def test_bench_step_refuses_torch_in_bfloat16():
  with pytest.raises(SystemExit, match="--torch compares float32 steps"):
    bench_step.main(["step", "--config=configs/tiny.py", "--config.image_size=32",
                     "--config.model.dtype=bfloat16", "--steps=1", "--warmup=0", "--torch"])
