"""Minimal sd_notify(3) client, standard library only.

The agent runs as a ``Type=notify`` service with ``WatchdogSec=``: systemd waits for
``READY=1`` before it counts the service as started, and restarts it when
``WATCHDOG=1`` stops arriving. The protocol is one datagram of newline-separated
``KEY=VALUE`` lines sent to ``$NOTIFY_SOCKET``, which is too small to justify a
dependency on libsystemd or a binding to it. Outside systemd (tests, a shell, the
one-shot ``scan``) every call is a cheap no-op that returns ``False``.
"""

from __future__ import annotations

import os
import socket

__all__ = [
    "notify",
    "ready",
    "status",
    "stopping",
    "watchdog_interval_seconds",
    "watchdog_ping",
]

# A wedged service manager must not stall the caller (e.g. a watchdog thread).
_SEND_TIMEOUT_SECONDS = 1.0


def _socket_address(value: str) -> str | bytes | None:
    """Turn ``$NOTIFY_SOCKET`` into an AF_UNIX address, or None if unsupported.

    ``@name`` is a Linux abstract socket (leading NUL byte); ``/path`` a file
    system socket. Other forms (``vsock:``...) are not supported.
    """
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return value
    return None


def notify(message: str) -> bool:
    """Send ``message`` to the service manager; True if the datagram was sent.

    Never raises: losing a status update must not take the agent down, and the
    watchdog itself tells systemd when pings stop arriving.
    """
    raw = os.environ.get("NOTIFY_SOCKET")
    if not raw:
        return False
    address = _socket_address(raw)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(_SEND_TIMEOUT_SECONDS)
            sock.sendto(message.encode("utf-8"), address)
    except OSError:
        return False
    return True


def ready() -> bool:
    """Tell systemd start-up is complete (watches in place): ``READY=1``."""
    return notify("READY=1")


def stopping() -> bool:
    """Tell systemd a graceful shutdown has begun: ``STOPPING=1``."""
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """Set the one-line status shown by ``systemctl status``: ``STATUS=...``.

    Newlines would start a new assignment in the protocol, so they are flattened.
    """
    return notify("STATUS=" + " ".join(text.splitlines()))


def watchdog_ping() -> bool:
    """Prove liveness to the service watchdog: ``WATCHDOG=1``."""
    return notify("WATCHDOG=1")


def watchdog_interval_seconds() -> float | None:
    """How often to call :func:`watchdog_ping`, or None when no watchdog applies.

    Half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled(3) recommends, so one late
    ping does not get the service killed. ``$WATCHDOG_PID``, when set, names the
    process the watchdog is meant for; a child that inherited the environment
    must not ping on its parent's behalf.
    """
    raw_usec = os.environ.get("WATCHDOG_USEC")
    if not raw_usec:
        return None
    try:
        usec = int(raw_usec)
    except ValueError:
        return None
    if usec <= 0:
        return None
    raw_pid = os.environ.get("WATCHDOG_PID")
    if raw_pid:
        try:
            if int(raw_pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 2_000_000
