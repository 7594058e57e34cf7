"""The compiled CPU kernel of the depthwise convolution's kernel gradient: the same function as
XLA's form, built once per machine, and replaced by XLA's form where it cannot be built."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from artstyle_jax.models import cpu_kernels
from artstyle_jax.models.depthwise import _shift_kernel_grad

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _relative_error(a, b):
  return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


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
  assert _relative_error(compiled, xla) < 1e-5


def test_bfloat16_inputs_are_summed_in_float32():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16)).astype(jnp.bfloat16)
  grad_out = jax.random.normal(jax.random.key(1), (2, 8, 8, 16)).astype(jnp.bfloat16)
  compiled = cpu_kernels.depthwise_kernel_grad(x, grad_out, 7)
  xla = _shift_kernel_grad(x.astype(jnp.float32), grad_out.astype(jnp.float32), 7)
  assert compiled.dtype == jnp.float32 and _relative_error(compiled, xla) < 1e-5


# The gradient of a depthwise convolution in a fresh process, with the environment given.
_GRADIENT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from artstyle_jax.models import cpu_kernels
    from artstyle_jax.models.depthwise import depthwise_conv
    x = jax.random.normal(jax.random.key(0), (2, 9, 12, 5))
    kernel = jax.random.normal(jax.random.key(1), (7, 7, 1, 5))
    def grad(impl):
      return jax.jit(jax.grad(lambda k: jnp.sum(jnp.tanh(depthwise_conv(x, k, impl)))))(kernel)
    shift, conv = grad("shift"), grad("conv")
    print(cpu_kernels.available(), float(jnp.max(jnp.abs(shift - conv)) / jnp.max(jnp.abs(conv))))
""")


def gradient_in_a_fresh_process(cache, **env):
  result = subprocess.run([sys.executable, "-c", _GRADIENT], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ARTSTYLE_JAX_CACHE_DIR": str(cache), **env})
  assert result.returncode == 0, result.stderr
  available, error = result.stdout.split()
  return available == "True", float(error), result.stderr


def test_the_kernel_is_built_once_per_machine_and_reused(tmp_path):
  """The first process compiles the library into the cache; the next loads it as it is."""
  available, error, _ = gradient_in_a_fresh_process(tmp_path)
  assert available and error < 1e-5
  libraries = [p for p in os.listdir(tmp_path) if p.endswith(".so")]
  assert len(libraries) == 1 and libraries[0].startswith("depthwise_kernel_grad-")
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
