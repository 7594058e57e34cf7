"""How the host's C allocator treats the CPU backend's buffers.

XLA:CPU allocates every temporary buffer of a program at each call and frees it at the end.
glibc's malloc serves large blocks requested from a worker thread with fresh `mmap`s and hands
them back with `munmap` when freed (whatever its mmap threshold says, for any block larger
than a thread arena's heap), so every call of a train step touches all of its temporaries as
new pages: the kernel faults in and zeroes each 4 KiB page again. Measured on 2 cores, one
ConvNeXt-atto forward+backward at 128 px, batch 16: 74,000 page faults per call (300 MB) and
about a sixth of the call's time. `keep_freed_memory` makes glibc serve every thread from the
main heap and keep what is freed for the next call: no page faults after the first call.

The cost is that the process keeps its peak heap until it exits, which is what a training or
evaluation process wants of its step's buffers anyway.
"""
import ctypes
import ctypes.util
import importlib.util
import os

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

# Plugins that give JAX an accelerator: with one installed, the host allocator is left alone
# (buffers live in device memory there).
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin",
                        "libtpu")


def _cpu_only() -> bool:
  """Whether JAX will run on the CPU, decided without starting a backend (that would create
  the threads whose arenas this module is about)."""
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not any(importlib.util.find_spec(name) for name in _ACCELERATOR_PLUGINS)


def keep_freed_memory() -> bool:
  """On a glibc host where JAX runs on the CPU: one malloc arena for all threads, no mmapped
  blocks, no trimming of the heap's top. Returns whether it changed anything.

  Call it at the start of a program, before JAX starts its backend: threads that already hold
  an arena keep it. A `GLIBC_TUNABLES` that sets any glibc.malloc tunable is the user's choice
  and is left as it is; so is every allocator other than glibc's (musl, macOS, jemalloc).
  """
  if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "") or not _cpu_only():
    return False
  name = ctypes.util.find_library("c")
  if name is None:
    return False
  try:
    libc = ctypes.CDLL(name)
  except OSError:
    return False
  if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):  # Not glibc.
    return False
  mallopt = libc.mallopt
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
  return all(mallopt(parameter, value) == 1 for parameter, value in settings)
