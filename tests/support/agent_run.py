"""Running the watch agent in tests: in-process on a thread, or as `python -m asset_watcher
run` in a subprocess (signals, sd_notify, the state lock), plus small file helpers.

Everything waits on conditions with deadlines; nothing sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from asset_watcher.agent import run_agent
from asset_watcher.config import Config
from asset_watcher.signals import SignalFlags
from tests.support.sink import RecordedRequest, Sink
from tests.support.waiting import poll_until

REPO_ROOT = Path(__file__).resolve().parents[2]
MATERIALIZATION = "/report_asset_materialization/"
OBSERVATION = "/report_asset_observation/"


def make_config(
    tmp_path: Path, sink_url: str, watch: list[dict[str, Any]], **defaults: Any
) -> Config:
    settings = {"settle_seconds": 0.2, "rescan_interval_seconds": 0, **defaults}
    return Config(
        # One request at a time: barrier() relies on reports reaching the sink in outbox order.
        dagster={"url": sink_url, "timeout_seconds": 5, "max_in_flight": 1},
        state={"directory": str(tmp_path / "state")},
        defaults=settings,
        watch=watch,
    )


@dataclass
class InProcessAgent:
    """`run_agent` on a thread with its own stop event. Tests call `barrier()` to know
    it is watching: a file written before the watches existed is found by the catch-up
    scan, which starts only after they are in place."""

    config: Config
    stop: threading.Event = field(default_factory=threading.Event)
    signals: SignalFlags = field(default_factory=SignalFlags)  # set as a handler would
    status: list[int] = field(default_factory=list)
    thread: threading.Thread | None = None
    wall_clock: Callable[[], float] = time.time  # what due times are judged by

    def start(self) -> InProcessAgent:
        def body() -> None:
            status = run_agent(
                self.config, stop=self.stop, signals=self.signals, wall_clock=self.wall_clock
            )
            self.status.append(status)

        self.thread = threading.Thread(target=body, name="test-agent")
        self.thread.start()
        return self

    def finish(self, timeout: float = 30.0) -> int:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "agent did not stop in time"
        return self.status[0]


@dataclass
class AgentProcess:
    """`python -m asset_watcher run -c CONFIG` with stderr in a file."""

    config_path: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    prefix: list[str] = field(default_factory=list)  # e.g. an `unshare` wrapper
    log_level: str = "debug"
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **self.env}
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [
                *self.prefix,
                sys.executable,
                "-m",
                "asset_watcher",
                "run",
                "-c",
                str(self.config_path),
                "--log-level",
                self.log_level,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_log(self, text: str, timeout: float = 15.0, count: int = 1) -> str:
        def found() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}:\n{self.log()}")
            return self.log().count(text) >= count

        poll_until(found, timeout, what=f"log line {text!r}")
        return self.log()

    def wait_ready(self, timeout: float = 15.0) -> None:
        self.wait_log("ready: watching", timeout)

    def signal(self, signum: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if hasattr(self, "_log"):
            self._log.close()


def skip_without_file_leases(path: Path) -> None:
    """Skip unless the kernel answers file leases here, as the agent's check for writers
    needs (the owner may take one; NFS and some containers refuse). A refusal because a
    writer holds `path` open is an answer too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    except OSError as exc:
        if exc.errno != errno.EAGAIN:
            pytest.skip(f"no file leases here: {exc}")
    finally:
        os.close(fd)


def write(path: Path, data: bytes | str = b"data\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def reported_paths(sink: Sink, endpoint: str = MATERIALIZATION) -> list[str]:
    return [r.json["metadata"]["path"] for r in sink.requests if r.path == endpoint]


def wait_reported(
    sink: Sink, path: Path | str, timeout: float = 10.0, endpoint: str = MATERIALIZATION
) -> list[RecordedRequest]:
    """Wait until a report for `path` arrived; return all requests so far."""
    target = str(path)
    return sink.wait_for(
        lambda reqs: any(r.path == endpoint and r.json["metadata"]["path"] == target for r in reqs),
        timeout,
    )


_barrier_count = iter(range(1_000_000))


def barrier(sink: Sink, folder: Path, timeout: float = 10.0) -> list[str]:
    """Write a fresh file and wait for its report: anything the agent was going to report
    before it has been reported by then (one pipeline, one ordered outbox). Returns the
    reported paths before the barrier's."""
    name = f"zz-barrier-{next(_barrier_count)}-{time.monotonic_ns()}.csv"
    path = write(folder / name, name)
    wait_reported(sink, path, timeout)
    paths = reported_paths(sink)
    return paths[: paths.index(str(path))]


def tree(root: Path) -> Iterator[Path]:
    for current, _, files in os.walk(root):
        for name in files:
            yield Path(current) / name


QUEUE_LIMIT = Path("/proc/sys/fs/inotify/max_queued_events")


@contextlib.contextmanager
def small_inotify_queue(limit: int) -> Iterator[None]:
    """fs.inotify.max_queued_events is read when an inotify instance is created: lower it
    only around starting the watches under test (the machine is shared), so only they
    overflow. Skips where it cannot be written (not root, not Linux)."""
    try:
        before = QUEUE_LIMIT.read_text()
        QUEUE_LIMIT.write_text(str(limit))
    except OSError as exc:
        pytest.skip(f"cannot lower fs.inotify.max_queued_events: {exc}")
    try:
        yield
    finally:
        QUEUE_LIMIT.write_text(before)


def burst(folder: Path, count: int, prefix: str = "f") -> list[Path]:
    """`count` small files written by another process, so the writes do not wait for the
    observer's reader: with a small queue the kernel drops events."""
    script = (
        "import os, sys\n"
        "for i in range(int(sys.argv[2])):\n"
        "    with open(os.path.join(sys.argv[1], f'{sys.argv[3]}{i:05}.csv'), 'w') as f:\n"
        "        f.write(f'{i}\\n')\n"
    )
    subprocess.run([sys.executable, "-c", script, str(folder), str(count), prefix], check=True)
    return [folder / f"{prefix}{i:05}.csv" for i in range(count)]
