"""Pure delivery policy: what an answer means, and how long to wait before trying again."""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from email.utils import parsedate_to_datetime


class Verdict(enum.Enum):
    DELIVERED = "delivered"  # 2xx: remove from the outbox
    RETRY = "retry"  # connection error, timeout, 408, 429, 5xx: try again later
    PAUSE = "pause"  # 401/403: the token is wrong; hold every report until it works
    DEAD = "dead"  # any other answer: Dagster rejected this report; dead-letter it


def classify(status: int | None) -> Verdict:
    """`status` is None when no answer came (connection refused, reset, timeout)."""
    if status is None or status in (408, 429) or status >= 500:
        return Verdict.RETRY
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if status in (401, 403):
        return Verdict.PAUSE
    return Verdict.DEAD


def backoff_seconds(
    attempt: int,
    *,
    base_seconds: float = 1.0,
    cap_seconds: float = 300.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    ceiling = min(cap_seconds, base_seconds * 2 ** min(attempt, 32))
    return float(ceiling * rand())


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date; None if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - now)
