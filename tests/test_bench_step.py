"""bench step --torch: the PyTorch reference step computes our step, and the bench times both."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from artstyle_jax.bench import step as bench_step
from artstyle_jax.bench import timing
from artstyle_jax.bench import torch_step
from artstyle_jax.method import optim
from artstyle_jax.method import state as state_lib
from artstyle_jax.method import step
from artstyle_jax.models import convnext
from artstyle_jax.models import convnext_weights
from helpers import gradient_recorder
from helpers import relative_error
from helpers import small_step_config

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


class Reference:
  """The PyTorch step's networks (seed 0), a batch, and torch's loss, terms and gradient on it."""

  def __init__(self):
    torch.set_num_threads(1)
    self.config = small_step_config(batch_size=4, queue_size=16)
    self.step = torch_step.TorchStep(self.config, seed=0, depths=DEPTHS, dims=DIMS)
    views = jax.random.normal(jax.random.PRNGKey(3), (3, 4, 32, 32, 3), jnp.float32)
    self.batch = dict(zip(("student", "weak", "style"), views))
    loss, terms = self.step.loss_terms(
        {view: torch.from_numpy(np.asarray(images).transpose(0, 3, 1, 2).copy()) for view, images in self.batch.items()})
    loss.backward()
    self.loss, self.terms = loss.item(), {term: value.item() for term, value in terms.items()}
    self.grads = torch_gradient_tree(self.step)

  def our_step(self):
    """Our train step from the torch weights and queue on the same batch: (the gradient it handed
    its optimiser, before weight decay (helpers.gradient_recorder), its metrics)."""
    backbone = convnext.ConvNeXt(depths=DEPTHS, dims=DIMS)
    head = step.build_head(self.config)
    _, schedule = optim.create(self.config, steps_per_epoch=10)
    recorder = gradient_recorder()
    params = jax.tree.map(jnp.asarray, self.step.params_for_jax())
    state = state_lib.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, teachers={"weak": params},
        opt_state=recorder.init(params), queue=jnp.asarray(self.step.queue_for_jax()),
        queue_ptr=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(0))
    new_state, metrics = jax.jit(step.make_train_step(self.config, backbone, head, recorder, schedule))(state, self.batch)
    return jax.tree.map(np.asarray, new_state.opt_state), jax.tree.map(float, metrics)

  def gradient_mismatches(self, grads):
    """[(leaf, relative error)] of each leaf of `grads` further than LEAF_RTOL from torch's."""
    assert jax.tree.structure(grads) == jax.tree.structure(self.grads)
    errors = [(jax.tree_util.keystr(path), relative_error(ours, theirs))
              for (path, ours), theirs in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(self.grads))]
    return [(name, error) for name, error in errors if not error <= LEAF_RTOL]


@pytest.fixture(scope="module")
def reference():
  return Reference()


@pytest.fixture(scope="module")
def ours(reference):
  return reference.our_step()


def test_torch_reference_step_has_our_loss_terms_and_every_gradient_leaf_from_the_same_weights(reference, ours):
  """Our step started from the PyTorch step's weights and queue computes the same four loss
  terms, the same loss, and the same gradient, compared leaf by leaf (every tensor of the student
  backbone and head, each relative to its own size, every one non-zero in torch), and the same
  gradient norm. The gradient is the one the step hands its optimiser, before weight decay."""
  grads, metrics = ours
  assert set(reference.terms) == {"rel_weak", "rel_style", "gram_weak", "gram_style"}
  for term, value in reference.terms.items():
    assert metrics[term] == pytest.approx(value, rel=TERM_RTOL), term
  assert metrics["loss"] == pytest.approx(reference.loss, rel=TERM_RTOL)
  assert len(jax.tree.leaves(grads)) == 30 and all(np.any(g != 0) for g in jax.tree.leaves(reference.grads))
  assert reference.gradient_mismatches(grads) == []
  torch_norm = np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in jax.tree.leaves(reference.grads)))
  assert metrics["grad_norm"] == pytest.approx(torch_norm, rel=NORM_RTOL)


def test_a_gradient_leaf_of_wrong_sign_or_scale_anywhere_fails_the_comparison(reference, ours, monkeypatch):
  """The comparison above catches one wrong leaf anywhere in the student: each of the 30 leaves of
  our gradient in turn negated, or doubled, is named as the one mismatch (relative errors 2 and 1
  against LEAF_RTOL). And end to end: a step whose jax.value_and_grad negates one leaf deep in
  the backbone (the first block's layer scale, gradients of 1e-5) fails it on that leaf alone."""
  grads, _ = ours
  paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(grads)]
  leaves, treedef = jax.tree.flatten(grads)
  for index, name in enumerate(paths):
    for factor, error in ((-1.0, 2.0), (2.0, 1.0)):
      wrong = list(leaves)
      wrong[index] = factor * wrong[index]
      (mismatch,) = reference.gradient_mismatches(jax.tree.unflatten(treedef, wrong))
      assert mismatch[0] == name and mismatch[1] == pytest.approx(error, rel=1e-3), (name, factor, mismatch)

  planted = paths.index("['backbone']['stages_0']['blocks_0']['gamma']")
  value_and_grad = jax.value_and_grad

  def with_one_leaf_negated(fun, *args, **kwargs):
    def call(*a, **k):
      value, tree = value_and_grad(fun, *args, **kwargs)(*a, **k)
      flat, structure = jax.tree.flatten(tree)
      flat[planted] = -flat[planted]
      return value, jax.tree.unflatten(structure, flat)
    return call

  monkeypatch.setattr(jax, "value_and_grad", with_one_leaf_negated)
  wrong_grads, _ = reference.our_step()
  assert [name for name, _ in reference.gradient_mismatches(wrong_grads)] == [paths[planted]]


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
