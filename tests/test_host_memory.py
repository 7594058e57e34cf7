"""The CPU backend's buffers and glibc: with `host_memory.keep_freed_memory`, a program called
again reuses the memory of its last call instead of faulting in fresh pages."""
import sys
import textwrap

import pytest

from artstyle_jax import host_memory
from helpers import run_python

# A ConvNeXt block's forward and backward (16 x 32 x 32 x 40 activations: about 60 MB of
# temporaries per call); prints the median of the page faults of 9 calls after two warm-up calls.
# (The median: on a loaded machine one call may still find the last call's buffers in use and
# grow the heap once more.)
_FAULTS_PER_CALL = textwrap.dedent("""
    import resource, sys
    from artstyle_jax import host_memory
    changed = host_memory.keep_freed_memory() if sys.argv[1] == "keep" else False
    import jax, jax.numpy as jnp
    from artstyle_jax.models import convnext
    block = convnext.Block(40)
    x = jax.random.normal(jax.random.key(0), (16, 32, 32, 40))
    params = block.init(jax.random.key(1), x)
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(block.apply(p, x, train=True) ** 2), argnums=(0, 1)))
    for _ in range(2):
      jax.block_until_ready(grad(params, x))
    faults = []
    for _ in range(9):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      jax.block_until_ready(grad(params, x))
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(changed, sorted(faults)[4])
""")


def faults_per_call(mode: str, **env) -> tuple[bool, float]:
  result = run_python("-c", _FAULTS_PER_CALL, mode, timeout=300, env={"JAX_PLATFORMS": "cpu", **env})
  assert result.returncode == 0, result.stderr
  changed, faults = result.stdout.split()
  return changed == "True", float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator is what this is about")
def test_repeated_calls_of_a_cpu_program_fault_in_no_new_pages():
  """Left as it is, glibc unmaps the step's temporaries after each call (thousands of fresh
  pages per call, 4 KiB each); with keep_freed_memory the next call finds them mapped."""
  changed, kept = faults_per_call("keep")
  _, default = faults_per_call("default")
  assert changed
  assert default > 5000, f"glibc's default gave only {default} faults per call: nothing to fix here?"
  assert kept < 300, f"{kept} page faults per call (median) with keep_freed_memory (default: {default})"


def test_a_users_own_malloc_tunables_are_left_alone(monkeypatch):
  """GLIBC_TUNABLES naming a glibc.malloc tunable is the user's choice: nothing changes."""
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")
  assert host_memory.keep_freed_memory() is False


def test_an_accelerator_platform_leaves_the_host_allocator_alone(monkeypatch):
  """JAX_PLATFORMS naming an accelerator first: buffers live in device memory, nothing changes."""
  monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
  assert host_memory.keep_freed_memory() is False
