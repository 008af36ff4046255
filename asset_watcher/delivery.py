"""The Deliverer: the concurrent drain of the outbox into Dagster.

One thread decides: it claims due reports from the state store, hands them to sender
threads that only do HTTP (through a `Transport`: `reporter.Reporter`), keeps the reports
of each order key strictly in order, and records each answer: a 2xx acknowledges, a 4xx
dead-letters, anything else is retried behind one shared gate.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from asset_watcher import metrics
from asset_watcher.model import EventKind, dynamic_partition_of
from asset_watcher.reporter import Answer
from asset_watcher.retry import (
    Gate,
    LogThrottle,
    Verdict,
    backoff_seconds,
    is_shared_trouble,
)
from asset_watcher.settings import DagsterSettings
from asset_watcher.state import OutboxItem, StateStore, order_key_parts

log = logging.getLogger(__name__)


class Transport(Protocol):
    """What the Deliverer uses of `reporter.Reporter` (tests pass a fake): its settings,
    and requests from any number of sender threads at once."""

    settings: DagsterSettings

    def post(self, kind: EventKind, body: str) -> Answer:
        """Send one stored body and classify what came back; never raises for network
        trouble."""
        ...

    def scrub(self, text: str) -> str:
        """`text` with the token masked."""
        ...


def _second_500(item: OutboxItem) -> bool:
    """Whether the attempt before this one was answered 500 as well."""
    return item.attempts >= 1 and (item.last_error or "").startswith("HTTP 500:")


def describe(item: OutboxItem) -> str:
    """`materialization of acme/orders [2026-11-26]`, for log lines."""
    key, partition = order_key_parts(item.order_key)
    what = "dynamic partition add" if item.kind is EventKind.PARTITION else item.kind.value
    return f"{what} of {'/'.join(key)}" + (f" [{partition}]" if partition else "")


def added_partition(item: OutboxItem) -> tuple[str, str] | None:
    """(partitions definition, key) a dynamic partition add names, else None."""
    if item.kind is not EventKind.PARTITION:
        return None
    try:
        body = json.loads(item.body)
    except ValueError:
        return None
    return dynamic_partition_of(body) if isinstance(body, dict) else None


def partitioned_check(item: OutboxItem) -> tuple[str, str] | None:
    """(order key, check name) of a partitioned check evaluation, else None: Dagster keeps
    one of those per asset, check and partition (SPEC 6)."""
    if item.kind is not EventKind.CHECK or order_key_parts(item.order_key)[1] is None:
        return None
    try:
        name = json.loads(item.body)["check_name"]
    except (ValueError, KeyError, TypeError):
        return None
    return (item.order_key, name) if isinstance(name, str) else None


def describe_check(item: OutboxItem) -> str:
    """`check row_count of acme/orders [2026-11-26] (failed)`, for log lines."""
    try:
        body = json.loads(item.body)
        name, passed = body["check_name"], body.get("passed")
    except (ValueError, KeyError, TypeError):
        return describe(item)
    key, partition = order_key_parts(item.order_key)
    outcome = " (passed)" if passed is True else " (failed)" if passed is False else ""
    return f"check {name} of {'/'.join(key)} [{partition}]{outcome}"


# Why a partitioned check evaluation was set aside (shown by `status`).
REPEAT_NOT_SENT = (
    "not sent: Dagster keeps one evaluation per asset, check and partition, and it holds "
    "this partition's already"
)
REPEAT_REFUSED = (
    "Dagster answered 500 twice: it keeps one evaluation per asset, check and partition "
    "(a repeat is written to its event log, then refused); not sent again"
)


def auth_message(answer: Answer, item: OutboxItem) -> str:
    return (
        f"Dagster answered {answer.status} for the {describe(item)}: the API token is "
        "missing, wrong or lacks permission (set $DAGSTER_CLOUD_API_TOKEN, dagster.token_file "
        "or the dagster-token credential); delivery is paused, nothing is dropped"
    )


# How soon `run` notices its stop event when nobody calls wake().
STOP_CHECK_SECONDS = 0.2
# Read the outbox again this often even when nothing is due: `retry-dead` run from
# another process adds reports this process was not told about.
IDLE_RECHECK_SECONDS = 5.0
# At most one log line per this many seconds for each kind of ongoing trouble.
LOG_INTERVAL_SECONDS = 60.0
# Due reports read per outbox query, at least; each query scans the queued heads.
FETCH_MIN = 64


@dataclass
class DrainSummary:
    delivered: int = 0
    dead: int = 0
    set_aside: int = 0  # repeated partitioned check evaluations (SPEC 6)
    paused: bool = False
    pending_error: str | None = None  # the pause, or the latest failure still pending
    dead_error: str | None = None  # the latest dead letter's

    @property
    def last_error(self) -> str | None:
        """What left reports undelivered or dead at the end (an error retried and then
        recovered from is not named), or None."""
        return self.pending_error or self.dead_error


@dataclass(frozen=True)
class _Flight:
    """A report handed to a sender thread."""

    item: OutboxItem
    level: int  # the gate's level when it started: failures of one round count once
    check: tuple[str, str] | None  # partitioned_check(item), read once
    partition: tuple[str, str] | None = None  # added_partition(item), read once


_Result = tuple[_Flight, Answer]
# What wakes the deciding thread: an answer, or None from `wake()` (new work, or stop).
_Signal = _Result | None


class Deliverer:
    """Delivers the outbox: up to `max_in_flight` requests at once over one reporter, the
    reports of each order key strictly one after the other, retries behind a shared gate.

    One thread, the caller of `run` or `drain`, decides everything: it reads due reports,
    hands them to sender threads that only do HTTP, and records each answer in the store.
    Senders never touch the store, so its lock is never held across a request. A report
    leaves the outbox only on a 2xx (or into the dead letters on a 4xx), so a crash at any
    moment loses nothing and repeats at most the requests in flight.
    """

    def __init__(
        self, store: StateStore, reporter: Transport, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.reporter = reporter
        self.clock = clock
        settings = reporter.settings
        self.max_in_flight = settings.max_in_flight
        self.backoff_max_seconds = settings.backoff_max_seconds
        # On stop, requests in flight get this long to finish (each has its own timeout).
        self.finish_seconds = settings.timeout_seconds + 1.0
        self.idle_recheck_seconds = IDLE_RECHECK_SECONDS
        self.gate = Gate(cap_seconds=settings.backoff_max_seconds)
        # Answers and wake-ups arrive on one queue: the deciding thread blocks on it alone.
        self._signals: queue.SimpleQueue[_Signal] = queue.SimpleQueue()
        self._wake_queued = False  # a None is on its way: wake() need not send another
        self._early: list[_Result] = []  # answers taken off the queue by a wait
        self._new_work = True
        self._serving = threading.Lock()
        self._in_flight: dict[int, _Flight] = {}
        self._ready: deque[OutboxItem] = deque()  # due heads read ahead, oldest first
        self._look_again_at = 0.0
        self._failed_ids: set[int] = set()  # failed since the last success
        self._failure_log = LogThrottle(LOG_INTERVAL_SECONDS)
        self._auth_log = LogThrottle(LOG_INTERVAL_SECONDS)
        self._dead_log = LogThrottle(LOG_INTERVAL_SECONDS)
        self._summary = DrainSummary()
        # This serve's reports that failed and are still pending, with their last error.
        self._unresolved: dict[int, str] = {}
        self._pause_message: str | None = None
        self._dead_error: str | None = None
        # The outbox gauges read this store when scraped (a no-op without metrics).
        metrics.set_outbox_source(self._outbox_counts)

    # -- public ------------------------------------------------------------------------

    def wake(self) -> None:
        """New reports were queued (or stop was set): look at the outbox now."""
        self._new_work = True
        if not self._wake_queued:
            self._wake_queued = True
            self._signals.put(None)

    def run(self, stop: threading.Event) -> None:
        """Deliver until `stop` is set; then give requests in flight up to the request
        timeout to finish, and leave everything else in the outbox.

        `stop` is checked every STOP_CHECK_SECONDS; call `wake()` after setting it to
        end the wait at once. Raises StateError when the state database fails.
        """
        self._serve(stop, None)

    def drain(self, patience_seconds: float) -> DrainSummary:
        """Deliver everything pending, then return once the outbox is empty, delivery is
        paused by a 401/403, or the next attempt would come more than `patience_seconds`
        after the last progress (so a long but healthy drain is never cut short).

        A drain starts afresh: reports an earlier process backed off are tried now, not
        at the retry time it stored (which may lie beyond this drain's patience, and the
        outage may be over: an operator runs `scan` again for that)."""
        self.store.make_all_due()
        return self._serve(None, patience_seconds)

    # -- the loop ----------------------------------------------------------------------

    def _serve(self, stop: threading.Event | None, patience: float | None) -> DrainSummary:
        if not self._serving.acquire(blocking=False):
            raise RuntimeError("this Deliverer is already running")
        summary = self._summary = DrainSummary()
        self._unresolved.clear()
        self._pause_message = self._dead_error = None
        self._ready.clear()
        self._new_work = True
        jobs: queue.SimpleQueue[_Flight | None] = queue.SimpleQueue()
        # A fresh queue: answers a stuck sender of an earlier run brings back are not ours.
        results = self._signals = queue.SimpleQueue()
        self._wake_queued = False
        self._early = []
        workers = [
            threading.Thread(
                target=self._send_loop, args=(jobs, results), name=f"deliver-{n}", daemon=True
            )
            for n in range(self.max_in_flight)
        ]
        for worker in workers:
            worker.start()
        clean = False
        try:
            self._loop(stop, patience, jobs, results)
            clean = True
        finally:
            try:
                if clean:
                    self._let_in_flight_finish(results)
            finally:
                self._stop_senders(jobs, workers)
                self._serving.release()
        summary.pending_error = self._pending_error()
        summary.dead_error = self._dead_error
        return summary

    def _pending_error(self) -> str | None:
        """The error that left reports undelivered: a pause, or the latest failure of a
        report still pending."""
        if self._summary.paused and self._pause_message:
            return self._pause_message
        if self._unresolved:
            *_, latest = self._unresolved.values()
            return latest
        return None

    def _loop(
        self,
        stop: threading.Event | None,
        patience: float | None,
        jobs: queue.SimpleQueue[_Flight | None],
        results: queue.SimpleQueue[_Signal],
    ) -> None:
        draining = patience is not None
        give_up_at = self.clock() + patience if patience is not None else math.inf
        while True:
            if self._collect(results) and patience is not None:
                give_up_at = self.clock() + patience
            if stop is not None and stop.is_set():
                return
            now = self.clock()
            if draining and self._summary.paused:
                if not self._in_flight:
                    return  # `scan` reports the pause; `run` would keep probing
            else:
                self._dispatch(now, jobs)
            if draining and not self._in_flight:
                next_at = self._next_attempt_at(now)
                if next_at is None or next_at > give_up_at:
                    return
            self._wait(results, self._wait_seconds(now, polling_stop=stop is not None))

    def _wait(self, results: queue.SimpleQueue[_Signal], seconds: float) -> None:
        """Until an answer or a wake-up arrives, or `seconds` pass."""
        try:
            signal = results.get(timeout=seconds) if seconds > 0 else results.get_nowait()
        except queue.Empty:
            return
        if signal is None:
            self._wake_queued = False  # before `_new_work` is read: no wake-up is lost
        else:
            self._early.append(signal)

    def _dispatch(self, now: float, jobs: queue.SimpleQueue[_Flight | None]) -> None:
        room = self.gate.capacity(now, len(self._in_flight), self.max_in_flight)
        while room > 0:
            item = self._take(now)
            if item is None:
                return
            check = partitioned_check(item)
            if check is not None and self._is_repeated_evaluation(item, check):
                continue
            flight = _Flight(item, self.gate.level, check, added_partition(item))
            self._in_flight[item.id] = flight
            jobs.put(flight)
            room -= 1

    def _take(self, now: float) -> OutboxItem | None:
        """The oldest due head whose order key is not in flight, or None."""
        if not self._ready:
            if not self._new_work and now < self._look_again_at:
                return None
            self._new_work = False
            busy = self._busy_keys()
            fetch = max(FETCH_MIN, 4 * self.max_in_flight)
            self._ready.extend(self.store.due(now, limit=fetch, busy_keys=busy))
            if not self._ready:
                next_at = self.store.next_due_at(busy)
                self._look_again_at = min(
                    next_at if next_at is not None else math.inf, now + self.idle_recheck_seconds
                )
                return None
        return self._ready.popleft()

    def _is_repeated_evaluation(self, item: OutboxItem, check: tuple[str, str]) -> bool:
        """A partitioned check evaluation Dagster already holds is set aside, not sent:
        Dagster would write it to its event log and answer 500 (SPEC 6)."""
        if not self.store.has_check_evaluation(*check):
            return False
        self.store.set_aside(item.id, REPEAT_NOT_SENT, check)
        self._summary.set_aside += 1
        self._new_work = True  # the next report of its key is the head now
        metrics.report_outcome(item.kind.value, "set_aside")
        log.info(
            "not sending the %s: Dagster keeps one evaluation per asset, check and "
            "partition and already holds this partition's (`asset-watcher status` lists it)",
            describe_check(item),
        )
        return True

    def _busy_keys(self) -> set[str]:
        return {flight.item.order_key for flight in self._in_flight.values()}

    def _next_attempt_at(self, now: float) -> float | None:
        """When something could be sent next (nothing is in flight); None if nothing waits."""
        if self._ready:
            return max(now, self.gate.hold_until)
        due_at = self.store.next_due_at(self._busy_keys())
        return None if due_at is None else max(due_at, self.gate.hold_until)

    def _wait_seconds(self, now: float, *, polling_stop: bool) -> float:
        wake_at = now + self.idle_recheck_seconds
        if self.gate.hold_until > now:
            wake_at = min(wake_at, self.gate.hold_until)
        room = self.gate.capacity(now, len(self._in_flight), self.max_in_flight)
        if room > 0 and not self._ready:
            wake_at = min(wake_at, now if self._new_work else self._look_again_at)
        delay = max(0.0, wake_at - now)
        return min(delay, STOP_CHECK_SECONDS) if polling_stop else delay

    # -- senders -----------------------------------------------------------------------

    def _send_loop(
        self, jobs: queue.SimpleQueue[_Flight | None], results: queue.SimpleQueue[_Signal]
    ) -> None:
        while (flight := jobs.get()) is not None:
            try:
                answer = self.reporter.post(flight.item.kind, flight.item.body)
            except Exception as exc:  # not the network: this report cannot be sent as is
                detail = self.reporter.scrub(f"cannot send this report: {exc!r}")
                log.error("%s, moved to the dead letters: %s", describe(flight.item), detail)
                answer = Answer(Verdict.DEAD, None, detail)
            results.put((flight, answer))

    def _let_in_flight_finish(self, results: queue.SimpleQueue[_Signal]) -> None:
        deadline = time.monotonic() + self.finish_seconds
        while self._in_flight:
            self._collect(results)
            remaining = deadline - time.monotonic()
            if not self._in_flight or remaining <= 0:
                break
            self._wait(results, remaining)
        if self._in_flight:
            log.warning(
                "%d report(s) still in flight after %.0fs; they stay in the outbox and are "
                "sent again on the next start",
                len(self._in_flight),
                self.finish_seconds,
            )
            self._in_flight.clear()

    def _stop_senders(
        self, jobs: queue.SimpleQueue[_Flight | None], workers: list[threading.Thread]
    ) -> None:
        self._in_flight.clear()
        for _ in workers:
            jobs.put(None)
        deadline = time.monotonic() + 1.0
        for worker in workers:  # idle ones end at once; a stuck request is left behind
            worker.join(timeout=max(0.0, deadline - time.monotonic()))

    # -- answers -----------------------------------------------------------------------

    def _collect(self, results: queue.SimpleQueue[_Signal]) -> bool:
        """Record every answer that came back; True if any was progress (not a failure)."""
        answers, self._early = self._early, []
        while True:
            try:
                signal = results.get_nowait()
            except queue.Empty:
                break
            if signal is None:
                self._wake_queued = False
            else:
                answers.append(signal)
        # One transaction acknowledges every delivered report of this round.
        delivered = [flight for flight, answer in answers if answer.verdict is Verdict.DELIVERED]
        self.store.ack_many(
            [flight.item.id for flight in delivered],
            [flight.check for flight in delivered if flight.check is not None],
            [flight.partition for flight in delivered if flight.partition is not None],
        )
        progress = False
        for flight, answer in answers:
            self._in_flight.pop(flight.item.id, None)
            self._new_work = True
            progress = self._settle(flight, answer) or progress
        return progress

    def _settle(self, flight: _Flight, answer: Answer) -> bool:
        """Account for one answer; a delivered report was already acknowledged."""
        item, now = flight.item, self.clock()
        kind = item.kind.value
        self._unresolved.pop(item.id, None)
        if answer.verdict is Verdict.DELIVERED:
            self._summary.delivered += 1
            metrics.report_outcome(kind, "delivered")
            self._on_accepted(now, flight.level)
            return True
        if answer.verdict is Verdict.DEAD:
            self._dead_letter(item, answer.detail)
            self._dead_error = answer.detail
            metrics.report_outcome(kind, "dead")
            if answer.status is None:
                return True  # never reached Dagster (the sender logged why): proves nothing
            if self._dead_log.ready(now):
                more = self._dead_log.take_suppressed()
                log.error(
                    "Dagster rejected the %s, moved to the dead letters (`asset-watcher "
                    "status` lists them, `asset-watcher retry-dead` requeues them): %s%s",
                    describe(item),
                    answer.detail,
                    f" ({more} more dead-lettered since the last message)" if more else "",
                )
            self._on_accepted(now, flight.level)  # Dagster is up and read the request
            return True
        self._ready.clear()  # older reports may be due again before those read ahead
        if answer.verdict is Verdict.PAUSE:
            message = auth_message(answer, item)
            self.gate.on_failure(now, flight.level, pause=True)
            self.store.note_error(message)
            self._summary.paused = True
            self._pause_message = message
            metrics.report_outcome(kind, "unauthorized")
            metrics.set_paused(True)
            if self._auth_log.ready(now):
                log.error("%s", message)
            return False
        if answer.status == 500 and flight.check is not None and _second_500(item):
            self._set_aside_refused(flight, flight.check, now)
            return True
        self._unresolved[item.id] = answer.detail
        self._retry(flight, answer, now)
        return False

    def _dead_letter(self, item: OutboxItem, detail: str) -> None:
        """Into the dead letters; a dynamic partition add takes the reports queued behind
        it along (SPEC 16: they would reach Dagster for a key it does not list), so the
        next of its key cannot go first unnoticed; `retry-dead` requeues them in order."""
        if item.kind is not EventKind.PARTITION:
            self.store.dead_letter(item.id, detail)
            self._summary.dead += 1
            return
        followers = self.store.dead_letter_with_followers(
            item.id, detail, f"not sent: the {describe(item)} before it failed: {detail}"
        )
        self._summary.dead += 1 + followers
        if followers:
            log.error(
                "the %s failed, so the %d report(s) queued behind it were moved to the dead "
                "letters too (`asset-watcher retry-dead` requeues them in order): %s",
                describe(item),
                followers,
                detail,
            )

    def _set_aside_refused(self, flight: _Flight, check: tuple[str, str], now: float) -> None:
        """A partitioned check evaluation answered 500 twice in a row: most likely one
        Dagster already holds (from an earlier release, another agent, the UI). Each try
        wrote one more copy to Dagster's event log: stop, keep its key going."""
        item = flight.item
        self.store.set_aside(item.id, REPEAT_REFUSED, check)
        self._summary.set_aside += 1
        self._failed_ids.discard(item.id)
        metrics.report_outcome(item.kind.value, "set_aside")
        log.warning(
            "Dagster answered 500 twice to the %s; it keeps one evaluation per asset, check "
            "and partition, so this is taken for a repeat and not sent again "
            "(`asset-watcher status` lists it); the reports after it go on",
            describe_check(item),
        )
        self._on_accepted(now, flight.level)  # Dagster is up and read the request

    def _retry(self, flight: _Flight, answer: Answer, now: float) -> None:
        item, gate = flight.item, self.gate
        retry_after = answer.retry_after_seconds  # the server's wish, already capped
        gate.on_failure(now, flight.level, retry_after)
        if retry_after is None and not is_shared_trouble(answer.status):
            # Perhaps this body alone upsets Dagster (a 500): it waits on its own.
            next_at = now + backoff_seconds(item.attempts, cap_seconds=self.backoff_max_seconds)
        else:
            next_at = max(gate.hold_until, now + (retry_after or 0.0))
        self.store.retry_later(item.id, next_at, answer.detail)
        self._failed_ids.add(item.id)
        metrics.report_outcome(item.kind.value, "retried")
        metrics.retried("network" if answer.status is None else f"http_{answer.status}")
        log.debug("%s failed (%s), retry in %.1fs", describe(item), answer.detail, next_at - now)
        if not self._failure_log.ready(now):
            return
        wait_seconds = max(0.0, gate.hold_until - now)
        if gate.failed_attempts == 1:
            log.warning(
                "cannot deliver the %s to Dagster: %s; retrying with backoff (next attempt "
                "in %.1fs), reports stay in the outbox",
                describe(item),
                answer.detail,
                wait_seconds,
            )
        else:
            since = now - (gate.failing_since if gate.failing_since is not None else now)
            log.warning(
                "still cannot deliver to Dagster after %.0fs (%d failed attempts): %s; "
                "next attempt in %.0fs, reports stay in the outbox",
                since,
                gate.failed_attempts,
                answer.detail,
                wait_seconds,
            )

    def _on_accepted(self, now: float, dispatched_level: int) -> None:
        gate = self.gate
        paused, attempts = gate.paused, gate.failed_attempts
        failing_for = gate.on_accepted(now, dispatched_level)
        if failing_for is None:
            return  # was not failing, or this answer is older than the latest failure
        if len(self._failed_ids) > 1:
            # Several reports failed together: an outage, not one bad report. Let them all
            # go now, oldest first, instead of each waiting out its own backoff.
            self.store.make_due(self._failed_ids)
            self._ready.clear()
        self._failed_ids.clear()
        self._failure_log.reset()
        self._auth_log.reset()
        if paused:
            metrics.set_paused(False)
            log.info(
                "Dagster accepts the API token again; delivery resumed after %.0fs paused",
                failing_for,
            )
        else:
            log.info(
                "delivery to Dagster works again after %.1fs (%d failed attempts)",
                failing_for,
                attempts,
            )

    def _outbox_counts(self) -> tuple[int, int]:
        counts = self.store.counts()
        return counts.pending, counts.dead
