"""The Flax ConvNeXt module: sizes, outputs, dtypes, the depthwise and patchify forms, remat and drop path."""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from artstyle_jax.models import convnext
from artstyle_jax.models import forms
from helpers import relative_error

TINY = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))
MINI = dict(depths=(1, 2), dims=(8, 16))  # Two stages: inputs in multiples of 8 px.
MONO = dict(depths=(2,), dims=(8,))  # One stage: inputs in multiples of 4 px.


def _images(batch=2, size=64, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


def _random_params(module, images, seed=1):
  """Params of the module's shapes, every leaf (norms and layer scales included) N(0, 0.3^2).

  Drawn with numpy: compiling flax's random initialisers costs more than these tests.
  """
  shapes = jax.eval_shape(module.init, jax.random.key(0), images)["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape, np.float32)), shapes)


def _apply(module, params, images, **kwargs):
  return jax.jit(functools.partial(module.apply, **kwargs))({"params": params}, images)


def test_named_sizes_have_timm_parameter_counts():
  """create() builds timm's sizes; with a 1000-class head the parameter counts equal timm's."""
  expected = {"convnext_atto": 3_695_520, "convnext_tiny": 28_589_128, "convnext_base": 88_591_464}
  for name, count in expected.items():
    module = convnext.create(name, num_classes=1000)
    assert (tuple(module.depths), tuple(module.dims)) == convnext.SIZES[name]
    shapes = jax.eval_shape(module.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    assert sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes)) == count
  with pytest.raises(ValueError, match="unknown ConvNeXt size 'convnext_huge'"):
    convnext.create("convnext_huge")


def test_outputs_are_float32_stage_maps_and_pool_averages_them():
  """Stage s of an (B, 64, 64, 3) input is (B, 16 / 2**s, 16 / 2**s, dims[s]); pool is the mean over h, w."""
  module = convnext.ConvNeXt(**TINY)
  images = _images()
  params = _random_params(module, images)
  features = _apply(module, params, images)
  assert [f.shape for f in features] == [(2, 16, 16, 8), (2, 8, 8, 16), (2, 4, 4, 24), (2, 2, 2, 32)]
  assert all(f.dtype == jnp.float32 for f in features)
  np.testing.assert_allclose(convnext.pool(features[-1]), np.asarray(features[-1]).mean(axis=(1, 2)), rtol=1e-5)


def test_classifier_head_params_are_created_by_init_and_ignored_by_call():
  """With num_classes the head is in init's tree; __call__ gives the same features as without it."""
  images = _images(size=16)
  with_head = convnext.ConvNeXt(**MINI, num_classes=5)
  backbone = convnext.ConvNeXt(**MINI)
  head_shapes = jax.eval_shape(with_head.init, jax.random.key(0), images)["params"]["head"]
  assert head_shapes["fc"]["kernel"].shape == (16, 5) and head_shapes["norm"]["scale"].shape == (16,)
  assert "head" not in jax.eval_shape(backbone.init, jax.random.key(0), images)["params"]
  params = _random_params(with_head, images)
  pre_logits, logits = _apply(with_head, params, images, method="classify")
  assert pre_logits.shape == (2, 16) and logits.shape == (2, 5)
  for a, b in zip(_apply(with_head, params, images), _apply(backbone, params, images)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="no classifier head"):
    _apply(backbone, params, images, method="classify")


def test_bad_configuration_or_input_is_rejected():
  image = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  with pytest.raises(ValueError, match="at least 32"):
    jax.eval_shape(convnext.ConvNeXt(**TINY).init, jax.random.key(0), jnp.zeros((1, 40, 24, 3)))
  with pytest.raises(ValueError, match="depths"):
    jax.eval_shape(convnext.ConvNeXt(depths=(1, 1), dims=(8,)).init, jax.random.key(0), image)
  with pytest.raises(ValueError, match="depthwise must be"):
    jax.eval_shape(convnext.ConvNeXt(**TINY, forms=forms.Forms(depthwise="fft")).init, jax.random.key(0), image)
  with pytest.raises(TypeError, match="forms must be a forms.Forms, got 'shift'"):
    jax.eval_shape(convnext.ConvNeXt(**TINY, forms="shift").init, jax.random.key(0), image)


def test_gelu_is_the_exact_erf_gelu():
  x = jnp.linspace(-12.0, 12.0, 4001)
  np.testing.assert_allclose(convnext.gelu(x), jax.nn.gelu(x, approximate=False), rtol=1e-6, atol=1e-6)
  assert convnext.gelu(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


SHIFT_FORMS = {"shift on the C++ kernels": forms.Forms(depthwise="shift", compiled_kernels=True),
               "shift in XLA": forms.Forms(depthwise="shift")}


@pytest.mark.parametrize("shift_forms", SHIFT_FORMS.values(), ids=SHIFT_FORMS)
@pytest.mark.parametrize("shape", [(2, 9, 12, 5), (3, 16, 16, 8), (1, 3, 5, 4)])
def test_shift_and_conv_depthwise_agree_in_value_and_gradient(shape, shift_forms):
  """Same outputs and same gradients (input and kernel), also for maps smaller than the kernel."""
  x = jax.random.normal(jax.random.key(0), shape)
  kernel = jax.random.normal(jax.random.key(1), (7, 7, 1, shape[-1]))
  weights = jax.random.normal(jax.random.key(2), shape)

  @functools.partial(jax.jit, static_argnames="model_forms")
  def value_and_grads(x, kernel, model_forms):
    loss = lambda x, kernel: jnp.sum(jnp.tanh(convnext.depthwise_conv(x, kernel, model_forms)) * weights)
    return convnext.depthwise_conv(x, kernel, model_forms), jax.grad(loss, (0, 1))(x, kernel)

  out_shift, grads_shift = value_and_grads(x, kernel, shift_forms)
  out_conv, grads_conv = value_and_grads(x, kernel, forms.PLAIN)
  assert relative_error(out_shift, out_conv) < 1e-5
  for shift, conv in zip(grads_shift, grads_conv):
    assert relative_error(shift, conv) < 1e-5


@pytest.mark.parametrize("patch, channels", [(4, 3), (2, 40)])
def test_patchify_convolution_is_flaxs_strided_convolution_in_either_form(patch, channels):
  """The stem's and the downsampling layers' convolution, as a matmul of patches (the CPU's form)
  and as a convolution: nn.Conv's parameters from the same seed, its outputs within 1e-6 and its
  gradients within 1e-5."""
  x = jax.random.normal(jax.random.key(0), (2, 4 * patch, 3 * patch, channels))
  reference = nn.Conv(24, (patch, patch), strides=(patch, patch), padding="VALID",
                      kernel_init=nn.initializers.truncated_normal(0.02))
  params = reference.init(jax.random.key(1), x)
  bias = {"params": {**params["params"], "bias": jax.random.normal(jax.random.key(2), (24,))}}
  loss = lambda module: jax.grad(lambda p, x: jnp.sum(jnp.sin(module.apply(p, x))), argnums=(0, 1))
  for form in forms.PATCHIFY_FORMS:
    module = convnext.PatchifyConv(24, patch, form=form)
    jax.tree.map(np.testing.assert_array_equal, module.init(jax.random.key(1), x), params)
    assert relative_error(module.apply(bias, x), reference.apply(bias, x)) < 1e-6
    for got, want in zip(jax.tree.leaves(loss(module)(bias, x)), jax.tree.leaves(loss(reference)(bias, x))):
      assert relative_error(got, want) < 1e-5
  for form, op, other in (("matmul", "dot_general", "convolution"), ("conv", "convolution", "dot_general")):
    program = jax.jit(convnext.PatchifyConv(24, patch, form=form).apply).lower(bias, x).as_text()
    assert op in program and other not in program


def test_bfloat16_compute_keeps_float32_params_and_stays_close_to_float32():
  """dtype=bfloat16: params float32, outputs float32, every stage within 2e-2 relative of float32."""
  images = _images()
  module32 = convnext.ConvNeXt(**TINY)
  module16 = convnext.ConvNeXt(**TINY, dtype=jnp.bfloat16)
  shapes16 = jax.eval_shape(module16.init, jax.random.key(0), images)["params"]
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes16))
  params = _random_params(module32, images)
  for f32, f16 in zip(_apply(module32, params, images), _apply(module16, params, images)):
    assert f16.dtype == jnp.float32
    assert relative_error(f16, f32) < 2e-2


