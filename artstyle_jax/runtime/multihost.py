"""The processes of a multi-process run: how a process joins its peers (`start`), where they wait
for each other (`barrier`), and the verdicts they reach together: each process tries something
alone, then all of them learn every process's outcome before any of them acts on it (one process
alone never moves a shared file).

A lost peer (killed, preempted, its network gone) ends every surviving process within
`peer_timeout_s` of the loss, with one line `error: ...` (which process was lost, what the
program's `on_lost_peer` note says, "run the same command again to resume") and the exit status
RESTART_EXIT_CODE, which the launchers take as "restart me" (`_PeerWatch`).

On a single process every function here returns at once, with no collective.
"""
import atexit
from collections.abc import Callable
import ctypes
import faulthandler
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import TypeVar

import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from artstyle_jax.runtime import stderr_filter

T = TypeVar("T")

# A process's outcome of `read_on_every_process`.
READ, DAMAGED, FAILED = 0, 1, 2

_barrier_count = itertools.count()

# The exit status of a process whose run lost a peer: EX_TEMPFAIL, "temporary failure, try again".
RESTART_EXIT_CODE = 75
# How long a process may show no sign of life before its peers end the run. Each process says it
# is alive every tenth of this (a key of the coordination service, from a thread of its own, so a
# long compile or a long wait at a barrier is no silence); JAX's own heartbeat timeout is longer
# (HEARTBEAT_TIMEOUT_S), so that its fatal abort never comes first.
PEER_TIMEOUT_S = 30
HEARTBEAT_TIMEOUT_S = 100
_ALIVE_KEY, _LEFT_KEY = "artstyle_jax/alive/", "artstyle_jax/left/"
_SIGNAL_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_int)  # void handler(int signum), as C's signal() takes


class _PeerWatch:
  """Says this process is alive, and ends it when a peer has said nothing for `timeout_s`.

  Two daemon threads: one increments the key `_ALIVE_KEY/<process>` and reads every process's
  (an RPC to the coordinator may hang while it is gone), the other judges the times they last
  changed. A process that exits in the ordinary way (at exit, before JAX shuts the client down)
  sets `_LEFT_KEY/<process>` and is no longer watched: its peers may still have work to finish.

  The coordinator's own loss is seen first by JAX's client, which aborts the process (SIGABRT,
  after its fatal log line and C++ stack) the moment its poll of the coordinator fails:
  `catch_abort`, with standard error through runtime/stderr_filter.py.
  """

  def __init__(self, client, process_id: int, num_processes: int, timeout_s: float):
    self.client, self.process_id, self.timeout_s = client, process_id, timeout_s
    now = time.monotonic()
    self.seen = {p: now for p in range(num_processes) if p != process_id}  # peer -> time its count last moved
    self.counts: dict[str, str] = {}
    self.coordinator_seen = now  # the last answer of the coordination service
    self.left: set[int] = set()
    self.note: Callable[[], str] | None = None
    self.stopped = threading.Event()
    self.interval_s = timeout_s / 10

  def start(self) -> None:
    for target in (self._beat, self._judge):
      threading.Thread(target=target, name=f"artstyle_jax{target.__name__}", daemon=True).start()
    atexit.register(self.leave)  # registered after JAX's shutdown of the client: runs before it

  def catch_abort(self, coordinator_address: str) -> None:
    """Ends the process as `_end` does when it aborts while nothing answers at
    `coordinator_address` (host:port) any more; any other abort goes on as before, with Python's
    thread dump. The handler is C's (ctypes): a Python signal handler would only run after the
    abort, on the main thread; this one runs on the aborting thread, once it holds the GIL.
    Standard error passes through the filter that drops JAX's client's crash report of that
    loss once the handler's line follows it (`_filter_stderr`, called before)."""
    host, port = coordinator_address.rsplit(":", 1)

    def on_abort(signum: int) -> None:
      del signum
      try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
      except OSError as e:
        self._end(f"lost the coordinator of the run (process 0): {coordinator_address} does not answer ({e})")
      faulthandler.dump_traceback(all_threads=True)  # what the default handler would have shown; abort() goes on

    self._abort_handler = _SIGNAL_HANDLER(on_abort)  # kept: C holds only its address
    libc = ctypes.CDLL(None)
    libc.signal.restype = ctypes.c_void_p
    libc.signal.argtypes = [ctypes.c_int, _SIGNAL_HANDLER]
    libc.signal(signal.SIGABRT, self._abort_handler)

  def _beat(self) -> None:
    while not self.stopped.wait(self.interval_s):
      try:
        self.client.key_value_increment(f"{_ALIVE_KEY}{self.process_id}", 1)
        alive = self.client.key_value_dir_get(_ALIVE_KEY)
        left = self.client.key_value_dir_get(_LEFT_KEY)
      except Exception:  # The coordinator is gone or unreachable: `_judge` counts the silence.
        continue
      now = time.monotonic()
      self.coordinator_seen = now
      self.left = {int(key.rsplit("/", 1)[1]) for key, _ in left}
      for key, count in alive:
        process = int(key.rsplit("/", 1)[1])
        if process in self.seen and self.counts.get(key) != count:
          self.counts[key], self.seen[process] = count, now

  def _judge(self) -> None:
    while not self.stopped.wait(self.interval_s):
      now = time.monotonic()
      if now - self.coordinator_seen > self.timeout_s:
        self._end(f"lost the coordinator of the run (process 0): no answer for {self.timeout_s:.0f} s")
      for process, seen in self.seen.items():
        if process not in self.left and now - seen > self.timeout_s:
          self._end(f"lost process {process} of {len(self.seen) + 1}: no sign of life for {self.timeout_s:.0f} s")

  def _end(self, loss: str) -> None:
    """One error line, then the exit status RESTART_EXIT_CODE at once: the main thread may be
    blocked in a collective with the lost peer, and no exit handler can end well now."""
    self.stopped.set()
    parts = [loss]
    if self.note is not None:
      try:
        parts.append(self.note())
      except Exception as e:  # The note is a courtesy; the exit must come.
        parts.append(f"(the newest checkpoint could not be read: {e})")
    parts.append("run the same command again to resume")
    sys.stdout.flush()
    print(f"error: process {self.process_id}: {'; '.join(parts)}", file=sys.stderr, flush=True)
    _unfilter_stderr()
    os._exit(RESTART_EXIT_CODE)

  def leave(self) -> None:
    if self.stopped.is_set():
      return
    self.stopped.set()
    try:
      self.client.key_value_set(f"{_LEFT_KEY}{self.process_id}", "1", allow_overwrite=True)
    except Exception:  # A coordinator already gone: the peers are leaving too.
      pass


