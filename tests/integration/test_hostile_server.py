"""The real delivery path (Reporter + Deliverer + a StateStore on disk) against servers
that misbehave on the wire: dripped answers, an answer nobody asked for, endless and
oversized bodies, garbage, floods of interim answers, over http and https.

Each test asserts that nothing is lost or wrongly acknowledged, and that the sender is
freed within the request timeout plus a generous margin: a liveness bound, not a speed
claim (SPEC section 5: `timeout_seconds` bounds a whole request).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from asset_watcher.delivery import Deliverer, DrainSummary
from asset_watcher.model import EventKind, Report
from asset_watcher.reporter import MAX_ANSWER_BYTES, Reporter
from asset_watcher.reports import event_report
from asset_watcher.settings import DagsterSettings
from asset_watcher.state import StateStore
from tests.conftest import CliRun
from tests.support.hostile import Conn, Hostile, Request, Script, answer, answering
from tests.support.queueing import queue_reports
from tests.support.sink import Sink

TIMEOUT = 2.0  # the request timeout of these tests
MARGIN = 3.0  # what the liveness bounds allow on top of it
DRIP_SECONDS = 1.0  # well under TIMEOUT: no single socket read ever times out


def report(key: str) -> Report:
    return event_report(EventKind.MATERIALIZATION, ("hostile", key), metadata={"k": key})


def settings(url: str, **overrides: Any) -> DagsterSettings:
    values: dict[str, Any] = {
        "url": url,
        "max_in_flight": 1,
        "timeout_seconds": TIMEOUT,
        "backoff_max_seconds": 0.3,
    }
    values.update(overrides)
    return DagsterSettings(**values)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    with StateStore(tmp_path / "state") as opened:
        yield opened


def deliver(reporter: Reporter, store: StateStore) -> tuple[DrainSummary, float]:
    """One drain that gives up after the first failed attempt; and how long it took."""
    started = time.monotonic()
    summary = Deliverer(store, reporter).drain(patience_seconds=0)
    return summary, time.monotonic() - started


def deliver_once(url: str, store: StateStore, **overrides: Any) -> tuple[DrainSummary, float]:
    reporter = Reporter(settings(url, **overrides))
    try:
        return deliver(reporter, store)
    finally:
        reporter.close()


def pending_keys(store: StateStore) -> list[str]:
    return [json.loads(i.body)["asset_key"][1] for i in store.due(math.inf, limit=100)]


def assert_kept(store: StateStore, summary: DrainSummary, *keys: str) -> None:
    assert summary.delivered == 0 and summary.dead == 0
    assert store.counts().dead == 0
    assert pending_keys(store) == list(keys)


def assert_hung_up(server: Hostile, timeout: float = MARGIN) -> None:
    """The client closed every connection it opened (none is left reading)."""
    server.wait_for(
        lambda: bool(server.conns) and all(c.closed_by_client_at for c in server.conns),
        timeout,
    )


# --------------------------------------------------------------------------- drip


LONG_REASON = b"O" * 40


def drip_status_line(server: Hostile, conn: Conn, request: Request) -> bool:
    server.drip(
        conn, b"HTTP/1.1 200 " + LONG_REASON + b"\r\nContent-Length: 2\r\n\r\n{}", DRIP_SECONDS
    )
    return True


def drip_headers(server: Hostile, conn: Conn, request: Request) -> bool:
    server.send(conn, b"HTTP/1.1 200 OK\r\n")
    server.drip(conn, b"X-Slow: " + b"x" * 40 + b"\r\nContent-Length: 2\r\n\r\n{}", DRIP_SECONDS)
    return True


def drip_body(server: Hostile, conn: Conn, request: Request) -> bool:
    body = b'{"x": "' + b"y" * 40 + b'"}'
    server.send(conn, f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode())
    server.drip(conn, body, DRIP_SECONDS)
    return True


@pytest.mark.parametrize(
    "script", [drip_status_line, drip_headers, drip_body], ids=["status", "headers", "body"]
)
def test_a_dripping_server_cannot_hold_a_sender(store: StateStore, script: Script) -> None:
    queue_reports(store, [report("a")])
    with Hostile(script) as server:
        summary, elapsed = deliver_once(server.url, store)
        assert_hung_up(server)
    assert_kept(store, summary, "a")
    assert summary.last_error == f"no answer within {TIMEOUT}s"
    assert elapsed <= TIMEOUT + MARGIN
    assert len(server.requests) == 1


# --------------------------------------------------------------------------- extra answer


def test_an_extra_answer_never_acknowledges_the_next_report(store: StateStore) -> None:
    """200 and an unsolicited second 200 in one write; every later request gets 500."""

    def script(server: Hostile, conn: Conn, request: Request) -> bool:
        if request.index == 0:
            server.send(conn, answer(200) + answer(200))
        else:
            server.send(conn, answer(500, b'{"error": "boom"}'))
        return True

    queue_reports(store, [report("first"), report("second")])
    with Hostile(script) as server:
        summary, _ = deliver_once(server.url, store)
    assert summary.delivered == 1
    assert pending_keys(store) == ["second"]  # its only real answer was a 500
    assert summary.last_error == "HTTP 500: boom"
    assert [r.json["metadata"]["k"] for r in server.requests] == ["first", "second"]


def test_a_late_extra_answer_makes_the_connection_unusable(store: StateStore) -> None:
    """The extra 200 arrives after the first answer was read and its connection went
    back to the pool: the next report must go on a new connection and get its own 500."""
    go, sent = threading.Event(), threading.Event()

    def script(server: Hostile, conn: Conn, request: Request) -> bool:
        if request.index == 0:
            server.send(conn, answer(200))
            if not go.wait(10):
                return False
            server.send(conn, answer(200))
            sent.set()
            server.notify()
        else:
            server.send(conn, answer(500, b'{"error": "boom"}'))
        return True

    with Hostile(script) as server:
        reporter = Reporter(settings(server.url))
        try:
            queue_reports(store, [report("first")])
            assert deliver(reporter, store)[0].delivered == 1
            go.set()
            server.wait_for(sent.is_set)
            queue_reports(store, [report("second")])
            summary, _ = deliver(reporter, store)
        finally:
            reporter.close()
    assert_kept(store, summary, "second")
    assert summary.last_error == "HTTP 500: boom"
    first, second = server.requests
    assert second.conn != first.conn  # nothing was left unread on the reused one


# --------------------------------------------------------------------------- body size


def endless_plain(server: Hostile, conn: Conn, request: Request) -> bool:
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
    server.flood(conn, b"x" * 65536)
    return False


def endless_chunked(server: Hostile, conn: Conn, request: Request) -> bool:
    server.send(conn, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    server.flood(conn, b"10000\r\n" + b"x" * 65536 + b"\r\n")
    return False


def oversized(server: Hostile, conn: Conn, request: Request) -> bool:
    server.send(conn, answer(200, b"x" * (2 * MAX_ANSWER_BYTES)))
    return True


def one_byte_over(server: Hostile, conn: Conn, request: Request) -> bool:
    server.send(conn, answer(200, b" " * (MAX_ANSWER_BYTES + 1)))
    return True


@pytest.mark.parametrize(
    "script",
    [endless_plain, endless_chunked, oversized, one_byte_over],
    ids=["endless", "endless-chunked", "2MiB", "1MiB+1"],
)
def test_a_body_over_the_bound_is_an_error_retried(store: StateStore, script: Script) -> None:
    queue_reports(store, [report("a")])
    with Hostile(script) as server:
        summary, elapsed = deliver_once(server.url, store)
        assert_hung_up(server)
    assert_kept(store, summary, "a")
    assert summary.last_error is not None
    assert summary.last_error.startswith(f"unreadable answer from {server.url}")
    assert f"longer than {MAX_ANSWER_BYTES} bytes" in summary.last_error
    assert elapsed <= TIMEOUT + MARGIN


def test_a_body_of_exactly_the_bound_is_read(store: StateStore) -> None:
    queue_reports(store, [report("a")])
    with Hostile(answering(200, b" " * MAX_ANSWER_BYTES)) as server:
        summary, _ = deliver_once(server.url, store)
    assert summary.delivered == 1 and store.counts().pending == 0


# --------------------------------------------------------------------------- garbage


def test_a_garbage_status_line_is_retried(store: StateStore) -> None:
    def script(server: Hostile, conn: Conn, request: Request) -> bool:
        server.send(conn, b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        return True

    queue_reports(store, [report("a")])
    with Hostile(script) as server:
        summary, elapsed = deliver_once(server.url, store)
        assert_hung_up(server)
    assert_kept(store, summary, "a")
    assert summary.last_error == (
        f"unreadable answer from {server.url}: not an HTTP/1.x status line: "
        "'SSH-2.0-OpenSSH_9.6\\r\\n'"
    )
    assert elapsed <= TIMEOUT + MARGIN


@pytest.mark.parametrize(
    "interim", [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"]
)
def test_a_flood_of_interim_answers_is_cut_off(store: StateStore, interim: bytes) -> None:
    def script(server: Hostile, conn: Conn, request: Request) -> bool:
        server.flood(conn, interim * 64)
        return False

    queue_reports(store, [report("a")])
    with Hostile(script) as server:
        summary, elapsed = deliver_once(server.url, store)
        assert_hung_up(server)
    assert_kept(store, summary, "a")  # an interim answer is not a final one
    assert elapsed <= TIMEOUT + MARGIN


# --------------------------------------------------------------------------- https


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs openssl (the cryptography package is not in this venv) for a cert")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


def test_https_with_a_ca_bundle_delivers(
    store: StateStore, tls: ssl.SSLContext, certificate: tuple[Path, Path]
) -> None:
    queue_reports(store, [report("a"), report("b")])
    with Hostile(answering(200), tls=tls) as server:
        summary, _ = deliver_once(server.url, store, verify_tls=str(certificate[0]))
    assert summary.delivered == 2 and store.counts().pending == 0
    assert len(server.conns) == 1  # kept alive


def test_https_without_the_ca_is_refused_and_kept(store: StateStore, tls: ssl.SSLContext) -> None:
    queue_reports(store, [report("a")])
    with Hostile(answering(200), tls=tls) as server:
        summary, _ = deliver_once(server.url, store)
    assert_kept(store, summary, "a")
    assert summary.last_error is not None and "CERTIFICATE_VERIFY_FAILED" in summary.last_error


@pytest.mark.parametrize("script", [one_byte_over, endless_plain], ids=["1MiB+1", "endless"])
def test_https_answers_are_bounded_too(
    store: StateStore, tls: ssl.SSLContext, certificate: tuple[Path, Path], script: Script
) -> None:
    queue_reports(store, [report("a")])
    with Hostile(script, tls=tls) as server:
        summary, elapsed = deliver_once(server.url, store, verify_tls=str(certificate[0]))
        assert_hung_up(server)
    assert_kept(store, summary, "a")
    assert summary.last_error is not None
    assert f"longer than {MAX_ANSWER_BYTES} bytes" in summary.last_error
    assert elapsed <= TIMEOUT + MARGIN


def test_https_drip_is_cut_off(
    store: StateStore, tls: ssl.SSLContext, certificate: tuple[Path, Path]
) -> None:
    queue_reports(store, [report("a")])
    with Hostile(drip_body, tls=tls) as server:
        summary, elapsed = deliver_once(server.url, store, verify_tls=str(certificate[0]))
        assert_hung_up(server)
    assert_kept(store, summary, "a")
    assert summary.last_error == f"no answer within {TIMEOUT}s"
    assert elapsed <= TIMEOUT + MARGIN


def test_a_dripped_tls_handshake_is_cut_off(store: StateStore) -> None:
    """An https URL, and a server that drips bytes where the TLS handshake belongs."""

    def script(server: Hostile, conn: Conn, request: Request) -> bool:
        return False  # never reached: the client sends no plaintext request

    def accept_and_drip(server: Hostile) -> None:
        server.wait_for(lambda: bool(server.conns))
        # A TLS record header announcing a long handshake record, then a byte a second.
        server.drip(server.conns[0], b"\x16\x03\x03\x40\x00" + b"\x02" * 40)

    queue_reports(store, [report("a")])
    with Hostile(script) as server:
        url = server.url.replace("http://", "https://")
        dripper = threading.Thread(target=_quietly, args=(accept_and_drip, server))
        dripper.start()
        try:
            summary, elapsed = deliver_once(url, store)
        finally:
            server.stopping.set()
            dripper.join(10)
    assert_kept(store, summary, "a")
    assert summary.last_error == f"no answer within {TIMEOUT}s"
    assert elapsed <= TIMEOUT + MARGIN


def _quietly(target: Callable[[Hostile], None], server: Hostile) -> None:
    with contextlib.suppress(Exception):  # the client hung up: what the test wants
        target(server)


# --------------------------------------------------------------------------- Retry-After


CAP = 5.0


@pytest.mark.parametrize(
    ("retry_after", "clamped"),
    [
        ("²", False),
        ("-1", False),
        ("1.5", False),
        ("soon", False),
        ("9" * 5000, True),
        ("99999999999", True),
        (formatdate(time.time() - 86400, usegmt=True), False),  # past: now, then backoff
        (formatdate(time.time() + 10 * 365 * 86400, usegmt=True), True),
        ("Fri, 31 Dec 9999 23:59:59 GMT", True),
    ],
)
@pytest.mark.parametrize("status", [429, 503, 500])
def test_retry_after_is_never_a_dead_letter_and_never_beyond_the_cap(
    sink: Sink, store: StateStore, retry_after: str, clamped: bool, status: int
) -> None:
    sink.fail_next(1, status, retry_after=retry_after)
    queue_reports(store, [report("a")])
    reporter = Reporter(settings(sink.url, backoff_max_seconds=CAP))
    try:
        deliverer = Deliverer(store, reporter)
        summary = deliverer.drain(patience_seconds=0)
        answered_at = time.time()
    finally:
        reporter.close()
    assert summary.dead == 0 and store.counts().dead == 0
    assert sink.requests[0].status == status
    assert deliverer.gate.hold_until <= answered_at + CAP  # everyone's next attempt
    if summary.delivered:  # a date in the past means now
        assert not clamped and store.counts().pending == 0
        return
    assert pending_keys(store) == ["a"]
    next_at = store.next_due_at()
    assert next_at is not None
    assert next_at <= answered_at + CAP  # the report's own next attempt
    if clamped:  # honoured, up to the cap
        assert next_at >= answered_at + CAP - 1.5


def test_a_huge_retry_after_does_not_park_later_versions_of_the_key(
    sink: Sink, store: StateStore
) -> None:
    """Two versions of one key: once the cap has passed, both go."""
    sink.fail_next(1, 503, retry_after="99999999999")
    queue_reports(store, [report("a"), report("a")])
    reporter = Reporter(settings(sink.url, backoff_max_seconds=0.5))
    try:
        summary = Deliverer(store, reporter).drain(patience_seconds=5)
    finally:
        reporter.close()
    assert summary.delivered == 2 and store.counts().pending == 0
    first, *rest = sink.requests
    assert first.status == 503 and [r.status for r in rest] == [200, 200]
    assert rest[0].arrived_at - first.arrived_at <= 0.5 + MARGIN


# --------------------------------------------------------------------------- scan


def test_scan_against_a_dripping_server_exits_1_after_about_three_timeouts(
    cli: CliRun, config_file: Callable[[str], Path], tmp_path: Path, drop: Path
) -> None:
    timeout = 1.0
    for name in ("a.csv", "b.csv"):
        (drop / name).write_text("x\n")

    def drip(server: Hostile, conn: Conn, request: Request) -> bool:
        # 0.3 s a byte: no read ever waits a whole timeout; the answer would take minutes
        server.send(conn, b"HTTP/1.1 200 OK\r\n")
        server.drip(conn, b"X-Slow: " + b"x" * 1000 + b"\r\n\r\n", interval=0.3)
        return False

    with Hostile(drip) as server:
        config = config_file(
            f"""
            [dagster]
            url = "{server.url}"
            timeout_seconds = {timeout}
            max_in_flight = 2
            [state]
            directory = "{tmp_path / "state"}"
            [[watch]]
            path = "{drop}"
            asset_key = "k/{{stem}}"
            settle_seconds = 0
            """
        )
        started = time.monotonic()
        result = cli("-c", str(config), "scan", timeout=60)
        elapsed = time.monotonic() - started
        assert_hung_up(server)
        attempts = len(server.requests)
    assert result.returncode == 1, result.stderr
    assert "0 delivered, 2 pending, 0 dead" in result.stderr
    assert f"no answer within {timeout}s" in result.stderr
    # Three timeouts of patience, the attempt in flight then, and the interpreter's start.
    assert elapsed <= 3 * timeout + timeout + 2 * MARGIN
    assert attempts >= 2
    status = cli("-c", str(config), "status")
    assert status.returncode == 0


# --------------------------------------------------------------------------- close


def test_closing_the_reporter_frees_a_sender_stuck_in_a_request() -> None:
    """`scan` and `run` close the reporter after a sender was left behind: the request it
    is stuck in ends then, as a timeout, long before its own deadline."""
    answers: list[Any] = []
    with Hostile(drip_body) as server:
        reporter = Reporter(settings(server.url, timeout_seconds=60))
        sender = threading.Thread(
            target=lambda: answers.append(reporter.post(EventKind.MATERIALIZATION, "{}"))
        )
        sender.start()
        try:
            server.wait_for(lambda: len(server.requests) == 1)
            started = time.monotonic()
            reporter.close()
            sender.join(MARGIN)
            assert not sender.is_alive()
            assert time.monotonic() - started <= MARGIN
        finally:
            reporter.close()
            sender.join(60)
        assert_hung_up(server)
    (answer,) = answers
    assert answer.status is None and answer.detail == "no answer within 60.0s"
