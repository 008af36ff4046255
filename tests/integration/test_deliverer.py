"""The agent's Deliverer interface (`wake`, `run(stop)`, `drain`) against a real sink."""

from __future__ import annotations

import threading
from pathlib import Path

from asset_watcher.delivery import Deliverer
from asset_watcher.model import EventKind
from asset_watcher.reporter import Reporter
from asset_watcher.reports import event_report
from asset_watcher.settings import DagsterSettings
from asset_watcher.state import StateStore
from tests.support.agent_run import poll_until
from tests.support.queueing import queue_reports
from tests.support.sink import RecordedRequest, Sink


def key_of(request: RecordedRequest) -> str:
    return str(request.json["asset_key"][1])


def reports(*names: str) -> list:  # type: ignore[type-arg]
    return [event_report(EventKind.MATERIALIZATION, ("k", name)) for name in names]


def test_run_delivers_what_is_queued_until_stopped(tmp_path: Path, sink: Sink) -> None:
    with StateStore(tmp_path / "state") as store:
        reporter = Reporter(DagsterSettings(url=sink.url))
        deliverer = Deliverer(store, reporter)
        stop = threading.Event()
        thread = threading.Thread(target=deliverer.run, args=(stop,))
        thread.start()
        try:
            queue_reports(store, reports("a", "b"))
            deliverer.wake()
            sink.wait_for_count(2)
            # Sent concurrently: pick each fault's victim by its key, not by arrival order.
            sink.fail_next(1, 400, message="bad key", match=lambda r: key_of(r) == "dead")
            sink.fail_next(1, 503, retry_after=0, match=lambda r: key_of(r) == "retried")
            queue_reports(store, reports("dead", "retried"))
            deliverer.wake()
            poll_until(lambda: store.counts().pending == 0, what="outbox empty")
        finally:
            stop.set()
            thread.join(10)
            reporter.close()
        assert not thread.is_alive()
        keys = sorted(key_of(r) for r in sink.requests)
        assert keys == ["a", "b", "dead", "retried", "retried"]
        assert store.counts().dead == 1
        assert "bad key" in store.dead_letter_items()[0].error


def test_drain_for_scan(tmp_path: Path, sink: Sink) -> None:
    with StateStore(tmp_path / "state") as store:
        reporter = Reporter(DagsterSettings(url=sink.url))
        try:
            queue_reports(store, reports("x", "y"))
            summary = Deliverer(store, reporter).drain(patience_seconds=5)
        finally:
            reporter.close()
        assert summary.delivered == 2 and store.counts().pending == 0
