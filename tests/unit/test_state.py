"""The state store (state.py): the outbox queries the Deliverer relies on (heads per order
key, retry times, errors, dead letters) and batches of changes committed at once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from asset_watcher.model import EventKind, FileStat, Report
from asset_watcher.reports import event_report
from asset_watcher.state import OutboxItem, StateStore, order_key_parts
from tests.support.queueing import queue_reports


def report(key: str, seq: int, partition: str | None = None) -> Report:
    return event_report(
        EventKind.MATERIALIZATION, ("t", key), metadata={"seq": seq}, partition=partition
    )


def seqs(items: list[OutboxItem]) -> list[tuple[str, int]]:
    out = []
    for item in items:
        body = json.loads(item.body)
        out.append((body["asset_key"][1], body["metadata"]["seq"]))
    return out


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    with StateStore(tmp_path / "state") as opened:
        yield opened


def test_due_gives_the_head_of_each_order_key_oldest_first(store: StateStore) -> None:
    queue_reports(store, [report("a", 0), report("b", 0), report("a", 1), report("c", 0, "p1")])
    queue_reports(store, [report("c", 0, "p2")])
    assert seqs(store.due(now=0, limit=10)) == [("a", 0), ("b", 0), ("c", 0), ("c", 0)]
    assert seqs(store.due(now=0, limit=2)) == [("a", 0), ("b", 0)]
    busy = store.due(now=0, limit=1)[0].order_key
    assert seqs(store.due(now=0, limit=10, busy_keys=[busy]))[0] == ("b", 0)


def test_a_backing_off_head_holds_back_its_key_only(store: StateStore) -> None:
    queue_reports(store, [report("a", 0), report("a", 1), report("b", 0)])
    head = store.due(now=0, limit=1)[0]
    store.retry_later(head.id, next_attempt_at=100.0, error="HTTP 500: boom")
    assert seqs(store.due(now=50, limit=10)) == [("b", 0)]  # a/1 waits behind a/0
    # The next time anything can go: the head's retry time, not a/1's zero.
    b_key = store.due(now=50, limit=10)[0].order_key
    assert store.next_due_at(busy_keys=[b_key]) == 100.0
    assert store.next_due_at() == 0.0  # b/0 is due now
    assert seqs(store.due(now=100, limit=10)) == [("a", 0), ("b", 0)]
    assert store.due(now=100, limit=1)[0].attempts == 1


def test_next_due_at_is_none_when_nothing_waits(store: StateStore) -> None:
    assert store.next_due_at() is None
    queue_reports(store, [report("a", 0)])
    (item,) = store.due(now=0, limit=10)
    assert store.next_due_at(busy_keys=[item.order_key]) is None  # only the one in flight


def test_make_due_clears_backoff(store: StateStore) -> None:
    queue_reports(store, [report("a", 0), report("b", 0)])
    a, b = store.due(now=0, limit=10)
    store.retry_later(a.id, 500.0, "x")
    store.retry_later(b.id, 900.0, "x")
    assert store.due(now=1, limit=10) == []
    store.make_due([a.id, b.id, 12345])  # unknown ids are ignored
    assert seqs(store.due(now=1, limit=10)) == [("a", 0), ("b", 0)]


def test_errors_are_remembered_with_their_time(store: StateStore) -> None:
    queue_reports(store, [report("a", 0), report("b", 0)])
    a, b = store.due(now=0, limit=10)
    store.retry_later(a.id, 10.0, "cannot reach: refused")
    assert store.meta("last_error") == "cannot reach: refused"
    first_at = float(store.meta("last_error_at") or 0)
    assert first_at > 0
    store.note_error("Dagster answered 401 ...")
    assert store.meta("last_error") == "Dagster answered 401 ..."
    store.dead_letter(b.id, "HTTP 400: bad")
    assert store.meta("last_error") == "HTTP 400: bad"
    assert float(store.meta("last_error_at") or 0) >= first_at


def test_dead_letters_listed_and_requeued_in_their_old_place(store: StateStore) -> None:
    queue_reports(store, [report("a", 0, "p"), report("a", 1, "p")])
    first = store.due(now=0, limit=1)[0]
    store.dead_letter(first.id, "HTTP 400: no")
    (letter,) = store.dead_letter_items()
    assert (letter.id, letter.kind, letter.error) == (
        first.id,
        EventKind.MATERIALIZATION,
        "HTTP 400: no",
    )
    assert order_key_parts(letter.order_key) == (("t", "a"), "p")
    assert store.counts().dead == 1 and store.counts().pending == 1
    assert store.retry_dead() == 1
    # Back ahead of the newer report of the same key that is still queued.
    assert seqs(store.due(now=0, limit=10)) == [("a", 0)]
    assert (store.counts().dead, store.counts().pending) == (0, 2)
    assert store.dead_letter_items() == []


def test_order_key_parts_round_trip() -> None:
    assert order_key_parts(report("x y#%", 0).order_key) == (("t", "x y#%"), None)
    assert order_key_parts(report("k", 0, "2026-01-01").order_key) == (("t", "k"), "2026-01-01")


# -- batches ---------------------------------------------------------------------------


def version(store: StateStore, path: str) -> None:
    report = event_report(EventKind.MATERIALIZATION, ("k", path))
    store.record_version(path, "rule", FileStat(1, 2, 3, 4), "d", [report])


def test_a_failed_change_inside_a_batch_takes_only_itself_back(tmp_path: Path) -> None:
    """A batch commits many changes at once; each change inside stays atomic on its own."""
    with StateStore(tmp_path / "state") as store:
        with store.batch():
            version(store, "/drop/a")
            with pytest.raises(RuntimeError), store.transaction() as db:
                db.execute("DELETE FROM outbox")
                raise RuntimeError("half done")
            version(store, "/drop/b")
        assert store.counts().pending == 2
        assert store.known("/drop/a") is not None and store.known("/drop/b") is not None

        with pytest.raises(RuntimeError), store.batch():
            version(store, "/drop/c")
            raise RuntimeError("the batch fails")
        assert store.known("/drop/c") is None  # nothing of a failed batch is kept
        assert store.counts().pending == 2
