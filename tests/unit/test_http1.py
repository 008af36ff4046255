"""The lean HTTP/1.1 client against a real loopback server that answers with scripted
bytes: framing (Content-Length, chunked, end of connection), interim answers, keep-alive
and its end, and the bounds on a misbehaving server."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from asset_watcher import http1
from asset_watcher.http1 import NotAnswered, PlainHttpClient, ProtocolError
from tests.support.agent_run import poll_until

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
CLOSE = b""  # script step: close the connection without answering
HANG_UP = b"!"  # prefix of a script step: answer, then half-close without saying so


@dataclass
class ScriptedServer:
    """Answers the n-th request (counted over all connections) with `script[n]`; a
    request past the script gets OK. Records each request's raw bytes and its
    connection number."""

    script: list[bytes]
    requests: list[tuple[int, bytes]] = field(default_factory=list)
    connections: int = 0
    threads: list[threading.Thread] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)
    hung_up: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self._start(self._serve)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self.sockets.append(conn)
            self._start(self._talk, conn, self.connections)

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(thread)
        thread.start()

    def _talk(self, conn: socket.socket, number: int) -> None:
        reader = conn.makefile("rb")
        hung_up = False
        with conn, reader:
            while True:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = reader.readline()
                    if not line:
                        return
                    head += line
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                request = head + reader.read(length)
                index = len(self.requests)
                self.requests.append((number, request))
                answer = self.script[index] if index < len(self.script) else OK
                if answer == CLOSE:
                    return
                if hung_up:
                    return  # a request after our FIN: recorded, never answered
                if answer.startswith(HANG_UP):
                    conn.sendall(answer[1:])
                    conn.shutdown(socket.SHUT_WR)  # FIN; still reads what comes
                    hung_up = True
                    self.hung_up.set()
                    continue
                conn.sendall(answer)
                closes = b"Connection: close" in answer or b"Content-Length" not in answer
                if closes and b"chunked" not in answer:
                    return

    def close(self) -> None:
        for sock in [self.listener, *self.sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self.threads:
            thread.join(5)


@pytest.fixture
def server_factory() -> Iterator[type[ScriptedServer]]:
    made: list[ScriptedServer] = []

    class Made(ScriptedServer):
        def __post_init__(self) -> None:
            super().__post_init__()
            made.append(self)

    yield Made
    for server in made:
        server.close()


def client_for(server: ScriptedServer, path: str = "", timeout: float = 5.0) -> PlainHttpClient:
    headers = {"Content-Type": "application/json", "Dagster-Cloud-Api-Token": "tok"}
    return PlainHttpClient(server.url + path, headers, timeout)


def test_request_bytes_carry_host_headers_length_and_the_path_prefix(server_factory) -> None:
    server = server_factory([])
    client = client_for(server, "/prefix/")
    response = client.post("report_asset_materialization/", b'{"a":1}')
    assert (response.status, response.body) == (200, b"{}")
    _, raw = server.requests[0]
    port = server.url.rsplit(":", 1)[1]
    assert raw == (
        b"POST /prefix/report_asset_materialization/ HTTP/1.1\r\n"
        + f"Host: 127.0.0.1:{port}\r\n".encode()
        + b"Content-Type: application/json\r\nDagster-Cloud-Api-Token: tok\r\n"
        + b'Content-Length: 7\r\n\r\n{"a":1}'
    )
    client.close()


def test_keep_alive_reuses_one_connection(server_factory) -> None:
    server = server_factory([])
    client = client_for(server)
    for _ in range(5):
        assert client.post("x/", b"{}").status == 200
    assert server.connections == 1
    client.close()


def test_chunked_body_with_extension_and_trailer(server_factory) -> None:
    chunked = (
        b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5;ext=1\r\n{"err\r\n9\r\nor": "x"}\r\n0\r\nX-Trailer: t\r\n\r\n'
    )
    server = server_factory([chunked])
    client = client_for(server)
    response = client.post("x/", b"{}")
    assert (response.status, response.body) == (400, b'{"error": "x"}')
    assert client.post("x/", b"{}").status == 200
    assert server.connections == 1  # the chunked answer left the connection usable
    client.close()


def test_body_up_to_the_end_of_the_connection(server_factory) -> None:
    server = server_factory([b"HTTP/1.0 503 Busy\r\nRetry-After: 7\r\n\r\nbusy, come back"])
    client = client_for(server)
    response = client.post("x/", b"{}")
    assert (response.status, response.body) == (503, b"busy, come back")
    assert response.headers["retry-after"] == "7"
    assert client.post("x/", b"{}").status == 200
    assert server.connections == 2
    client.close()


def test_connection_close_header_opens_a_new_connection(server_factory) -> None:
    server = server_factory([b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"])
    client = client_for(server)
    assert client.post("x/", b"{}").status == 200
    assert client.post("x/", b"{}").status == 200
    assert server.connections == 2
    client.close()


def test_interim_100_continue_is_skipped(server_factory) -> None:
    server = server_factory([b"HTTP/1.1 100 Continue\r\n\r\n" + OK])
    client = client_for(server)
    assert client.post("x/", b"{}").status == 200
    client.close()


def test_a_kept_alive_connection_closed_by_the_server_is_replaced(server_factory) -> None:
    # The first request is answered, the second finds the connection closed without an
    # answer (an idle timeout racing our reuse): it is sent again on a new connection.
    server = server_factory([OK, CLOSE])
    client = client_for(server)
    assert client.post("x/", b"1").status == 200
    assert client.post("x/", b"2").status == 200
    assert [number for number, _ in server.requests] == [1, 1, 2]
    assert server.requests[1][1].endswith(b"2") and server.requests[2][1].endswith(b"2")
    client.close()


def test_an_idle_connection_the_server_closed_is_not_used_again(
    server_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "IDLE_CHECK_SECONDS", 0.0)  # every reuse checks first
    server = server_factory([HANG_UP + OK])
    client = client_for(server)
    assert client.post("x/", b"1").status == 200
    assert server.hung_up.wait(10)
    assert client.post("x/", b"2").status == 200
    # Seen closed before sending: the second report went out once, on a new connection
    # (sent on the old one, it would show up there too).
    assert [number for number, _ in server.requests] == [1, 2]
    client.close()


def test_a_fresh_connection_closed_without_answer_is_an_error(server_factory) -> None:
    server = server_factory([CLOSE])
    client = client_for(server)
    with pytest.raises(NotAnswered):
        client.post("x/", b"{}")
    assert len(server.requests) == 1  # not sent twice
    client.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"Content-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n" + b"x" * 100_000,
        "HTTP/1.1 200 OK\r\nContent-Length: \u00b2\r\n\r\n{}".encode("latin-1"),
        "HTTP/1.1 \u00b200 OK\r\nContent-Length: 0\r\n\r\n".encode("latin-1"),
        b"HTTP/1.1 100 Continue\r\n\r\n" * 12 + OK,
    ],
    ids=[
        "not-http",
        "status",
        "header",
        "length",
        "huge",
        "chunk",
        "many",
        "long-line",
        "negative-chunk",
        "superscript-length",
        "superscript-status",
        "endless-interim",
    ],
)
def test_malformed_answers_are_protocol_errors(server_factory, answer: bytes) -> None:
    server = server_factory([answer])
    client = client_for(server)
    with pytest.raises(ProtocolError):
        client.post("x/", b"{}")
    assert client.post("x/", b"{}").status == 200  # a new connection after the bad one
    client.close()


def test_an_answer_cut_short_is_a_connection_error(server_factory) -> None:
    server = server_factory(
        [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nabc"]
    )
    client = client_for(server)
    with pytest.raises(ConnectionError):
        client.post("x/", b"{}")
    client.close()


def test_no_answer_within_the_timeout_raises_timeout_error() -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
    try:
        client = PlainHttpClient(f"http://127.0.0.1:{listener.getsockname()[1]}", {}, 0.3)
        with pytest.raises(TimeoutError):
            client.post("x/", b"{}")
        client.close()
    finally:
        listener.close()


def test_connection_refused_is_a_connection_error() -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(ConnectionRefusedError):
        PlainHttpClient(f"http://127.0.0.1:{port}", {}, 2.0).post("x/", b"{}")


def test_user_info_never_reaches_the_host_header(server_factory) -> None:
    server = server_factory([])
    client = PlainHttpClient(server.url.replace("//", "//user:pw@"), {}, 5.0)
    client.post("x/", b"{}")
    assert b"pw" not in server.requests[0][1]
    client.close()


def test_close_ends_every_thread_connection(server_factory) -> None:
    server = server_factory([])
    client = client_for(server)
    client.post("x/", b"{}")
    threads = [threading.Thread(target=client.post, args=("x/", b"{}")) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert server.connections == 3
    client.close()
    with pytest.raises(ConnectionError, match="closed"):
        client.post("x/", b"{}")  # closed for good: no new connection either
    assert server.connections == 3


def test_close_ends_a_wait_for_an_answer_in_another_thread(server_factory) -> None:
    server = server_factory([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"])  # no body
    client = client_for(server, timeout=60.0)
    errors: list[BaseException] = []

    def post() -> None:
        try:
            client.post("x/", b"{}")
        except BaseException as exc:
            errors.append(exc)

    waiting = threading.Thread(target=post)
    waiting.start()
    poll_until(lambda: server.requests, what="the request arrived")
    client.close()
    waiting.join(10)  # far less than the 60 s timeout: close() ended the wait
    assert not waiting.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ConnectionError)
    assert len(server.requests) == 1  # not sent again after close()


def test_the_path_is_percent_encoded_as_requests_would(server_factory) -> None:
    server = server_factory([])
    client = client_for(server, "/my prefix/caf\u00e9/%41")
    client.post("report_asset_materialization/", b"{}")
    assert server.requests[0][1].startswith(
        b"POST /my%20prefix/caf%C3%A9/%41/report_asset_materialization/ HTTP/1.1\r\n"
    )
    client.close()


@pytest.mark.parametrize(
    "url",
    ["https://dagster.example", "http://dagster.example/?x=1", "http://d\u00e4gster.example"],
)
def test_what_it_does_not_speak_is_refused_at_construction(url: str) -> None:
    with pytest.raises(ValueError):
        PlainHttpClient(url, {}, 1.0)
