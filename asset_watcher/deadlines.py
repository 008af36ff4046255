"""The total deadline of a request: one thread shuts down what is still running at it.

urllib3's timeout applies to each socket read, so a server dripping one byte a second
would hold a sender for ever. `DeadlineWatch` knows each request's deadline and the
connection it runs on, and kills that connection when the deadline passes: whatever
read or TLS handshake the sender is blocked in ends, and the request counts as a
timeout. It knows nothing of HTTP; `reporter.py` attaches its connections.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Protocol


class Killable(Protocol):
    """A connection a deadline can cut off."""

    owner: Deadline | None

    def kill(self) -> None: ...


class Deadline:
    """One request's deadline, and the connection it runs on once it has one."""

    __slots__ = ("at", "connection", "done", "expired")

    def __init__(self, at: float) -> None:
        self.at = at
        self.connection: Killable | None = None
        self.done = False
        self.expired = False


class DeadlineWatch:
    """Shuts down the connection of every request still running at its deadline.

    All requests of a reporter share one timeout, so deadlines arrive in the order the
    requests start and a FIFO is all the priority queue needed: the thread sleeps until
    the oldest unfinished deadline. A request costs an append and two short lock holds;
    a finished one is only flagged, and dropped when the thread gets to it.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[Deadline] = deque()
        self._thread: threading.Thread | None = None
        self._closed = False

    def begin(self, seconds: float) -> Deadline:
        deadline = Deadline(time.monotonic() + seconds)
        with self._cond:
            if self._closed:
                deadline.expired = True  # a closed reporter sends nothing
                return deadline
            self._queue.append(deadline)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="http-deadlines", daemon=True
                )
                self._thread.start()
            elif len(self._queue) == 1:
                self._cond.notify()  # it waits without a timeout while the queue is empty
        return deadline

    def attach(self, deadline: Deadline, connection: Killable) -> None:
        """`deadline`'s request runs on `connection` now (a new one, or from the pool)."""
        with self._cond:
            deadline.connection = connection
            connection.owner = deadline
            if deadline.expired:
                connection.kill()

    def end(self, deadline: Deadline) -> None:
        with self._cond:  # from here on, expiry never touches its connection
            deadline.done = True

    def close(self) -> None:
        """Stop the thread; requests still running are cut off now (they are abandoned)."""
        with self._cond:
            self._closed = True
            while self._queue:
                self._expire(self._queue.popleft())
            thread, self._thread = self._thread, None
            self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                while self._queue and self._queue[0].done:
                    self._queue.popleft()
                if not self._queue:
                    self._cond.wait()
                    continue
                remaining = self._queue[0].at - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                else:
                    self._expire(self._queue.popleft())

    @staticmethod
    def _expire(deadline: Deadline) -> None:
        # caller holds the lock
        if deadline.done:
            return
        deadline.expired = True
        connection = deadline.connection
        if connection is not None and connection.owner is deadline:
            connection.kill()
