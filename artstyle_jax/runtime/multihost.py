"""The processes of a multi-process run: how a process joins its peers (`start`), where they wait
for each other (`barrier`), and the verdicts they reach together: each process tries something
alone, then all of them learn every process's outcome before any of them acts on it (one process
alone never moves a shared file).

On a single process every function here returns at once, with no collective.
"""
from collections.abc import Callable
import itertools
from typing import TypeVar

import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

T = TypeVar("T")

# A process's outcome of `read_on_every_process`.
READ, DAMAGED, FAILED = 0, 1, 2

_barrier_count = itertools.count()


def tpu_cluster() -> str | None:
  """The Cloud TPU cluster this process runs in as jax.distributed's own detection finds it:
  'gketpu' (GKE, from TPU_WORKER_HOSTNAMES or TPU_PROCESS_ADDRESSES) or 'gcetpu' (a TPU VM or
  pod slice, from its metadata server); None anywhere else. Both ask only on a Cloud TPU VM (jax
  found TPU chips and libtpu at import), so a CPU or GPU host makes no network request."""
  from jax._src.clusters import cloud_tpu_cluster  # jax's detection has no public entry point

  for cluster in (cloud_tpu_cluster.GkeTpuCluster, cloud_tpu_cluster.GceTpuCluster):
    if cluster.is_env_present():
      return cluster.name
  return None


def start(coordinator_address: str | None = None, num_processes: int | None = None,
          process_id: int | None = None) -> None:
  """Joins a multi-process run: the one `coordinator_address` names (with `num_processes` and
  `process_id`, as on GPU clusters), else, on a Cloud TPU VM or pod slice, the slice's
  (`tpu_cluster`: every host one process, found by JAX). A CPU or GPU host without a coordinator
  runs alone. Call it before anything asks JAX for its devices."""
  if coordinator_address is not None:
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  elif (cluster := tpu_cluster()) is not None:
    jax.distributed.initialize(cluster_detection_method=cluster)


def barrier(name: str, timeout_s: int = 3600) -> None:
  """Returns once every process has called it (a barrier of the coordination service, no device
  collective); at once on a single process. Every process calls the barriers in the same order.

  Processes compile and read at their own pace (on CPU, JAX's persistent compilation cache serves
  process 0 only), and CPU collectives (gloo) give up on a peer that has not joined within 30 s:
  after a long compile, processes meet here before their next collective.
  """
  if jax.process_count() > 1:
    key = f"artstyle_jax_{next(_barrier_count)}_{name}"
    ocp.multihost.get_barrier_sync_fn()(key=key, timeout_ms=timeout_s * 1000)


def gather(name: str, value: int) -> np.ndarray:
  """Every process's `value`: (process_count,) int32, the same on every process, in process order.

  The barrier first: processes get here at their own pace, and a CPU collective (gloo) gives up
  on a peer that has not joined within 30 s.
  """
  if jax.process_count() == 1:
    return np.array([value], np.int32)
  barrier(name)
  return np.asarray(multihost_utils.process_allgather(np.array(value, np.int32))).reshape(-1)


def read_on_every_process(read: Callable[[int], T], step: int, *, retried: tuple[type[Exception], ...],
                          damage: type[Exception]) -> tuple[T | None, Exception | None, np.ndarray]:
  """Reads `step` on this process, once more after an error of a `retried` type, then gathers
  every process's outcome.

  Returns:
    (read(step) or None, this process's last error or None, every process's outcome: READ,
    DAMAGED (its last error a `damage`) or FAILED, as `gather` gives it).
  """
  result, error = None, None
  for _ in range(2):
    try:
      result, error = read(step), None
      break
    except Exception as e:  # Any failure: the others still need this process's verdict.
      error = e
      if not isinstance(e, retried):
        break
  outcome = READ if error is None else DAMAGED if isinstance(error, damage) else FAILED
  return result, error, gather(f"read_{step}", outcome)
