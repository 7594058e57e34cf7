"""Test session setup: CPU only, XLA:CPU without LLVM optimisation, eight virtual host devices in
the test processes so sharding tests can build meshes, a shared compilation cache, a built synthetic dataset, and a Google
Cloud Storage emulator."""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Without LLVM's optimisation passes XLA:CPU compiles the same programs in about half the time;
# the tests and the programs they start share the setting (and so the compilation cache), and no
# test times anything. A user's own XLA_FLAGS are kept.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
# One persistent compilation cache for the session and the programs tests start: the same train
# step is compiled once, not once per subprocess. Removed when the process that made it exits.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="artstyle-jax-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import launch_recorder  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402  (after the environment above is set)

from artstyle_jax.runtime import host_memory  # noqa: E402

host_memory.keep_freed_memory()  # As the programs do, before JAX starts its backend.
# Grain's worker processes read its absl flags as they start; a program has parsed them.
flags.FLAGS.mark_as_parsed()


def _start_backend_with_eight_devices() -> None:
  """Starts this process's JAX backend with eight virtual CPU devices, then gives XLA_FLAGS back
  as the user set it: the programs the tests start run on one CPU device, as a user's do (with
  eight, each start compiles or reads back hundreds of per-device programs: 52 s against 36 s
  for 4 steps of tiny.py with a warm cache)."""
  import jax

  users_flags = os.environ.get("XLA_FLAGS")
  if "xla_force_host_platform_device_count" not in (users_flags or ""):
    os.environ["XLA_FLAGS"] = f"{users_flags or ''} --xla_force_host_platform_device_count=8".strip()
  try:
    jax.devices()
  finally:
    if users_flags is None:
      del os.environ["XLA_FLAGS"]
    else:
      os.environ["XLA_FLAGS"] = users_flags


_start_backend_with_eight_devices()


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
  """A built synthetic art-style dataset: (data_dir, dataset name), 10 styles x 8 train and x 2
  test images of 64 px."""
  from artstyle_jax.data import synthetic

  data_dir = tmp_path_factory.mktemp("tfds")
  name = synthetic.build_dataset(data_dir, per_class=8, size=64, seed=0, test_per_class=2)
  return str(data_dir), name


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
  """A Google Cloud Storage emulator for the session (tests/gcs_emulator.py): its GcsEmulator."""
  import gcs_emulator

  with gcs_emulator.running(tmp_path_factory.mktemp("gcs") / "buckets") as emulator:
    yield emulator


@pytest.fixture
def launch(tmp_path):
  """A launch script runner with recording stand-ins on PATH (tests/launch_recorder.py)."""
  return launch_recorder.Launch(tmp_path)
