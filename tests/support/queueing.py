"""Reports into the outbox for delivery tests, by the store's own way in."""

from __future__ import annotations

from collections.abc import Iterable

from asset_watcher.model import FileStat, Report
from asset_watcher.state import StateStore


def queue_reports(store: StateStore, reports: Iterable[Report], path: str = "/drop/queued") -> None:
    """Queue `reports` as a scan or the agent does: with a new version of a file (the
    outbox takes reports only with a file's version or its deletion). Each call records
    the same file again, so the store tracks one file however often it is called."""
    store.record_version(path, "rule", FileStat(1, 1, 1, 1), None, reports)
