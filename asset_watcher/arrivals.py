"""Expected arrivals (SPEC 15): which due time a file is for, and windows that closed.

Each due time of a rule's [watch.expect] gets exactly one `arrived_on_time` evaluation
(Dagster keeps one per asset, check and partition), judged once and remembered in the
state (`expected_windows`):

- a file for the due time recorded before its window's deadline (due time + grace):
  passing, queued right after the file's own reports in the same transaction;
- the deadline passes without one: failed, `missing = true`, with the configured
  severity, queued by the agent's timer (`WindowTimer`), which at start also judges the
  windows that closed while the agent was stopped (deadlines in the last 7 days, due
  times since the agent first ran with the expectation);
- a file for a window that closed already: `due_at` and `lateness_seconds` in its own
  metadata, no second evaluation.

Which file is for which due time:

- with `expect.partition`, the file whose rendered partition (the rule's `partition`)
  equals the due time's (the nearest such due time whose window is open; else the latest
  closed one, which makes the file late);
- without it, a file recorded at T is late for the latest closed window if that window
  was missed, no late file claimed it yet, and T is before the next due time; otherwise
  it is for the earliest window not judged yet with previous due time < T <= deadline
  (T before the due time: early, negative lateness). So one late file fills one missed
  window; any other file after a due time counts for the next one (early). Where files
  are for a given day, a partition template says which.

"Arrived" means recorded by the agent (what it can vouch for; a preserved mtime says
nothing), so a file dropped while the agent was stopped is late if its window closed
meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from asset_watcher.expect import Schedule, zone
from asset_watcher.model import FileMatch, Report
from asset_watcher.reports import check_report
from asset_watcher.rules import Rule
from asset_watcher.state import StateStore, Window

log = logging.getLogger(__name__)

ON_TIME = "on_time"
MISSED = "missed"
# Windows that closed longer ago than this are not judged (a long outage would otherwise
# flood Dagster with failed evaluations nobody can act on anymore).
CATCH_UP_SECONDS = 7 * 86400
# How many due times a file's partition is looked for among, each way.
PARTITION_SEARCH_LIMIT = 2000


@dataclass(frozen=True)
class Expectation:
    """A rule's [watch.expect], compiled."""

    rule: str
    asset_key: tuple[str, ...]
    schedule: Schedule
    partition: str | None  # template over the due time
    check_name: str
    severity: str

    def partition_of(self, due: float) -> str | None:
        return None if self.partition is None else self.schedule.partition(self.partition, due)

    def iso(self, moment: float) -> str:
        return self.schedule.local(moment).isoformat()


def expectation_of(rule: Rule) -> Expectation | None:
    expect = rule.settings.expect
    if expect is None:
        return None
    fields = {"rule": rule.name, "host": rule.host}  # all an expected asset key may use
    key = tuple(p for p in rule.settings.asset_key.format_map(fields).split("/") if p)
    schedule = Schedule(expect.cron, zone(expect.timezone), round(expect.grace_minutes * 60))
    return Expectation(
        rule.name, key, schedule, expect.partition, expect.check_name, expect.severity
    )


def expectations(rules: Iterable[Rule]) -> dict[str, Expectation]:
    found = {}
    for rule in rules:
        expectation = expectation_of(rule)
        if expectation is not None:
            found[rule.name] = expectation
    return found


# -- a file's arrival ---------------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    """What a recorded file means for its rule's expectation."""

    window: Window  # judged with the file (or, when late, the late arrival noted)
    reports: tuple[Report, ...]  # queued after the file's own: its evaluation, if any
    late_metadata: Mapping[str, Any] | None = None  # added to the file's own report


def file_arrival(
    expectation: Expectation,
    match: FileMatch,
    at: float,
    store: StateStore,
    since: float | None,
) -> Arrival | None:
    """The window a file recorded at `at` is for, judged with what the state holds; None
    when it is for none (a partition no due time has, a window judged already)."""
    grace = expectation.schedule.grace_seconds
    judged = store.windows(
        expectation.rule, at - CATCH_UP_SECONDS - grace, at + CATCH_UP_SECONDS + grace
    )
    if expectation.partition is not None:
        if match.partition is None:
            return None
        return _partitioned(expectation, match, at, judged, since)
    return _unpartitioned(expectation, match, at, judged, since)


