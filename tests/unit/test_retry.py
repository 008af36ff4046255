"""The pure retry policy, driven by a fake clock and a fake random source."""

from __future__ import annotations

import math
from email.utils import formatdate

import pytest

from asset_watcher.retry import (
    Gate,
    LogThrottle,
    Verdict,
    backoff_seconds,
    classify,
    is_shared_trouble,
    retry_after_seconds,
)


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (None, Verdict.RETRY),
        (100, Verdict.RETRY),  # an interim answer where the final one belongs
        (103, Verdict.RETRY),
        (200, Verdict.DELIVERED),
        (204, Verdict.DELIVERED),
        (301, Verdict.RETRY),  # a wrong dagster.url: keep, log, retry
        (400, Verdict.DEAD),
        (401, Verdict.PAUSE),
        (403, Verdict.PAUSE),
        (404, Verdict.DEAD),
        (408, Verdict.RETRY),
        (413, Verdict.DEAD),
        (499, Verdict.DEAD),
        (422, Verdict.DEAD),
        (429, Verdict.RETRY),
        (500, Verdict.RETRY),
        (502, Verdict.RETRY),
        (503, Verdict.RETRY),
        (504, Verdict.RETRY),
    ],
)
def test_classify(status: int | None, verdict: Verdict) -> None:
    assert classify(status) is verdict


@pytest.mark.parametrize(
    ("status", "shared"),
    [
        *[(None, True), (408, True), (429, True), (502, True), (503, True), (504, True)],
        *[(500, False), (501, False), (505, False)],
    ],
)
def test_shared_trouble_versus_one_report(status: int | None, shared: bool) -> None:
    assert is_shared_trouble(status) is shared


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    def top(attempt: int, cap: float = 300.0) -> float:
        return backoff_seconds(attempt, cap_seconds=cap, rand=lambda: 1.0)

    assert [top(n) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    assert top(9) == 300.0  # 512 capped
    assert top(10_000) == 300.0  # no overflow
    assert top(3, cap=5.0) == 5.0
    assert backoff_seconds(4, rand=lambda: 0.0) == 0.0  # full jitter reaches down to zero
    assert backoff_seconds(4, rand=lambda: 0.25) == 4.0


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("2", 2.0),
        (" 120 ", 120.0),
        ("soon", None),
        ("-5", None),
        ("1.5", None),  # delta-seconds are whole numbers
        ("²", None),  # str.isdigit() says yes; float() says no
        ("١٢", None),  # Arabic-Indic digits
        ("+5", None),
        ("5 s", None),
        ("99999999999", 99999999999.0),  # uncapped by default
        ("9" * 5000, math.inf),  # more digits than int() takes: float, still no error
        ("Mon, 32 Foo 2026 99:99:99 GMT", None),
        ("Fri, 31 Dec 99999 23:59:59 GMT", None),
    ],
)
def test_retry_after_seconds(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header, now=1_000_000.0) == seconds


def test_retry_after_http_date() -> None:
    now = 1_800_000_000.0
    assert retry_after_seconds(formatdate(now + 90, usegmt=True), now) == 90.0
    assert retry_after_seconds(formatdate(now - 90, usegmt=True), now) == 0.0  # past: now


@pytest.mark.parametrize(
    "header", ["99999999999", "9" * 5000, "Fri, 31 Dec 9999 23:59:59 GMT", "120"]
)
def test_retry_after_is_capped(header: str) -> None:
    assert retry_after_seconds(header, now=1_800_000_000.0, cap_seconds=60.0) == 60.0


def test_retry_after_date_without_zone_is_utc() -> None:
    now = 1_800_000_000.0
    header = formatdate(now + 30, usegmt=True).replace("GMT", "-0000")
    assert retry_after_seconds(header, now) == 30.0


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_gate_open_lets_max_in_flight_through() -> None:
    gate = Gate()
    assert gate.capacity(0.0, in_flight=0, max_in_flight=8) == 8
    assert gate.capacity(0.0, in_flight=5, max_in_flight=8) == 3
    assert gate.capacity(0.0, in_flight=8, max_in_flight=8) == 0


def test_gate_after_failure_holds_then_probes_alone_then_opens() -> None:
    clock = FakeClock()
    gate = Gate(cap_seconds=300, rand=lambda: 1.0)  # always the top of the jitter range
    gate.on_failure(clock(), dispatched_level=0)
    assert (gate.level, gate.hold_until) == (1, clock() + 1.0)
    assert gate.capacity(clock(), 0, 8) == 0  # held
    clock.advance(1.0)
    assert gate.capacity(clock(), 0, 8) == 1  # one probe
    assert gate.capacity(clock(), 1, 8) == 0  # ... alone
    gate.on_failure(clock(), dispatched_level=1)  # the probe failed: back off further
    assert (gate.level, gate.hold_until) == (2, clock() + 2.0)
    clock.advance(2.0)
    gate.on_failure(clock(), dispatched_level=2)
    assert gate.hold_until == clock() + 4.0
    clock.advance(4.0)
    assert gate.on_accepted(clock(), dispatched_level=3) == 7.0  # failing for 7 s
    assert (gate.level, gate.failing_since, gate.failed_attempts) == (0, None, 0)
    assert gate.capacity(clock(), 0, 8) == 8


