"""The pipeline step by step with a fake clock, on real files and a real state store."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from asset_watcher.config import Config
from asset_watcher.errors import StateError
from asset_watcher.fingerprint import file_stat
from asset_watcher.model import Change, ChangeKind, Found
from asset_watcher.pipeline import Pipeline
from asset_watcher.rules import compile_rules
from asset_watcher.settle import WAITS_NOTED_SECONDS
from asset_watcher.state import DB_NAME, StateStore
from tests.support.agent_run import skip_without_file_leases


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    with StateStore(tmp_path / "state") as opened:
        yield opened  # type: ignore[misc]


def make_pipeline(drop: Path, store: StateStore, clock: Clock, **rule: object) -> Pipeline:
    config = Config(
        defaults={"settle_seconds": 1.0},
        watch=[{"path": str(drop), "asset_key": "drop/{stem}", **rule}],
    )
    return Pipeline(compile_rules(config, host="h"), store, clock=clock)


def written(path: Path, at: float) -> Change:
    return Change(ChangeKind.WRITTEN, str(path), root=str(path.parent), at=at)


def _bytes_read() -> int:
    """rchar of this process: every byte read by a read-like syscall (proc(5))."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs /proc/self/io")
def test_a_flood_of_events_costs_one_read_of_the_file(drop: Path, store: StateStore) -> None:
    clock = Clock()
    pipeline = make_pipeline(drop, store, clock)
    big = drop / "big.bin"
    big.write_bytes(os.urandom(4 << 20))
    before = _bytes_read()
    for _ in range(1000):
        pipeline.handle(written(big, clock.now))
        pipeline.settle_due()
    clock.now += 1.0
    pipeline.settle_due()
    read = _bytes_read() - before
    assert pipeline.counts.reported == 1
    assert store.counts().pending == 1
    assert 4 << 20 <= read < 2 * (4 << 20), f"{read} bytes read for one 4 MiB version"


def test_more_bytes_without_an_event_restart_the_quiet_period(
    drop: Path, store: StateStore
) -> None:
    clock = Clock()
    pipeline = make_pipeline(drop, store, clock)
    target = drop / "a.csv"
    target.write_text("part")
    pipeline.handle(written(target, clock.now))
    with open(target, "a") as handle:
        handle.write(" and more")
    clock.now += 1.0
    pipeline.settle_due()
    assert pipeline.counts.reported == 0  # it changed since the event: not complete yet
    clock.now += 1.0
    pipeline.settle_due()
    assert pipeline.counts.reported == 1
    assert store.known(str(target)).stat.size == len("part and more")  # type: ignore[union-attr]


def test_close_without_a_write_is_not_a_new_version(drop: Path, store: StateStore) -> None:
    clock = Clock()
    pipeline = make_pipeline(drop, store, clock)
    target = drop / "a.csv"
    target.write_text("x")
    pipeline.handle(written(target, clock.now))
    clock.now += 1
    pipeline.settle_due()
    with open(target, "r+"):  # opened for writing, closed unchanged: IN_CLOSE_WRITE
        pass
    pipeline.handle(written(target, clock.now))
    clock.now += 1
    pipeline.settle_due()
    assert pipeline.counts.reported == 1


def test_scan_sees_chmod_as_no_new_version_but_a_preserved_mtime_upload_as_one(
    drop: Path, store: StateStore
) -> None:
    clock = Clock()
    pipeline = make_pipeline(drop, store, clock)
    target = drop / "a.csv"
    target.write_text("first")
    old = time.time() - 3600
    os.utime(target, (old, old))
    pipeline.handle(written(target, clock.now))
    clock.now += 1
    pipeline.settle_due()
    target.chmod(0o600)  # ctime moves, content does not
    pipeline.handle(Found(str(target), file_stat(str(target))))  # type: ignore[arg-type]
    clock.now += 1
    pipeline.settle_due()
    assert pipeline.counts.reported == 1
    with open(target, "r+") as handle:  # same size, mtime set back by the client
        handle.write("FIRST")
    os.utime(target, (old, old))
    pipeline.handle(Found(str(target), file_stat(str(target))))  # type: ignore[arg-type]
    clock.now += 1
    pipeline.settle_due()
    assert pipeline.counts.reported == 2


