"""bench profile: XLA thunks are attributed to the model's kinds of op and to forward or backward."""
import jax
import jax.numpy as jnp

from artstyle_jax.bench import profile
from artstyle_jax.models import convnext


def test_every_kind_of_layer_of_a_block_is_found_in_the_forward_and_the_backward():
  module = convnext.ConvNeXt(depths=(1, 1), dims=(8, 16))  # Compiles fastest.
  images = jnp.ones((2, 32, 32, 3))
  params = jax.jit(module.init)(jax.random.key(0), images)
  grad = jax.jit(jax.grad(lambda p, x: jnp.sum(module.apply(p, x)[-1])))
  kinds = profile.hlo_instruction_kinds(grad.lower(params, images).compile().as_text())
  found = {(kind, backward) for kinds_of_one, backward in kinds.values() for kind in kinds_of_one.split("+")}
  for kind in (profile.DEPTHWISE, profile.NORM, profile.DENSE, profile.PATCHIFY):
    assert (kind, False) in found and (kind, True) in found, kind


def test_torch_convolutions_are_told_apart_by_the_shape_of_their_weight():
  assert profile._torch_kind("aten::mkldnn_convolution", [[8, 96, 56, 56], [96, 1, 7, 7], [96]]) == profile.DEPTHWISE
  assert profile._torch_kind("aten::convolution_backward", [[8, 96, 56, 56], [8, 3, 224, 224], [96, 3, 4, 4]]) \
      == profile.PATCHIFY
  assert profile._torch_kind("aten::native_layer_norm_backward", []) == profile.NORM
  assert profile._torch_kind("aten::addmm", []) == profile.DENSE
