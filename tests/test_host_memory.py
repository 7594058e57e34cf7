"""The CPU backend's buffers and glibc: with `host_memory.keep_freed_memory`, a program called
again reuses the memory of its last call instead of asking the kernel for fresh pages."""
import json
import sys
import textwrap

import pytest

from artstyle_jax.runtime import host_memory
from helpers import run_python

# A ConvNeXt block's forward and backward (16 x 32 x 32 x 40 activations: about 52 MB of
# temporaries per call), called twice to warm up and then 9 times; prints, as JSON, what glibc's
# own counters say (mallinfo2's `arena`: the bytes of the heaps, read after every call; the
# number of arenas in malloc_info's report) and XLA's count of one call's temporaries and outputs.
_HEAP_PER_CALL = textwrap.dedent("""
    import ctypes, json, os, sys, tempfile
    from artstyle_jax.runtime import host_memory
    changed = host_memory.keep_freed_memory()
    import jax, jax.numpy as jnp
    from artstyle_jax.models import convnext

    libc = ctypes.CDLL("libc.so.6")
    class Mallinfo2(ctypes.Structure):
      _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                       "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc.mallinfo2.restype = Mallinfo2
    libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, (ctypes.c_char_p, ctypes.c_char_p)
    libc.malloc_info.argtypes, libc.fclose.argtypes = (ctypes.c_int, ctypes.c_void_p), (ctypes.c_void_p,)

    def malloc_info():
      with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "info.xml")
        stream = libc.fopen(path.encode(), b"w")
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        with open(path) as f:
          return f.read()

    block = convnext.Block(40)
    x = jax.random.normal(jax.random.key(0), (16, 32, 32, 40))
    params = block.init(jax.random.key(1), x)
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(block.apply(p, x, train=True) ** 2), argnums=(0, 1)))
    memory = grad.lower(params, x).compile().memory_analysis()
    for _ in range(2):
      jax.block_until_ready(grad(params, x))
    heap = [libc.mallinfo2().arena]
    for _ in range(9):
      jax.block_until_ready(grad(params, x))
      heap.append(libc.mallinfo2().arena)
    print(json.dumps({"changed": changed, "heap": heap, "arenas": malloc_info().count("<heap nr="),
                      "call_bytes": memory.temp_size_in_bytes + memory.output_size_in_bytes}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator is what this is about")
def test_repeated_calls_of_a_cpu_program_reuse_the_heap_of_the_last_call():
  """With keep_freed_memory every thread allocates from the one main heap (malloc_info reports a
  single arena), the heap is never given back between calls (mallinfo2's `arena` never falls) and
  calls after the warm-up are served from it: over 9 calls it grows by at most three calls'
  buffers (XLA's temporaries and outputs, 52-63 MB: the heap holds two or three calls' worth when
  a call starts before the last ones' buffers are freed, as on a loaded machine), where fresh
  memory for each call would add 9 times that. Measured: growth 0 in 2 runs of 3, one call's
  temporaries in the third (2 cores, another job running), and two calls' in a full suite run.

  These are the allocator's own counters. Page faults per call, measured before, are left out:
  how many a call makes without the setting depends on glibc's version and the threads' timing,
  not on this code."""
  result = run_python("-c", _HEAP_PER_CALL, timeout=300, env={"JAX_PLATFORMS": "cpu", "GLIBC_TUNABLES": None})
  assert result.returncode == 0, result.stderr
  report = json.loads(result.stdout.splitlines()[-1])
  heap = report["heap"]
  assert report["changed"] and report["arenas"] == 1, report
  assert all(later >= earlier for earlier, later in zip(heap, heap[1:])), heap
  assert heap[-1] - heap[0] <= 3 * report["call_bytes"], report


def test_a_users_own_malloc_tunables_are_left_alone(monkeypatch):
  """GLIBC_TUNABLES naming a glibc.malloc tunable is the user's choice: nothing changes."""
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")
  assert host_memory.keep_freed_memory() is False


def test_an_accelerator_platform_leaves_the_host_allocator_alone(monkeypatch):
  """JAX_PLATFORMS naming an accelerator first: buffers live in device memory, nothing changes."""
  monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
  assert host_memory.keep_freed_memory() is False
