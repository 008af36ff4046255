"""The state of checksum sidecars (SPEC 14): which sidecar each check read, and what
`run` holds back waiting. A mixin of `state.StateStore`."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from asset_watcher.model import Report
from asset_watcher.state_base import StoreBase, _locked, _split

# The meta key holding what `run` has waiting for a ready marker or checksum sidecar, and
# how many of those files it keeps there (the count is kept in full).
WAITING_KEY = "waiting_files"
WAITING_KEPT = 1000


@dataclass(frozen=True)
class SidecarSeen:
    """The sidecar one checksum check of a file read, and its `FileStat.key` then (None:
    missing); `path` is the data file's, where a query returns several files'."""

    check_name: str
    sidecar: str
    key: int | None
    path: str = ""


@dataclass(frozen=True)
class Waiting:
    """A complete file `run` holds back: it waits for `waits_for` (its `what`: ready
    marker or checksum sidecar) since `since` (its last change, wall clock), a sidecar
    only `until`."""

    path: str
    waits_for: str
    what: str
    since: float
    until: float | None


@dataclass(frozen=True)
class WaitingFiles:
    """The files `run` last said wait, as of `noted_at`; `total` counts those not kept."""

    noted_at: float
    total: int
    files: tuple[Waiting, ...]


class SidecarState(StoreBase):
    """The sidecar table and waiting files of the state store (SPEC 14); for `StateStore`."""

    def note_sidecars(
        self, path: str, seen: Iterable[SidecarSeen], reports: Iterable[Report] = ()
    ) -> None:
        """Remember which sidecar each checksum check of `path` read, and its stat key
        then; queue `reports` (the evaluations) in the same transaction."""
        folder, name = _split(path)
        rows = [(folder, name, s.check_name, os.fsencode(s.sidecar), s.key) for s in seen]
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO sidecar_checks VALUES (?, ?, ?, ?, ?)", rows)
            self._enqueue(db, reports, time.time())

    @_locked
    def sidecars_seen(self, path: str) -> dict[str, SidecarSeen]:
        """What each checksum check of `path` last read, by check name."""
        if self.schema_version < 4:  # a reader of a database not migrated yet
            return {}
        rows = self.db.execute(
            "SELECT check_name, sidecar, sidecar_key FROM sidecar_checks"
            " WHERE dir = ? AND name = ?",
            _split(path),
        )
        return {c: SidecarSeen(c, os.fsdecode(s), key) for c, s, key in rows}

    @_locked
    def sidecar_readers(self, sidecar: str) -> list[str]:
        """The reported files whose checksum checks read `sidecar`."""
        rows = self.db.execute(
            "SELECT DISTINCT dir, name FROM sidecar_checks WHERE sidecar = ?",
            (os.fsencode(sidecar),),
        )
        return [os.fsdecode(d + b"/" + n) for d, n in rows]

    @_locked
    def missing_sidecars(self, limit: int = 100) -> list[SidecarSeen]:
        """Checks of reported files whose sidecar was missing when last read (for
        `status`), as SidecarSeen with `path` set."""
        if self.schema_version < 4:
            return []
        rows = self.db.execute(
            "SELECT dir, name, check_name, sidecar FROM sidecar_checks"
            " WHERE sidecar_key IS NULL LIMIT ?",
            (limit,),
        )
        return [
            SidecarSeen(c, os.fsdecode(s), None, os.fsdecode(d + b"/" + n)) for d, n, c, s in rows
        ]

    def note_waiting(self, waiting: Sequence[Waiting], now: float) -> None:
        """Replace what `run` said waits (one meta row, so `status` needs no migration
        and a stopped agent's last word stays readable)."""
        kept = sorted(waiting, key=lambda w: w.since)[:WAITING_KEPT]
        value = json.dumps(
            {
                "noted_at": now,
                "total": len(waiting),
                # Text as os.fsdecode gives it: json keeps surrogate escapes of odd bytes.
                "files": [[w.path, w.waits_for, w.what, w.since, w.until] for w in kept],
            }
        )
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (WAITING_KEY, value))

    def waiting(self) -> WaitingFiles | None:
        """What `run` last said waits (None: it never said)."""
        value = self.meta(WAITING_KEY)
        if value is None:
            return None
        data = json.loads(value)
        files = tuple(Waiting(*row) for row in data["files"])
        return WaitingFiles(data["noted_at"], data["total"], files)
