"""Shared fixtures: a local HTTP server on 127.0.0.1, params files, tiny datasets."""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class _Server(ThreadingHTTPServer):
    """Serves registered routes: path -> responses consumed in order, the last one repeating.

    A response is (status, body), ("truncate", body) (Content-Length of body, half of it
    sent, then the connection closes) or ("hang", body) (no answer until the fixture tears
    down). A route ending in "*" serves every path that starts with what precedes it. GET
    and POST are served alike. Unregistered paths are 404. `hits` counts requests per path.
    """

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, list] = {}
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.release = threading.Event()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def route(self, path: str, *responses) -> None:
        self.routes[path] = list(responses)

    def next_response(self, path: str):
        with self.lock:
            self.hits[path] += 1
            prefixes = [r for r in self.routes if r.endswith("*") and path.startswith(r[:-1])]
            route = path if path in self.routes else max(prefixes, key=len, default=path)
            queue = self.routes.get(route) or [(404, b"not found")]
            return queue.pop(0) if len(queue) > 1 else queue[0]


class _Handler(BaseHTTPRequestHandler):
    server: _Server  # HTTP/1.0: one request per connection, closed after the response

    def do_GET(self) -> None:
        status, body = self.server.next_response(self.path)
        if status == "hang":
            self.server.release.wait(timeout=10)  # far longer than any client timeout here
            status = 200
        if status == "truncate":
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            return
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up on a "hang"
            pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))  # the body, unread
        self.do_GET()

    def log_message(self, format, *args) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def http_server():
    """A real HTTP server on 127.0.0.1 (random port), serving the routes a test registers."""
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(autouse=True, scope="session")
def _one_cpu_thread():
    """Tiny networks run fastest on one thread, and a busy second core cannot stall them."""
    import torch

    torch.set_num_threads(1)
