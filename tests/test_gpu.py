"""On a GPU: every form the GPU can run computes the plain network, and the train step there equals
the CPU's step within the GPU's matmul precision. Skipped without a GPU; launch/gpu_check.sh runs
them with JAX_PLATFORMS=cuda,cpu (the GPU the default, the host's devices beside it)."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from artstyle_jax.method import config_lib
from artstyle_jax.method import optim
from artstyle_jax.method import sharding
from artstyle_jax.method import step
from artstyle_jax.models import convnext
from artstyle_jax.models import forms

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu",
                                reason="needs a GPU: launch/gpu_check.sh runs this with JAX_PLATFORMS=cuda,cpu")

TINY = str(pathlib.Path(__file__).parents[1] / "configs" / "tiny.py")
# Every form that runs off the CPU (the compiled kernels are XLA:CPU custom calls).
GPU_FORMS = {"shift": forms.Forms(depthwise="shift"), "manual": forms.Forms(mlp_grad="manual"),
             "matmul patchify": forms.Forms(patchify="matmul"), "all": forms.Forms("shift", "manual", "matmul")}


def _relative_error(actual, expected) -> float:
  expected = np.asarray(expected, np.float32)
  return float(np.max(np.abs(np.asarray(actual, np.float32) - expected)) / np.max(np.abs(expected)))


@pytest.mark.parametrize("gpu_forms", GPU_FORMS.values(), ids=GPU_FORMS)
def test_every_form_the_gpu_runs_equals_the_plain_network(gpu_forms):
  """Stage outputs and every gradient within 1e-5, in float32 at full matmul precision (TF32,
  the GPU's default for float32, is the next test's tolerance)."""
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  plain = convnext.ConvNeXt(depths=(1, 2), dims=(16, 24))
  other = convnext.ConvNeXt(depths=(1, 2), dims=(16, 24), forms=gpu_forms)
  params = plain.init(jax.random.key(1), x)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  params = jax.tree.unflatten(treedef, [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])

  def loss(model):
    return lambda p: jnp.sum(jnp.tanh(model.apply(p, x, train=True)[-1]))

  with jax.default_matmul_precision("highest"):
    for got, want in zip(jax.jit(other.apply)(params, x), jax.jit(plain.apply)(params, x)):
      assert _relative_error(got, want) <= 1e-5
    grads, expected = jax.jit(jax.grad(loss(other)))(params), jax.jit(jax.grad(loss(plain)))(params)
  for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(expected)):
    assert _relative_error(got, want) <= 1e-5, jax.tree_util.keystr(path)


def _two_steps(config, devices):
  """Metrics of two train steps and the student's update, on `devices` in their platform's forms."""
  mesh = sharding.create_mesh(devices=devices)
  backbone, head = step.build_backbone(config, mesh), step.build_head(config)
  optimizer, schedule = optim.create(config, steps_per_epoch=10)
  state, shardings = step.create_state(jax.random.PRNGKey(0), config, backbone, head, optimizer, mesh)
  before = jax.device_get(state.params)
  train_step = step.compile_train_step(step.make_train_step(config, backbone, head, optimizer, schedule, mesh=mesh),
                                       shardings, mesh)
  metrics = []
  for seed in (1, 2):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    views = {v: np.asarray(jax.random.normal(k, (config.batch_size, config.image_size, config.image_size, 3)))
             for v, k in zip(("student", "weak", "style"), keys)}
    state, step_metrics = train_step(state, sharding.shard_batch(views, mesh))
    metrics.append(jax.device_get(step_metrics))
  update = jax.tree.map(lambda new, old: np.asarray(new) - np.asarray(old), jax.device_get(state.params), before)
  return backbone.forms, metrics, np.concatenate([u.ravel() for u in jax.tree.leaves(update)])


# Relative tolerance of the metrics and least cosine of the parameter updates, GPU against CPU:
# float32 matmuls and convolutions run in TF32 on the GPU (10-bit mantissa), bfloat16 in bfloat16.
TOLERANCES = {"float32": (2e-2, 0.99), "bfloat16": (5e-2, 0.95)}


@pytest.mark.parametrize("dtype", TOLERANCES)
def test_the_train_step_on_the_gpu_equals_the_cpus(dtype):
  # Without weight decay the update is the gradient's alone, which the cosine then compares.
  config = config_lib.load(TINY, ["image_size=32", "batch_size=8", "queue_size=32", "optim.weight_decay=0",
                                  f"model.dtype={dtype}"])
  gpu_forms, gpu_metrics, gpu_update = _two_steps(config, jax.devices()[:1])
  cpu_forms, cpu_metrics, cpu_update = _two_steps(config, jax.devices("cpu")[:1])
  assert gpu_forms == forms.PLAIN and cpu_forms.depthwise == "shift"
  metric_tolerance, least_cosine = TOLERANCES[dtype]
  for gpu, cpu in zip(gpu_metrics, cpu_metrics):
    for name in ("loss", "rel_weak", "gram_weak", "grad_norm"):
      assert float(gpu[name]) == pytest.approx(float(cpu[name]), rel=metric_tolerance), name
  cosine = np.dot(gpu_update, cpu_update) / (np.linalg.norm(gpu_update) * np.linalg.norm(cpu_update))
  assert cosine >= least_cosine
