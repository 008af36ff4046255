"""The Deliverer against a real loopback sink: outages, 429, 400, 401, ordering, shutdown.

Every wait is on a condition with a deadline; facts about timing are read from the
arrival times the sink recorded, never from how long a test took.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from asset_watcher.config import SecretStr
from asset_watcher.delivery import Deliverer
from asset_watcher.errors import StateError
from asset_watcher.model import EventKind, Report
from asset_watcher.reporter import Reporter
from asset_watcher.reports import event_report
from asset_watcher.retry import Verdict
from asset_watcher.settings import DagsterSettings
from asset_watcher.state import StateStore
from tests.support.agent_run import poll_until
from tests.support.queueing import queue_reports
from tests.support.sink import RecordedRequest, Sink

MAT = "/report_asset_materialization/"


def report(key: str, seq: int, partition: str | None = None, **extra: Any) -> Report:
    return event_report(
        EventKind.MATERIALIZATION,
        ("t", key),
        metadata={"seq": seq, **extra},
        partition=partition,
    )


def settings(url: str, **overrides: Any) -> DagsterSettings:
    # A short backoff cap keeps probes frequent, so recovery shows up quickly.
    values: dict[str, Any] = {
        "url": url,
        "max_in_flight": 8,
        "timeout_seconds": 5,
        "backoff_max_seconds": 0.3,
    }
    values.update(overrides)
    return DagsterSettings(**values)


def key_and_seq(req: RecordedRequest) -> tuple[str, int]:
    return req.json["asset_key"][1], req.json["metadata"]["seq"]


def wait_until(condition: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    poll_until(condition, timeout, what=what)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    with StateStore(tmp_path / "state") as opened:
        yield opened


@contextlib.contextmanager
def delivering(deliverer: Deliverer) -> Iterator[threading.Event]:
    """`deliverer.run` in a thread; stopped (and its errors re-raised) on leaving."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            deliverer.run(stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="test-deliverer")
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        deliverer.wake()
        thread.join(timeout=20)
        assert not thread.is_alive(), "run() did not return after stop"
    if errors:
        raise errors[0]


def assert_per_key_order(requests: list[RecordedRequest]) -> None:
    """Within each key, seq never goes backwards (a resend repeats, never overtakes)."""
    last: dict[str, int] = {}
    for req in requests:
        key, seq = key_and_seq(req)
        assert seq >= last.get(key, -1), f"{key}: {seq} arrived after {last[key]}"
        last[key] = seq


def failed_attempts(store: StateStore) -> int:
    return sum(item.attempts for item in store.due(math.inf, limit=1_000_000))


def delivered_set(sink: Sink) -> set[tuple[str, int]]:
    return {key_and_seq(r) for r in sink.requests if r.status == 200}


# --------------------------------------------------------------------------- outage


