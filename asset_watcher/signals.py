"""Signals in one place: the handlers only set plain attributes, never take a lock.

A Python signal handler runs on the main thread between two bytecodes, possibly while
that very thread holds a lock: `threading.Event.wait` holds the event's condition lock
for a moment before and after it blocks, `logging` holds a handler's lock while writing,
`Thread.start` holds the thread registry's lock and waits on an Event. A handler calling
`Event.set()`, logging, or starting a thread can then wait for its own thread forever.
So the handlers here only assign attributes of a `SignalFlags` (no call that can take
a lock), and the code that owns the main thread turns them into actions: the agent's
main loop sets its stop event or reloads, the demo stops.

Waking the main loop: it polls. The agent's main loop already wakes at least every
`MAIN_WAIT_SECONDS` (0.1 s, its `stop.wait(timeout)`), and looks at the flags on every
iteration, so a signal is acted on within one period. The handler itself is not
delayed by that wait: CPython interrupts a lock wait with a timeout when a signal
arrives, runs the handler, then resumes waiting for the time left, so the flag is set at
once and read at the next iteration. The self-pipe trick (`signal.set_wakeup_fd`) would
save at most those 0.1 s, at a cost: the loop would have to wait in `select()` on the
pipe rather than on its stop event (which other threads and tests set), and the wakeup
fd is one per process, shared with asyncio and anything else that claims it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any, Literal

# Looked up in advance: the handler does no lookup that could do more than read a dict.
_NAMES = {sig.value: sig.name for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}


@dataclass
class SignalFlags:
    """What the handlers saw. Written by the handlers only, read by the main thread.

    `hangups` is a counter rather than a bool the reader clears, so the handler is its
    only writer: the reader keeps the last value it acted on (`HangupCounter.take`).
    """

    stop_signal: str | None = None  # "SIGTERM", "SIGINT" (or "SIGHUP" when it stops)
    hangups: int = 0  # SIGHUPs received (reload requests)

    @property
    def stop_requested(self) -> bool:
        return self.stop_signal is not None


class HangupCounter:
    """The reader's side of `SignalFlags.hangups`: one reload however many SIGHUPs
    arrived since the last look."""

    def __init__(self, flags: SignalFlags) -> None:
        self.flags = flags
        self.seen = flags.hangups

    def take(self) -> bool:
        """True if a SIGHUP arrived since the last call."""
        current = self.flags.hangups  # read once: the handler may bump it meanwhile
        if current == self.seen:
            return False
        self.seen = current
        return True


@contextlib.contextmanager
def handle_signals(
    *, hangup: Literal["reload", "stop"] = "reload", flags: SignalFlags | None = None
) -> Iterator[SignalFlags]:
    """SIGTERM and SIGINT set `stop_signal`; SIGHUP counts a reload request (or, with
    `hangup="stop"`, stops like SIGTERM: a terminal closing on an interactive command).
    The previous handlers come back on exit. Off the main thread (where Python cannot
    install handlers) nothing is installed and the flags stay as they are."""
    flags = flags if flags is not None else SignalFlags()
    if threading.current_thread() is not threading.main_thread():
        yield flags
        return

    def on_stop(signum: int, frame: FrameType | None) -> None:
        flags.stop_signal = _NAMES[signum]

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        flags.hangups += 1

    handlers = {
        signal.SIGTERM: on_stop,
        signal.SIGINT: on_stop,
        signal.SIGHUP: on_hangup if hangup == "reload" else on_stop,
    }
    previous: list[tuple[signal.Signals, Any]] = []
    try:
        for signum, handler in handlers.items():
            previous.append((signum, signal.signal(signum, handler)))
        yield flags
    finally:
        for signum, old in previous:
            if old is not None:  # None: a handler from C, which Python cannot put back
                signal.signal(signum, old)
