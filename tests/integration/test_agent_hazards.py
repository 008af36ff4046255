"""The agent in-process against what an SFTP user or the host can do to it: folders swapped
for links, hard-link renames, a reload while a request is in flight, a state directory
that cannot be written. Real folders, real inotify, a loopback sink."""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from asset_watcher.agent import Agent
from asset_watcher.config import load_config
from asset_watcher.errors import EXIT_FAILED
from asset_watcher.state import DB_NAME
from tests.support.agent_run import (
    barrier,
    burst,
    poll_until,
    reported_paths,
    skip_without_file_leases,
    small_inotify_queue,
    wait_reported,
    write,
)
from tests.support.sink import Sink


def config_text(sink: Sink, tmp_path: Path, drop: Path, timeout: float = 5, **extra: str) -> str:
    defaults = "\n".join(f"{key} = {value}" for key, value in extra.items())
    return (
        f'[dagster]\nurl = "{sink.url}"\ntimeout_seconds = {timeout}\n'
        f'[state]\ndirectory = "{tmp_path / "state"}"\n'
        "[defaults]\nsettle_seconds = 0.2\nrescan_interval_seconds = 0\n"
        'observer = "inotify"\n'
        f"{defaults}\n"
        f'[[watch]]\npath = "{drop}"\nasset_key = "drop/{{stem}}"\n'
    )


class Running:
    """An `Agent` on a thread, reachable (reload, state) unlike `run_agent`."""

    def __init__(self, config_path: Path) -> None:
        config = load_config(config_path)
        self.agent = Agent(config, config_path=str(config_path), stop=threading.Event())
        self.status: list[int] = []
        self.thread = threading.Thread(target=lambda: self.status.append(self.agent.run()))
        self.thread.start()

    def finish(self, timeout: float = 30) -> int:
        self.agent.stop_event.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "agent did not stop in time"
        return self.status[0]


@pytest.fixture
def start(tmp_path: Path, sink: Sink, drop: Path) -> Iterator[object]:
    running: list[Running] = []

    def make(**extra: str) -> Running:
        path = tmp_path / "config.toml"
        path.write_text(config_text(sink, tmp_path, drop, **extra))
        agent = Running(path)
        running.append(agent)
        barrier(sink, drop)  # watching from here on
        return agent

    yield make
    for agent in running:
        if agent.thread.is_alive():
            agent.finish()