def _partitioned(
    expectation: Expectation,
    match: FileMatch,
    at: float,
    judged: Mapping[int, Window],
    since: float | None,
) -> Arrival | None:
    schedule = expectation.schedule
    closes_from = at - schedule.grace_seconds  # a due time from here on has an open window
    for index, due in enumerate(schedule.due_times(closes_from - 1)):
        if index >= PARTITION_SEARCH_LIMIT or due > at + CATCH_UP_SECONDS:
            break
        if expectation.partition_of(due) == match.partition:
            window = judged.get(due)
            if window is not None and window.outcome == MISSED:
                # Judged missed a moment ago (its deadline fell within the last second,
                # which this loop still looks at): the file is late for it.
                return _late(expectation, due, at, window, since)
            if window is not None:
                return None  # passed already (a file sent again): Dagster holds the answer
            return _on_time(expectation, match, due, at)
    for index, due in enumerate(schedule.due_times_before(closes_from)):
        if index >= PARTITION_SEARCH_LIMIT or schedule.deadline(due) < at - CATCH_UP_SECONDS:
            break
        if expectation.partition_of(due) == match.partition:
            return _late(expectation, due, at, judged.get(due), since)
    return None


def _unpartitioned(
    expectation: Expectation,
    match: FileMatch,
    at: float,
    judged: Mapping[int, Window],
    since: float | None,
) -> Arrival | None:
    schedule = expectation.schedule
    closes_from = at - schedule.grace_seconds
    closed = schedule.previous_due(closes_from)
    if closed is not None and at < schedule.next_due(closed):
        window = judged.get(closed)
        unclaimed = window is not None and window.outcome == MISSED and window.arrived_at is None
        if unclaimed or (window is None and since is not None and closed >= since):
            return _late(expectation, closed, at, window, since)
    previous = closed
    for index, due in enumerate(schedule.due_times(closes_from - 1)):
        if index >= PARTITION_SEARCH_LIMIT or (previous is not None and previous >= at):
            break
        if due not in judged:
            return _on_time(expectation, match, due, at)
        previous = due
    return None


def _on_time(expectation: Expectation, match: FileMatch, due: int, at: float) -> Arrival:
    metadata = {
        "due_at": expectation.iso(due),
        "deadline": expectation.iso(expectation.schedule.deadline(due)),
        "arrived_at": expectation.iso(at),
        "lateness_seconds": round(at - due, 3),
        "path": match.relpath,
    }
    report = check_report(
        expectation.asset_key,
        expectation.check_name,
        passed=True,
        severity=expectation.severity,
        metadata=metadata,
        partition=expectation.partition_of(due),
    )
    return Arrival(Window(expectation.rule, due, ON_TIME), (report,))


def _late(
    expectation: Expectation,
    due: int,
    at: float,
    window: Window | None,
    since: float | None,
) -> Arrival:
    late = {"due_at": expectation.iso(due), "lateness_seconds": round(at - due, 3)}
    reports: tuple[Report, ...] = ()
    if window is None and since is not None and due >= since:
        # Closed a moment ago and not judged yet by the timer: judged now, with the file.
        reports = (missed_report(expectation, due),)
    return Arrival(Window(expectation.rule, due, MISSED, at), reports, late)


def with_arrival(reports: Sequence[Report], arrival: Arrival) -> tuple[Report, ...]:
    """A file's reports with what its arrival adds: lateness in its own report (the
    first), its evaluation after all of them."""
    found = list(reports)
    if arrival.late_metadata and found:
        first = found[0]
        body = dict(first.body)
        body["metadata"] = {**body.get("metadata", {}), **arrival.late_metadata}
        found[0] = replace(first, body=body)
    return (*found, *arrival.reports)


