"""A hostile HTTP server on raw sockets (127.0.0.1, a free port), for what http.server
cannot misbehave at: answers dripped a byte at a time, answers nobody asked for, endless
or oversized bodies, garbage status lines, floods of interim answers.

Each request is read from its connection (head up to the blank line, then a body of
Content-Length bytes), recorded, and handed to the script, a callable
``script(server, conn, request) -> bool`` that answers it on ``conn`` by any means and
returns whether to read another request from the same connection. Helpers below build
the usual scripts. ``tls=`` (an ``ssl.SSLContext``) serves https instead.

Every wait in here is on the server's stop event, so ``stop()`` ends dripping and
flooding at once and joins every thread it started.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any


@dataclass
class Conn:
    """One accepted connection."""

    number: int  # 0-based accept order
    sock: socket.socket
    opened_at: float
    closed_by_client_at: float | None = None  # when the client hung up, if it did
    requests: int = 0


@dataclass(frozen=True)
class Request:
    index: int  # 0-based arrival order over the server's life
    conn: int  # Conn.number it came on
    head: bytes
    body: bytes
    arrived_at: float  # time.monotonic()

    @property
    def json(self) -> Any:
        return json.loads(self.body)


Script = Callable[["Hostile", Conn, Request], bool]


class ClientGone(Exception):
    """The client closed the connection (or the server is stopping)."""


@dataclass
class Hostile:
    script: Script
    tls: ssl.SSLContext | None = None
    host: str = "127.0.0.1"
    requests: list[Request] = field(default_factory=list)
    conns: list[Conn] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stopping = threading.Event()
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server((self.host, 0))
        self.port = int(self._listener.getsockname()[1])
        self._accepter = threading.Thread(
            target=self._accept, name=f"hostile-{self.port}", daemon=True
        )

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def __enter__(self) -> Hostile:
        self._accepter.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._accepter.join(10)
        with self._cond:
            conns = list(self.conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        for thread in list(self._threads):
            thread.join(10)

    # -- waiting --------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"hostile: not met within {timeout}s; {len(self.requests)} "
                        f"request(s) on {len(self.conns)} connection(s)"
                    )
                self._cond.wait(remaining)

    def notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # -- sending, for scripts ---------------------------------------------------------

    def send(self, conn: Conn, data: bytes) -> None:
        try:
            conn.sock.sendall(data)
        except OSError as exc:
            raise ClientGone from exc

    def drip(self, conn: Conn, data: bytes, interval: float = 1.0) -> None:
        """One byte every `interval` seconds; ClientGone once the client hangs up."""
        for n in range(len(data)):
            if self._client_gone(conn):
                raise ClientGone
            self.send(conn, data[n : n + 1])
            if self.stopping.wait(interval):
                raise ClientGone

    def flood(self, conn: Conn, data: bytes) -> None:
        """`data` again and again, as fast as the client reads, until it hangs up."""
        while not self.stopping.is_set():
            if self._client_gone(conn):
                raise ClientGone
            self.send(conn, data)

    def _client_gone(self, conn: Conn) -> bool:
        try:  # on the descriptor: an SSLSocket refuses recv flags
            peeked = socket.socket.recv(conn.sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return peeked == b""

    # -- internals --------------------------------------------------------------------

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._cond:
                conn = Conn(len(self.conns), sock, time.monotonic())
                self.conns.append(conn)
                self._cond.notify_all()
            thread = threading.Thread(
                target=self._serve, args=(conn,), name=f"hostile-conn-{conn.number}"
            )
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: Conn) -> None:
        try:
            if self.tls is not None:
                conn.sock.settimeout(10)
                conn.sock = self.tls.wrap_socket(conn.sock, server_side=True)
                conn.sock.settimeout(None)
            reader = conn.sock.makefile("rb")
            while not self.stopping.is_set():
                request = self._read_request(conn, reader)
                if request is None or not self.script(self, conn, request):
                    break
        except (ClientGone, OSError, ValueError):
            pass
        finally:
            with self._cond:
                if conn.closed_by_client_at is None and not self.stopping.is_set():
                    conn.closed_by_client_at = time.monotonic()
                self._cond.notify_all()
            with contextlib.suppress(OSError):
                conn.sock.close()

    def _read_request(self, conn: Conn, reader: Any) -> Request | None:
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = reader.readline(65536)
            if not line:
                return None  # the client closed the connection
            head += line
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = reader.read(length) if length else b""
        with self._cond:
            request = Request(len(self.requests), conn.number, head, body, time.monotonic())
            self.requests.append(request)
            conn.requests += 1
            self._cond.notify_all()
        return request


def answer(status: int, body: bytes = b"{}", headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 answer with Content-Length."""
    lines = [f"HTTP/1.1 {status} X", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def answering(status: int, body: bytes = b"{}", headers: dict[str, str] | None = None) -> Script:
    """Answer every request the same, keep-alive."""

    def script(server: Hostile, conn: Conn, request: Request) -> bool:
        server.send(conn, answer(status, body, headers))
        return True

    return script
