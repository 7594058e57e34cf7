"""How a program joins a multi-process run (multihost.start): on a Cloud TPU VM of a pod
slice by JAX's own cluster detection, with what it detects; never on a plain one-host run.
(The coordinator flags of GPU clusters: test_multihost.py.)"""
from jax._src import clusters
from jax._src.clusters import cloud_tpu_cluster
import pytest

from artstyle_jax.runtime import multihost

# The metadata server of worker 1 of a two-host slice (v4-16) as a TPU VM sees it.
SLICE_METADATA = {"agent-worker-number": "1", "worker-network-endpoints": "10.130.0.2,10.130.0.3"}


@pytest.fixture
def initialized(monkeypatch):
  """The distributed runtime's start as JAX would make it: a list that receives, per call of
  jax.distributed.initialize, the (coordinator address, process count, process id) its cluster
  detection resolves from the call's arguments (the runtime itself is not started)."""
  calls = []

  def initialize(coordinator_address=None, num_processes=None, process_id=None, cluster_detection_method=None,
                 heartbeat_timeout_seconds=None):
    coordinator, count, index, _ = clusters.ClusterEnv.auto_detect_unset_distributed_params(
        coordinator_address, num_processes, process_id, None, cluster_detection_method, 10)
    calls.append((coordinator, count, index))

  monkeypatch.setattr(multihost.jax.distributed, "initialize", initialize)
  return calls


@pytest.fixture
def on_a_tpu_vm(monkeypatch):
  """A Cloud TPU VM as JAX sees it at import (TPU chips and libtpu found), its metadata server
  answering SLICE_METADATA; no GKE variables."""
  monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)
  monkeypatch.setattr(clusters.cluster, "running_in_cloud_tpu_vm", True)
  monkeypatch.setattr(cloud_tpu_cluster, "get_metadata",
                      lambda key: (SLICE_METADATA[key], 200) if key in SLICE_METADATA else ("", 404))
  for name in ("TPU_SKIP_MDS_QUERY", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "TPU_WORKER_ID",
               "MEGASCALE_COORDINATOR_ADDRESS", "MEGASCALE_NUM_SLICES", "MEGASCALE_SLICE_ID", "JAX_COORDINATOR_PORT"):
    monkeypatch.delenv(name, raising=False)


def test_a_tpu_vm_of_a_pod_slice_joins_the_slice_its_metadata_describes(on_a_tpu_vm, initialized):
  """Worker 1 of the two hosts: detected as a TPU VM ('gcetpu'), and the runtime started as
  process 1 of 2 with worker 0's address (the coordinator) on JAX's port 8482."""
  assert multihost.tpu_cluster() == "gcetpu"
  multihost.start()
  assert initialized == [("10.130.0.2:8482", 2, 1)]


def test_a_gke_tpu_pod_joins_the_slice_its_environment_describes(on_a_tpu_vm, initialized, monkeypatch):
  """GKE sets the hosts and this one's index in the environment: 'gketpu', process 0 of 3."""
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.7,10.0.0.8,10.0.0.9")
  monkeypatch.setenv("TPU_WORKER_ID", "0")
  assert multihost.tpu_cluster() == "gketpu"
  multihost.start()
  assert initialized == [("10.0.0.7:8482", 3, 0)]


def test_a_one_host_cpu_run_does_not_start_the_distributed_runtime(initialized, monkeypatch):
  """This host as it is (no TPU; a GKE variable set by accident changes nothing): no cluster, no
  initialisation, and no metadata request."""
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.7,10.0.0.8")
  monkeypatch.setattr(cloud_tpu_cluster, "get_metadata", lambda key: pytest.fail(f"asked the metadata for {key}"))
  assert multihost.tpu_cluster() is None
  multihost.start()
  assert initialized == []

