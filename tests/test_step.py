"""The train step does artstyle_jax/METHOD.md steps 1-7 in order.

On a two-stage ConvNeXt with one block per stage (32 px views give 4x4 last maps), batch 4: the
step is the same for any backbone depth, and a small one compiles quickly.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from artstyle_jax.method import config_lib
from artstyle_jax.method import health
from artstyle_jax.method import losses
from artstyle_jax.method import optim
from artstyle_jax.method import sharding
from artstyle_jax.method import state as state_lib
from artstyle_jax.method import step
from artstyle_jax.models import convnext
from artstyle_jax.models import heads
from helpers import PLAIN_COSINE
from helpers import relative_error
from helpers import small_step_config

BATCH = 4
SINGLE_TEACHER_HEALTH = ("health/pooled_rank", "health/proj_rank", "health/proj_std", "health/cos_weak",
                         "health/entropy_weak")


def tiny_config(*overrides, base="tiny"):
  return small_step_config(*PLAIN_COSINE, *overrides, batch_size=BATCH, queue_size=16, base=base)


def tiny_backbone(config):
  # The plain forms (grouped convolution) compile fastest on CPU, and at 8-16 channels run fast too.
  return convnext.ConvNeXt(depths=(1, 1), dims=(8, 16), dtype=config_lib.compute_dtype(config),
                           remat=config.model.remat)


def random_batch(seed, views=("student", "weak", "style"), size=32):
  keys = jax.random.split(jax.random.PRNGKey(seed), len(views))
  return {v: jax.random.normal(k, (BATCH, size, size, 3), jnp.float32) for v, k in zip(views, keys)}


@functools.cache
def initial_state(two_teachers: bool):
  """A fresh state on the host; created once per teacher layout and shared by the tests."""
  config = tiny_config(f"share_teachers={not two_teachers}")
  backbone, head = tiny_backbone(config), step.build_head(config)
  optimizer, _ = optim.create(config, steps_per_epoch=10)
  mesh = sharding.create_mesh(devices=jax.devices()[:1])
  state, _ = step.create_state(jax.random.PRNGKey(0), config, backbone, head, optimizer, mesh)
  return jax.tree.map(np.asarray, state)


class Setup:
  """A config's modules, the shared initial state, and the step compiled on one device."""

  def __init__(self, config, preprocess=None):
    self.config = config
    self.backbone, self.head = tiny_backbone(config), step.build_head(config)
    optimizer, schedule = optim.create(config, steps_per_epoch=10)
    mesh = sharding.create_mesh(devices=jax.devices()[:1])
    self.initial = initial_state(len(state_lib.teacher_names(config)) == 2)
    self.shardings = sharding.state_sharding(self.initial, mesh)
    train_step = step.make_train_step(config, self.backbone, self.head, optimizer, schedule, preprocess)
    self.train_step = step.compile_train_step(train_step, self.shardings, mesh)

  def run(self, batches):
    """Steps from the initial state (a fresh device copy: the step donates its input)."""
    state, history = jax.device_put(self.initial, self.shardings), []
    for batch in batches:
      state, metrics = self.train_step(state, batch)
      history.append(jax.tree.map(np.asarray, metrics))
    return jax.tree.map(np.asarray, state), history


