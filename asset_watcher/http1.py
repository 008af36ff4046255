"""A small HTTP/1.1 client for the one request the agent makes most: a POST of a stored
JSON body to an `http://` Dagster, with no proxy in between.

Why not requests or urllib3 here: each report cost them 330 us of CPU (http.client alone
170 us, mostly header parsing through the email package); this costs about 50 us. In a
burst of small files that is most of the agent's work. Everything else (https, proxies)
goes through requests, which the reporter keeps.

Each thread holds its own keep-alive connection. What it understands of the answer is
what a POST needs: the status line, headers, and a body framed by Content-Length, chunked
transfer coding or the end of the connection.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote, urlsplit

# Bounds on what a misbehaving server can make us read.
MAX_LINE_BYTES = 65_536
MAX_HEADERS = 100
MAX_BODY_BYTES = 1 << 20
MAX_INTERIM_ANSWERS = 10
# A connection idle this long is checked for a close by the server before it is reused
# (one poll); a busier one is not, and a close that races the reuse is retried anyway.
IDLE_CHECK_SECONDS = 1.0


class ProtocolError(OSError):
    """The server's answer is not HTTP/1.x as we can read it."""


class ClosedEarly(ConnectionError):
    """The server closed the connection before its answer was complete."""


class NotAnswered(ClosedEarly):
    """The connection broke before the first byte of an answer."""


class _Reader(Protocol):  # what read_response needs of io.BufferedReader
    def readline(self, size: int = -1, /) -> bytes: ...
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes


# What a path may hold unquoted (RFC 3986 pchar and "/"); "%" keeps existing escapes.
_PATH_SAFE = "/%!$&'()*+,;=:@-._~"
_DIGITS = re.compile(rb"[0-9]{1,18}")
_STATUS_LINE = re.compile(rb"(HTTP/1\.[0-9]) ([0-9]{3})(?:[ \r\n]|$)")
_HEX_DIGITS = re.compile(rb"[0-9A-Fa-f]{1,15}")


class _Connection:
    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.reader = self.sock.makefile("rb")
        except BaseException:
            self.sock.close()
            raise
        self.used = False
        self.closed = False
        self.idle_since = time.monotonic()

    def reusable(self) -> bool:
        """False once closed. An idle keep-alive connection that is readable was closed by
        the server (or sent something unasked): either way it cannot carry a request."""
        if self.closed:
            return False
        if time.monotonic() - self.idle_since <= IDLE_CHECK_SECONDS:
            return True
        poller = select.poll()  # not select(): descriptors may be above FD_SETSIZE
        poller.register(self.sock, select.POLLIN)
        return not poller.poll(0)

    def close(self) -> None:
        """Also from another thread, while a request waits on this connection: the
        shutdown ends that wait at once (closing the reader alone would wait for it)."""
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.reader.close()
        self.sock.close()


