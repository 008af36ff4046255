"""A batch commits many changes at once; each change inside stays atomic on its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from asset_watcher.model import EventKind, FileStat
from asset_watcher.reports import event_report
from asset_watcher.state import StateStore


def version(store: StateStore, path: str) -> None:
    report = event_report(EventKind.MATERIALIZATION, ("k", path))
    store.record_version(path, "rule", FileStat(1, 2, 3, 4), "d", [report])


def test_a_failed_change_inside_a_batch_takes_only_itself_back(tmp_path: Path) -> None:
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
