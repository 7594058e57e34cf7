"""Paths as users type them: relative to the current directory, `~` for home, URLs (gs://) untouched.

Every path a program takes enters through `resolve` once, where it is read (a flag, a config key,
a positional argument), so that the code behind it only sees absolute local paths or URLs. Orbax
refuses relative checkpoint paths, and a relative path stored in a config would mean something
else to a program started from another directory.

`write_atomically` writes a whole file, local or at a URL, so that readers never see part of it.
"""
import os
import re
from typing import Any

from absl import flags
from etils import epath

# scheme://..., as gs://bucket/dir or s3://...; a Windows drive letter ("C:\\") is not a scheme.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def is_url(path: str) -> bool:
  """True for gs://bucket/..., s3://... and other scheme://... paths."""
  return bool(_URL.match(path))


def resolve(path: str | os.PathLike | None) -> str | None:
  """`path` as an absolute, normalised local path, or the URL unchanged; None and '' stay as they are.

  'run' -> '<cwd>/run', '~/x' -> '<home>/x', 'gs://b/x' -> 'gs://b/x'.
  """
  if path is None:
    return None
  path = os.fspath(path)
  if not path or is_url(path):
    return path
  return os.path.abspath(os.path.expanduser(path))


class _PathParser(flags.ArgumentParser):
  """absl parser of a path flag: the value resolved as it is parsed (defaults too)."""

  def parse(self, argument: Any) -> str | None:
    return resolve(argument)

  def flag_type(self) -> str:
    return "path"


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` (local or gs://...) under a temporary name, then renames it, so that a
  reader (a viewer refreshing the file during training, another program) never sees half a file."""
  target = epath.Path(path)
  staged = target.with_name(target.name + ".tmp")
  staged.write_bytes(data)
  staged.replace(target)


def DEFINE_path(name: str, default: str | None, help: str, flag_values: flags.FlagValues = flags.FLAGS,  # noqa: N802
                **kwargs) -> flags.FlagHolder:
  """A string flag whose value is `resolve`d: absolute against the directory the program started in."""
  return flags.DEFINE(_PathParser(), name, default, help, flag_values, serializer=flags.ArgumentSerializer(),
                      **kwargs)


def DEFINE_multi_path(name: str, default: list[str] | None, help: str,  # noqa: N802
                      flag_values: flags.FlagValues = flags.FLAGS, **kwargs) -> flags.FlagHolder:
  """A repeatable path flag (--name=a --name=b), each value `resolve`d."""
  return flags.DEFINE_multi(_PathParser(), flags.ArgumentSerializer(), name, default, help, flag_values, **kwargs)
