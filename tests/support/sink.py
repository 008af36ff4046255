"""A real local HTTP server standing in for Dagster in fault tests.

``Sink`` listens on 127.0.0.1 (free port), records every request, and answers
``200 {}`` unless told otherwise:

* ``sink.set_delay(0.1)``: every answer comes after 100 ms (latency), concurrently;
* ``sink.fail_next(3, 429, retry_after="2")``: the next 3 matching requests get 429 with
  ``Retry-After: 2`` and a Dagster-like ``{"error": "..."}`` body;
* ``sink.set_default_response(401)``: every request gets 401 until ``reset()``;
* ``sink.down()`` / ``sink.up()``: close the listening socket (connections are refused)
  and listen again on the same port.

Requests are recorded when they arrive (before any delay), with the status they were
(or will be) answered. ``wait_for_count`` / ``wait_for`` block on a Condition with a
deadline. The server speaks HTTP/1.1 with keep-alive, like uvicorn.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

_UNSET: Any = object()


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the sink received it."""

    index: int  # 0-based arrival order
    method: str
    target: str  # raw request target, e.g. "/report_asset_materialization/?x=1"
    path: str  # target without the query string (still percent-encoded)
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    raw_headers: list[tuple[str, str]]  # as sent, in order
    body: bytes
    json: Any  # parsed body, or None if empty / not JSON (see json_error)
    json_error: str | None
    arrived_at: float  # time.monotonic() when the body had been read
    wall_time: float  # time.time() at the same moment
    status: int  # status the sink answers (or 0 when it drops the connection)

    def header(self, name: str, default: str | None = None) -> str | None:
        """Case-insensitive header lookup."""
        return self.headers.get(name.lower(), default)


@dataclass
class Response:
    """What the sink answers: status, JSON body (or raw bytes), extra headers, delay."""

    status: int = 200
    body: Any = field(default_factory=dict)  # JSON-serialisable, or bytes sent verbatim
    headers: dict[str, str] = field(default_factory=dict)
    delay: float | None = None  # overrides the sink-wide delay for this answer
    drop_connection: bool = False  # close the connection without answering

    def encoded_body(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body).encode()


@dataclass
class _Rule:
    remaining: int | None  # None: unlimited
    response: Response
    match: Callable[[RecordedRequest], bool] | None


