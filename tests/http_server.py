"""A loopback HTTP server for the download tests: serves in-memory files, honours ``Range``
(``206 Partial Content``, ``416`` past the end), and can drop connections part-way to simulate an
interrupted transfer. Only listens on 127.0.0.1."""

from __future__ import annotations

import re
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FileServer:
    """Files by URL path (``"/a/b.tar" -> bytes``) plus knobs the tests turn.

    Attributes:
        files: what is served.
        cut_after: while > 0, each GET sends at most this many body bytes of a full response,
            then closes the connection (and ``cuts`` counts down by one).
        cuts: how many more responses to cut.
        ranges: whether ``Range`` is honoured (False: always 200 with the whole file).
        log: ``(path, range header or None, status)`` of every GET.
        refuse_agents: User-Agent substrings answered with 403.
    """

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.cut_after = 0
        self.cuts = 0
        self.ranges = True
        self.refuse_agents: tuple[str, ...] = ("python-requests",)
        self.log: list[tuple[str, str | None, int]] = []
        self.url = ""

    def handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_HEAD(self):
                body = server.files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()

            def do_GET(self):
                agent = self.headers.get("User-Agent", "")
                rng = self.headers.get("Range")
                body = server.files.get(self.path)
                if any(bad in agent for bad in server.refuse_agents):
                    return self._reply(403, b"forbidden", rng)
                if body is None:
                    return self._reply(404, b"not found", rng)
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if server.ranges and match:
                    start = int(match.group(1))
                    if start >= len(body):
                        return self._reply(416, b"", rng)
                payload = body[start:]
                status = 206 if (server.ranges and match) else 200
                server.log.append((self.path, rng, status))
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Accept-Ranges", "bytes" if server.ranges else "none")
                if status == 206:
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}"
                    )
                self.end_headers()
                if server.cuts > 0 and server.cut_after > 0:
                    server.cuts -= 1
                    self.wfile.write(payload[: server.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

            def _reply(self, status, payload, rng):
                server.log.append((self.path, rng, status))
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler


@contextmanager
def serve(files: dict[str, bytes]):
    """Run a :class:`FileServer` on a free loopback port; yields it with ``url`` set."""
    state = FileServer(files)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), state.handler())
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
