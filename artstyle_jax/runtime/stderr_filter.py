"""A process of its own between a run's process and its standard error: passes everything
through as it comes, but for the crash report JAX's client writes when the coordinator is gone.

When the coordinator of a multi-process run dies, JAX's client logs one fatal line with its
gRPC details and a C++ stack trace, then aborts; the run's own abort handler
(`multihost._PeerWatch.catch_abort`) then prints the one line that says what happened and what
to run (`error: process N: lost the coordinator of the run ...`). A warning or error of the
client (its coordination agent, its preemption notices) comes first: from such a record, this
filter holds every line for HOLD_S, and writes them if no fatal line came meanwhile; from the
fatal line, it holds everything until its input ends: if the run's line came, it alone is
written, otherwise (any other abort) everything held is. Bytes of a line that is no record of
the client pass at once, so progress bars still show.

Run as a script (`python stderr_filter.py`: it imports nothing of the package, so it starts in
milliseconds): standard input to standard output. It ignores SIGINT and SIGTERM, which the run's
process handles, and ends when the last writer of its input has closed it.
"""
import os
import re
import select
import signal
import time

# The records of JAX's client (absl's prefix: severity, date, time, thread, file:line]).
_FATAL = re.compile(rb"^F\d{4} [\d:.]+ +\d+ client\.h:\d+\] Terminating process because the JAX distributed service")
_CLIENT_RECORD = re.compile(
    rb"^[WEF]\d{4} [\d:.]+ +\d+ (coordination_service_agent\.cc|preemption_sync_manager\.cc|client\.h):\d+\]")
_OURS = re.compile(rb"^error: process \d+: lost the coordinator of the run")
_RECORD_START = (b"W", b"E", b"F")  # a partial line starting otherwise is none of the client's records
HOLD_S = 1.0


def _write(data: bytes) -> None:
  while data:
    try:
      written = os.write(1, data)
    except OSError:  # Nothing reads our output any more: what is left has nowhere to go.
      return
    data = data[written:]


class _Filter:
  """The state of the stream: the partial line kept, and the lines held."""

  def __init__(self):
    self.partial = b""  # the current line's bytes not yet written, while it may be a record
    self.passing = False  # the current line's first bytes are already written
    self.held: list[bytes] = []  # lines held since a record of the client
    self.held_until: float | None = None  # when they are written if no fatal line comes
    self.fatal = False  # the fatal line came: everything is held until the input ends

  def holding(self) -> bool:
    return self.fatal or self.held_until is not None

  def feed(self, data: bytes) -> None:
    while data:
      if self.passing:
        end = data.find(b"\n") + 1
        if not end:
          _write(data)
          return
        _write(data[:end])
        data, self.passing = data[end:], False
        continue
      self.partial += data
      data = b""
      while (end := self.partial.find(b"\n") + 1):
        line, self.partial = self.partial[:end], self.partial[end:]
        self._line(line)
      if self.partial and not self.holding() and self.partial[:1] not in _RECORD_START:
        _write(self.partial)
        self.partial, self.passing = b"", True

  def _line(self, line: bytes) -> None:
    if _FATAL.match(line):
      self.fatal = True
    if self.holding():
      self.held.append(line)
    elif _CLIENT_RECORD.match(line):
      self.held, self.held_until = [line], time.monotonic() + HOLD_S
    else:
      _write(line)

  def timeout_s(self) -> float | None:
    """Seconds until the held lines are due (None: nothing is, or only the input's end ends them)."""
    return None if self.fatal or self.held_until is None else max(0.0, self.held_until - time.monotonic())

  def release(self) -> None:
    """Writes the held lines, a record of the client that no fatal line followed."""
    _write(b"".join(self.held))
    self.held, self.held_until = [], None

  def end(self) -> None:
    if self.partial:
      self._line(self.partial)
    if self.fatal:
      _write(b"".join([line for line in self.held if _OURS.match(line)] or self.held))
    else:
      self.release()


def main() -> None:
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  stream = _Filter()
  while True:
    ready, _, _ = select.select([0], [], [], stream.timeout_s())
    if not ready:
      stream.release()
      continue
    data = os.read(0, 1 << 16)
    if not data:
      break
    stream.feed(data)
  stream.end()


if __name__ == "__main__":
  main()
