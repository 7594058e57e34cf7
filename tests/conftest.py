"""Test session setup: CPU only, eight virtual host devices so sharding tests can build meshes."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import pytest  # noqa: E402  (after the environment above is set)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
  """A built synthetic art-style dataset: (data_dir, dataset name), 8 styles x 8 train and x 2
  test images of 64 px."""
  from artstyle_jax.data import synthetic

  data_dir = tmp_path_factory.mktemp("tfds")
  name = synthetic.build_dataset(data_dir, per_class=8, size=64, seed=0, test_per_class=2)
  return str(data_dir), name
