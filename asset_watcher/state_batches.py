"""The state of batches (SPEC 13): each batch's last reported completion, what an
incomplete one waits for. A mixin of `state.StateStore`."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

from asset_watcher.model import Report
from asset_watcher.state_base import StoreBase, _locked


@dataclass(frozen=True)
class ReportedBatch:
    """A batch's last reported completion."""

    completion: str
    members: dict[str, list[int]]  # name -> [size, mtime_ns, inode]
    data_version: str | None
    reported_at: float


@dataclass(frozen=True)
class PendingBatch:
    rule: str
    folder: str
    group: str
    waiting_for: str
    since: float
    updated_at: float


class BatchState(StoreBase):
    """The batch tables of the state store (SPEC 13); `StateStore` inherits it."""

    @_locked
    def reported_batch(self, rule: str, folder: str, group: str) -> ReportedBatch | None:
        if self.schema_version < 4:
            return None
        row = self.db.execute(
            "SELECT completion, members, data_version, reported_at FROM batches"
            " WHERE rule = ? AND folder = ? AND grp = ?",
            (rule, os.fsencode(folder), group),
        ).fetchone()
        if row is None:
            return None
        return ReportedBatch(row[0], json.loads(row[1]), row[2], row[3])

    def record_batch(
        self,
        rule: str,
        folder: str,
        group: str,
        completion: str,
        members: dict[str, list[int]],
        data_version: str | None,
        reports: Iterable[Report],
    ) -> None:
        """Store a batch's completion and queue its reports, atomically."""
        now = time.time()
        key = (rule, os.fsencode(folder), group)
        text = json.dumps(members, ensure_ascii=False)
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*key, completion, text, data_version, now),
            )
            db.execute("DELETE FROM pending_batches WHERE rule = ? AND folder = ? AND grp = ?", key)
            self._enqueue(db, reports, now)

    def note_pending_batch(
        self, rule: str, folder: str, group: str, waiting_for: str | None, since: float
    ) -> None:
        """Remember what an incomplete batch waits for (None: it waits for nothing)."""
        key = (rule, os.fsencode(folder), group)
        with self.transaction() as db:
            if waiting_for is None:
                db.execute(
                    "DELETE FROM pending_batches WHERE rule = ? AND folder = ? AND grp = ?", key
                )
                return
            db.execute(
                "INSERT OR REPLACE INTO pending_batches VALUES (?, ?, ?, ?, ?, ?)",
                (*key, waiting_for, since, time.time()),
            )

    @_locked
    def pending_batches(self, limit: int = 100) -> list[PendingBatch]:
        if self.schema_version < 4:
            return []
        rows = self.db.execute(
            "SELECT rule, folder, grp, waiting_for, since, updated_at FROM pending_batches"
            " ORDER BY since LIMIT ?",
            (limit,),
        ).fetchall()
        return [PendingBatch(r, os.fsdecode(f), g, w, s, u) for r, f, g, w, s, u in rows]
