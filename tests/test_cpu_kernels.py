"""The compiled CPU kernels of the depthwise convolution (with and without the LayerNorm after
it) and of its kernel gradient: the same functions as XLA's forms, the same bits on every call,
built once per machine, and replaced by XLA's forms where they cannot be built."""
import os
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from artstyle_jax.models import convnext
from artstyle_jax.models import forms
from artstyle_jax.models.cpu import kernels as cpu_kernels
from artstyle_jax.models.cpu.depthwise import _shift_forward
from artstyle_jax.models.cpu.depthwise import _shift_kernel_grad
from helpers import relative_error
from helpers import run_python


@pytest.mark.parametrize("shape, k", [((2, 9, 12, 5), 7), ((3, 16, 16, 8), 7), ((1, 3, 5, 4), 7),
                                      ((2, 6, 7, 19), 3), ((4, 8, 8, 40), 5), ((1, 1, 1, 3), 7)])
def test_compiled_kernel_gradient_equals_xlas_form(shape, k):
  """Channels not a multiple of 8, maps smaller than the kernel, k of 3, 5 and 7: within 1e-5."""
  assert cpu_kernels.available(), "this machine has a C++ compiler: the kernel must build"
  x = jax.random.normal(jax.random.key(0), shape)
  grad_out = jax.random.normal(jax.random.key(1), shape)
  compiled = jax.jit(cpu_kernels.depthwise_kernel_grad, static_argnums=2)(x, grad_out, k)
  xla = jax.jit(_shift_kernel_grad, static_argnums=2)(x, grad_out, k)
  assert compiled.shape == (k, k, shape[-1]) and compiled.dtype == jnp.float32
  assert relative_error(compiled, xla) < 1e-5


# Channels below, at and between the kernels' vector widths (8, 16), maps smaller than the kernel,
# widths that are no multiple of the kernel's strip of outputs, k of 3, 5 and 7.
CONV_CASES = [((2, 9, 12, 5), 7), ((3, 16, 16, 40), 7), ((1, 3, 5, 4), 7), ((2, 6, 7, 19), 3),
              ((4, 8, 8, 40), 5), ((1, 1, 1, 3), 7), ((2, 13, 11, 24), 7)]


def _conv_inputs(shape, k):
  keys = jax.random.split(jax.random.key(0), 5)
  channels = shape[-1]
  return (jax.random.normal(keys[0], shape), jax.random.normal(keys[1], (k, k, channels)),
          jax.random.normal(keys[2], (channels,)), jax.random.normal(keys[3], (channels,)),
          jax.random.normal(keys[4], (channels,)))


def _layer_norm(y, scale, shift, eps=1e-6):
  """flax's LayerNorm (two-pass variance): (output, x_hat, 1/std)."""
  centred = y - jnp.mean(y, axis=-1, keepdims=True)
  inv_std = jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)
  return centred * (inv_std * scale) + shift, centred * inv_std, inv_std[..., 0]


@pytest.mark.parametrize("shape, k", CONV_CASES)
def test_compiled_convolution_and_its_layer_norm_equal_xlas_forms(shape, k):
  """The convolution with bias, the LayerNorm of it, and the LayerNorm's residuals (x_hat, 1/std),
  each within 1e-6 of XLA's shifted sums and flax's LayerNorm."""
  x, taps, bias, scale, shift = _conv_inputs(shape, k)
  y = jax.jit(_shift_forward)(x, taps) + bias
  expected = _layer_norm(y, scale, shift)
  assert relative_error(jax.jit(cpu_kernels.depthwise_conv)(x, taps, bias), y) < 1e-6
  normed = jax.jit(cpu_kernels.depthwise_norm, static_argnums=5)(x, taps, bias, scale, shift, 1e-6)
  assert normed.shape == shape and relative_error(normed, expected[0]) < 1e-6
  residuals = jax.jit(cpu_kernels.depthwise_norm_residuals, static_argnums=5)(x, taps, bias, scale, shift, 1e-6)
  assert [r.shape for r in residuals] == [shape, shape, shape[:3]]
  for got, want in zip(residuals, expected):
    assert relative_error(got, want) < 1e-6


@pytest.mark.parametrize("shape", [(7, 40), (2, 3, 5, 19), (1, 1, 1, 1), (4, 6, 6, 96)])
def test_compiled_layer_norm_equals_flaxs(shape):
  """Any rank, channels not a multiple of the vector width, a single channel: output, x_hat and
  1/std within 1e-6 of flax's two-pass LayerNorm."""
  keys = jax.random.split(jax.random.key(3), 3)
  x = 3.0 + 2.0 * jax.random.normal(keys[0], shape)
  scale, shift = jax.random.normal(keys[1], shape[-1:]), jax.random.normal(keys[2], shape[-1:])
  flax_norm = nn.LayerNorm(epsilon=1e-6, use_fast_variance=False)
  expected = flax_norm.apply({"params": {"scale": scale, "bias": shift}}, x)
  assert relative_error(jax.jit(cpu_kernels.layer_norm, static_argnums=3)(x, scale, shift, 1e-6), expected) < 1e-6
  residuals = jax.jit(cpu_kernels.layer_norm_residuals, static_argnums=3)(x, scale, shift, 1e-6)
  assert [r.shape for r in residuals] == [shape, shape, shape[:-1]]
  for got, want in zip(residuals, _layer_norm(x, scale, shift)):
    assert float(jnp.max(jnp.abs(got - want))) <= 1e-6 * max(1.0, float(jnp.max(jnp.abs(want))))