@pytest.mark.parametrize("policy", list(convnext.REMAT_POLICIES))
def test_remat_changes_neither_outputs_nor_gradients(policy):
  """Under each remat policy the loss and gradients are the plain network's; 'matmuls' runs as
  many matmuls as the plain backward (fc1's and fc2's outputs kept), 'nothing' runs them again."""
  images = _images(size=12)
  plain = convnext.ConvNeXt(**MONO)
  remat = convnext.ConvNeXt(**MONO, remat=True, remat_policy=policy)
  params = _random_params(plain, images)

  def loss(module):
    return lambda p: jnp.sum(module.apply({"params": p}, images, train=True)[-1] ** 2)

  value_plain, grads_plain = jax.jit(jax.value_and_grad(loss(plain)))(params)
  value_remat, grads_remat = jax.jit(jax.value_and_grad(loss(remat)))(params)
  np.testing.assert_allclose(value_remat, value_plain, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_remat), jax.tree.leaves(grads_plain)):
    assert relative_error(a, b) < 1e-5
  matmuls = {name: str(jax.make_jaxpr(jax.grad(loss(module)))(params)).count("dot_general")
             for name, module in (("plain", plain), ("remat", remat))}
  recomputed = 2 * sum(MONO["depths"]) if policy == "nothing" else 0
  assert matmuls["remat"] == matmuls["plain"] + recomputed


def test_an_unknown_remat_policy_is_refused():
  with pytest.raises(ValueError, match="remat_policy must be one of"):
    convnext.ConvNeXt(**MONO, remat=True, remat_policy="dots").init(jax.random.key(0), _images(size=12))


def test_stochastic_depth_rates_rise_linearly_over_all_blocks_as_timm():
  rates = convnext.stochastic_depth_rates((2, 1, 3), 0.5)
  np.testing.assert_allclose(np.concatenate(rates), np.linspace(0.0, 0.5, 6))
  assert [len(r) for r in rates] == [2, 1, 3]
  assert convnext.stochastic_depth_rates((1,), 0.3) == [(0.0,)]


def test_drop_path_drops_whole_samples_and_rescales_survivors():
  x = jnp.ones((512, 2, 2, 3))
  out = np.asarray(convnext.drop_path(x, 0.25, jax.random.key(0)))
  per_sample = out.reshape(512, -1)
  assert np.all(per_sample == per_sample[:, :1])  # One decision per sample.
  assert set(np.unique(per_sample)) == {0.0, np.float32(1 / 0.75)}
  assert 0.15 < np.mean(per_sample[:, 0] == 0) < 0.35


def test_drop_path_acts_only_in_training_and_needs_a_dropout_rng():
  images = _images(batch=8, size=12)
  dropping = convnext.ConvNeXt(**MONO, drop_path_rate=0.5)
  plain = convnext.ConvNeXt(**MONO)
  params = _random_params(dropping, images)

  @functools.partial(jax.jit, static_argnames="train")
  def last_stage(module_params, key, train):
    return dropping.apply({"params": module_params}, images, train=train, rngs={"dropout": key})[-1]

  evaluated = last_stage(params, jax.random.key(0), False)
  np.testing.assert_allclose(evaluated, _apply(plain, params, images, train=True)[-1], rtol=1e-5, atol=1e-6)
  with pytest.raises(Exception, match="dropout"):
    jax.eval_shape(functools.partial(dropping.apply, train=True), {"params": params}, images)
  train_a = last_stage(params, jax.random.key(1), True)
  train_b = last_stage(params, jax.random.key(2), True)
  assert not np.allclose(train_a, evaluated)
  assert not np.allclose(train_a, train_b)
