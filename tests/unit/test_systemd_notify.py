"""sd_notify client against real AF_UNIX datagram sockets standing in for systemd."""

from __future__ import annotations

import ast
import os
import socket
import struct
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from asset_watcher import systemd as sd

RECV_TIMEOUT_SECONDS = 5.0

pytestmark = pytest.mark.skipif(
    not hasattr(socket, "AF_UNIX"), reason="sd_notify needs AF_UNIX sockets"
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test run itself may happen under systemd (CI runners, `systemd-run`).
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


def _receiver() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(RECV_TIMEOUT_SECONDS)
    return sock


@pytest.fixture
def path_socket(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[socket.socket]:
    """A file system notify socket; the short directory keeps under sun_path's 108 bytes."""
    path = tmp_path_factory.mktemp("n") / "notify"
    sock = _receiver()
    try:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock
    finally:
        sock.close()


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    if not sys.platform.startswith("linux"):
        pytest.skip("abstract AF_UNIX sockets are Linux-only")
    name = f"asset-watcher-test-{uuid.uuid4().hex}"
    sock = _receiver()
    try:
        sock.bind(b"\0" + name.encode())
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield sock
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("send", "expected"),
    [
        (sd.ready, b"READY=1"),
        (sd.stopping, b"STOPPING=1"),
        (sd.watchdog_ping, b"WATCHDOG=1"),
        (
            lambda: sd.status("watching 3 folders, 0 pending"),
            b"STATUS=watching 3 folders, 0 pending",
        ),
        (lambda: sd.notify("RELOADING=1\nSTATUS=reloading"), b"RELOADING=1\nSTATUS=reloading"),
    ],
    ids=["ready", "stopping", "watchdog", "status", "raw"],
)
def test_path_socket_receives_exact_datagram(
    path_socket: socket.socket, send: Callable[[], bool], expected: bytes
) -> None:
    assert send() is True
    assert path_socket.recv(4096) == expected


def test_lifecycle_sequence_arrives_in_order(path_socket: socket.socket) -> None:
    assert sd.ready()
    assert sd.status("scanning")
    assert sd.watchdog_ping()
    assert sd.stopping()
    received = [path_socket.recv(4096) for _ in range(4)]
    assert received == [b"READY=1", b"STATUS=scanning", b"WATCHDOG=1", b"STOPPING=1"]


def test_abstract_socket_receives_datagrams(abstract_socket: socket.socket) -> None:
    assert sd.ready() is True
    assert sd.status("ok") is True
    assert abstract_socket.recv(4096) == b"READY=1"
    assert abstract_socket.recv(4096) == b"STATUS=ok"


def test_status_flattens_newlines(path_socket: socket.socket) -> None:
    # A newline would smuggle a second assignment (e.g. READY=1) into the datagram.
    assert sd.status("line one\nREADY=1\r\nline three")
    assert path_socket.recv(4096) == b"STATUS=line one READY=1 line three"


def test_status_is_utf8(path_socket: socket.socket) -> None:
    assert sd.status("dépôt: 2 fichiers")
    assert path_socket.recv(4096) == "STATUS=dépôt: 2 fichiers".encode()


@pytest.mark.skipif(not hasattr(socket, "SO_PASSCRED"), reason="needs SO_PASSCRED (Linux)")
def test_datagram_carries_our_pid_even_from_a_thread(path_socket: socket.socket) -> None:
    """NotifyAccess=main accepts only datagrams whose sender PID is the main process.

    The watchdog pinger may run in a thread; the kernel-attached credentials must
    still name this process.
    """
    path_socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    results: list[bool] = []
    thread = threading.Thread(target=lambda: results.append(sd.watchdog_ping()))
    thread.start()
    thread.join(timeout=RECV_TIMEOUT_SECONDS)
    assert results == [True]

    ucred = struct.Struct("3i")
    data, ancdata, _flags, _addr = path_socket.recvmsg(4096, socket.CMSG_SPACE(ucred.size))
    assert data == b"WATCHDOG=1"
    creds = [
        ucred.unpack(cmsg_data[: ucred.size])
        for level, kind, cmsg_data in ancdata
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
    ]
    assert creds, "no SCM_CREDENTIALS attached"
    pid, uid, _gid = creds[0]
    assert (pid, uid) == (os.getpid(), os.getuid())


def test_unset_socket_is_a_no_op() -> None:
    assert sd.notify("READY=1") is False
    assert sd.ready() is False
    assert sd.stopping() is False
    assert sd.status("x") is False
    assert sd.watchdog_ping() is False


def test_empty_socket_variable_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert sd.ready() is False


@pytest.mark.parametrize("value", ["relative/notify", "@", "vsock:2:1234"])
def test_unsupported_socket_address_is_a_no_op(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert sd.ready() is False


def test_missing_listener_returns_false_without_raising(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path_factory.mktemp("n") / "gone"))
    assert sd.ready() is False


def test_closed_listener_returns_false_without_raising(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path_factory.mktemp("n") / "closed"
    sock = _receiver()
    sock.bind(str(path))
    sock.close()  # the socket file stays, nobody listens: ECONNREFUSED
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    assert sd.watchdog_ping() is False


# --- watchdog interval ----------------------------------------------------------


def test_watchdog_interval_none_without_watchdog() -> None:
    assert sd.watchdog_interval_seconds() is None


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    assert sd.watchdog_interval_seconds() == 30.0


def test_watchdog_interval_sub_second(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "500000")
    assert sd.watchdog_interval_seconds() == 0.25


def test_watchdog_interval_for_our_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sd.watchdog_interval_seconds() == 10.0


def test_watchdog_interval_none_for_another_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    # We inherited the variables from a parent the watchdog is really meant for.
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sd.watchdog_interval_seconds() is None


@pytest.mark.parametrize(
    ("usec", "pid"),
    [("0", None), ("-5", None), ("soon", None), ("", None), ("20000000", "me")],
)
def test_watchdog_interval_none_for_invalid_values(
    monkeypatch: pytest.MonkeyPatch, usec: str, pid: str | None
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", pid)
    assert sd.watchdog_interval_seconds() is None


def test_module_imports_only_the_standard_library() -> None:
    """asset_watcher.systemd must not pull in the rest of the package or any dependency."""
    tree = ast.parse(Path(sd.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            imported.add((node.module or "").split(".")[0])
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
