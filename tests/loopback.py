"""A scriptable HTTP server on 127.0.0.1 for the download tests: every route is a small function,
so a test can play a well-behaved host, a liar, a trickler or Google Drive."""

from __future__ import annotations

import http.server
import threading
import time
from typing import Callable, Optional

Route = Callable[[http.server.BaseHTTPRequestHandler], None]


def send(handler: http.server.BaseHTTPRequestHandler, body: bytes, ctype: str = "application/octet-stream",
         status: int = 200, length: Optional[int] = None, headers: Optional[dict[str, str]] = None) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body) if length is None else length))
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.end_headers()
    handler.wfile.write(body)


def serve_bytes(body: bytes, ctype: str = "application/octet-stream") -> Route:
    return lambda h: send(h, body, ctype)


def redirect(location: str, status: int = 302) -> Route:
    return lambda h: send(h, b"", status=status, headers={"Location": location})


def trickle(body: bytes, delay: float, stop: threading.Event) -> Route:
    """One byte every ``delay`` seconds (bounded by ``len(body)``, and stops when the test ends)."""
    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        for i in range(len(body)):
            if stop.wait(delay):
                return
            try:
                h.wfile.write(body[i:i + 1])
                h.wfile.flush()
            except OSError:
                return
    return route


def flood(chunk: bytes, total: int) -> Route:
    """Sends ``total`` bytes without a Content-Length (a server lying by omission)."""
    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Connection", "close")
        h.end_headers()
        sent = 0
        while sent < total:
            try:
                h.wfile.write(chunk)
            except OSError:
                return
            sent += len(chunk)
    return route


class LoopbackServer:
    """``routes[path](handler)`` answers GET ``path`` (query string included); 404 otherwise."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[str] = []
        self.stop = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                server.requests.append(self.path)
                route = server.routes.get(self.path) or server.routes.get(self.path.split("?", 1)[0])
                if route is None:
                    send(self, b"not found", "text/plain", status=404)
                else:
                    route(self)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        deadline = time.monotonic() + 5
        while self.thread.is_alive() and time.monotonic() < deadline:
            self.thread.join(0.1)
