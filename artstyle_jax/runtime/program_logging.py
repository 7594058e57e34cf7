"""What the programs print: all of their own log lines, as plain lines, and of the libraries'
only the warnings and errors that a user can act on.

Libraries explain every step they take at INFO level (TFDS, Orbax, Grain: dozens of lines per
checkpoint), and some warn about things that are as intended here: eval and predict open
checkpoints read-only, a CPU run has no TPU. A failed background save is logged by Orbax, with
its traceback, once per thread it passes through, then by asyncio once per write left pending,
and TensorStore reports each of those writes finishing after Orbax closed its event loop as an
unraisable exception; `checkpoints.SaveError` says it all in one line.
"""
import logging as std_logging
import os
import re
import sys

from absl import logging
import jax

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
# Messages of library warnings and errors that say nothing to a user of these programs.
_NOISE = re.compile("|".join((
    r"^Unable to initialize backend",  # jax: no TPU (or GPU) here, the CPU is used
    r"^Given directory is read only",  # Orbax: a read-only CheckpointManager, as asked
    r"read_only=True, setting save_interval_steps=0",  # the same
    r"^Using custom data configuration",  # TFDS: a builder config made in code, as data.builders makes them
    r"_SignalingThread\.run\(\) raised an exception",  # Orbax: a failed background save ...
    r"Handler Commit operations or the Commit callback in background save thread",
    r"Save Finalize thread \(save_finalize\) failed",  # ... which SaveError reports
    r"^(Task|_GatheringFuture|Future) exception was never retrieved",  # asyncio: the same, per write
    r"^Failed to (write|update) metadata=",  # Orbax: a checkpoint's metadata file a failed save left unwritten
    r"^Metadata file does not exist: ",  # ... looked for again as Orbax finishes that save
    # gcsfs: a request's error, logged with its traceback before it is raised to its caller, which
    # handles it (a failed moveTo falls back to copy and delete, with a warning line of its own)
    # or reports it; transient errors (429, 5xx, resets) are retried with backoff at DEBUG level.
    r"^\w+ (non-retriable exception|out of retries on exception): ",
)))


class _PlainLines(std_logging.Formatter):
  """A record as its message alone (`step 10: kNN top-1 ...`), with a warning's or an error's
  level in front (`WARNING: ...`); absl's prefix of time, thread and source line says nothing to
  a user of the programs."""

  def format(self, record: std_logging.LogRecord) -> str:
    message = super().format(record)
    return message if record.levelno < std_logging.WARNING else f"{record.levelname}: {message}"


class _LibraryNoise(std_logging.Filter):
  """Keeps this package's records; of the others, warnings and errors that are not `_NOISE`."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.pathname.startswith(_PACKAGE_DIR):
      return True
    return record.levelno >= std_logging.WARNING and not _NOISE.search(record.getMessage())


def _unraisable_hook(unraisable) -> None:
  """Python's hook for unraisable exceptions, less TensorStore finishing the writes of a failed
  save after Orbax closed their event loop ('Event loop is closed', one traceback per write)."""
  exception = unraisable.exc_value
  if not (isinstance(exception, RuntimeError) and str(exception) == "Event loop is closed"):
    sys.__unraisablehook__(unraisable)


def setup(verbosity: int | None = None) -> None:
  """Prints absl's records (Python logging included: absl's handler is the root's) as plain
  lines, drops the libraries' noise from them and from the unraisable exceptions Python prints,
  then sets absl's verbosity: `verbosity` (logging.INFO, .WARNING, ...), by default INFO on
  process 0 and ERROR on the others.

  The filter comes first: asking jax for the process index starts its backends, which log.
  """
  handler = logging.get_absl_handler()
  handler.setFormatter(_PlainLines())
  if not any(isinstance(f, _LibraryNoise) for f in handler.filters):
    handler.addFilter(_LibraryNoise())
  sys.unraisablehook = _unraisable_hook
  if verbosity is None:
    verbosity = logging.INFO if jax.process_index() == 0 else logging.ERROR
  logging.set_verbosity(verbosity)
