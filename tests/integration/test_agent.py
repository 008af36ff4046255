"""The watch agent in-process: real folders, the real inotify and polling observers, and a
real loopback HTTP server standing in for Dagster."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from asset_watcher.state import StateStore
from tests.support.agent_run import (
    OBSERVATION,
    InProcessAgent,
    barrier,
    make_config,
    poll_until,
    reported_paths,
    wait_reported,
    write,
)
from tests.support.sink import Sink

INOTIFY = pytest.param({"observer": "inotify"}, id="inotify")
POLLING = pytest.param({"observer": "polling", "poll_interval_seconds": 0.1}, id="polling")
OBSERVERS = [INOTIFY, POLLING]

Start = Callable[..., InProcessAgent]


@pytest.fixture
def start(tmp_path: Path, sink: Sink, drop: Path) -> Iterator[Start]:
    """Start an agent on `drop` (one rule, key drop/{stem} unless given); stopped at the end."""
    agents: list[InProcessAgent] = []

    def make(watch: list[dict[str, Any]] | None = None, **defaults: Any) -> InProcessAgent:
        rules = watch or [{"path": str(drop), "asset_key": "drop/{stem}"}]
        agent = InProcessAgent(make_config(tmp_path, sink.url, rules, **defaults)).start()
        agents.append(agent)
        barrier(sink, drop)  # watching from here on
        return agent

    yield make
    for agent in agents:
        if agent.thread is not None and agent.thread.is_alive():
            assert agent.finish() == 0


def _uploader_pause(seconds: float) -> None:
    """The uploader's think time between chunks: part of the scenario, not a wait for
    the agent (nothing is asserted on timing)."""
    threading.Event().wait(seconds)


def _count(sink: Sink, path: Path) -> int:
    return reported_paths(sink).count(str(path))


def test_the_main_loop_turns_a_stop_flag_into_a_graceful_stop(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    """The handlers only set `stop_signal`; the loop sets the stop event itself."""
    caplog.set_level(logging.INFO, logger="asset_watcher")
    agent = start()
    agent.signals.stop_signal = "SIGTERM"  # what the SIGTERM handler does
    thread = agent.thread
    assert thread is not None
    poll_until(lambda: not thread.is_alive(), 15, what="agent stopped")
    assert agent.stop.is_set() and agent.status == [0]
    assert "received SIGTERM, stopping" in caplog.text


@pytest.mark.parametrize(
    ("observer", "settle", "pause"),
    [
        # inotify waits for the close: pauses longer than the settle time are fine.
        pytest.param({"observer": "inotify"}, 0.2, 0.35, id="inotify"),
        # polling only sees size and mtime: the file must keep changing within it.
        pytest.param(
            {"observer": "polling", "poll_interval_seconds": 0.1}, 0.8, 0.15, id="polling"
        ),
    ],
)
def test_slow_chunked_upload_is_reported_once_with_its_final_hash(
    start: Start, sink: Sink, drop: Path, observer: dict[str, Any], settle: float, pause: float
) -> None:
    start(settle_seconds=settle, **observer)
    target = drop / "slow.csv"
    chunks = [f"chunk {i}\n".encode() * 1000 for i in range(5)]
    with open(target, "wb") as handle:
        for chunk in chunks:
            handle.write(chunk)
            handle.flush()
            _uploader_pause(pause)
    barrier(sink, drop)
    (report,) = [r.json for r in sink.requests if r.json["metadata"]["path"] == str(target)]
    content = b"".join(chunks)
    assert report["metadata"]["size_bytes"] == len(content)
    assert report["data_version"] == hashlib.sha256(content).hexdigest()
    assert report["metadata"]["sha256"] == report["data_version"]


@pytest.mark.parametrize("observer", OBSERVERS)
@pytest.mark.parametrize("temp_name", ["orders.csv.filepart", ".orders.csv.Xy12Ab"])
def test_temporary_upload_name_renamed_into_place_is_reported_once(
    start: Start, sink: Sink, drop: Path, observer: dict[str, Any], temp_name: str
) -> None:
    """WinSCP's `.filepart` and rsync's hidden `.name.XXXXXX`."""
    start(**observer)
    temp = write(drop / temp_name, b"a,b\n1,2\n")
    os.rename(temp, drop / "orders.csv")
    wait_reported(sink, drop / "orders.csv")
    before = barrier(sink, drop)
    assert before.count(str(drop / "orders.csv")) == 1
    assert not any(temp_name in path for path in reported_paths(sink))


@pytest.mark.parametrize("observer", OBSERVERS)
def test_new_subfolders_with_immediate_files_are_reported(
    start: Start, sink: Sink, drop: Path, observer: dict[str, Any]
) -> None:
    start(**observer)
    deep = drop / "2026" / "11" / "26"
    deep.mkdir(parents=True)  # files land before any watch on these folders can exist
    files = [write(deep / "a.csv"), write(drop / "2026" / "b.csv"), write(deep / "c" / "d.csv")]
    for path in files:
        wait_reported(sink, path)
    later = write(deep / "later.csv")  # and the new folders are watched from now on
    wait_reported(sink, later)


def test_files_that_arrived_while_stopped_are_reported_once_across_restarts(
    tmp_path: Path, sink: Sink, drop: Path
) -> None:
    config = make_config(tmp_path, sink.url, [{"path": str(drop), "asset_key": "drop/{stem}"}])
    kept = write(drop / "kept.csv", "old")
    first = InProcessAgent(config).start()
    wait_reported(sink, kept)
    assert first.finish() == 0

    arrived = [write(drop / "new1.csv"), write(drop / "sub" / "new2.csv")]
    changed = write(drop / "kept.csv", "new content")
    second = InProcessAgent(config).start()
    for path in [*arrived, changed]:
        wait_reported(sink, path)
    barrier(sink, drop)
    assert second.finish() == 0

    sink.clear()
    third = InProcessAgent(config).start()
    assert barrier(sink, drop) == []  # nothing but the barrier itself
    assert third.finish() == 0


@pytest.mark.parametrize("observer", OBSERVERS)
def test_ready_marker_releases_the_data_file_and_is_never_reported(
    start: Start, sink: Sink, drop: Path, observer: dict[str, Any]
) -> None:
    day = drop / "day"
    day.mkdir()
    marked = {"path": str(day), "asset_key": "day/{stem}", "ready_marker": "{relpath}.done"}
    start([marked, {"path": str(drop), "asset_key": "drop/{stem}"}], **observer)
    data = write(day / "orders.csv", b"1,2,3\n")
    assert str(data) not in barrier(sink, drop)  # complete, but no marker yet
    write(drop / "day" / "orders.csv.done", b"")
    wait_reported(sink, data)
    # A marker that is already there when the data completes.
    write(drop / "day" / "second.csv.done", b"")
    second = write(drop / "day" / "second.csv", b"x")
    wait_reported(sink, second)
    barrier(sink, drop)
    assert not any(path.endswith(".done") for path in reported_paths(sink))
    assert reported_paths(sink).count(str(data)) == 1


@pytest.mark.parametrize("observer", OBSERVERS)
def test_deleted_file_yields_an_observation(
    start: Start, sink: Sink, drop: Path, observer: dict[str, Any]
) -> None:
    start(on_delete="observe", **observer)
    gone = write(drop / "gone.csv")
    wait_reported(sink, gone)
    gone.unlink()
    (seen,) = [
        r.json
        for r in sink.wait_for(lambda reqs: any(r.path == OBSERVATION for r in reqs))
        if r.path == OBSERVATION
    ]
    assert seen["asset_key"] == ["drop", "gone"]
    assert seen["metadata"]["deleted"] is True
    assert seen["metadata"]["path"] == str(gone)


def test_deletion_is_not_reported_by_default(start: Start, sink: Sink, drop: Path) -> None:
    start()
    gone = write(drop / "gone.csv")
    wait_reported(sink, gone)
    gone.unlink()
    barrier(sink, drop)
    assert [r for r in sink.requests if r.path == OBSERVATION] == []


@pytest.mark.parametrize("observer", OBSERVERS)
def test_move_within_the_rule_is_not_a_new_version(
    start: Start, sink: Sink, drop: Path, tmp_path: Path, observer: dict[str, Any]
) -> None:
    start([{"path": str(drop), "asset_key": "acme/orders"}], **observer)
    first = write(drop / "orders.csv", "1\n")
    wait_reported(sink, first)
    (drop / "archive").mkdir()
    os.rename(first, drop / "archive" / "orders-old.csv")
    assert str(drop / "archive" / "orders-old.csv") not in barrier(sink, drop)
    with StateStore(tmp_path / "state", lock=False, create=False) as store:
        assert store.known(str(drop / "archive" / "orders-old.csv")) is not None
        assert store.known(str(first)) is None


def test_rename_to_another_partition_is_an_arrival(start: Start, sink: Sink, drop: Path) -> None:
    start([{"path": str(drop), "asset_key": "acme/orders", "partition": "{stem}"}])
    first = write(drop / "2026-01-01.csv", "1\n")
    wait_reported(sink, first)
    os.rename(first, drop / "2026-01-02.csv")
    (report,) = [
        r.json
        for r in wait_reported(sink, drop / "2026-01-02.csv")
        if "01-02" in r.json["metadata"]["path"]
    ]
    assert report["partition"] == "2026-01-02"


def test_flood_of_writes_to_one_file_is_one_version(start: Start, sink: Sink, drop: Path) -> None:
    start(observer="inotify")
    target = drop / "busy.csv"
    for i in range(300):
        target.write_text(f"version {i}\n")
    wait_reported(sink, target)
    before = barrier(sink, drop)
    assert before.count(str(target)) == 1
    (report,) = [r.json for r in sink.requests if r.json["metadata"]["path"] == str(target)]
    assert report["data_version"] == hashlib.sha256(b"version 299\n").hexdigest()


def test_resending_identical_content_is_a_new_version_but_chmod_is_not(
    start: Start, sink: Sink, drop: Path
) -> None:
    start(observer="inotify")
    target = write(drop / "same.csv", "same\n")
    wait_reported(sink, target)
    target.chmod(0o600)
    os.utime(target)
    barrier(sink, drop)
    assert _count(sink, target) == 1
    write(target, "same\n")  # the partner sends the same file again
    poll_until(lambda: _count(sink, target) == 2, what="second report")
    versions = {
        r.json["data_version"] for r in sink.requests if r.json["metadata"]["path"] == str(target)
    }
    assert len(versions) == 1


def test_zero_byte_files_odd_names_and_symlinks(
    start: Start, sink: Sink, drop: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asset_watcher")
    (drop / "static").mkdir()
    start(
        [
            {"path": str(drop / "static"), "asset_key": "drop/static"},
            {"path": str(drop), "asset_key": "drop/{name}"},
        ],
        observer="inotify",
    )
    empty = write(drop / "empty.csv", b"")
    newline = write(drop / "line\nbreak.csv")
    long_name = write(drop / ("l" * 251 + ".csv"))
    outside = write(tmp_path / "secret.txt", "not for Dagster")
    (drop / "link.csv").symlink_to(outside)
    (drop / "linkdir").symlink_to(tmp_path, target_is_directory=True)
    raw = os.fsencode(str(drop)) + b"/caf\xe9.csv"
    with open(raw, "wb") as handle:  # Latin-1 name: not valid UTF-8
        handle.write(b"x")
    static_raw = os.fsencode(str(drop / "static")) + b"/caf\xe9.csv"
    with open(static_raw, "wb") as handle:
        handle.write(b"y")
    for path in (empty, newline, long_name):
        wait_reported(sink, path)
    wait_reported(sink, str(drop / "static") + "/caf\\xe9.csv")
    before = barrier(sink, drop)
    (zero,) = [r.json for r in sink.requests if r.json["metadata"]["path"] == str(empty)]
    assert zero["metadata"]["size_bytes"] == 0
    assert zero["data_version"] == hashlib.sha256(b"").hexdigest()
    assert not any("link" in path or "secret" in path for path in before)
    assert not any(path.endswith("/caf\\xe9.csv") and "static" not in path for path in before)
    assert "not valid UTF-8" in caplog.text


@pytest.mark.parametrize("observer", OBSERVERS)
def test_watched_folder_deleted_and_created_again_is_watched_again(
    start: Start, sink: Sink, drop: Path, observer: dict[str, Any]
) -> None:
    start(**observer)
    shutil.rmtree(drop)
    drop.mkdir()
    back = write(drop / "back.csv")
    wait_reported(sink, back, timeout=15)
    later = write(drop / "later.csv")
    wait_reported(sink, later, timeout=15)


def test_folder_moved_in_from_outside_is_scanned_and_watched(
    start: Start, sink: Sink, drop: Path, tmp_path: Path
) -> None:
    start(observer="inotify")
    batch = tmp_path / "staging" / "batch"
    first = write(batch / "deep" / "first.csv")
    os.rename(batch, drop / "batch")
    wait_reported(sink, drop / "batch" / "deep" / "first.csv")
    later = write(drop / "batch" / "deep" / "later.csv")
    wait_reported(sink, later)
    assert not first.exists()
