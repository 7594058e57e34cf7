"""Hand-written XLA:CPU kernels, built from C++ source at first use (`kernels.cc`), for what
XLA's own code generation does poorly on the CPU: ConvNeXt's depthwise convolution and LayerNorms.

- `depthwise_conv`: the k x k depthwise convolution (k = 3, 5, 7) with bias. XLA:CPU fuses the
  k*k shifted multiply-adds into one loop that reloads every tap for every output; the C++ loop
  keeps a strip of outputs and a kernel row's taps in vector registers (its gain is larger in
  the network, where XLA would fuse the LayerNorm after it into the next matmul).
- `depthwise_norm` / `depthwise_norm_residuals`: the same convolution followed by the block's
  LayerNorm, computed on each strip while it is in the L1 cache; the second also returns what
  the LayerNorm's gradient needs (normalised input, 1/std).
- `layer_norm` / `layer_norm_residuals`: the LayerNorm alone (the stem's and the downsampling
  layers'). Its value to XLA:CPU is the boundary: XLA's YNNPACK fusion otherwise grows from a
  LayerNorm's reductions back over the previous block's matmuls and forward into the next
  convolution, one fused graph that runs several times slower than its parts.
- `depthwise_kernel_grad`: the convolution's kernel gradient. XLA:CPU computes it as k*k shifted
  product-reductions, each a pass over the activations; the C++ loop makes one pass, keeping
  the k*k*C sums in the cache.

Measured gains, each with its machine and date: artstyle_jax/PERFORMANCE.md.

The kernels run on XLA's intra-op thread pool, in chunks of rows whose results do not depend
on the thread that ran them: every call gives the same bits.

The shared library is compiled with the host's C++ compiler (`$CXX`, else `c++`) against the
XLA FFI headers that jaxlib ships, for this CPU (`-march=native`), and kept in
`$ARTSTYLE_JAX_CACHE_DIR` (default `$XDG_CACHE_HOME/artstyle_jax`, else `~/.cache/artstyle_jax`)
under a name that hashes the source, the jaxlib version, the compiler and the CPU's features,
so a cache shared between machines never hands one a library built for another. Without a
compiler (or with `ARTSTYLE_JAX_COMPILED_KERNELS=0`) callers use their XLA forms instead, after
one warning line; both compute the same functions (tests check them to 1e-5).

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

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels.cc")
# FFI target name -> the handler's symbol in the library.
_TARGETS = {
    "artstyle_depthwise_conv": "ArtstyleDepthwiseConv",
    "artstyle_depthwise_norm": "ArtstyleDepthwiseNorm",
    "artstyle_depthwise_norm_residuals": "ArtstyleDepthwiseNormResiduals",
    "artstyle_depthwise_kernel_grad": "ArtstyleDepthwiseKernelGrad",
    "artstyle_layer_norm": "ArtstyleLayerNorm",
    "artstyle_layer_norm_residuals": "ArtstyleLayerNormResiduals",
}
# Kernel sizes the convolution kernels are compiled for.
CONV_SIZES = (3, 5, 7)
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
  library = os.path.join(directory, f"cpu_kernels-{key}.so")
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
      lines = result.stderr.strip().splitlines() or ["no output"]
      first_error = next((line for line in lines if "error" in line), lines[-1])
      raise RuntimeError(f"{compiler} failed: {first_error.strip()}")
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
    for target, symbol in _TARGETS.items():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
  except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as error:
    logging.warning("compiled CPU kernels unavailable (%s); using XLA's forms of the depthwise "
                    "convolution, its gradient and the LayerNorms, several times slower", error)
    return False
  return True


def _f32(x: jax.Array) -> jax.Array:
  return x.astype(jnp.float32)


def _call(target: str, result, *args, **attributes):
  """ffi_call of one of the kernels, registered first (callers choose them after `available()`)."""
  if not available():
    raise RuntimeError(f"{target}: the compiled CPU kernels are unavailable here (see the warning above)")
  return jax.ffi.ffi_call(target, result)(*(_f32(arg) for arg in args), **attributes)


def depthwise_conv(x: jax.Array, taps: jax.Array, bias: jax.Array) -> jax.Array:
  """(B, H, W, C) float32: bias[c] + sum_{i,j} x[b, h+i-p, w+j-p, c] * taps[i, j, c], p = (k-1)//2,
  x zero outside the image; x (B, H, W, C), taps (k, k, C) with k in CONV_SIZES, bias (C,)."""
  return _call("artstyle_depthwise_conv", jax.ShapeDtypeStruct(x.shape, jnp.float32), x, taps, bias)


def depthwise_norm(x: jax.Array, taps: jax.Array, bias: jax.Array, scale: jax.Array, shift: jax.Array,
                   eps: float) -> jax.Array:
  """LayerNorm over channels of `depthwise_conv(x, taps, bias)`, as flax's (two-pass variance):
  (y - mean) * (rsqrt(var + eps) * scale) + shift, (B, H, W, C) float32."""
  return _call("artstyle_depthwise_norm", jax.ShapeDtypeStruct(x.shape, jnp.float32), x, taps, bias, scale, shift,
               eps=np.float32(eps))


def depthwise_norm_residuals(x: jax.Array, taps: jax.Array, bias: jax.Array, scale: jax.Array, shift: jax.Array,
                             eps: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`depthwise_norm`'s output and what its gradient needs: (normed, x_hat (B, H, W, C),
  inv_std (B, H, W)), x_hat = (y - mean) * inv_std, inv_std = rsqrt(var + eps)."""
  out = jax.ShapeDtypeStruct(x.shape, jnp.float32)
  return _call("artstyle_depthwise_norm_residuals", (out, out, jax.ShapeDtypeStruct(x.shape[:3], jnp.float32)),
               x, taps, bias, scale, shift, eps=np.float32(eps))


def layer_norm(x: jax.Array, scale: jax.Array, shift: jax.Array, eps: float) -> jax.Array:
  """flax's LayerNorm over the last axis of x (..., C) (two-pass variance), float32."""
  return _call("artstyle_layer_norm", jax.ShapeDtypeStruct(x.shape, jnp.float32), x, scale, shift, eps=np.float32(eps))


def layer_norm_residuals(x: jax.Array, scale: jax.Array, shift: jax.Array,
                         eps: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`layer_norm`'s output and what its gradient needs: (normed, x_hat (..., C), inv_std (...))."""
  out = jax.ShapeDtypeStruct(x.shape, jnp.float32)
  return _call("artstyle_layer_norm_residuals", (out, out, jax.ShapeDtypeStruct(x.shape[:-1], jnp.float32)),
               x, scale, shift, eps=np.float32(eps))


def depthwise_kernel_grad(x: jax.Array, grad_out: jax.Array, k: int) -> jax.Array:
  """(k, k, C) float32: sum_{b,h,w} x[b, h+i-p, w+j-p, c] * grad_out[b, h, w, c], p = (k-1)//2,
  x zero outside the image; x and grad_out (B, H, W, C)."""
  result = jax.ShapeDtypeStruct((k, k, x.shape[-1]), jnp.float32)
  return _call("artstyle_depthwise_kernel_grad", result, x, grad_out, k=np.int64(k))