def test_gate_counts_one_round_of_concurrent_failures_once() -> None:
    clock = FakeClock()
    gate = Gate(rand=lambda: 1.0)
    for _ in range(8):  # eight requests started together, all refused
        gate.on_failure(clock(), dispatched_level=0)
    assert gate.level == 1
    assert gate.hold_until == clock() + 1.0  # not 2**7
    assert gate.failed_attempts == 8


def test_gate_backoff_is_capped_and_jittered() -> None:
    clock = FakeClock()
    draws = iter([1.0] * 20 + [0.5])
    gate = Gate(cap_seconds=10, rand=lambda: next(draws))
    waits = []
    for level in range(20):
        gate.on_failure(clock(), dispatched_level=level)
        waits.append(gate.hold_until - clock())
        clock.now = gate.hold_until
    assert waits[:5] == [1.0, 2.0, 4.0, 8.0, 10.0]
    assert set(waits[4:]) == {10.0}
    gate.on_failure(clock(), dispatched_level=gate.level)
    assert gate.hold_until == clock() + 5.0  # half of the cap with rand() = 0.5


def test_gate_ignores_answers_to_requests_started_before_the_failure() -> None:
    clock = FakeClock()
    gate = Gate(rand=lambda: 1.0)
    gate.on_failure(clock(), dispatched_level=0)  # the first of eight refused
    # Another of those eight had been answered just before: it proves nothing now.
    assert gate.on_accepted(clock(), dispatched_level=0) is None
    assert (gate.level, gate.failed_attempts) == (1, 1)
    clock.advance(1.0)
    assert gate.capacity(clock(), 0, 8) == 1  # still probing
    assert gate.on_accepted(clock(), dispatched_level=1) == 1.0  # the probe got through
    assert gate.capacity(clock(), 0, 8) == 8
    assert gate.on_accepted(clock(), dispatched_level=0) is None  # already open


def test_gate_honours_retry_after_even_from_a_stale_request() -> None:
    clock = FakeClock()
    gate = Gate(rand=lambda: 0.0)
    gate.on_failure(clock(), dispatched_level=0, retry_after_seconds=2.0)
    assert gate.hold_until == clock() + 2.0
    # Another request of the same round answers 429 with a longer wait.
    gate.on_failure(clock(), dispatched_level=0, retry_after_seconds=7.0)
    assert (gate.level, gate.hold_until) == (1, clock() + 7.0)
    # A success in between does not cancel what the server asked for.
    gate.on_accepted(clock(), dispatched_level=1)
    assert gate.capacity(clock() + 6.9, 0, 8) == 0
    assert gate.capacity(clock() + 7.0, 0, 8) == 8


def test_gate_bounds_an_absurd_retry_after_by_the_backoff_cap() -> None:
    gate = Gate(cap_seconds=42.0)
    gate.on_failure(0.0, dispatched_level=0, retry_after_seconds=10 * 86400)
    assert gate.hold_until == 42.0
    gate.on_failure(1.0, dispatched_level=0, retry_after_seconds=math.inf)  # a stale one
    assert gate.hold_until == 43.0


def test_gate_pause_on_auth_probes_with_backoff_until_accepted() -> None:
    clock = FakeClock()
    gate = Gate(rand=lambda: 1.0)
    for _ in range(4):  # a round of four all answered 401
        gate.on_failure(clock(), dispatched_level=0, pause=True)
    assert gate.paused and gate.level == 1
    clock.advance(1.0)
    assert gate.capacity(clock(), 0, 4) == 1
    gate.on_failure(clock(), dispatched_level=1, pause=True)
    assert gate.hold_until == clock() + 2.0
    clock.advance(2.0)
    assert gate.on_accepted(clock(), dispatched_level=2) == 3.0
    assert not gate.paused
    assert gate.capacity(clock(), 0, 4) == 4


def test_log_throttle_once_per_interval_counting_the_rest() -> None:
    clock = FakeClock()
    throttle = LogThrottle(60.0)
    assert throttle.ready(clock())
    for _ in range(5):
        clock.advance(10)
        assert not throttle.ready(clock())
    clock.advance(10)  # 60 s after the first message
    assert throttle.ready(clock())
    assert throttle.take_suppressed() == 5
    assert throttle.take_suppressed() == 0
    assert not throttle.ready(clock())
    throttle.reset()  # a new episode logs at once
    assert throttle.ready(clock())