def test_layer_norm_parameters_of_the_wrong_length_are_refused_by_every_kernel():
  """A scale or shift that is not (C,) is an error naming the shapes, never a read past its end."""
  x, taps, bias, scale, shift = _conv_inputs((2, 8, 8, 16), 7)
  short = scale[:8]
  calls = [lambda: cpu_kernels.depthwise_norm(x, taps, bias, short, shift, 1e-6),
           lambda: cpu_kernels.depthwise_norm_residuals(x, taps, bias, scale, short, 1e-6)[0],
           lambda: cpu_kernels.layer_norm(x, short, shift, 1e-6),
           lambda: cpu_kernels.layer_norm_residuals(x, scale, short, 1e-6)[0]]
  for call in calls:
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"scale and shift \(C,\)"):
      call().block_until_ready()


def test_compiled_kernels_give_the_same_bits_on_every_call():
  """Rows are split into chunks that either thread may run: the results must not depend on which."""
  x, taps, bias, scale, shift = _conv_inputs((16, 32, 32, 40), 7)
  norm = jax.jit(cpu_kernels.depthwise_norm, static_argnums=5)
  kernel_grad = jax.jit(cpu_kernels.depthwise_kernel_grad, static_argnums=2)
  first = norm(x, taps, bias, scale, shift, 1e-6), kernel_grad(x, x, 7)
  for _ in range(5):
    again = norm(x, taps, bias, scale, shift, 1e-6), kernel_grad(x, x, 7)
    jax.tree.map(np.testing.assert_array_equal, again, first)


def test_kernel_sizes_without_a_compiled_kernel_use_xlas_form():
  """A 9x9 'shift' convolution (no C++ kernel) still equals the grouped convolution, value and gradient."""
  x = jax.random.normal(jax.random.key(0), (2, 10, 11, 6))
  kernel = jax.random.normal(jax.random.key(1), (9, 9, 1, 6))
  assert 9 not in cpu_kernels.CONV_SIZES
  with pytest.raises(jax.errors.JaxRuntimeError, match="kernel size must be 3, 5 or 7"):
    cpu_kernels.depthwise_conv(x, kernel[:, :, 0], jnp.zeros(6)).block_until_ready()
  both = (forms.Forms(depthwise="shift", compiled_kernels=True), forms.PLAIN)
  shift, conv = (jax.jit(lambda k, f=f: convnext.depthwise_conv(x, k, f))(kernel) for f in both)
  assert relative_error(shift, conv) < 1e-5
  grads = [jax.grad(lambda k, f=f: jnp.sum(jnp.sin(convnext.depthwise_conv(x, k, f))))(kernel) for f in both]
  assert relative_error(*grads) < 1e-5


def test_bfloat16_inputs_are_summed_in_float32():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16)).astype(jnp.bfloat16)
  grad_out = jax.random.normal(jax.random.key(1), (2, 8, 8, 16)).astype(jnp.bfloat16)
  compiled = cpu_kernels.depthwise_kernel_grad(x, grad_out, 7)
  xla = _shift_kernel_grad(x.astype(jnp.float32), grad_out.astype(jnp.float32), 7)
  assert compiled.dtype == jnp.float32 and relative_error(compiled, xla) < 1e-5


# The gradient of a depthwise convolution in the CPU's forms in a fresh process, with the
# environment given; whether those forms use the compiled kernels.
_GRADIENT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from artstyle_jax.models import convnext, forms
    x = jax.random.normal(jax.random.key(0), (2, 9, 12, 5))
    kernel = jax.random.normal(jax.random.key(1), (7, 7, 1, 5))
    cpu_forms = forms.resolve("cpu", jnp.float32)
    def grad(model_forms):
      return jax.jit(jax.grad(lambda k: jnp.sum(jnp.tanh(convnext.depthwise_conv(x, k, model_forms)))))(kernel)
    shift, conv = grad(cpu_forms), grad(forms.PLAIN)
    print(cpu_forms.compiled_kernels, float(jnp.max(jnp.abs(shift - conv)) / jnp.max(jnp.abs(conv))))
""")


def gradient_in_a_fresh_process(cache, **env):
  result = run_python("-c", _GRADIENT, timeout=300, env={"ARTSTYLE_JAX_CACHE_DIR": str(cache), **env})
  assert result.returncode == 0, result.stderr
  available, error = result.stdout.split()
  return available == "True", float(error), result.stderr


def test_the_kernel_is_built_once_per_machine_and_reused(tmp_path):
  """The first process compiles the library into the cache; the next loads it as it is."""
  available, error, _ = gradient_in_a_fresh_process(tmp_path)
  assert available and error < 1e-5
  libraries = [p for p in os.listdir(tmp_path) if p.endswith(".so")]
  assert len(libraries) == 1 and libraries[0].startswith("cpu_kernels-")
  built = os.path.getmtime(tmp_path / libraries[0])
  assert gradient_in_a_fresh_process(tmp_path)[0]
  assert os.listdir(tmp_path) == libraries and os.path.getmtime(tmp_path / libraries[0]) == built


def test_without_a_compiler_xlas_form_is_used_after_one_warning(tmp_path):
  """No C++ compiler: one warning line naming the reason, the same gradient from XLA's form."""
  available, error, stderr = gradient_in_a_fresh_process(tmp_path, CXX="no-such-compiler")
  assert not available and error < 1e-5
  warnings = [line for line in stderr.splitlines() if "compiled CPU kernels unavailable" in line]
  assert len(warnings) == 1 and "no-such-compiler" in warnings[0]
  assert not os.listdir(tmp_path)


def test_the_kernels_can_be_switched_off(tmp_path):
  available, error, _ = gradient_in_a_fresh_process(tmp_path, ARTSTYLE_JAX_COMPILED_KERNELS="0")
  assert not available and error < 1e-5
