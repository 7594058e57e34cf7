"""What a failed read or write of the store says: the chain of an error's causes, the first line
of one, whether a checkpoint's files are damaged or the store failed in a way that may pass, and
the operating system's words for a failed write.
"""
from collections.abc import Iterator
import json
import os
import re

# How TensorStore reports a file it read back and found damaged (truncated, undecodable, a data
# file the index names missing); Orbax passes it on as the message of a ValueError, or of an
# Exception around one.
_DAMAGE = re.compile(r"\b(OUT_OF_RANGE|DATA_LOSS|FAILED_PRECONDITION):")
# TensorStore's codes for a read that failed for another reason, which on an object store may be
# a passing one (a dropped connection, a 404 from an overloaded frontend).
_STORAGE_FAILURE = re.compile(r"\b(NOT_FOUND|UNKNOWN|UNAVAILABLE|DEADLINE_EXCEEDED|RESOURCE_EXHAUSTED|ABORTED|"
                              r"INTERNAL|CANCELLED|PERMISSION_DENIED|UNAUTHENTICATED):")
# TensorStore's note of the OS error under a failed write, e.g. "File too large [os_error_code='27']".
_OS_ERROR_CODE = re.compile(r"os_error_code[=:]\s*'?(\d+)")


def causes(error: BaseException) -> Iterator[BaseException]:
  """`error` and the exceptions it was raised from or during, outermost first."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def first_line(error: BaseException) -> str:
  """The first line of `error`'s message, else its type's name: the one line a program prints of it."""
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


def _code_line(error: BaseException, codes: re.Pattern[str]) -> str | None:
  """From the first of `error`'s causes whose message holds one of `codes`, the line from it."""
  for cause in causes(error):
    match = codes.search(str(cause))
    if match:
      return str(cause)[match.start():].strip().splitlines()[0]
  return None


def damage_reason(error: BaseException) -> str | None:
  """Why reading a checkpoint failed when its files are damaged (data lost, out of range,
  undecodable metadata); None for a failure of another kind (a storage error that may pass, a
  model that does not fit the checkpoint, a device out of memory)."""
  for cause in causes(error):
    if isinstance(cause, (json.JSONDecodeError, UnicodeDecodeError, EOFError)):
      return f"{type(cause).__name__}: {first_line(cause)}"
  return _code_line(error, _DAMAGE)


def storage_failure(error: BaseException) -> str | None:
  """Why reading a checkpoint failed when the storage failed (a missing file, an unavailable or
  refusing store): a failure that may pass, not proof of damage; None for another kind."""
  for cause in causes(error):
    if isinstance(cause, OSError) and not isinstance(cause, UnicodeDecodeError):
      return f"{type(cause).__name__}: {first_line(cause)}"
  return _code_line(error, _STORAGE_FAILURE)


def os_reason(error: BaseException) -> str:
  """The operating system's words for why a write failed ("No space left on device"), else the
  storage's own first line (a bucket's PERMISSION_DENIED, ...)."""
  chain = list(causes(error))
  for cause in chain:
    if isinstance(cause, OSError) and cause.errno:
      return os.strerror(cause.errno)
    match = _OS_ERROR_CODE.search(str(cause))
    if match:
      return os.strerror(int(match.group(1)))
  return first_line(chain[-1])
