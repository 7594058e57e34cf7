"""Checkpoint reads that leave nothing running when one of them fails.

Orbax reads a checkpoint's arrays as tasks of a fresh asyncio event loop and closes that loop as
soon as the first read fails. The other reads, still pending, are collected later; each then
raises from its `finally` and Python prints "Exception ignored in: <coroutine object
_read_array_index_and_device_put ...>" with a traceback, hundreds of them for a train state. Under
`settled()`, a loop awaits its pending tasks before it closes, so a failed restore ends with its
one exception and nothing else. They are awaited, not cancelled: a cancelled read's TensorStore
future still completes later and then calls into the closed loop ("Event loop is closed"); the
reads left are those of one checkpoint, which a restore was reading anyway.
"""
import asyncio
from collections.abc import Iterator
import contextlib


class _SettlingLoop(asyncio.SelectorEventLoop):
  """An event loop that awaits the tasks still pending when it is closed."""

  def close(self) -> None:
    if not self.is_closed() and not self.is_running():
      pending = [task for task in asyncio.all_tasks(self) if not task.done()]
      if pending:
        self.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    super().close()


class _SettlingPolicy(asyncio.DefaultEventLoopPolicy):

  def new_event_loop(self) -> asyncio.AbstractEventLoop:
    return _SettlingLoop()


@contextlib.contextmanager
def settled() -> Iterator[None]:
  """Within the block, event loops made by `asyncio.new_event_loop` settle their tasks on close."""
  previous = asyncio.get_event_loop_policy()
  asyncio.set_event_loop_policy(_SettlingPolicy())
  try:
    yield
  finally:
    asyncio.set_event_loop_policy(previous)