@functools.partial(jax.jit, static_argnums=(0, 1))
def reference_step(backbone, head, params, teacher, queue, batch):
  """artstyle_jax/METHOD.md steps 1-5 written out for two teachers sharing one start copy `teacher`.

  Returns the paper's loss terms, the gradient of its loss, and the embeddings z_s, z_w, z_y.
  """
  teacher = state_lib.ema_update(teacher, params, 0.99)
  f_w, z_w = step.forward(backbone, head, teacher, batch["weak"])
  f_y, z_y = step.forward(backbone, head, teacher, batch["style"])

  def loss_fn(params):
    f_s, z_s = step.forward(backbone, head, params, batch["student"], train=True)
    terms = {
        "rel_weak": losses.relation_alignment_loss(z_s, z_w, queue),
        "rel_style": losses.relation_alignment_loss(z_s, z_y, queue),
        "gram_weak": losses.gram_alignment_loss(f_s, f_w),
        "gram_style": losses.gram_alignment_loss(f_s, f_y),
    }
    return 0.5 * sum(terms.values()), (terms, z_s)

  (loss, (terms, z_s)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return {"terms": {"loss": loss, **terms}, "grads": grads, "z_s": z_s, "z_w": z_w, "z_y": z_y}


@functools.cache
def paper_setup():
  return Setup(tiny_config())


@functools.cache
def paper_one_step():
  """(setup, state after one step on random_batch(1), its metrics, reference_step outputs)."""
  setup = paper_setup()
  batch = random_batch(1)
  state, (metrics,) = setup.run([batch])
  init = setup.initial
  reference = reference_step(setup.backbone, setup.head, init.params, init.teachers["weak"], init.queue, batch)
  return setup, state, metrics, jax.tree.map(np.asarray, reference)


def assert_trees_close(a, b, rtol=1e-6, atol=1e-7):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def test_projection_head_outputs_unit_vectors_with_torch_default_init():
  head = heads.ProjectionHead(hidden_dim=64, out_dim=16)
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 32))
  params = head.init(jax.random.PRNGKey(1), x)["params"]
  assert set(params) == {"linear", "out"}
  assert float(jnp.max(jnp.abs(params["linear"]["kernel"]))) <= 1 / np.sqrt(32)
  assert float(jnp.max(jnp.abs(params["out"]["bias"]))) <= 1 / np.sqrt(64)
  np.testing.assert_allclose(jnp.linalg.norm(head.apply({"params": params}, x), axis=-1), 1.0, rtol=1e-6)


def test_initial_queue_has_unit_rows_and_teachers_are_copies_of_the_student():
  setup = paper_setup()
  np.testing.assert_allclose(np.linalg.norm(setup.initial.queue, axis=-1), 1.0, rtol=1e-6)
  assert setup.initial.queue.shape == (16, 16) and int(setup.initial.queue_ptr) == 0
  assert list(setup.initial.teachers) == ["weak"]
  jax.tree.map(np.testing.assert_array_equal, setup.initial.teachers["weak"], setup.initial.params)


def test_enqueue_wraps_around_the_ring():
  queue, ptr = jnp.zeros((6, 2)), jnp.zeros((), jnp.int32)
  for i in range(4):
    queue, ptr = state_lib.enqueue(queue, ptr, jnp.full((2, 2), i + 1.0))
  np.testing.assert_array_equal(queue[:, 0], [4, 4, 2, 2, 3, 3])
  assert int(ptr) == 2


def test_enqueue_refuses_a_batch_that_does_not_divide_the_queue():
  with pytest.raises(ValueError, match="not a multiple"):
    state_lib.enqueue(jnp.zeros((6, 2)), jnp.zeros((), jnp.int32), jnp.ones((4, 2)))


def test_ema_update_moves_teacher_towards_student():
  out = state_lib.ema_update({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, 0.0])}, 0.75)
  np.testing.assert_allclose(out["w"], [1.5, 1.5])


def test_teachers_change_only_by_ema_of_the_start_of_step_student():
  setup, state, _, _ = paper_one_step()
  expected = state_lib.ema_update(setup.initial.teachers["weak"], setup.initial.params, 0.99)
  assert_trees_close(state.teachers["weak"], expected)


def test_loss_terms_use_ema_teachers_and_the_start_of_step_queue():
  _, _, metrics, reference = paper_one_step()
  for name, value in reference["terms"].items():
    np.testing.assert_allclose(metrics[name], value, rtol=1e-5, err_msg=name)


def test_health_signals_are_measured_on_the_steps_own_embeddings_and_the_start_of_step_queue():
  """The step's feature-health metrics are `evaluators.health` on the student's and teachers'
  embeddings of the batch and the queue the loss used (teacher temperature 0.04); the pooled
  rank of B rows is at most B - 1."""
  setup, _, metrics, reference = paper_one_step()
  z_s, queue = reference["z_s"], setup.initial.queue
  # The step takes a batch's ranks through its Gram matrix (test_health: within 1e-3 of the SVD's).
  expected = {"health/proj_rank": health.effective_rank(z_s, via_gram=True),
              "health/proj_std": health.normalised_std(z_s)}
  for view, z_t in (("weak", reference["z_w"]), ("style", reference["z_y"])):
    expected[f"health/cos_{view}"] = health.mean_cosine(z_s, z_t)
    expected[f"health/entropy_{view}"] = health.softmax_entropy(health.queue_logits(z_t, queue, 0.04))
  # 1e-3: the reference's embeddings agree to about 1e-6, and a rank of 4 rows (3 values, one
  # small) moves by about 1e-4 with them.
  for name, value in expected.items():
    np.testing.assert_allclose(metrics[name], value, rtol=1e-3, err_msg=name)
  assert 1.0 <= metrics["health/pooled_rank"] <= BATCH - 1 + 1e-4


