"""Completion tracking with a fake clock: quiet periods, restarts, floods, moves."""

from __future__ import annotations

import pytest

from asset_watcher.model import FileStat
from asset_watcher.settle import WAITS_NOTED_SECONDS, MarkerWaits, Origin, Settled, Settler
from asset_watcher.state import Waiting


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def stat(size: int = 10, mtime_ns: int = 1, inode: int = 7, ctime_ns: int = 1) -> FileStat:
    return FileStat(size=size, mtime_ns=mtime_ns, inode=inode, ctime_ns=ctime_ns)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def settler(clock: Clock) -> Settler:
    return Settler(clock)


def test_written_file_is_due_after_its_quiet_period(settler: Settler, clock: Clock) -> None:
    settler.written("/d/a", stat(), 2.0)
    clock.advance(1.99)
    assert settler.due() == []
    assert settler.next_deadline() == pytest.approx(clock.now + 0.01)
    clock.advance(0.01)
    assert settler.due() == ["/d/a"]
    assert settler.confirm("/d/a", stat()) == Settled("/d/a", Origin.WRITTEN, stat())
    assert len(settler) == 0 and settler.next_deadline() is None


def test_quiet_period_counts_from_the_event_time(settler: Settler, clock: Clock) -> None:
    """A close-write that waited in a backlog is not held for another full settle time."""
    settler.written("/d/a", stat(), 2.0, at=clock.now - 1.5)
    clock.advance(0.5)
    assert settler.due() == ["/d/a"]


def test_a_further_event_restarts_the_quiet_period(settler: Settler, clock: Clock) -> None:
    settler.written("/d/a", stat(size=1), 2.0)
    clock.advance(1.5)
    settler.written("/d/a", stat(size=2), 2.0)
    clock.advance(1.5)
    assert settler.due() == []
    clock.advance(0.5)
    assert settler.due() == ["/d/a"]


def test_a_change_seen_at_the_deadline_restarts_it(settler: Settler, clock: Clock) -> None:
    """Any modification without an event (more bytes appended) shows up in the stat."""
    settler.written("/d/a", stat(size=1), 2.0)
    clock.advance(2.0)
    assert settler.due() == ["/d/a"]
    assert settler.confirm("/d/a", stat(size=5)) is None
    clock.advance(1.9)
    assert settler.due() == []
    clock.advance(0.1)
    assert settler.confirm("/d/a", stat(size=5)) is not None


def test_a_flood_of_events_for_one_file_settles_once(settler: Settler, clock: Clock) -> None:
    for i in range(10_000):
        settler.written("/d/busy", stat(size=i), 0.5)
        clock.advance(0.0001)
    clock.advance(0.5)
    assert settler.due() == ["/d/busy"]
    assert settler.confirm("/d/busy", stat(size=9_999)) is not None
    assert settler.due() == [] and len(settler) == 0


def test_vanished_file_is_dropped(settler: Settler, clock: Clock) -> None:
    settler.written("/d/a", stat(), 0.1)
    clock.advance(0.1)
    assert settler.confirm("/d/a", None) is None
    assert len(settler) == 0


def test_seen_file_quiet_long_enough_is_due_at_once(settler: Settler, clock: Clock) -> None:
    settler.seen("/d/old", stat(), 2.0, quiet_for_seconds=3600)
    settler.seen("/d/fresh", stat(inode=8), 2.0, quiet_for_seconds=0.5)
    settler.seen("/d/future", stat(inode=9), 2.0, quiet_for_seconds=-100)  # clock skew
    assert settler.due() == ["/d/old"]
    clock.advance(1.5)
    assert settler.due() == ["/d/old", "/d/fresh"]
    clock.advance(0.5)
    assert "/d/future" in settler.due()  # never more than settle_seconds


def test_polling_completion_is_size_and_mtime_unchanged(settler: Settler, clock: Clock) -> None:
    settler.seen("/d/a", stat(size=1), 1.0)
    clock.advance(0.5)
    settler.seen("/d/a", stat(size=1), 1.0)  # the next poll: unchanged, deadline kept
    clock.advance(0.5)
    assert settler.due() == ["/d/a"]
    assert settler.confirm("/d/a", stat(size=1)).origin is Origin.SEEN  # type: ignore[union-attr]
    settler.seen("/d/b", stat(size=1, inode=2), 1.0)
    clock.advance(0.9)
    settler.seen("/d/b", stat(size=2, inode=2), 1.0)  # grew: restart
    clock.advance(0.9)
    assert settler.due() == []


