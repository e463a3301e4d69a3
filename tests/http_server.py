"""A loopback HTTP server for the download tests: serves in-memory files, honours ``Range``
(``206 Partial Content``, ``416`` past the end, with ``Content-Range: bytes */<size>``), can drop
connections part-way to simulate an interrupted transfer, and can misbehave on ``Range`` requests
(wrong start, wrong or missing ``Content-Range``, too many bytes, ``416`` regardless) as some hosts
and proxies do. Only listens on 127.0.0.1."""

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
        cut_status: when set, only responses with this status are cut.
        ranges: whether ``Range`` is honoured (False: always 200 with the whole file).
        log: ``(path, range header or None, status)`` of every GET.
        refuse_agents: User-Agent substrings answered with 403.
        range_start: when set, a ``Range`` request is answered with 206 and the bytes from this
            offset instead of the one asked (``Content-Range`` tells the truth about it).
        content_range: when set, sent instead of the true ``Content-Range`` of 206 replies
            (``""``: none at all).
        oversend: on 206 replies, this many bytes past the end of the file, with no
            ``Content-Length`` (the body ends when the connection closes).
        always_416: answer every ``Range`` request with 416.
        total_on_416: whether 416 replies carry ``Content-Range: bytes */<size>``.
    """

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.cut_after = 0
        self.cuts = 0
        self.cut_status: int | None = None
        self.ranges = True
        self.refuse_agents: tuple[str, ...] = ("python-requests",)
        self.log: list[tuple[str, str | None, int]] = []
        self.range_start: int | None = None
        self.content_range: str | None = None
        self.oversend = 0
        self.always_416 = False
        self.total_on_416 = True
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
                    start = int(match.group(1)) if server.range_start is None else server.range_start
                    if start >= len(body) or server.always_416:
                        extra = {"Content-Range": f"bytes */{len(body)}"} if server.total_on_416 else {}
                        return self._reply(416, b"", rng, extra)
                payload = body[start:]
                status = 206 if (server.ranges and match) else 200
                server.log.append((self.path, rng, status))
                self.send_response(status)
                if status == 206 and server.oversend:
                    payload += bytes(server.oversend)
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(len(payload)))
                self.send_header("Accept-Ranges", "bytes" if server.ranges else "none")
                if status == 206:
                    value = server.content_range
                    if value is None:
                        value = f"bytes {start}-{len(body) - 1}/{len(body)}"
                    if value:
                        self.send_header("Content-Range", value)
                self.end_headers()
                if server.cuts > 0 and server.cut_after > 0 and server.cut_status in (None, status):
                    server.cuts -= 1
                    self.wfile.write(payload[: server.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client hung up, as a downloader refusing this reply does

            def _reply(self, status, payload, rng, headers=None):
                server.log.append((self.path, rng, status))
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
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