def test_folders_swapped_for_links_to_outside_are_never_reported(
    start: object, sink: Sink, drop: Path, tmp_path: Path
) -> None:
    """`mkdir d; rmdir d; ln -s ../outside d`, many times: followed, the agent would watch
    and report the outside folder for good."""
    outside = tmp_path / "outside"
    write(outside / "old.csv", "secret\n")
    write(outside / "sub" / "old.csv", "secret\n")
    start()  # type: ignore[operator]
    script = (
        "import os, sys\n"
        "for i in range(300):\n"
        "    path = os.path.join(sys.argv[1], f'd{i}')\n"
        "    os.mkdir(path); os.rmdir(path); os.symlink('../outside', path)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(drop)], check=True)
    barrier(sink, drop)  # every folder event handled, every watch added or refused
    write(outside / "new.csv", "written outside later\n")
    write(outside / "sub" / "new.csv", "written outside later\n")
    barrier(sink, drop)
    reported = [path for path in reported_paths(sink) if "zz-barrier-" not in path]
    assert reported == []


def test_an_inotify_queue_overflow_during_a_burst_is_rescanned(
    start: object, sink: Sink, drop: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A queue of 16 events (the agent's own inotify instance only) and 3,000 files from
    another process: the kernel drops events, the hook hears the overflow and the rescan
    it asks for reports the rest. Periodic rescans are off (rescan_interval_seconds = 0),
    so only that rescan can find the files whose events were lost."""
    with small_inotify_queue(16):
        start()  # type: ignore[operator]
    began = time.monotonic()
    files = burst(drop, 3000)
    rounds = iter(range(100))

    def overflowed() -> bool:  # another burst while the reader kept up (a busy host)
        if any("inotify event queue overflowed" in r.getMessage() for r in caplog.records):
            return True
        files.extend(burst(drop, 500, f"r{next(rounds)}-"))
        return False

    poll_until(overflowed, 60, what="an overflow")
    written = time.monotonic()
    expected = {str(path) for path in files}
    poll_until(lambda: expected <= set(reported_paths(sink)), 120, interval=0.2, what="every file")
    done = time.monotonic()
    barrier(sink, drop)  # a duplicate would have been reported by now
    reported = [p for p in reported_paths(sink) if p in expected]
    assert sorted(reported) == sorted(expected)  # each exactly once
    print(
        f"{len(files)} files written in {written - began:.2f}s, "
        f"all reported {done - written:.2f}s later"
    )


@pytest.mark.parametrize("same_tick", [False, True], ids=["round-trip-later", "same-tick"])
def test_a_hard_link_rename_is_reported_once(
    start: object, sink: Sink, drop: Path, same_tick: bool
) -> None:
    """OpenSSH's sftp-server renames with link() + unlink(): IN_CREATE, never a close.
    Within the last write's clock tick nothing on the new name tells it (its mtime is not
    older than the link's ctime, set ahead here; one link is left): its events (close,
    create, delete) do."""
    start()  # type: ignore[operator]
    part = drop / ".upload.filepart"
    with open(part, "wb") as handle:
        handle.write(b"a,b\n1,2\n")
        if same_tick:
            ahead = time.time_ns() + 3600 * 10**9
            os.utime(handle.fileno(), ns=(ahead, ahead))
    if not same_tick:
        threading.Event().wait(0.02)  # the client's rename request, a round trip later
    os.link(part, drop / "linked.csv")
    part.unlink()
    wait_reported(sink, drop / "linked.csv")
    barrier(sink, drop)
    (report,) = [
        r.json for r in sink.requests if r.json["metadata"]["path"].endswith("/linked.csv")
    ]
    assert report["data_version"] == hashlib.sha256(b"a,b\n1,2\n").hexdigest()


def test_a_writer_paused_at_start_up_is_reported_once_when_it_closes(
    start: object, sink: Sink, drop: Path
) -> None:
    """The catch-up scan finds an upload whose writer has paused for longer than
    settle_seconds (its mtime is old): still open for writing, it is not reported
    half-written; its close brings the one report, with the final content."""
    upload = drop / "paused.csv"
    with open(upload, "wb") as writer:
        writer.write(b"a,b\n1,2\n")
        writer.flush()
        os.utime(writer.fileno(), (time.time() - 60, time.time() - 60))
        skip_without_file_leases(upload)
        start()  # type: ignore[operator]
        barrier(sink, drop)  # the catch-up scan has looked at it by now
        assert str(upload) not in reported_paths(sink)
        writer.write(b"3,4\n")
    wait_reported(sink, upload)
    barrier(sink, drop)
    (report,) = [r.json for r in sink.requests if r.json["metadata"]["path"] == str(upload)]
    assert report["data_version"] == hashlib.sha256(b"a,b\n1,2\n3,4\n").hexdigest()


def test_a_slow_writer_is_reported_once_with_its_final_content(
    start: object, sink: Sink, drop: Path
) -> None:
    """The pause is longer than settle_seconds: only the close may complete the file."""
    start()  # type: ignore[operator]
    target = drop / "slow.csv"
    with open(target, "wb") as handle:
        handle.write(b"first half\n")
        handle.flush()
        threading.Event().wait(0.6)  # the uploader's think time (settle_seconds = 0.2)
        handle.write(b"second half\n")
    wait_reported(sink, target)
    barrier(sink, drop)
    (report,) = [r.json for r in sink.requests if r.json["metadata"]["path"] == str(target)]
    assert report["data_version"] == hashlib.sha256(b"first half\nsecond half\n").hexdigest()


def test_reload_with_a_new_dagster_timeout_sends_nothing_twice(
    start: object, sink: Sink, drop: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The new deliverer may start only once the old one's request in flight has ended:
    before, that report was still pending and was sent again."""
    caplog.set_level(logging.INFO, logger="asset_watcher")
    running: Running = start(timeout=3)  # type: ignore[operator]
    sink.set_delay(2.5)
    slow = write(drop / "slow.csv")
    wait_reported(sink, slow)  # arrived, answer due in 2.5 s
    (tmp_path / "config.toml").write_text(config_text(sink, tmp_path, drop, timeout=1))
    running.agent.signals.hangups += 1  # what the SIGHUP handler does
    sink.set_delay(0)
    poll_until(lambda: "delivery restarted with the new" in caplog.text, 15, what="restart")
    barrier(sink, drop)
    assert reported_paths(sink).count(str(slow)) == 1
    deliverers = [t for t in threading.enumerate() if t.name == "asset-watcher-deliverer"]
    assert len(deliverers) == 1
    assert running.agent.config.dagster.timeout_seconds == 1
    assert running.finish() == 0


def test_a_state_that_cannot_be_written_stops_the_agent_with_a_clear_error(
    start: object, sink: Sink, drop: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Here another writer holds the database; a full disk raises the same StateError."""
    caplog.set_level(logging.INFO, logger="asset_watcher")
    running: Running = start(on_delete='"observe"')  # type: ignore[operator]
    gone = write(drop / "gone.csv")
    wait_reported(sink, gone)
    store = running.agent.store
    with store.lock:
        store.db.execute("PRAGMA busy_timeout = 0")
    other = sqlite3.connect(tmp_path / "state" / DB_NAME, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        gone.unlink()
        running.thread.join(15)  # it stops by itself
        assert not running.thread.is_alive()
    finally:
        other.close()
    assert running.status == [EXIT_FAILED]
    assert f"could not record deleted {gone}: state database" in caplog.text
    assert "the pipeline thread stopped: state database" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
