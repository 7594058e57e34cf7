"""Hand-written XLA:CPU kernels, built from C++ source at first use, for what XLA's own code
generation does poorly on the CPU.

One kernel so far: the kernel gradient of the 7x7 depthwise convolution
(`depthwise_kernel_grad.cc`). XLA:CPU computes it as k*k shifted product-reductions, each a
pass over the activations; the C++ loop makes one pass, keeping the k*k*C sums in the cache,
5 to 12x faster at ConvNeXt's shapes on 2 cores.

The shared library is compiled with the host's C++ compiler (`$CXX`, else `c++`) against the
XLA FFI headers that jaxlib ships, for this CPU (`-march=native`), and kept in
`$ARTSTYLE_JAX_CACHE_DIR` (default `$XDG_CACHE_HOME/artstyle_jax`, else `~/.cache/artstyle_jax`)
under a name that hashes the source, the jaxlib version, the compiler and the CPU's features,
so a cache shared between machines never hands one a library built for another. Without a
compiler (or with `ARTSTYLE_JAX_COMPILED_KERNELS=0`) callers use their XLA form instead, after
one warning line; both compute the same function (tests check it to 1e-5).

An FFI call has no sharding rule: under `jit` with a batch sharded over several CPU devices,
XLA gathers its operands on each device first. Only CPU runs take this path.
"""
import ctypes
import functools
import hashlib
import importlib.metadata
import logging
import os
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "depthwise_kernel_grad.cc")
_TARGET = "artstyle_depthwise_kernel_grad"
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread", "-w")


def cache_dir() -> str:
  if os.environ.get("ARTSTYLE_JAX_CACHE_DIR"):
    return os.environ["ARTSTYLE_JAX_CACHE_DIR"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "artstyle_jax")


def _cpu_features() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next((line for line in f if line.startswith(("flags", "Features"))), platform.processor())
  except OSError:
    return platform.processor()


def _build(compiler: str) -> str:
  """Path of the shared library for this source, jaxlib, compiler and CPU, compiled if absent."""
  version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
  with open(_SOURCE, "rb") as f:
    key = hashlib.sha256(b"\0".join([f.read(), importlib.metadata.version("jaxlib").encode(), version.encode(),
                                     _cpu_features().encode(), " ".join(_FLAGS).encode()])).hexdigest()[:16]
  directory = cache_dir()
  library = os.path.join(directory, f"depthwise_kernel_grad-{key}.so")
  if os.path.exists(library):
    return library
  os.makedirs(directory, exist_ok=True)
  # Compiled under a private name, then renamed: processes building at once never load half a file.
  handle, partial = tempfile.mkstemp(suffix=".so", dir=directory)
  os.close(handle)
  try:
    result = subprocess.run([compiler, *_FLAGS, "-I", jax.ffi.include_dir(), _SOURCE, "-o", partial],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
      last = (result.stderr.strip().splitlines() or ["no output"])[-1]
      raise RuntimeError(f"{compiler} failed: {last}")
    os.replace(partial, library)
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  return library


@functools.cache
def available() -> bool:
  """Whether the compiled kernels are built and registered with XLA:CPU (once per process)."""
  if os.environ.get("ARTSTYLE_JAX_COMPILED_KERNELS", "1") == "0":
    return False
  compiler = shutil.which(os.environ.get("CXX", "c++"))
  try:
    if compiler is None:
      raise RuntimeError(f"no C++ compiler ({os.environ.get('CXX', 'c++')}) on PATH")
    library = ctypes.cdll.LoadLibrary(_build(compiler))
    jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(library.ArtstyleDepthwiseKernelGrad), platform="cpu")
  except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as error:
    logging.warning("compiled CPU kernels unavailable (%s); using XLA's form of the depthwise "
                    "convolution's kernel gradient, several times slower", error)
    return False
  return True


def depthwise_kernel_grad(x: jax.Array, grad_out: jax.Array, k: int) -> jax.Array:
  """(k, k, C) float32: sum_{b,h,w} x[b, h+i-p, w+j-p, c] * grad_out[b, h, w, c], p = (k-1)//2,
  x zero outside the image; x and grad_out (B, H, W, C). Needs `available()`."""
  result = jax.ShapeDtypeStruct((k, k, x.shape[-1]), jnp.float32)
  return jax.ffi.ffi_call(_TARGET, result)(x.astype(jnp.float32), grad_out.astype(jnp.float32), k=np.int64(k))