def test_outage_during_200_reports_all_delivered_oldest_first(
    sink: Sink, store: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asset_watcher")
    expected = {(f"k{i % 40}", i // 40) for i in range(200)}
    queue_reports(store, [report(f"k{i % 40}", i // 40) for i in range(200)])
    sink.set_delay(0.01)
    reporter = Reporter(settings(sink.url))
    deliverer = Deliverer(store, reporter)
    try:
        with delivering(deliverer):
            sink.wait_for_count(50)
            sink.down()
            wait_until(
                lambda: failed_attempts(store) >= 12,
                what="a dozen failed attempts during the outage",
            )
            pending_in_outage = store.counts().pending
            (oldest,) = store.due(math.inf, limit=1)  # the head with the lowest id
            arrived_before = sink.count
            sink.up()
            wait_until(lambda: store.counts().pending == 0, what="outbox empty")
    finally:
        reporter.close()

    assert 0 < pending_in_outage < 200
    assert delivered_set(sink) == expected
    assert_per_key_order([r for r in sink.requests if r.status == 200])
    # After the outage the oldest report goes first (a probe, alone).
    first_after = sink.requests[arrived_before]
    assert first_after.json == json.loads(oldest.body)
    # No log flood: a dozen failures, one warning and one line for the recovery (answers
    # to requests sent before the outage was noticed do not end it).
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "reports stay in the outbox" in warnings[0]
    recoveries = [r.getMessage() for r in caplog.records if "works again" in r.getMessage()]
    assert len(recoveries) == 1, recoveries


def test_drain_gives_up_after_patience_and_keeps_everything(
    sink: Sink, store: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    queue_reports(store, [report("a", n) for n in range(3)] + [report("b", 0)])
    sink.down()
    reporter = Reporter(settings(sink.url))
    try:
        summary = Deliverer(store, reporter).drain(patience_seconds=1.0)
    finally:
        reporter.close()
    assert (summary.delivered, summary.dead, summary.paused) == (0, 0, False)
    assert summary.last_error is not None and "cannot reach" in summary.last_error
    assert store.counts().pending == 4
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1


# --------------------------------------------------------------------------- 429


def test_429_retry_after_is_honoured(sink: Sink, store: StateStore) -> None:
    queue_reports(store, [report("a", 0), report("b", 0)])
    sink.fail_next(1, 429, retry_after="2", message="rate limited")
    # Retry-After is honoured up to the backoff cap (test_hostile_server: beyond it).
    reporter = Reporter(settings(sink.url, max_in_flight=1, backoff_max_seconds=30))
    try:
        summary = Deliverer(store, reporter).drain(patience_seconds=10)
    finally:
        reporter.close()

    assert summary.delivered == 2
    limited, *rest = sink.requests
    assert limited.status == 429
    assert [r.status for r in rest] == [200, 200]
    # Neither the retried report nor any other started sooner than Retry-After allows.
    assert rest[0].arrived_at - limited.arrived_at >= 2.0
    assert rest[0].json == limited.json  # the same report, retried first


def test_429_retry_after_http_date_is_honoured(sink: Sink, store: StateStore) -> None:
    from email.utils import formatdate

    queue_reports(store, [report("a", 0)])
    # An HTTP date has whole seconds: 3 s from now is at least 2 s away.
    sink.fail_next(1, 503, retry_after=formatdate(time.time() + 3, usegmt=True))
    reporter = Reporter(settings(sink.url, backoff_max_seconds=30))
    try:
        assert Deliverer(store, reporter).drain(patience_seconds=10).delivered == 1
    finally:
        reporter.close()
    first, second = sink.requests
    assert (first.status, second.status) == (503, 200)
    assert second.arrived_at - first.arrived_at >= 2.0


# --------------------------------------------------------------------------- 500


def test_500_on_one_report_holds_up_only_its_own_key(sink: Sink, store: StateStore) -> None:
    queue_reports(store, [report("poison", 0), report("poison", 1)])
    queue_reports(store, [report(f"ok{n}", 0) for n in range(30)])
    sink.fail_next(3, 500, match=lambda r: key_and_seq(r) == ("poison", 0))
    reporter = Reporter(settings(sink.url))
    try:
        summary = Deliverer(store, reporter).drain(patience_seconds=10)
    finally:
        reporter.close()
    assert summary.delivered == 32
    poison = [
        (*key_and_seq(r), r.status) for r in sink.requests if r.json["asset_key"][1] == "poison"
    ]
    assert poison == [("poison", 0, 500)] * 3 + [("poison", 0, 200), ("poison", 1, 200)]
    assert store.counts().pending == 0


# --------------------------------------------------------------------------- ordering


def test_per_key_order_under_concurrency(sink: Sink, store: StateStore) -> None:
    keys = [("a", None), ("b", None), ("c", "2026-01-01"), ("c", "2026-01-02"), ("d", None)]
    per_key = 12
    delay = 0.03
    # Interleaved, as files of several feeds completing at once.
    queue_reports(
        store, [report(key, seq, partition) for seq in range(per_key) for key, partition in keys]
    )
    sink.set_delay(delay)
    reporter = Reporter(settings(sink.url, max_in_flight=8))
    try:
        summary = Deliverer(store, reporter).drain(patience_seconds=10)
    finally:
        reporter.close()
    assert summary.delivered == len(keys) * per_key

    by_key: dict[tuple[str, str | None], list[RecordedRequest]] = {}
    for req in sink.requests:
        by_key.setdefault((req.json["asset_key"][1], req.json.get("partition")), []).append(req)
    assert set(by_key) == set(keys)
    for chain in by_key.values():
        assert [key_and_seq(r)[1] for r in chain] == list(range(per_key))
        # Never two of one key in flight: each starts after the previous was answered.
        for earlier, later in itertools.pairwise(chain):
            assert later.arrived_at >= earlier.arrived_at + delay
    # ... while different keys did overlap.
    arrivals = sorted((r.arrived_at, r.json["asset_key"][1]) for r in sink.requests)
    assert any(b[0] - a[0] < delay and a[1] != b[1] for a, b in itertools.pairwise(arrivals)), (
        "no two requests were ever in flight together"
    )


# --------------------------------------------------------------------------- 401


def test_401_pauses_all_delivery_drops_nothing_and_resumes(
    sink: Sink, store: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asset_watcher")
    queue_reports(store, [report(f"k{n % 5}", n // 5) for n in range(20)])
    sink.set_default_response(401)
    delay = 0.05
    sink.set_delay(delay)
    reporter = Reporter(settings(sink.url, max_in_flight=4))
    deliverer = Deliverer(store, reporter)
    try:
        with delivering(deliverer):
            sink.wait_for_count(8, timeout=20)  # the first round of 4, then lone probes
            during = sink.requests
            assert {r.status for r in during} == {401}
            # After the first round, one probe at a time: each starts after the last answer.
            for earlier, later in itertools.pairwise(during[3:]):
                assert later.arrived_at >= earlier.arrived_at + delay
            assert store.counts().pending == 20 and store.counts().dead == 0
            sink.reset()
            wait_until(lambda: store.counts().pending == 0, what="resumed and delivered")
    finally:
        reporter.close()

    assert delivered_set(sink) == {(f"k{n % 5}", n // 5) for n in range(20)}
    assert store.counts().dead == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors  # one per minute, not one per probe
    assert "token is missing, wrong or lacks permission" in errors[0]
    assert "materialization of t/k" in errors[0]  # names the asset
    assert any("resumed" in r.getMessage() for r in caplog.records)


def test_drain_stops_at_once_on_403(sink: Sink, store: StateStore) -> None:
    queue_reports(store, [report(f"k{n}", 0) for n in range(20)])
    sink.set_default_response(403)
    reporter = Reporter(settings(sink.url, max_in_flight=4))
    try:
        summary = Deliverer(store, reporter).drain(patience_seconds=30)
    finally:
        reporter.close()
    assert summary.paused
    assert summary.last_error is not None and "403" in summary.last_error
    assert sink.count <= 4  # the first round, then it stopped
    assert store.counts().pending == 20


# --------------------------------------------------------------------------- run/stop


def test_wake_sends_new_reports_without_polling(sink: Sink, store: StateStore) -> None:
    reporter = Reporter(settings(sink.url))
    deliverer = Deliverer(store, reporter)
    deliverer.idle_recheck_seconds = 3600  # only wake() can bring the report in time
    try:
        with delivering(deliverer):
            queue_reports(store, [report("late", 0)])
            deliverer.wake()
            sink.wait_for_count(1, timeout=10)
            wait_until(lambda: store.counts().pending == 0, what="acked")
    finally:
        reporter.close()
    assert key_and_seq(sink.requests[0]) == ("late", 0)


def test_stop_lets_requests_in_flight_finish_and_keeps_the_rest(
    sink: Sink, store: StateStore
) -> None:
    queue_reports(store, [report(f"k{n}", 0) for n in range(40)])
    sink.set_delay(0.3)
    reporter = Reporter(settings(sink.url, max_in_flight=4))
    deliverer = Deliverer(store, reporter)
    try:
        with delivering(deliverer) as stop:
            sink.wait_for_count(6)
            stop.set()
    finally:
        reporter.close()
    received = sink.count
    counts = store.counts()
    # Every request that reached the sink finished and was acknowledged; nothing else
    # was sent after stop, and the rest waits in the outbox.
    assert counts.pending == 40 - received
    assert received < 40


def test_stop_with_a_hung_server_returns_within_the_request_timeout(
    sink: Sink, store: StateStore
) -> None:
    queue_reports(store, [report(f"k{n}", 0) for n in range(4)])
    sink.set_delay(60)
    reporter = Reporter(settings(sink.url, max_in_flight=2, timeout_seconds=0.5))
    deliverer = Deliverer(store, reporter)
    try:
        with delivering(deliverer) as stop:  # leaving joins with a deadline
            sink.wait_for_count(2)
            stop.set()
            deliverer.wake()
    finally:
        reporter.close()
        sink.down()  # end the sink's 60 s waits
    assert store.counts().pending == 4


# --------------------------------------------------------------------------- full disk


def test_full_state_database_raises_and_loses_nothing(sink: Sink, tmp_path: Path) -> None:
    directory = tmp_path / "state"
    with StateStore(directory) as store:
        queue_reports(store, [report("big", 0, blob="x" * 20000)])
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count = {pages}")
        sink.fail_next(1, 400, message="rejected")  # dead-lettering needs new pages
        reporter = Reporter(settings(sink.url))
        try:
            with pytest.raises(StateError, match="full"):
                Deliverer(store, reporter).drain(patience_seconds=5)
        finally:
            reporter.close()
    with StateStore(directory) as reopened:
        counts = reopened.counts()
        assert (counts.pending, counts.dead) == (1, 0)


# --------------------------------------------------------------------------- transport


def test_a_server_that_is_not_http_is_retried_with_the_token_masked() -> None:
    """Something else listens at dagster.url and echoes what it got: the answer is a
    retry with a readable reason, and the token it echoed is masked."""
    listener = socket.create_server(("127.0.0.1", 0))

    def echo_once() -> None:
        conn, _ = listener.accept()
        with conn:
            request = conn.recv(65536)
            token_line = next(line for line in request.split(b"\r\n") if b"Token" in line)
            conn.sendall(b"ECHO " + token_line + b"\r\n")

    thread = threading.Thread(target=echo_once)
    thread.start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        reporter = Reporter(settings(url), SecretStr("s3cret-token"))
        answer = reporter.post(EventKind.MATERIALIZATION, "{}")
        reporter.close()
    finally:
        thread.join(10)
        listener.close()
    assert answer.verdict is Verdict.RETRY and answer.status is None
    assert answer.detail.startswith(f"unreadable answer from {url}: not an HTTP/1.x status")
    assert "s3cret-token" not in answer.detail and "**********" in answer.detail
