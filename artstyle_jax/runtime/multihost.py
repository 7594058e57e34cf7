"""Verdicts every process of a run reaches together: each process tries something alone, then all
of them learn every process's outcome before any of them acts on it (one process alone never
moves a shared file).

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


def barrier(name: str, timeout_s: int = 3600) -> None:
  """Returns once every process has called it (a barrier of the coordination service, no device
  collective). Every process calls the barriers of this module in the same order."""
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