def test_student_takes_one_sgd_step_on_the_loss_gradient():
  setup, state, metrics, reference = paper_one_step()
  grads = reference["grads"]
  lr = 0.05  # cosine schedule without warm-up: the base rate at step 0
  expected = jax.tree.map(lambda p, g: p - lr * (g + 5e-4 * p), setup.initial.params, grads)
  assert_trees_close(state.params, expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(grads), rtol=1e-5)
  np.testing.assert_allclose(metrics["lr"], lr, rtol=1e-6)
  assert int(state.step) == 1


def test_queue_receives_weak_then_style_keys_of_the_batch():
  setup, state, _, reference = paper_one_step()
  np.testing.assert_allclose(state.queue[:BATCH], reference["z_w"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state.queue[BATCH:2 * BATCH], reference["z_y"], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(state.queue[2 * BATCH:], setup.initial.queue[2 * BATCH:])
  assert int(state.queue_ptr) == 2 * BATCH


def test_one_and_two_teacher_copies_give_identical_parameters_after_three_steps():
  """With equal momenta the shared copy is exact: two copies stay bit-identical to it."""
  batches = [random_batch(seed) for seed in (1, 2, 3)]
  shared, shared_metrics = paper_setup().run(batches)
  two = Setup(tiny_config("share_teachers=False"))
  assert set(two.initial.teachers) == {"weak", "style"}
  separate, separate_metrics = two.run(batches)
  jax.tree.map(np.testing.assert_array_equal, separate.teachers["weak"], separate.teachers["style"])
  jax.tree.map(np.testing.assert_array_equal, separate.teachers["weak"], shared.teachers["weak"])
  jax.tree.map(np.testing.assert_array_equal, separate.params, shared.params)
  jax.tree.map(np.testing.assert_array_equal, separate_metrics, shared_metrics)


def test_single_teacher_needs_no_style_view_and_enqueues_weak_keys_only():
  setup = Setup(tiny_config(base="single_teacher"))
  batch = random_batch(1, views=("student", "weak"))
  state, (metrics,) = setup.run([batch])
  assert set(metrics) == {"loss", "rel_weak", "gram_weak", "lr", "grad_norm", *SINGLE_TEACHER_HEALTH}
  np.testing.assert_allclose(metrics["loss"], metrics["rel_weak"], rtol=1e-6)
  assert int(state.queue_ptr) == BATCH


@functools.cache
def info_nce_without_gram_one_step():
  """Metrics of one step of the InfoNCE ablation with the Gram weights also 0.

  Same initial state and batch as paper_one_step, so the same embeddings and feature maps.
  """
  setup = Setup(tiny_config("loss_weights.gram_weak=0", "loss_weights.gram_style=0", base="info_nce"))
  _, (metrics,) = setup.run([random_batch(1)])
  return metrics


def test_zero_weight_terms_are_reported_but_not_in_the_loss():
  metrics = info_nce_without_gram_one_step()
  _, _, _, reference = paper_one_step()
  for term in ("gram_weak", "gram_style"):
    np.testing.assert_allclose(metrics[term], reference["terms"][term], rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], 0.5 * (metrics["rel_weak"] + metrics["rel_style"]), rtol=1e-6)


def test_info_nce_replaces_the_relation_term():
  metrics = info_nce_without_gram_one_step()
  setup, _, _, reference = paper_one_step()
  for term, key in (("rel_weak", "z_w"), ("rel_style", "z_y")):
    expected = losses.info_nce_loss(reference["z_s"], reference[key], setup.initial.queue, temperature=0.2)
    np.testing.assert_allclose(metrics[term], expected, rtol=1e-5)


def _to_float(batch):
  return {k: v.astype(jnp.float32) / 255.0 for k, v in batch.items()}


@functools.cache
def uint8_batch():
  return {k: np.asarray(v * 40 + 128).clip(0, 255).astype(np.uint8) for k, v in random_batch(1).items()}


@functools.cache
def remat_with_preprocess_one_step():
  return Setup(tiny_config("model.remat=True"), preprocess=_to_float).run([uint8_batch()])


def test_preprocess_runs_inside_the_step_before_the_forwards():
  """A step on uint8 views with `preprocess` equals a step on the views it makes."""
  _, (metrics,) = remat_with_preprocess_one_step()
  _, (reference,) = paper_setup().run([_to_float(uint8_batch())])
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), metrics, reference)


