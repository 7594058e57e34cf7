"""JAX's persistent compilation cache, on by default in the programs that train and evaluate.

A restarted run (a resumed workdir, a replaced worker of a slice) reads its compiled programs back
instead of compiling them again: minutes for ConvNeXt-B at 352 px. `start(directory)` points JAX's
cache at `directory` (local or gs://, as JAX's cache takes it) and has it keep every program,
however small or quick to compile, before the program's first compile. The processes of a
multi-process run share the directory: process 0 writes the entries, every process reads them.

An entry's key is a hash of the program, the compile options, the devices and the jax and jaxlib
versions: a cache written by another jax version or for another config is simply not used (its
entries stay until the directory is removed).

The environment keeps the last word: JAX_COMPILATION_CACHE_DIR, where set, names the directory
instead, and JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS / JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES
keep the thresholds the user chose.
"""
import os
import posixpath

import jax

# The directory `beside` names, next to the workdir, so that the runs of one directory share it.
DIRECTORY_NAME = "compilation_cache"
# A config's value that turns the cache off.
OFF = "off"


def beside(workdir: str) -> str:
  """The default cache directory of a run in `workdir`: DIRECTORY_NAME in the workdir's parent
  ('/runs/a' -> '/runs/compilation_cache', 'gs://b/runs/a' -> 'gs://b/runs/compilation_cache')."""
  parent = posixpath.dirname(workdir.rstrip("/"))
  if parent.rstrip("/").endswith(":"):  # a workdir at a bucket's top, gs://b: its parent is no directory
    parent = workdir.rstrip("/")
  return posixpath.join(parent, DIRECTORY_NAME)


def start(directory: str) -> str | None:
  """Turns JAX's persistent compilation cache on in `directory` (OFF: leaves it off), every
  program kept; call it before the first compile. Returns the directory in use (that of
  JAX_COMPILATION_CACHE_DIR where set), None when the cache is off."""
  directory = os.environ.get("JAX_COMPILATION_CACHE_DIR") or directory
  if directory == OFF:
    return None
  jax.config.update("jax_compilation_cache_dir", directory)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  if "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in os.environ:
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory
