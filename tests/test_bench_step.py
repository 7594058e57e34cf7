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
from artstyle_jax.models import convnext_weights
from helpers import gradient_recorder, relative_error, small_step_config

# Two stages of one block (4x4 last maps): the step is the same for any depth, and compiles fast.
DEPTHS, DIMS = (1, 1), (8, 16)


# Measured on this test's weights and batch (float32 on both sides, XLA:CPU against eager torch):
# the loss terms differ by at most 3.9e-6 relative (gram_style; the loss itself by 0), the
# gradient leaves by at most 7.3e-6 (relative_error of the leaf: max abs difference over max abs
# value; stages_1.blocks_0.gamma), the gradient norms by 4.5e-7. Bounds: about 4x to 5x those.
TERM_RTOL = 2e-5
LEAF_RTOL = 3e-5
NORM_RTOL = 2e-6


def torch_gradient_tree(reference):
  """The torch student's .grad tensors as our parameter tree, converted by the same layout rules
  as its weights (convnext_weights.from_hf: transposes and renames, linear in the tensor)."""
  backbone = {name: p.grad.numpy() for name, p in reference.student.backbone.named_parameters() if p.grad is not None}
  _, backbone = convnext_weights.from_hf(backbone)
  head = {name: {"kernel": layer.weight.grad.numpy().T, "bias": layer.bias.grad.numpy()}
          for name, layer in (("linear", reference.student.linear), ("out", reference.student.out))}
  return {"backbone": backbone, "head": head}


def test_torch_reference_step_has_our_loss_terms_and_every_gradient_leaf_from_the_same_weights():
  """Our step started from the PyTorch step's weights and queue computes the same four loss
  terms, the same loss, and the same gradient, compared leaf by leaf (every tensor of the student
  backbone and head, each relative to its own size): a leaf of wrong sign or scale in our step's
  gradient fails here (relative error 2 or 1 against bounds of 3e-5; see LEAF_RTOL). The gradient
  is the one the step hands its optimiser (helpers.gradient_recorder), before weight decay."""
  torch.set_num_threads(1)
  config = small_step_config(batch_size=4, queue_size=16)
  reference = torch_step.TorchStep(config, seed=0, depths=DEPTHS, dims=DIMS)
  views = jax.random.normal(jax.random.PRNGKey(3), (3, 4, 32, 32, 3), jnp.float32)
  batch = dict(zip(("student", "weak", "style"), views))

  torch_loss, torch_terms = reference.loss_terms(
      {view: torch.from_numpy(np.asarray(images).transpose(0, 3, 1, 2).copy())
       for view, images in batch.items()})
  torch_loss.backward()
  torch_grads = torch_gradient_tree(reference)

  backbone = convnext.ConvNeXt(depths=DEPTHS, dims=DIMS, depthwise="conv")
  head = step.build_head(config)
  _, schedule = optim.create(config, steps_per_epoch=10)
  recorder = gradient_recorder()
  params = jax.tree.map(jnp.asarray, reference.params_for_jax())
  state = state_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=params, teachers={"weak": params},
      opt_state=recorder.init(params), queue=jnp.asarray(reference.queue_for_jax()),
      queue_ptr=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(0))
  train_step = jax.jit(step.make_train_step(config, backbone, head, recorder, schedule))
  new_state, metrics = train_step(state, batch)

  assert set(torch_terms) == {"rel_weak", "rel_style", "gram_weak", "gram_style"}
  for term, value in torch_terms.items():
    assert float(metrics[term]) == pytest.approx(value.item(), rel=TERM_RTOL), term
  assert float(metrics["loss"]) == pytest.approx(torch_loss.item(), rel=TERM_RTOL)

  grads = new_state.opt_state
  assert jax.tree.structure(grads) == jax.tree.structure(torch_grads) == jax.tree.structure(params)
  for (path, ours), theirs in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(torch_grads)):
    name = jax.tree_util.keystr(path)
    assert np.any(theirs != 0), f"{name}: no gradient in torch, so its sign is not tested"
    assert relative_error(ours, theirs) <= LEAF_RTOL, (name, relative_error(ours, theirs))
  torch_norm = np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in jax.tree.leaves(torch_grads)))
  assert float(metrics["grad_norm"]) == pytest.approx(torch_norm, rel=NORM_RTOL)


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
