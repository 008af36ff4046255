"""A reverse proxy on 127.0.0.1 that forwards every request to a real server and counts
them: for facts the server itself does not record (how many GraphQL mutations the agent
sent, when Dagster answers a repeat exactly like a first).

``CountingProxy(target_root)`` listens on a free port; ``proxy.url`` + the target's path
prefix is what the agent is pointed at. Each request is forwarded unchanged (method,
path, body, headers but Host) and its answer passed back unchanged, 4xx and 5xx included;
``proxy.requests()`` lists (path, JSON body) in arrival order.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

HOP_BY_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "content-length"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        self.server.proxy._record(self.path, parsed)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        request = urllib.request.Request(
            self.server.proxy.target_root + self.path, data=body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                status, content, kind = answer.status, answer.read(), answer.headers
        except urllib.error.HTTPError as error:
            status, content, kind = error.code, error.read(), error.headers
        self.send_response(status)
        self.send_header("Content-Type", kind.get("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins the handler threads

    def __init__(self, proxy: CountingProxy) -> None:
        self.proxy = proxy
        super().__init__(("127.0.0.1", 0), _Handler)


class CountingProxy:
    def __init__(self, target_root: str) -> None:
        self.target_root = target_root.rstrip("/")
        self._lock = threading.Lock()
        self._requests: list[tuple[str, Any]] = []
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="counting-proxy", kwargs={"poll_interval": 0.05}
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def requests(self) -> list[tuple[str, Any]]:
        with self._lock:
            return list(self._requests)

    def _record(self, path: str, body: Any) -> None:
        with self._lock:
            self._requests.append((path, body))

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