def test_remat_changes_nothing():
  state, _ = remat_with_preprocess_one_step()
  reference, _ = paper_setup().run([_to_float(uint8_batch())])
  assert_trees_close(state.params, reference.params, rtol=1e-5, atol=1e-7)


@functools.cache
def distinct_momenta_in_bfloat16_one_step():
  """One step of the distinct-momenta ablation computing in bfloat16, on random_batch(1)."""
  setup = Setup(tiny_config("model.dtype=bfloat16", base="distinct_momenta"))
  state, (metrics,) = setup.run([random_batch(1)])
  return setup, state, metrics


def test_distinct_momenta_keep_two_teachers_each_with_its_momentum():
  setup, state, _ = distinct_momenta_in_bfloat16_one_step()
  assert set(state.teachers) == {"weak", "style"}
  for name, m in (("weak", 0.99), ("style", 0.996)):
    assert_trees_close(state.teachers[name], state_lib.ema_update(setup.initial.teachers[name], setup.initial.params, m))


# bfloat16 keeps 8 significant bits: eps = 2**-8, and rounding a value to bfloat16 changes it by at
# most eps / 2 relative. From an image to a loss term, a value of the tiny network passes through
# about 16 roundings to bfloat16 (the input; the stem convolution and LayerNorm; per block the
# depthwise convolution, LayerNorm, fc1, GELU and fc2; the downsampling LayerNorm and convolution;
# the head's two layers). To first order such errors add: 16 * eps / 2 = 8 eps on a term; doubled
# for the drift of 5 steps (each step starts from parameters, teachers and queue that earlier
# bfloat16 steps made): 16 eps. A gradient passes through the backward pass as well, whose matmuls
# and convolutions round twice as often (input and weight gradients): 16 + 32 roundings, 24 eps,
# doubled for the drift: 48 eps on a leaf of the parameter update after 5 steps.
# Measured (5 steps of random_batch(1..5)): terms within 1.94e-2 (5.0 eps, rel_style at step 1) of
# float32's, update leaves within 5.6e-2 (14.3 eps, stages_1.downsample_norm.scale); the bounds
# are 3.2x and 3.3x those.
BF16_EPS = 2.0**-8
BF16_TERM_RTOL = 16 * BF16_EPS
BF16_UPDATE_RTOL = 48 * BF16_EPS


@functools.cache
def five_steps(dtype: str):
  """(initial state, state after 5 steps on random_batch(1..5), their metrics) of the paper's step
  computing in `dtype`."""
  setup = paper_setup() if dtype == "float32" else Setup(tiny_config(f"model.dtype={dtype}"))
  state, history = setup.run([random_batch(seed) for seed in range(1, 6)])
  return setup.initial, state, history


def test_bfloat16_compute_keeps_float32_state_and_follows_float32_over_five_steps():
  """bfloat16 activations, float32 parameters, teachers, optimiser state and queue; over 5 steps
  every loss term of every step and every leaf of the parameter update (after 5 steps minus
  before) stay within bounds derived from bfloat16's epsilon of float32's (BF16_EPS above)."""
  initial, state, history = five_steps("bfloat16")
  _, reference, reference_history = five_steps("float32")
  floats = [x for x in jax.tree.leaves((state.params, state.teachers, state.opt_state, state.queue))
            if np.issubdtype(x.dtype, np.floating)]
  assert {x.dtype for x in floats} == {np.dtype(np.float32)}
  for step_index, (metrics, expected) in enumerate(zip(history, reference_history), 1):
    for term in ("loss", "rel_weak", "rel_style", "gram_weak", "gram_style"):
      np.testing.assert_allclose(metrics[term], expected[term], rtol=BF16_TERM_RTOL, err_msg=f"{term}, step {step_index}")
  update = jax.tree.map(np.subtract, state.params, initial.params)
  expected_update = jax.tree.map(np.subtract, reference.params, initial.params)
  for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(update), jax.tree.leaves(expected_update)):
    assert relative_error(got, want) <= BF16_UPDATE_RTOL, (jax.tree_util.keystr(path), relative_error(got, want))
