"""The blocks' hand-written pointwise gradient ('manual') is a drop-in for autodiff ('autodiff'):
the same parameters from the same seed, the same outputs, gradients within 1e-5, drop path
included. A 'manual' block of the 'shift' depthwise form on the compiled kernels runs its
convolution and LayerNorm as one compiled kernel, again a drop-in."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from artstyle_jax.models import convnext
from artstyle_jax.models import forms
from helpers import relative_error


def _perturbed(params, seed):
  """Parameters moved off their initial values (layer scale 1e-6, zero biases), so that every
  term of the gradient matters."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [leaf + 0.3 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)])


@pytest.mark.parametrize("shape", [(2, 8, 8, 40), (3, 5, 7, 24)])
def test_block_forms_share_parameters_and_outputs_and_their_gradients_agree(shape):
  """A block in each form: identical parameter trees from one seed, equal outputs, and the
  gradients of a non-linear loss with respect to every parameter and the input within 1e-5."""
  x = jax.random.normal(jax.random.key(0), shape)
  # The grouped-convolution depthwise form compiles fastest; the pointwise part is under test.
  blocks = {form: convnext.Block(shape[-1], forms=forms.Forms(mlp_grad=form)) for form in forms.MLP_GRAD_FORMS}
  params = {form: block.init(jax.random.key(1), x) for form, block in blocks.items()}
  jax.tree.map(np.testing.assert_array_equal, params["autodiff"], params["manual"])
  moved = _perturbed(params["autodiff"], 2)

  def loss(form):
    return lambda p, x: jnp.sum(jnp.sin(blocks[form].apply(p, x)) * jnp.arange(shape[-1]))

  outputs = {form: jax.jit(blocks[form].apply)(moved, x) for form in blocks}
  np.testing.assert_allclose(outputs["manual"], outputs["autodiff"], rtol=1e-6, atol=1e-6)
  grads = {form: jax.jit(jax.grad(loss(form), argnums=(0, 1)))(moved, x) for form in blocks}
  flat_manual = jax.tree_util.tree_flatten_with_path(grads["manual"])[0]
  flat_auto = jax.tree.leaves(grads["autodiff"])
  for (path, manual), auto in zip(flat_manual, flat_auto):
    assert relative_error(manual, auto) <= 1e-5, jax.tree_util.keystr(path)


MANUAL_FORMS = {"grouped convolution": forms.Forms(mlp_grad="manual"),
                "compiled CPU forms": forms.Forms("shift", "manual", "matmul", compiled_kernels=True)}


@pytest.mark.parametrize("manual_forms, remat", [(MANUAL_FORMS["grouped convolution"], False),
                                                 (MANUAL_FORMS["compiled CPU forms"], True)], ids=MANUAL_FORMS)
def test_manual_gradient_holds_under_drop_path(manual_forms, remat):
  """A ConvNeXt stage whose second block drops samples, 'manual' with the grouped convolution, and
  rematerialised in the compiled CPU forms ('shift'): the loss and every gradient leaf agree with
  the plain forms' (grouped convolution, autodiff) within 1e-5 for the same dropout rng."""
  x = jax.random.normal(jax.random.key(3), (4, 16, 16, 3))
  models = {"manual": convnext.ConvNeXt(depths=(2,), dims=(16,), drop_path_rate=0.5, remat=remat,
                                        forms=manual_forms),
            "autodiff": convnext.ConvNeXt(depths=(2,), dims=(16,), drop_path_rate=0.5)}
  params = _perturbed(models["autodiff"].init(jax.random.key(4), x), 5)

  def loss(form):
    def f(p):
      features = models[form].apply(p, x, train=True, rngs={"dropout": jax.random.key(6)})[-1]
      return jnp.sum(jnp.tanh(features))
    return f

  results = {form: jax.jit(jax.value_and_grad(loss(form)))(params) for form in models}
  assert relative_error(results["manual"][0], results["autodiff"][0]) <= 1e-6
  for manual, auto in zip(jax.tree.leaves(results["manual"][1]), jax.tree.leaves(results["autodiff"][1])):
    assert relative_error(manual, auto) <= 1e-5