def error_response(
    status: int,
    message: str | None = None,
    retry_after: str | int | None = None,
    headers: Mapping[str, str] | None = None,
    delay: float | None = None,
) -> Response:
    """A Dagster-like error answer: ``{"error": message}`` with optional Retry-After."""
    hdrs = dict(headers or {})
    if retry_after is not None:
        hdrs["Retry-After"] = str(retry_after)
    return Response(
        status=status,
        body={"error": message if message is not None else f"sink: injected {status}"},
        headers=hdrs,
        delay=delay,
    )


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins the handler threads
    allow_reuse_address = True
    # socketserver's default backlog of 5 resets connections when a client opens dozens
    # at once (max_in_flight = 32); a real server (uvicorn) listens with 2048.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], sink: Sink) -> None:
        self.sink = sink
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Track in the accept loop (not in the handler thread), so that once shutdown()
        # returns every accepted connection is known to down().
        self.sink._track(request, True)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.sink._track(request, False)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out / disconnected mid-answer: record, do not print.
        self.sink._note_error(client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The headers and the body go out in two writes; with Nagle on, the body waits for
    # the client's delayed ACK (40 ms on Linux). uvicorn/asyncio set TCP_NODELAY too.
    disable_nagle_algorithm = True
    server: _Server
    timeout = 60  # idle keep-alive connections are closed after this many seconds

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without TCP_NODELAY the body waits for
        # the client's delayed ACK (~40 ms per keep-alive request). uvicorn sets it too.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def _handle(self) -> None:
        self.server.sink._serve(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class Sink:
    """A recording HTTP server on 127.0.0.1 with injectable faults."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Configure; :meth:`start` (or ``with``) binds ``port`` (0: a free one)."""
        self.host = host
        self.port = port
        self._cond = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._rules: list[_Rule] = []
        self._default = Response()
        self._delay = 0.0
        self._errors = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._abort = threading.Event()  # set while going down: ends delays early
        self._lock = threading.Lock()  # guards start/stop transitions

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    @property
    def is_up(self) -> bool:
        """True while the sink is listening."""
        return self._server is not None

    def __enter__(self) -> Sink:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Sink:
        """Start listening (on a free port the first time)."""
        self.up()
        return self

    def up(self) -> None:
        """Listen again (on the same port as before); no-op when already up."""
        with self._lock:
            if self._server is not None:
                return
            self._abort.clear()
            server = _Server((self.host, self.port), self)
            self.port = int(server.server_address[1])
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"sink-{self.port}",
                daemon=True,
            )
            thread.start()
            self._server, self._thread = server, thread

    def down(self) -> None:
        """Stop listening: close the socket (new connections are refused) and drop open ones.

        Requests still waiting out a delay are dropped without an answer.
        """
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
            if server is None or thread is None:
                return
            self._abort.set()
            server.shutdown()  # stop the accept loop
            server.socket.close()  # refuse new connections right away
            with self._cond:
                connections = list(self._connections)
            for conn in connections:  # wake handler threads blocked on keep-alive reads
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            server.server_close()  # joins handler threads
            thread.join()

    def stop(self) -> None:
        """Shut down for good (same as :meth:`down`; all threads joined)."""
        self.down()

    # ------------------------------------------------------------------ behaviour

    def set_delay(self, seconds: float) -> None:
        """Answer every request after ``seconds`` (each in its own thread, concurrently)."""
        with self._cond:
            self._delay = float(seconds)

    def fail_next(
        self,
        count: int | None,
        status: int,
        retry_after: str | int | None = None,
        message: str | None = None,
        match: Callable[[RecordedRequest], bool] | None = None,
        delay: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next ``count`` (None: all) matching requests with ``status``.

        The body is ``{"error": message}``; ``retry_after`` adds a Retry-After header.
        Rules queue up: each request is answered by the first rule that matches it and
        still has requests left, else by the default response.
        """
        self.respond_next(
            count, error_response(status, message, retry_after, headers, delay), match
        )

    def respond_next(
        self,
        count: int | None,
        response: Response,
        match: Callable[[RecordedRequest], bool] | None = None,
    ) -> None:
        """Answer the next ``count`` (None: all) matching requests with ``response``."""
        if count is not None and count < 1:
            raise ValueError("count must be >= 1 or None")
        with self._cond:
            self._rules.append(_Rule(count, response, match))

    def drop_next(
        self, count: int | None, match: Callable[[RecordedRequest], bool] | None = None
    ) -> None:
        """Close the connection without answering the next ``count`` matching requests."""
        self.respond_next(count, Response(status=0, drop_connection=True), match)

    def set_default_response(
        self,
        status: int = 200,
        body: Any = _UNSET,
        retry_after: str | int | None = None,
    ) -> None:
        """Answer every request not caught by a rule with ``status`` (default ``200 {}``)."""
        if body is _UNSET:
            body = {} if status < 400 else {"error": f"sink: injected {status}"}
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        with self._cond:
            self._default = Response(status=status, body=body, headers=headers)

    def reset(self) -> None:
        """Back to ``200 {}`` at once: drop rules, default response and delay (keep records)."""
        with self._cond:
            self._rules.clear()
            self._default = Response()
            self._delay = 0.0

    def clear(self) -> None:
        """Forget the recorded requests."""
        with self._cond:
            self._requests.clear()

    # ------------------------------------------------------------------ inspection

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of the recorded requests, in arrival order."""
        with self._cond:
            return list(self._requests)

    @property
    def count(self) -> int:
        """Number of requests recorded so far."""
        with self._cond:
            return len(self._requests)

    @property
    def handler_errors(self) -> int:
        """Connections that failed while answering (e.g. the client gave up)."""
        with self._cond:
            return self._errors

    def bodies(self, path: str | None = None) -> list[Any]:
        """Parsed JSON bodies of the recorded requests (only those to ``path`` if given)."""
        return [r.json for r in self.requests if path is None or r.path == path]

    def wait_for(
        self, predicate: Callable[[list[RecordedRequest]], bool], timeout: float = 10.0
    ) -> list[RecordedRequest]:
        """Block until ``predicate(requests)`` is true; return the requests then.

        Raises TimeoutError after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(list(self._requests)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"sink: condition not met within {timeout}s; "
                        f"{len(self._requests)} request(s) recorded: "
                        + ", ".join(f"{r.method} {r.path} -> {r.status}" for r in self._requests)
                    )
                self._cond.wait(remaining)
            return list(self._requests)

    def wait_for_count(self, n: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """Block until at least ``n`` requests were recorded; return them all."""
        return self.wait_for(lambda reqs: len(reqs) >= n, timeout)

    # ------------------------------------------------------------------ internals

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._cond:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _note_error(self, client_address: Any) -> None:
        with self._cond:
            self._errors += 1
            self._cond.notify_all()

    def _choose(self, request: RecordedRequest) -> Response:
        # caller holds self._cond
        for rule in self._rules:
            if rule.match is not None and not rule.match(request):
                continue
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining == 0:
                    self._rules.remove(rule)
            return rule.response
        return self._default

    def _serve(self, handler: _Handler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length > 0 else b""
        arrived_at, wall_time = time.monotonic(), time.time()
        parsed: Any = None
        json_error: str | None = None
        if body:
            try:
                parsed = json.loads(body)
            except ValueError as exc:
                json_error = str(exc)
        raw_headers = [(str(k), str(v)) for k, v in handler.headers.items()]
        headers: dict[str, str] = {}
        for name, value in raw_headers:
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        split = urllib.parse.urlsplit(handler.path)
        with self._cond:
            probe = RecordedRequest(
                index=len(self._requests),
                method=handler.command,
                target=handler.path,
                path=split.path,
                query=urllib.parse.parse_qs(split.query, keep_blank_values=True),
                headers=headers,
                raw_headers=raw_headers,
                body=body,
                json=parsed,
                json_error=json_error,
                arrived_at=arrived_at,
                wall_time=wall_time,
                status=0,
            )
            response = self._choose(probe)
            delay = response.delay if response.delay is not None else self._delay
            record = dataclasses.replace(probe, status=response.status)
            self._requests.append(record)
            self._cond.notify_all()
        if delay > 0 and self._abort.wait(delay):
            response = Response(status=0, drop_connection=True)  # going down mid-delay
        if response.drop_connection:
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
            return
        payload = response.encoded_body() if handler.command != "HEAD" else b""
        handler.send_response(response.status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(payload)
        handler.wfile.flush()
