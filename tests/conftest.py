"""Test session setup: CPU only, eight virtual host devices so sharding tests can build meshes,
a shared compilation cache, and a built synthetic dataset."""
import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session and the programs tests start: the same train
# step is compiled once, not once per subprocess.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="artstyle-jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import pytest  # noqa: E402  (after the environment above is set)

from artstyle_jax import host_memory  # noqa: E402

host_memory.keep_freed_memory()  # As the programs do, before any test starts JAX's backend.


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
  """A built synthetic art-style dataset: (data_dir, dataset name), 10 styles x 8 train and x 2
  test images of 64 px."""
  from artstyle_jax.data import synthetic

  data_dir = tmp_path_factory.mktemp("tfds")
  name = synthetic.build_dataset(data_dir, per_class=8, size=64, seed=0, test_per_class=2)
  return str(data_dir), name