def test_manual_gradient_is_refused_for_bfloat16_and_unknown_forms_are_refused():
  with pytest.raises(ValueError, match="computes in float32; the network's dtype is bfloat16"):
    convnext.create("convnext_atto", dtype=jnp.bfloat16, forms=forms.Forms(mlp_grad="manual")).init(
        jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match="mlp_grad must be 'autodiff' or 'manual', got 'fused'"):
    forms.Forms(mlp_grad="fused")


def _uses_the_fused_kernel(block, params, x) -> bool:
  return "artstyle_depthwise_norm" in jax.jit(block.apply).lower(params, x).as_text()


@pytest.mark.parametrize("shape", [(2, 8, 8, 40), (3, 5, 7, 24), (1, 3, 2, 19)])
def test_fused_depthwise_and_norm_block_is_a_drop_in_for_the_plain_block(shape):
  """The shift + manual block on the CPU (one C++ kernel for the convolution and LayerNorm) against
  the grouped convolution + autodiff block: identical parameter trees, outputs and gradients of
  every parameter and the input within 1e-5; maps smaller than the 7x7 kernel and channel counts
  that are no multiple of the kernel's vector width included."""
  x = jax.random.normal(jax.random.key(0), shape)
  fused = convnext.Block(shape[-1], forms=forms.Forms("shift", "manual", compiled_kernels=True))
  plain = convnext.Block(shape[-1])
  params = fused.init(jax.random.key(1), x)
  jax.tree.map(np.testing.assert_array_equal, params, plain.init(jax.random.key(1), x))
  moved = _perturbed(params, 2)
  assert _uses_the_fused_kernel(fused, moved, x) and not _uses_the_fused_kernel(plain, moved, x)

  def loss(block):
    return lambda p, x: jnp.sum(jnp.sin(block.apply(p, x)) * jnp.arange(shape[-1]))

  assert relative_error(jax.jit(fused.apply)(moved, x), jax.jit(plain.apply)(moved, x)) <= 1e-6
  grads = jax.jit(jax.grad(loss(fused), argnums=(0, 1)))(moved, x)
  expected = jax.jit(jax.grad(loss(plain), argnums=(0, 1)))(moved, x)
  for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(expected)):
    assert relative_error(got, want) <= 1e-5, jax.tree_util.keystr(path)


def test_network_of_compiled_cpu_forms_equals_the_plain_network():
  """The CPU's forms for float32: the stem's and the downsampling LayerNorms run as their own
  compiled kernel, the blocks as fused ones, the patchify convolutions as matmuls; the same
  parameters, stage outputs within 1e-6 and every gradient within 1e-5 of the plain network."""
  x = jax.random.normal(jax.random.key(7), (2, 32, 32, 3))
  cpu_forms = forms.resolve("cpu", jnp.float32)
  assert cpu_forms.fused_block, "this machine has a C++ compiler: the kernels must build"
  compiled = convnext.ConvNeXt(depths=(1, 2), dims=(16, 24), forms=cpu_forms)
  plain = convnext.ConvNeXt(depths=(1, 2), dims=(16, 24))
  params = compiled.init(jax.random.key(8), x)
  jax.tree.map(np.testing.assert_array_equal, params, plain.init(jax.random.key(8), x))
  moved = _perturbed(params, 9)
  program = jax.jit(compiled.apply).lower(moved, x).as_text()
  assert program.count("artstyle_layer_norm") == 2 and program.count("artstyle_depthwise_norm") == 3

  for got, want in zip(jax.jit(compiled.apply)(moved, x), jax.jit(plain.apply)(moved, x)):
    assert relative_error(got, want) <= 1e-6

  def loss(model):
    return lambda p: jnp.sum(jnp.tanh(model.apply(p, x, train=True)[-1]))

  grads = jax.jit(jax.grad(loss(compiled)))(moved)
  for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(grads)[0],
                               jax.tree.leaves(jax.jit(jax.grad(loss(plain)))(moved))):
    assert relative_error(got, want) <= 1e-5, jax.tree_util.keystr(path)
