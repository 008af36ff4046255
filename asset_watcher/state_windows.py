"""The state of expected arrivals (SPEC 15): since when a rule is watched, its judged
windows. A mixin of `state.StateStore`."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from asset_watcher.model import Report
from asset_watcher.state_base import StoreBase, _locked


@dataclass(frozen=True)
class Window:
    """One judged window of a rule's expectation (SPEC 15), as the state holds it."""

    rule: str
    due_at: int  # UTC epoch seconds
    outcome: str  # "on_time" or "missed"
    arrived_at: float | None = None  # a missed window's late file, if one came


# Judged windows kept this long before the newest: windows are judged up to 7 days late.
WINDOWS_KEPT_SECONDS = 14 * 86400


class WindowState(StoreBase):
    """The expectation tables of the state store (SPEC 15); `StateStore` inherits it."""

    def expectation_since(self, rule: str, now: float) -> float:
        """Since when `rule`'s expectation is watched: `now` the first time it is asked."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO expectations VALUES (?, ?)", (rule, now))
            return float(
                db.execute("SELECT since FROM expectations WHERE rule = ?", (rule,)).fetchone()[0]
            )

    @_locked
    def expectation_started(self, rule: str) -> float | None:
        """Since when `rule`'s expectation is watched by an agent; None if never yet."""
        if self.schema_version < 3:
            return None
        row = self.db.execute("SELECT since FROM expectations WHERE rule = ?", (rule,)).fetchone()
        return None if row is None else float(row[0])

    @_locked
    def windows(self, rule: str, first_due: float, last_due: float) -> dict[int, Window]:
        """The judged windows of `rule` due in [first_due, last_due], by due time."""
        if self.schema_version < 3:  # a reader of a database not migrated yet
            return {}
        rows = self.db.execute(
            "SELECT due_at, outcome, arrived_at FROM expected_windows"
            " WHERE rule = ? AND due_at BETWEEN ? AND ?",
            (rule, first_due, last_due),
        )
        return {due: Window(rule, due, outcome, at) for due, outcome, at in rows}

    def queue_window_reports(self, judged: Sequence[tuple[Window, Report]]) -> int:
        """Judge windows and queue each one's evaluation (reports that are no file's
        version), in one transaction; a window judged already keeps its outcome and its
        report is not queued. Returns how many were queued."""
        now = time.time()
        queued = []
        with self.transaction() as db:
            for window, report in judged:
                if self._judge(db, [window], now):
                    queued.append(report)
            self._enqueue(db, queued, now)
            # Pruned against the newest judged window, not the clock: the windows' own times.
            db.executemany(
                "DELETE FROM expected_windows WHERE rule = ? AND due_at < "
                "(SELECT MAX(due_at) FROM expected_windows WHERE rule = ?) - ?",
                [(rule, rule, WINDOWS_KEPT_SECONDS) for rule in {w.rule for w, _ in judged}],
            )
        return len(queued)

    @staticmethod
    def _judge(db: sqlite3.Connection, windows: Iterable[Window], now: float) -> int:
        """Insert judged windows; a late file's arrival is added to its missed window."""
        judged = 0
        for window in windows:
            cursor = db.execute(
                "INSERT OR IGNORE INTO expected_windows VALUES (?, ?, ?, ?, ?)",
                (window.rule, window.due_at, window.outcome, window.arrived_at, now),
            )
            judged += cursor.rowcount
            if not cursor.rowcount and window.arrived_at is not None:
                db.execute(
                    "UPDATE expected_windows SET arrived_at = ? WHERE rule = ? AND due_at = ?"
                    " AND arrived_at IS NULL",
                    (window.arrived_at, window.rule, window.due_at),
                )
        return judged