def test_written_outranks_seen_and_seen_never_downgrades(settler: Settler, clock: Clock) -> None:
    settler.seen("/d/a", stat(), 1.0)
    settler.written("/d/a", stat(), 1.0)
    settler.seen("/d/a", stat(), 1.0)
    clock.advance(1.0)
    assert settler.confirm("/d/a", stat()).origin is Origin.WRITTEN  # type: ignore[union-attr]


def test_chmod_only_ctime_does_not_restart(settler: Settler, clock: Clock) -> None:
    settler.written("/d/a", stat(ctime_ns=1), 1.0)
    clock.advance(1.0)
    assert settler.confirm("/d/a", stat(ctime_ns=99)) is not None


def test_moves_and_discards(settler: Settler, clock: Clock) -> None:
    settler.written("/d/tmp/a", stat(), 1.0)
    settler.written("/d/tmp/b", stat(inode=2), 1.0)
    settler.written("/d/keep", stat(inode=3), 1.0)
    assert settler.moved("/d/tmp/a", "/d/a") is Origin.WRITTEN
    assert settler.moved("/d/none", "/d/x") is None
    assert settler.discard_under("/d/tmp") == ["/d/tmp/b"]
    assert settler.discard("/d/keep") and not settler.discard("/d/keep")
    clock.advance(1.0)
    assert settler.due() == ["/d/a"]


def test_restart_keeps_the_origin_but_a_newer_event_wins(settler: Settler, clock: Clock) -> None:
    settler.seen("/d/a", stat(), 1.0, quiet_for_seconds=5)
    settled = settler.confirm("/d/a", stat())
    assert settled is not None
    settler.restart("/d/a", stat(size=2), 1.0, settled.origin)
    settler.written("/d/b", stat(inode=2), 1.0)
    settler.restart("/d/b", stat(inode=2), 5.0, Origin.SEEN)  # already pending: unchanged
    clock.advance(1.0)
    assert settler.due() == ["/d/a", "/d/b"]
    assert settler.confirm("/d/a", stat(size=2)).origin is Origin.SEEN  # type: ignore[union-attr]
    assert settler.confirm("/d/b", stat(inode=2)).origin is Origin.WRITTEN  # type: ignore[union-attr]


def test_due_respects_its_limit_and_keeps_the_rest(settler: Settler, clock: Clock) -> None:
    for i in range(5):
        settler.written(f"/d/{i}", stat(inode=i), 0.0)
    assert settler.due(limit=2) == ["/d/0", "/d/1"]
    assert sorted(settler.due()) == [f"/d/{i}" for i in range(5)]


def test_what_waits_is_handed_out_for_noting_after_a_change_at_most_once_a_second() -> None:
    waits = MarkerWaits()
    # A new agent's first note replaces what a stopped one left, even with nothing waiting.
    assert waits.to_note(200.0) == []
    assert waits.to_note(300.0) is None  # nothing changed since
    data = Settled("/d/a.csv", Origin.WRITTEN, stat(ctime_ns=5_000_000_000))
    waits.park("/d/a.csv.sha256", data, until=305.0, what="checksum sidecar")
    waits.park("/d/_READY", Settled("/d/b.csv", Origin.SEEN, stat()))
    assert waits.to_note(200.0 + WAITS_NOTED_SECONDS / 2) is None  # too soon after the last
    last = waits.to_note(200.0 + WAITS_NOTED_SECONDS)
    assert last == [
        Waiting("/d/a.csv", "/d/a.csv.sha256", "checksum sidecar", 5.0, 305.0),
        Waiting("/d/b.csv", "/d/_READY", "ready marker", 1e-9, None),
    ]
    assert waits.appeared("/d/_READY")
    # The last note of a stopping agent is not held back; a failed write is retried.
    assert [w.path for w in waits.to_note(201.5, last=True) or []] == ["/d/a.csv"]
    waits.note_failed()
    assert waits.to_note(201.6, last=True) is not None
    assert waits.unpark("/d/nothing.csv") is None
    assert waits.to_note(400.0) is None  # unparking nothing changed nothing