class PlainHttpClient:
    """POSTs to one `http://host:port` with fixed headers, one connection per thread.
    Once closed it stays closed: a straggling sender gets a ConnectionError at once."""

    def __init__(self, url: str, headers: Mapping[str, str], timeout: float) -> None:
        """Raises ValueError for what it does not speak (not http://, a query string, a
        host or header that is not ASCII): the caller uses requests for those."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or parts.query or parts.fragment:
            raise ValueError("PlainHttpClient speaks plain http:// without a query only")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.timeout = timeout
        self.base_path = quote(parts.path.rstrip("/"), safe=_PATH_SAFE)
        netloc = parts.netloc.rpartition("@")[2]  # never send user:password as Host
        lines = [f"Host: {netloc}"] + [f"{name}: {value}" for name, value in headers.items()]
        block = "\r\n".join(lines) + "\r\n"
        if not block.isascii() or any(c in v for v in headers.values() for c in "\r\n"):
            raise ValueError("host or header values that are not plain ASCII")
        self._header_block = block.encode("ascii")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[_Connection] = set()
        self._closed = False

    def post(self, path: str, body: bytes) -> Response:
        """POST `body` to base path + `path`. Raises OSError (TimeoutError, connection
        errors, ProtocolError) when no complete answer came."""
        target = f"{self.base_path}/{quote(path.lstrip('/'), safe=_PATH_SAFE)}"
        request = (
            f"POST {target} HTTP/1.1\r\n".encode("ascii")
            + self._header_block
            + f"Content-Length: {len(body)}\r\n\r\n".encode("ascii")
            + body
        )
        connection = self._connection()
        reused = connection.used
        try:
            return self._exchange(connection, request)
        except NotAnswered:
            if not reused or self._closed:
                raise
            # The server closed a connection it had kept alive just as we reused it (its
            # idle timeout): send once more on a new one. At worst Dagster read the first
            # copy; reports are delivered at least once.
            return self._exchange(self._connection(), request)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._open = self._open, set()
        for connection in connections:
            connection.close()

    # -- internals ---------------------------------------------------------------------

    def _connection(self) -> _Connection:
        connection: _Connection | None = getattr(self._local, "connection", None)
        if connection is not None and not connection.reusable():
            self._discard(connection)
            connection = None
        if connection is None:
            if self._closed:
                raise ConnectionError("the client is closed")
            connection = _Connection(self.host, self.port, self.timeout)
            with self._lock:
                if self._closed:
                    connection.close()
                    raise ConnectionError("the client is closed")
                self._open.add(connection)
            self._local.connection = connection
        return connection

    def _discard(self, connection: _Connection) -> None:
        with self._lock:
            self._open.discard(connection)
        if getattr(self._local, "connection", None) is connection:
            self._local.connection = None
        connection.close()

    def _exchange(self, connection: _Connection, request: bytes) -> Response:
        connection.used = True
        try:
            try:
                connection.sock.sendall(request)
                status_line = _line(connection.reader)
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise NotAnswered(str(exc)) from exc
            if not status_line:
                raise NotAnswered("the server closed the connection without answering")
            response, keep = read_response(connection.reader, status_line)
        except (ValueError, OSError) as exc:
            closed_under_us = connection.closed
            self._discard(connection)
            if closed_under_us and not isinstance(exc, ConnectionError):
                # close() from another thread: the reader or socket went away under us.
                raise ConnectionError("the client is closed") from None
            if isinstance(exc, ValueError):  # a check above let something odd through
                raise ProtocolError(f"unreadable answer: {exc}") from None
            raise
        except BaseException:
            self._discard(connection)
            raise
        if not keep:
            self._discard(connection)
        connection.idle_since = time.monotonic()
        return response


def read_response(reader: _Reader, status_line: bytes) -> tuple[Response, bool]:
    """The response that begins with `status_line`, read on from `reader`, and whether
    the connection can carry another request. Interim 1xx answers are skipped."""
    line = status_line
    for _ in range(MAX_INTERIM_ANSWERS + 1):
        version, status = _status_line(line)
        headers = _headers(reader)
        if not 100 <= status < 200:
            break
        line = _line(reader)
        if not line:
            raise ClosedEarly("the connection closed after an interim answer")
    else:
        raise ProtocolError(f"more than {MAX_INTERIM_ANSWERS} interim (1xx) answers")
    keep = _keeps_alive(version, headers)
    coding = headers.get("transfer-encoding", "").lower()
    length_text = headers.get("content-length")
    if status in (204, 304):
        body = b""
    elif coding.rsplit(",", 1)[-1].strip() == "chunked":
        body = _chunked_body(reader)
    elif length_text is not None and not coding:
        body = _sized_body(reader, _content_length(length_text))
    else:
        body = _bounded_read(reader, MAX_BODY_BYTES)  # ends with the connection
        keep = False
    return Response(status, headers, body), keep


def _line(reader: _Reader) -> bytes:
    line = reader.readline(MAX_LINE_BYTES + 1)
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError("a line of the answer is too long")
    return line


def _status_line(line: bytes) -> tuple[str, int]:
    found = _STATUS_LINE.match(line)
    if found is None:
        raise ProtocolError(f"not an HTTP/1.x status line: {line[:80]!r}")
    return found[1].decode("ascii"), int(found[2])


def _headers(reader: _Reader) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = _line(reader)
        if line in (b"\r\n", b"\n"):
            return headers
        if not line:
            raise ClosedEarly("the connection closed inside the headers")
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not name or name != name.strip():
            raise ProtocolError(f"malformed header line: {line[:80]!r}")
        key, value = name.lower(), value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    raise ProtocolError(f"more than {MAX_HEADERS} header lines")


def _keeps_alive(version: str, headers: Mapping[str, str]) -> bool:
    tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    if version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


def _content_length(text: str) -> int:
    values = {value.strip() for value in text.split(",")}  # a repeated header must agree
    if len(values) != 1 or not _DIGITS.fullmatch(value := values.pop().encode("latin-1")):
        raise ProtocolError(f"bad Content-Length: {text[:40]!r}")
    return int(value)


def _sized_body(reader: _Reader, length: int) -> bytes:
    if length > MAX_BODY_BYTES:
        raise ProtocolError(f"an answer of {length} bytes is more than we read")
    body = reader.read(length)
    if len(body) < length:
        raise ClosedEarly("the connection closed inside the body")
    return body


def _chunked_body(reader: _Reader) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        line = _line(reader)
        if not line:
            raise ClosedEarly("the connection closed inside a chunked answer")
        size_text = line.split(b";", 1)[0].strip()
        if not _HEX_DIGITS.fullmatch(size_text):
            raise ProtocolError(f"bad chunk size: {size_text[:20]!r}")
        size = int(size_text, 16)
        if size == 0:
            _headers(reader)  # trailers, up to the blank line
            return b"".join(parts)
        total += size
        parts.append(_sized_body(reader, size if total <= MAX_BODY_BYTES else MAX_BODY_BYTES + 1))
        if _line(reader) not in (b"\r\n", b"\n"):
            raise ProtocolError("a chunk does not end where its size says")


def _bounded_read(reader: _Reader, limit: int) -> bytes:
    body = reader.read(limit + 1)
    if len(body) > limit:
        raise ProtocolError(f"an answer of more than {limit} bytes is more than we read")
    return body
