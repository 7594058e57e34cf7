"""Paths as users type them: relative to the current directory, `~` for home, URLs (gs://) untouched.

Every path a program takes enters through `resolve` once, where it is read (a flag, as
`cli.DEFINE_path` defines them; a config key; a positional argument), so that the code behind it
only sees absolute local paths or URLs. Orbax refuses relative checkpoint paths, and a relative
path stored in a config would mean something else to a program started from another directory.

`write_atomically` writes a whole file, local or at a URL, so that readers never see part of it.
"""
import os
import re

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


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` (local or gs://...) under a temporary name, then renames it, so that a
  reader (a viewer refreshing the file during training, another program) never sees half a file."""
  target = epath.Path(path)
  staged = target.with_name(target.name + ".tmp")
  staged.write_bytes(data)
  staged.replace(target)