def test_unreadable_or_vanished_file_is_skipped_and_the_pipeline_goes_on(
    drop: Path, store: StateStore
) -> None:
    clock = Clock()
    pipeline = make_pipeline(drop, store, clock)
    gone = drop / "gone.csv"
    gone.write_text("x")
    pipeline.handle(written(gone, clock.now))
    gone.unlink()
    fifo = drop / "pipe.csv"
    os.mkfifo(fifo)
    pipeline.handle(written(fifo, clock.now))
    ok = drop / "ok.csv"
    ok.write_text("ok")
    pipeline.handle(written(ok, clock.now))
    clock.now += 1
    pipeline.settle_due()
    assert pipeline.counts.reported == 1
    assert store.known(str(ok)) is not None


def created(path: Path, at: float) -> Change:
    return Change(ChangeKind.CREATED, str(path), root=str(path.parent), at=at)


def test_a_hard_link_into_place_is_an_arrival_but_a_new_file_waits_for_its_close(
    drop: Path, store: StateStore
) -> None:
    """OpenSSH's sftp-server renames with link() + unlink(): no close event follows."""
    clock = Clock()
    pipeline = make_pipeline(drop, store, clock)
    part = drop / ".upload.filepart"
    part.write_bytes(b"data\n")
    # The client's rename request comes a round trip after the close (and after a clock
    # tick: within one tick link() leaves ctime == mtime, see the module's note).
    threading.Event().wait(0.02)
    os.link(part, drop / "linked.csv")
    part.unlink()
    still_linked = drop / "second.csv"
    still_linked.write_bytes(b"two names\n")
    os.link(still_linked, drop / ".second.csv.part")  # caught between link and unlink
    writing = drop / "writing.csv"
    with open(writing, "wb") as handle:  # open, one chunk written, not closed yet
        handle.write(b"first chunk\n")
        handle.flush()
        pipeline.handle(created(drop / "linked.csv", clock.now))
        pipeline.handle(created(writing, clock.now))
        pipeline.handle(created(still_linked, clock.now))
        clock.now += 5
        pipeline.settle_due()
    assert store.known(str(drop / "linked.csv")) is not None
    assert store.known(str(still_linked)) is not None
    assert store.known(str(writing)) is None
    assert pipeline.counts.reported == 2


def deleted(path: Path, at: float) -> Change:
    return Change(ChangeKind.DELETED, str(path), root=str(path.parent), at=at)


