"""Pure delivery policy: what an answer means, and how long to wait before trying again."""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime


class Verdict(enum.Enum):
    DELIVERED = "delivered"  # 2xx: remove from the outbox
    RETRY = "retry"  # connection error, timeout, 408, 429, 5xx: try again later
    PAUSE = "pause"  # 401/403: the token is wrong; hold every report until it works
    DEAD = "dead"  # any other answer: Dagster rejected this report; dead-letter it


def classify(status: int | None) -> Verdict:
    """`status` is None when no answer came (connection refused, reset, timeout)."""
    # A redirect means a wrong `dagster.url` (http for https, a missing path prefix): keep
    # retrying, and logging, until it is fixed, rather than dead-letter every report.
    # A 1xx where the final answer belongs is no answer either.
    if status is None or status in (408, 429) or status >= 500:
        return Verdict.RETRY
    if status < 200 or 300 <= status < 400:
        return Verdict.RETRY
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if status in (401, 403):
        return Verdict.PAUSE
    return Verdict.DEAD


# What `addDynamicPartition` (dagster_graphql's AddDynamicPartitionResult union) answers
# when the key is there now: added, or added before (by us, the UI, a sensor).
PARTITION_PRESENT = frozenset({"AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"})


def classify_partition_add(status: int | None, result_type: str | None) -> Verdict:
    """A dynamic partition add's answer: the HTTP status as for any report, then, for a
    2xx, the mutation's result type (`__typename`; None when the answer holds no result:
    a GraphQL `errors` list, or not GraphQL at all). A 2xx says only that the request was
    read: anything but a present key is a dead letter with its text, never retried in a
    loop. UnauthorizedError is one too, not the 401/403 pause: Dagster answers it for a
    definition or code location it does not know as well as for a missing permission,
    and in neither case does the token fail the reports behind other keys."""
    verdict = classify(status)
    if verdict is not Verdict.DELIVERED:
        return verdict
    return Verdict.DELIVERED if result_type in PARTITION_PRESENT else Verdict.DEAD


def backoff_seconds(
    attempt: int, *, cap_seconds: float = 300.0, rand: Callable[[], float] = random.random
) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, 2**attempt)] seconds."""
    ceiling = min(cap_seconds, 2.0 ** min(attempt, 32))
    return float(ceiling * rand())


def retry_after_seconds(
    value: str | None, now: float, *, cap_seconds: float = math.inf
) -> float | None:
    """`Retry-After` as seconds from now, at most `cap_seconds`: ASCII delta-seconds or
    an HTTP date (one in the past is now). None when absent or anything else (a negative
    or fractional number, `²`, garbage): the normal backoff applies then."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() alone takes "²"
        return min(float(value), cap_seconds)
    if not value.isascii() or not any(c.isalpha() for c in value):
        return None  # "-1", "1.5": not a date either, though the date parser is lenient
    try:
        moment = parsedate_to_datetime(value)
        if moment.tzinfo is None:  # "-0000": UTC, source unknown
            moment = moment.replace(tzinfo=timezone.utc)
        seconds = moment.timestamp() - now
    except (TypeError, ValueError, OverflowError, IndexError, OSError):
        return None
    return min(max(0.0, seconds), cap_seconds)


# Answers that say nothing about the report itself: the link, a proxy or Dagster as a
# whole is in trouble, so the report waits with all the others at the gate. Any other
# retryable answer (a 500 from one poison body) backs that report off on its own, so it
# cannot hold up the rest.
SHARED_TROUBLE = frozenset({None, 408, 429, 502, 503, 504})


def is_shared_trouble(status: int | None) -> bool:
    return status in SHARED_TROUBLE


@dataclass
class Gate:
    """When requests may start: the half of the retry policy shared by every report.

    After a failure nothing starts before `hold_until` (backoff with full jitter, or the
    server's Retry-After); then one probe goes alone, and its success opens the gate to
    `max_in_flight` again. `level` counts failed probe rounds since the last success, so
    eight requests failing together count once, not eight times. 401/403 also close the
    gate (`paused`): delivery waits for the token to work, probing with one report.
    """

    cap_seconds: float = 300.0
    rand: Callable[[], float] = random.random
    level: int = 0
    paused: bool = False
    hold_until: float = 0.0
    failing_since: float | None = None
    failed_attempts: int = 0

    def capacity(self, now: float, in_flight: int, max_in_flight: int) -> int:
        """How many more requests may start now."""
        if now < self.hold_until:
            return 0
        if self.level > 0:
            return 0 if in_flight else 1
        return max(0, max_in_flight - in_flight)

    def on_failure(
        self,
        now: float,
        dispatched_level: int,
        retry_after_seconds: float | None = None,
        *,
        pause: bool = False,
    ) -> None:
        """A request started at `dispatched_level` failed (retryable, or 401/403 with pause)."""
        self.failed_attempts += 1
        if self.failing_since is None:
            self.failing_since = now
        if pause:
            self.paused = True
        if retry_after_seconds is not None:
            # Honoured up to the backoff cap: a far-future date cannot park delivery.
            retry_after_seconds = min(max(retry_after_seconds, 0.0), self.cap_seconds)
        if dispatched_level == self.level:
            # The first failure of this round: back off further.
            self.level += 1
            delay = retry_after_seconds
            if delay is None:
                delay = backoff_seconds(
                    self.level - 1, cap_seconds=self.cap_seconds, rand=self.rand
                )
            self.hold_until = max(self.hold_until, now + delay)
        elif retry_after_seconds is not None:
            # Started before the gate closed; its Retry-After still counts.
            self.hold_until = max(self.hold_until, now + retry_after_seconds)

    def on_accepted(self, now: float, dispatched_level: int) -> float | None:
        """Dagster answered (2xx, or a 4xx about the report): open the gate.

        Returns how long delivery had been failing, or None if the gate was open or stays
        closed. An answer to a request started before the latest failed round (a lower
        `dispatched_level`) says nothing about now and opens nothing. A pending
        Retry-After hold is kept: the server asked for it.
        """
        if self.failing_since is None or dispatched_level < self.level:
            return None
        failing_for = now - self.failing_since
        self.level = 0
        self.paused = False
        self.failing_since = None
        self.failed_attempts = 0
        return failing_for


@dataclass
class LogThrottle:
    """At most one message per `interval_seconds`, counting the ones held back."""

    interval_seconds: float = 60.0
    next_at: float = float("-inf")
    suppressed: int = 0

    def ready(self, now: float) -> bool:
        if now >= self.next_at:
            self.next_at = now + self.interval_seconds
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self) -> int:
        count, self.suppressed = self.suppressed, 0
        return count

    def reset(self) -> None:
        self.next_at = float("-inf")
        self.suppressed = 0
