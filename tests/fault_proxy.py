"""An HTTP proxy in front of the GCS emulator that fails some requests as an object store under
load does: of every ten requests, one is answered 503 (or, every other time, 429) without
reaching the emulator; the others are passed through. An outage, `outage(method, target)` true
for a request (its method and its decoded path and query), answers that request 503 every time,
as a store down for longer than any client retries.

`running(upstream_url[, outage])` serves one on 127.0.0.1 until the block ends.
"""
import contextlib
import http.server
import itertools
import sys
import threading
from typing import Callable
import urllib.error
import urllib.parse
import urllib.request

# Headers of one hop, which the proxy sets itself.
_HOP_HEADERS = {"host", "content-length", "connection", "transfer-encoding", "keep-alive"}
_FAILURES = {9: 503, 19: 429}  # request number modulo 20 -> the status it fails with


Outage = Callable[[str, str], bool]


def _handler(upstream: str, counter: itertools.count, failed: list[int], proxy_url: list[str], outage: Outage | None):
  class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # the test's output is the programs'
      del args

    def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
      self.send_response(status)
      for name, value in headers:
        if name.lower() not in _HOP_HEADERS:
          self.send_header(name, value.replace(upstream, proxy_url[0]))
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      if self.command != "HEAD":
        self.wfile.write(body)

    def _forward(self) -> None:
      length = int(self.headers.get("Content-Length") or 0)
      body = self.rfile.read(length) if length else None
      status = _FAILURES.get(next(counter) % 20)
      if outage is not None and outage(self.command, urllib.parse.unquote(self.path)):
        status = 503
      if status is not None:
        failed.append(status)
        message = b'{"error": {"code": %d, "message": "injected by the test proxy"}}' % status
        self._reply(status, [("Content-Type", "application/json")], message)
        return
      headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
      request = urllib.request.Request(upstream + self.path, data=body, method=self.command, headers=headers)
      try:
        response = urllib.request.urlopen(request, timeout=60)
      except urllib.error.HTTPError as e:
        response = e
      with response:
        self._reply(response.status, list(response.headers.items()), response.read())

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

  return Handler


class _QuietServer(http.server.ThreadingHTTPServer):
  """Says nothing of a client that hung up before its answer (a client's own timeout or retry)."""

  def handle_error(self, request, client_address):
    if not isinstance(sys.exc_info()[1], ConnectionError):
      super().handle_error(request, client_address)


@contextlib.contextmanager
def running(upstream_url: str, outage: Outage | None = None):
  """Serves the proxy in front of `upstream_url`, with `outage` if given, until the block ends;
  yields (its URL, the list of the statuses it has injected so far)."""
  failed: list[int] = []
  proxy_url: list[str] = [""]
  server = _QuietServer(("127.0.0.1", 0), _handler(upstream_url, itertools.count(), failed, proxy_url, outage))
  proxy_url[0] = f"http://127.0.0.1:{server.server_address[1]}"
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield proxy_url[0], failed
  finally:
    server.shutdown()
    server.server_close()