_peer_watch: _PeerWatch | None = None
# The filter of standard error (`_filter_stderr`) and the descriptor of the stream it writes to.
_stderr_filter: subprocess.Popen | None = None
_direct_stderr: int | None = None


def _filter_stderr() -> None:
  """Routes this process's standard error (descriptor 2: Python's and C++'s writes alike) through
  a process running runtime/stderr_filter.py, which writes to the stream it had; put back at
  exit (`_unfilter_stderr`, registered before the peer watch's exit handler: it runs after it)."""
  global _stderr_filter, _direct_stderr
  if _stderr_filter is not None:
    return
  sys.stderr.flush()
  _direct_stderr = os.dup(2)
  _stderr_filter = subprocess.Popen([sys.executable, "-S", stderr_filter.__file__], stdin=subprocess.PIPE,
                                    stdout=_direct_stderr, stderr=_direct_stderr)
  os.dup2(_stderr_filter.stdin.fileno(), 2)
  _stderr_filter.stdin.close()  # descriptor 2 is now the pipe's one writer here
  atexit.register(_unfilter_stderr)


def _unfilter_stderr(timeout_s: float = 2.0) -> None:
  """Puts standard error back on its stream, which ends the filter's input once no child holds
  it, and waits up to `timeout_s` for the filter to write what it held: the caller's output is
  complete when the process ends."""
  global _stderr_filter
  if _stderr_filter is None:
    return
  sys.stderr.flush()
  os.dup2(_direct_stderr, 2)
  try:
    _stderr_filter.wait(timeout=timeout_s)
  except subprocess.TimeoutExpired:  # A child process of ours still holds the pipe: it writes on.
    pass
  _stderr_filter = None


def on_lost_peer(note: Callable[[], str]) -> None:
  """Has the error line of a lost peer say `note()` too (the newest checkpoint, say); no-op on one process."""
  if _peer_watch is not None:
    _peer_watch.note = note


def await_lost_peer() -> None:
  """Returns once every peer has shown a sign of life since the call (or has left the run), at
  once on one process; a peer silent until its timeout ends the process instead (`_PeerWatch`).
  An error in a multi-process run may be a lost peer's (a failed collective, a save it broke):
  its verdict comes before the error's own report."""
  if _peer_watch is None:
    return
  called = time.monotonic()
  while any(seen <= called and process not in _peer_watch.left for process, seen in _peer_watch.seen.items()):
    time.sleep(_peer_watch.interval_s / 2)


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
          process_id: int | None = None, peer_timeout_s: float = PEER_TIMEOUT_S) -> None:
  """Joins a multi-process run: the one `coordinator_address` names (with `num_processes` and
  `process_id`, as on GPU clusters), else, on a Cloud TPU VM or pod slice, the slice's
  (`tpu_cluster`: every host one process, found by JAX). A CPU or GPU host without a coordinator
  runs alone. Call it before anything asks JAX for its devices.

  In a run of several processes, a peer silent for `peer_timeout_s` ends this process with
  RESTART_EXIT_CODE (`_PeerWatch`).
  """
  global _peer_watch
  timeouts = {"heartbeat_timeout_seconds": max(HEARTBEAT_TIMEOUT_S, int(3 * peer_timeout_s))}
  if coordinator_address is not None:
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, **timeouts)
  elif (cluster := tpu_cluster()) is not None:
    jax.distributed.initialize(cluster_detection_method=cluster, **timeouts)
  else:
    return
  from jax._src import distributed  # the coordination service's client has no public entry point

  state = distributed.global_state
  if state.num_processes > 1:
    _peer_watch = _PeerWatch(state.client, state.process_id, state.num_processes, peer_timeout_s)
    if state.process_id != 0:
      _filter_stderr()  # before the watch registers its exit handler, so that it is put back after it
    _peer_watch.start()
    if state.process_id != 0:
      _peer_watch.catch_abort(state.coordinator_address)


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