def missed_report(expectation: Expectation, due: int) -> Report:
    metadata = {
        "due_at": expectation.iso(due),
        "deadline": expectation.iso(expectation.schedule.deadline(due)),
        "missing": True,
    }
    return check_report(
        expectation.asset_key,
        expectation.check_name,
        passed=False,
        severity=expectation.severity,
        metadata=metadata,
        partition=expectation.partition_of(due),
    )


# -- windows that closed -------------------------------------------------------------------


def closed_windows(
    expectation: Expectation, since: float, now: float, judged: Mapping[int, Window]
) -> list[tuple[Window, Report]]:
    """The windows that closed by `now` without being judged, due since `since` and with
    a deadline in the last CATCH_UP_SECONDS: each missed, with its failed evaluation."""
    schedule = expectation.schedule
    first = max(since, now - CATCH_UP_SECONDS - schedule.grace_seconds)
    return [
        (Window(expectation.rule, due, MISSED), missed_report(expectation, due))
        for due in schedule.due_between(first - 1e-3, now - schedule.grace_seconds)
        if due >= since and due not in judged
    ]


class WindowTimer:
    """The agent's timer: judges each window that closes, once, from the main loop."""

    def __init__(
        self, store: StateStore, rules: Sequence[Rule], clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.clock = clock
        self.set_rules(rules)

    def set_rules(self, rules: Sequence[Rule]) -> None:
        now = self.clock()
        self.expectations = expectations(rules)
        self.since = {name: self.store.expectation_since(name, now) for name in self.expectations}
        self._next_at = 0.0  # judge at the next tick

    def tick(self) -> int:
        """Judge the windows closed by now (cheap until the next deadline); returns how
        many evaluations were queued."""
        now = self.clock()
        if now < self._next_at:
            return 0
        queued = 0
        next_at = float("inf")
        for name, expectation in self.expectations.items():
            schedule = expectation.schedule
            judged = self.store.windows(name, now - CATCH_UP_SECONDS * 2, now)
            missed = closed_windows(expectation, self.since[name], now, judged)
            if missed:
                count = self.store.queue_window_reports(missed)
                queued += count
                for window, _ in missed[-3:]:
                    log.warning(
                        "%s: no file arrived for %s (window closed at %s)",
                        name,
                        expectation.iso(window.due_at),
                        expectation.iso(schedule.deadline(window.due_at)),
                    )
                if len(missed) > 3:
                    log.warning("%s: %d windows missed in all", name, len(missed))
            upcoming = schedule.next_due(now - schedule.grace_seconds)
            next_at = min(next_at, schedule.deadline(upcoming))
        self._next_at = next_at
        return queued


# -- what `status` and `explain` show -------------------------------------------------------

OVERVIEW_LISTED = 20  # missed windows listed per rule


@dataclass(frozen=True)
class WindowsOverview:
    """A rule's expectation as `status` shows it, times in the expectation's zone."""

    rule: str
    next_due: str
    next_partition: str | None
    overdue: tuple[str, ...]  # due, window still open, no file for it yet
    missed: tuple[str, ...]  # closed without a file (and none came late), latest first


def overview(
    expectation: Expectation, store: StateStore, now: float, since: float | None
) -> WindowsOverview:
    schedule = expectation.schedule
    grace = schedule.grace_seconds
    judged = store.windows(expectation.rule, now - CATCH_UP_SECONDS - grace, now + grace)
    upcoming = schedule.next_due(now)
    overdue = [
        expectation.iso(due)
        for due in schedule.due_between(now - grace - 1e-3, now)
        if due not in judged and (since is None or due >= since)
    ]
    missed = sorted(
        (w.due_at for w in judged.values() if w.outcome == MISSED and w.arrived_at is None),
        reverse=True,
    )
    return WindowsOverview(
        expectation.rule,
        expectation.iso(upcoming),
        expectation.partition_of(upcoming),
        tuple(overdue),
        tuple(expectation.iso(due) for due in missed[:OVERVIEW_LISTED]),
    )