def upload_part(path: Path, data: bytes) -> None:
    """An upload to a temporary name whose mtime the link() that follows cannot pass: the
    case of a link within the last write's clock tick, where ctime == mtime."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()  # written now: a write at close would set mtime again
        later = time.time_ns() + 3600 * 10**9
        os.utime(handle.fileno(), ns=(later, later))


def test_a_link_rename_the_new_name_cannot_tell_is_told_by_its_events(
    drop: Path, store: StateStore
) -> None:
    """close(part), link(part, final), unlink(part): the events say it arrived."""
    clock = Clock()
    pipeline = make_pipeline(drop, store, clock)
    part, final = drop / ".upload.filepart", drop / "final.csv"
    upload_part(part, b"id\n1\n")
    pipeline.handle(written(part, clock.now))
    os.link(part, final)
    part.unlink()
    st = final.stat()
    assert st.st_nlink == 1 and not st.st_mtime_ns < st.st_ctime_ns  # no trace on the name
    pipeline.handle(created(final, clock.now + 0.001))
    pipeline.handle(deleted(part, clock.now + 0.002))
    clock.now += 5
    pipeline.settle_due()
    assert store.known(str(final)) is not None
    assert pipeline.counts.reported == 1


@pytest.mark.parametrize("case", ["created-before-the-close", "written-meanwhile", "too-late"])
def test_a_writers_new_file_is_not_taken_for_a_link_rename(
    drop: Path, store: StateStore, case: str
) -> None:
    """Around another upload's temporary name going, a file still being written waits for
    its own close."""
    clock = Clock()
    pipeline = make_pipeline(drop, store, clock)
    part, writing = drop / ".other.filepart", drop / "writing.csv"
    upload_part(part, b"other\n")
    with open(writing, "wb") as handle:
        handle.write(b"first chunk\n")
        handle.flush()
        if case == "created-before-the-close":
            pipeline.handle(created(writing, clock.now))
            pipeline.handle(written(part, clock.now + 0.001))
        else:
            pipeline.handle(written(part, clock.now))
            pipeline.handle(created(writing, clock.now + 0.001))
        if case == "written-meanwhile":
            handle.write(b"second chunk\n")
            handle.flush()
        part.unlink()
        gone_at = clock.now + (10 if case == "too-late" else 0.002)
        pipeline.handle(deleted(part, gone_at))
        clock.now += 15
        pipeline.settle_due()
        assert store.known(str(writing)) is None
    assert pipeline.counts.reported == 0


def test_a_close_seen_while_the_file_is_still_open_for_writing_is_looked_at_again(
    drop: Path, store: StateStore
) -> None:
    """The kernel signals a close a moment before the writer lets go of the file (or a
    second writer still has it): the file is looked at again, not dropped."""
    clock = Clock()
    pipeline = make_pipeline(drop, store, clock)
    path = drop / "shared.csv"
    with open(path, "wb") as writer:
        writer.write(b"a\n")
        writer.flush()
        skip_without_file_leases(path)
        pipeline.handle(written(path, clock.now))
        clock.now += 5
        pipeline.settle_due()
        assert store.known(str(path)) is None
    clock.now += 5
    pipeline.settle_due()
    assert store.known(str(path)) is not None
    assert pipeline.counts.reported == 1


def test_a_state_that_cannot_be_written_stops_the_pipeline_instead_of_losing_the_change(
    drop: Path, store: StateStore, tmp_path: Path
) -> None:
    """A full disk fails the same way as this held write lock: a StateError."""
    clock = Clock()
    pipeline = make_pipeline(drop, store, clock, on_delete="observe")
    gone = drop / "gone.csv"
    gone.write_text("x")
    pipeline.handle(written(gone, clock.now))
    clock.now += 1
    pipeline.settle_due()
    gone.unlink()
    store.db.execute("PRAGMA busy_timeout = 0")
    other = sqlite3.connect(tmp_path / "state" / DB_NAME, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StateError):
            pipeline.handle(Change(ChangeKind.DELETED, str(gone), root=str(drop), at=clock.now))
    finally:
        other.close()
    assert store.known(str(gone)) is not None  # nothing half done: the next start sees it


def test_a_sidecar_found_by_a_scan_re_evaluates_its_check_once_and_what_waits_is_noted(
    drop: Path, store: StateStore
) -> None:
    clock, wall = Clock(), Clock()
    wall.now = time.time()  # sidecar waits count from the files' real ctimes
    config = Config(
        defaults={"settle_seconds": 1.0},
        watch=[{"path": str(drop), "asset_key": "drop/{stem}", "checks": [
            {"type": "checksum", "sidecar": "{relpath}.sha256", "wait_seconds": 300},
        ]}],
    )  # fmt: skip
    pipeline = Pipeline(compile_rules(config, host="h"), store, clock=clock, wall_clock=wall)
    waits, late = drop / "waits.csv", drop / "late.csv"
    for path in (waits, late):
        path.write_bytes(b"id\n1\n")
        pipeline.handle(written(path, clock.now))
    clock.now += 1.0
    pipeline.settle_due()
    pipeline.note_waits()
    noted = store.waiting()
    assert noted is not None and noted.total == 2
    assert {(w.path, w.waits_for, w.what) for w in noted.files} == {
        (str(waits), f"{waits}.sha256", "checksum sidecar"),
        (str(late), f"{late}.sha256", "checksum sidecar"),
    }
    # Their wait is over: reported, their checks failed for the missing sidecars.
    wall.now += 301.0
    pipeline.waits_due()
    assert pipeline.counts.reported == 2
    pending = store.counts().pending
    clock.now += WAITS_NOTED_SECONDS
    pipeline.note_waits()
    assert store.waiting() is not None and store.waiting().files == ()  # type: ignore[union-attr]
    assert sorted(m.path for m in store.missing_sidecars()) == [str(late), str(waits)]
    # Its sidecar comes while the agent is stopped: no event, a scan finds it (each scan
    # does, a sidecar is never a reported version); the check alone is evaluated, once.
    sidecar = drop / "late.csv.sha256"
    sidecar.write_text(hashlib.sha256(b"id\n1\n").hexdigest() + "  late.csv\n")
    stat = file_stat(str(sidecar))
    assert stat is not None
    for _ in range(2):
        pipeline.handle(Found(str(sidecar), stat))
    assert store.counts().pending == pending + 1
    assert [m.path for m in store.missing_sidecars()] == [str(waits)]
    assert pipeline.counts.reported == 2
