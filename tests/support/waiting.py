"""Waiting on a condition with a deadline, the one way tests wait: never a bare sleep."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def poll_value(
    fetch: Callable[[], T],
    predicate: Callable[[T], object],
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Call `fetch` until `predicate(result)` holds and return that result; raise
    TimeoutError, naming the last result, once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        result = fetch()
        if predicate(result):
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{what} not met within {timeout}s; last value: {result!r}")
        threading.Event().wait(min(interval, remaining))  # the interval between looks


def poll_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Return the first truthy `predicate()`; raise TimeoutError after `timeout` seconds."""
    return poll_value(predicate, bool, timeout, interval, what or str(predicate))
