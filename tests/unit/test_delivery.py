"""The Deliverer (delivery.py) over a fake transport and a real StateStore, on a fake clock.

The fake stands in for `reporter.Reporter`: it answers each request from a script, says
what was sent and how many requests ran at once, and can hold a request until the test
lets it go. Time is the injected clock: a retry's wait is checked by moving the clock, so
nothing here sleeps. The same Deliverer against a real HTTP server:
tests/integration/test_delivery.py, test_deliverer.py and test_hostile_server.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from asset_watcher.delivery import (
    REPEAT_NOT_SENT,
    REPEAT_REFUSED,
    Deliverer,
    DrainSummary,
    partitioned_check,
)
from asset_watcher.model import EventKind, Report
from asset_watcher.reporter import Answer
from asset_watcher.reports import check_report, event_report
from asset_watcher.retry import Verdict, classify
from asset_watcher.settings import DagsterSettings
from asset_watcher.state import OutboxItem, StateStore
from tests.support.queueing import queue_reports
from tests.support.waiting import poll_until

BACKOFF_MAX_SECONDS = 10.0
WAIT_SECONDS = 10.0  # the deadline of every wait on a condition
PARTITION = "2026-01-01"
TOKEN = "secret-token"


def settings(**overrides: Any) -> DagsterSettings:
    values: dict[str, Any] = {
        "url": "http://dagster.test",
        "max_in_flight": 4,
        "timeout_seconds": 5.0,
        "backoff_max_seconds": BACKOFF_MAX_SECONDS,
    }
    values.update(overrides)
    return DagsterSettings(**values)


def mat(key: str, seq: int = 0, partition: str | None = None) -> Report:
    return event_report(
        EventKind.MATERIALIZATION, ("t", key), metadata={"seq": seq}, partition=partition
    )


def check(key: str, partition: str | None = PARTITION) -> Report:
    return check_report(("t", key), "row_count", passed=True, partition=partition)


def label(body: Mapping[str, Any]) -> str:
    """`a/0` for report 0 of asset t/a, `a:row_count` for a check of it."""
    name = body["asset_key"][1]
    if "check_name" in body:
        return f"{name}:{body['check_name']}"
    return f"{name}/{body['metadata']['seq']}"


def http(status: int, text: str = "", retry_after: float | None = None) -> Answer:
    """What the Reporter makes of an HTTP answer with this status and error text."""
    verdict = classify(status)
    detail = "" if verdict is Verdict.DELIVERED else f"HTTP {status}: {text}"
    return Answer(verdict, status, detail, retry_after)


OK = http(200)
TIMED_OUT = Answer(Verdict.RETRY, None, "no answer within 5.0s")


class FakeTransport:
    """Stands in for `reporter.Reporter`, as the Deliverer uses it (`delivery.Transport`).

    Each request is answered from `script` by its report's label: the answers in turn,
    the last one again and again; `default` for a label not in it. An Exception in the script
    is raised, as a bug would be. A request whose label is in `held` (any request with
    `hold_all`) waits until `release(label)` (or `release_all()`).
    """

    def __init__(
        self,
        settings: DagsterSettings,
        script: Mapping[str, list[Answer | Exception]] | None = None,
        *,
        default: Answer = OK,
        held: tuple[str, ...] = (),
        hold_all: bool = False,
        snapshot: Callable[[], object] | None = None,
    ) -> None:
        self.settings = settings
        self.default = default
        self._script = {name: list(answers) for name, answers in (script or {}).items()}
        self._held = {name: threading.Event() for name in held}
        self._hold_all = threading.Event() if hold_all else None
        self._snapshot = snapshot
        self._lock = threading.Lock()
        self.sent: list[str] = []  # labels, in the order the requests began
        self.seen_at_send: dict[str, object] = {}  # snapshot() as each request began
        self.in_flight = 0
        self.peak_in_flight = 0

    def post(self, kind: EventKind, body: str) -> Answer:
        name = label(json.loads(body))
        seen = self._snapshot() if self._snapshot is not None else None
        with self._lock:
            self.sent.append(name)
            self.seen_at_send[name] = seen
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            hold = self._held.get(name) or self._hold_all
            if hold is not None:
                hold.wait(WAIT_SECONDS)
            return self._answer(name)
        finally:
            with self._lock:
                self.in_flight -= 1

    def scrub(self, text: str) -> str:
        return text.replace(TOKEN, "**********")

    def release(self, name: str) -> None:
        self._held[name].set()

    def release_all(self) -> None:
        assert self._hold_all is not None
        self._hold_all.set()

    def _answer(self, name: str) -> Answer:
        with self._lock:
            answers = self._script.get(name)
            if not answers:
                return self.default
            outcome = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    with StateStore(tmp_path / "state") as opened:
        yield opened


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def deliverer_for(store: StateStore, transport: FakeTransport, clock: FakeClock) -> Deliverer:
    deliverer = Deliverer(store, transport, clock=clock)
    deliverer.gate.rand = lambda: 1.0  # the top of the jitter range: shared waits of 1, 2, 4 s
    return deliverer


@contextlib.contextmanager
def running(deliverer: Deliverer) -> Iterator[None]:
    """`deliverer.run` on a thread of its own, as the agent runs it, stopped at the end."""
    stop = threading.Event()
    thread = threading.Thread(target=deliverer.run, args=(stop,), name="deliverer-under-test")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        deliverer.wake()
        thread.join(WAIT_SECONDS)
    assert not thread.is_alive()


def pending(store: StateStore) -> list[OutboxItem]:
    """The head of each order key still in the outbox, whenever it is due."""
    return store.due(now=math.inf, limit=100)


# -- answers ------------------------------------------------------------------------------


def test_a_2xx_acknowledges_each_report(store: StateStore, clock: FakeClock) -> None:
    transport = FakeTransport(settings())
    queue_reports(store, [mat("a"), mat("b"), check("c")])
    summary = deliverer_for(store, transport, clock).drain(patience_seconds=0)
    assert sorted(transport.sent) == ["a/0", "b/0", "c:row_count"]
    assert summary == DrainSummary(delivered=3)
    assert summary.last_error is None
    assert (store.counts().pending, store.counts().dead) == (0, 0)
    assert pending(store) == []


def test_a_4xx_dead_letters_with_its_error_and_its_key_goes_on(
    store: StateStore, clock: FakeClock
) -> None:
    rejected = http(400, "asset key unknown")
    transport = FakeTransport(settings(), {"bad/0": [rejected]})
    queue_reports(store, [mat("bad", 0), mat("bad", 1), mat("ok")])
    summary = deliverer_for(store, transport, clock).drain(patience_seconds=0)
    assert sorted(transport.sent) == ["bad/0", "bad/1", "ok/0"]
    (letter,) = store.dead_letter_items()
    assert (letter.order_key, letter.error) == (mat("bad").order_key, "HTTP 400: asset key unknown")
    assert json.loads(letter.body)["metadata"] == {"seq": 0}
    assert (summary.delivered, summary.dead) == (2, 1)
    assert summary.dead_error == summary.last_error == "HTTP 400: asset key unknown"
    assert summary.pending_error is None
    assert (store.counts().pending, store.counts().dead) == (0, 1)
    assert store.meta("last_error") == "HTTP 400: asset key unknown"


def test_a_report_that_cannot_be_sent_is_dead_lettered_with_the_reason_scrubbed(
    store: StateStore, clock: FakeClock
) -> None:
    transport = FakeTransport(settings(), {"odd/0": [ValueError(f"bad header {TOKEN}")]})
    queue_reports(store, [mat("odd"), mat("fine")])
    summary = deliverer_for(store, transport, clock).drain(patience_seconds=0)
    (letter,) = store.dead_letter_items()
    assert letter.order_key == mat("odd").order_key
    assert letter.error.startswith("cannot send this report: ValueError(")
    assert TOKEN not in letter.error and "**********" in letter.error
    assert (summary.delivered, summary.dead) == (1, 1)


def test_a_500_is_retried_with_its_own_backoff_and_never_acknowledged(
    store: StateStore, clock: FakeClock
) -> None:
    transport = FakeTransport(settings(), {"a/0": [http(500, "boom")]})
    queue_reports(store, [mat("a")])
    deliverer = deliverer_for(store, transport, clock)
    retry_at = 0.0
    for attempt in (1, 2, 3):
        summary = deliverer.drain(patience_seconds=0)
        assert transport.sent == ["a/0"] * attempt
        (item,) = pending(store)
        assert (item.attempts, item.last_error) == (attempt, "HTTP 500: boom")
        # A 500 may be about this body alone: it waits out its own backoff, full jitter
        # below 2**(attempts before) seconds, not the gate's shared wait (exactly that long
        # with the jitter at its top).
        next_at = store.next_due_at()
        assert next_at is not None and clock() <= next_at < clock() + 2 ** (attempt - 1)
        assert next_at > retry_at
        retry_at = next_at
        assert (summary.delivered, summary.dead) == (0, 0)
        assert summary.pending_error == summary.last_error == "HTTP 500: boom"
        clock.advance(BACKOFF_MAX_SECONDS + 1)  # past its backoff and the gate's hold
    assert (store.counts().pending, store.counts().dead) == (1, 0)


def test_a_timeout_waits_behind_the_gate_with_growing_backoff(
    store: StateStore, clock: FakeClock
) -> None:
    transport = FakeTransport(settings(), {"a/0": [TIMED_OUT]})
    queue_reports(store, [mat("a")])
    deliverer = deliverer_for(store, transport, clock)
    for attempt, wait_seconds in enumerate((1.0, 2.0, 4.0), start=1):
        summary = deliverer.drain(patience_seconds=0)
        assert transport.sent == ["a/0"] * attempt
        assert store.next_due_at() == clock() + wait_seconds
        (item,) = pending(store)
        assert (item.attempts, item.last_error) == (attempt, TIMED_OUT.detail)
        assert summary.pending_error == TIMED_OUT.detail and summary.delivered == 0
        # Before the wait is over not even a new drain sends it.
        clock.advance(wait_seconds - 0.5)
        deliverer.drain(patience_seconds=0)
        assert transport.sent == ["a/0"] * attempt
        clock.advance(0.5)
    assert store.counts().pending == 1


def test_401_pauses_delivery_drops_nothing_and_resumes_once_accepted(
    store: StateStore, clock: FakeClock
) -> None:
    transport = FakeTransport(settings(max_in_flight=2), default=http(401, "unauthorized"))
    queue_reports(store, [mat(f"k{n}") for n in range(5)])
    deliverer = deliverer_for(store, transport, clock)

    paused = deliverer.drain(patience_seconds=0)
    assert len(transport.sent) == 2  # the first round; a paused drain sends no more
    assert paused.paused and (paused.delivered, paused.dead) == (0, 0)
    assert paused.pending_error is not None and paused.last_error == paused.pending_error
    assert "answered 401" in paused.pending_error
    assert "delivery is paused, nothing is dropped" in paused.pending_error
    assert store.meta("last_error") == paused.pending_error
    assert (store.counts().pending, store.counts().dead) == (5, 0)
    assert [item.attempts for item in pending(store)] == [0] * 5  # no report is blamed

    transport.default = OK  # the token works again
    clock.advance(1.0)  # the gate's hold after one failed round
    resumed = deliverer.drain(patience_seconds=0)
    assert resumed == DrainSummary(delivered=5)
    assert store.counts().pending == 0
    assert sorted(set(transport.sent)) == [f"k{n}/0" for n in range(5)]


# -- order and concurrency ----------------------------------------------------------------


def test_the_next_report_of_a_key_waits_until_the_first_is_acknowledged(
    store: StateStore, clock: FakeClock
) -> None:
    transport = FakeTransport(
        settings(max_in_flight=4),
        held=("a/0", "b/0"),
        snapshot=lambda: store.counts().pending,
    )
    queue_reports(store, [mat("a", 0), mat("a", 1), mat("b", 0)])
    deliverer = deliverer_for(store, transport, clock)
    with running(deliverer):
        poll_until(lambda: transport.in_flight == 2, WAIT_SECONDS, what="a/0 and b/0 sent")
        transport.release("b/0")
        poll_until(lambda: store.counts().pending == 2, WAIT_SECONDS, what="b/0 acknowledged")
        # A new key goes out at once; a/1 still waits behind a/0.
        queue_reports(store, [mat("c", 0)])
        deliverer.wake()
        poll_until(
            lambda: "c/0" in transport.sent and store.counts().pending == 2,
            WAIT_SECONDS,
            what="c/0 sent and acknowledged",
        )
        assert "a/1" not in transport.sent
        transport.release("a/0")
        poll_until(lambda: store.counts().pending == 0, WAIT_SECONDS, what="outbox empty")
    assert sorted(transport.sent[:2]) == ["a/0", "b/0"]
    assert transport.sent[2:] == ["c/0", "a/1"]
    assert transport.seen_at_send["a/1"] == 1  # a/0 was acknowledged: a/1 alone was left


def test_no_more_than_max_in_flight_requests_at_once(store: StateStore, clock: FakeClock) -> None:
    transport = FakeTransport(settings(max_in_flight=3), hold_all=True)
    queue_reports(store, [mat(f"k{n}") for n in range(10)])
    deliverer = deliverer_for(store, transport, clock)
    with running(deliverer):
        poll_until(lambda: transport.in_flight == 3, WAIT_SECONDS, what="three in flight")
        transport.release_all()
        poll_until(lambda: store.counts().pending == 0, WAIT_SECONDS, what="outbox empty")
    assert sorted(transport.sent) == sorted(f"k{n}/0" for n in range(10))
    assert transport.peak_in_flight == 3


# -- repeated partitioned check evaluations (SPEC 6) --------------------------------------


def test_a_partitioned_check_evaluation_dagster_holds_is_set_aside_not_sent(
    store: StateStore, clock: FakeClock
) -> None:
    transport = FakeTransport(settings())
    deliverer = deliverer_for(store, transport, clock)
    queue_reports(store, [check("orders"), check("totals", partition=None)])
    assert deliverer.drain(patience_seconds=0).delivered == 2
    assert store.has_check_evaluation(check("orders").order_key, "row_count")

    queue_reports(store, [check("orders"), mat("orders", 1, PARTITION)])
    queue_reports(store, [check("totals", partition=None)])  # no partition: sent again
    summary = deliverer.drain(patience_seconds=0)
    assert sorted(transport.sent[2:]) == ["orders/1", "totals:row_count"]
    assert (summary.delivered, summary.set_aside, summary.last_error) == (2, 1, None)
    (aside,) = store.set_aside_items()
    assert (aside.order_key, aside.reason) == (check("orders").order_key, REPEAT_NOT_SENT)
    assert (store.counts().pending, store.counts().set_aside) == (0, 1)


@pytest.mark.parametrize("partition", [PARTITION, None])
def test_a_check_evaluation_answered_500_twice(
    store: StateStore, clock: FakeClock, partition: str | None
) -> None:
    """Partitioned: taken for a repeat Dagster refuses, set aside, and its key goes on.
    Without a partition Dagster keeps every evaluation: a 500 is only a 500, retried."""
    transport = FakeTransport(settings(), {"orders:row_count": [http(500, "boom")]})
    queue_reports(store, [check("orders", partition), mat("orders", 1, partition)])
    deliverer = deliverer_for(store, transport, clock)
    first = deliverer.drain(patience_seconds=0)
    assert transport.sent == ["orders:row_count"]
    assert (first.set_aside, first.pending_error) == (0, "HTTP 500: boom")

    clock.advance(BACKOFF_MAX_SECONDS + 1)
    second = deliverer.drain(patience_seconds=0)
    if partition is None:
        assert transport.sent == ["orders:row_count"] * 2
        assert (second.set_aside, second.delivered) == (0, 0)
        assert [item.attempts for item in pending(store)] == [2]
        assert store.set_aside_items() == []
        return
    assert transport.sent == ["orders:row_count", "orders:row_count", "orders/1"]
    assert (second.set_aside, second.delivered, second.last_error) == (1, 1, None)
    (aside,) = store.set_aside_items()
    assert aside.reason == REPEAT_REFUSED
    assert store.has_check_evaluation(check("orders").order_key, "row_count")
    assert store.counts().pending == 0


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        (check("orders"), (check("orders").order_key, "row_count")),
        (check("orders", partition=None), None),
        (mat("orders", partition=PARTITION), None),
    ],
    ids=["partitioned-check", "check-without-partition", "materialization"],
)
def test_partitioned_check(report: Report, expected: tuple[str, str] | None) -> None:
    item = OutboxItem(1, report.kind, report.order_key, json.dumps(report.body), attempts=0)
    assert partitioned_check(item) == expected


# -- the summary of a drain ---------------------------------------------------------------


def test_drain_counts_and_names_the_error_that_left_reports_pending(
    store: StateStore, clock: FakeClock
) -> None:
    script: dict[str, list[Answer | Exception]] = {
        "bad/0": [http(400, "unknown asset")],
        "down/0": [http(503, "unavailable")],
    }
    transport = FakeTransport(settings(), script)
    queue_reports(store, [mat("ok1"), mat("bad"), mat("down"), mat("ok2")])
    summary = deliverer_for(store, transport, clock).drain(patience_seconds=0)
    assert summary == DrainSummary(
        delivered=2,
        dead=1,
        pending_error="HTTP 503: unavailable",
        dead_error="HTTP 400: unknown asset",
    )
    assert summary.last_error == "HTTP 503: unavailable"  # what is still pending comes first
    assert (store.counts().pending, store.counts().dead) == (1, 1)


def test_drain_names_no_error_it_recovered_from(store: StateStore, clock: FakeClock) -> None:
    # Retry-After: 0 sends it again within the same drain, on the same clock reading.
    transport = FakeTransport(settings(), {"flaky/0": [http(503, "busy", retry_after=0.0), OK]})
    queue_reports(store, [mat("flaky")])
    summary = deliverer_for(store, transport, clock).drain(patience_seconds=0)
    assert transport.sent == ["flaky/0", "flaky/0"]
    assert summary == DrainSummary(delivered=1)
    assert summary.last_error is None
    assert store.counts().pending == 0
