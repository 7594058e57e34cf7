"""Timing shared by the benchmarks: ours and PyTorch's runs interleaved, so that both see the
same load of a machine whose speed drifts within minutes."""
from collections.abc import Callable
import statistics
import time


def timed(run: Callable[[], object]) -> Callable[[], float]:
  """A run that returns its own wall-clock seconds; `run` must return only when its work is done
  (a JAX call waited for with `block_until_ready`)."""

  def seconds() -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start

  return seconds


def interleaved_medians(runs: dict[str, Callable[[], float]], steps: int, warmup: int) -> dict[str, float]:
  """Median seconds of each run over `steps` rounds after `warmup` untimed ones; a round calls
  every run once, in order, so all see the same machine load. A run returns its own seconds."""
  times = {name: [] for name in runs}
  for round_index in range(warmup + steps):
    for name, run in runs.items():
      seconds = run()
      if round_index >= warmup:
        times[name].append(seconds)
  return {name: statistics.median(values) for name, values in times.items()}
