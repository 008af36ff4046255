"""The state database: reported file versions, the durable outbox, dead letters, the lock.

A file's new version and its reports are written in one transaction, so after a crash
either both exist (the reports are sent on restart) or neither does (the file is found
again by the catch-up scan). WAL with synchronous=NORMAL keeps that promise across
process crashes; a power loss may roll back the last transactions, which rolls back
state and outbox together, so the file is simply found again.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from asset_watcher.errors import StateError, StateLockedError
from asset_watcher.model import EventKind, FileStat, Report
from asset_watcher.schema import SCHEMA_VERSION, _checked_version, _migrate
from asset_watcher.state_base import StoreBase, _locked, _split
from asset_watcher.state_batches import BatchState, PendingBatch, ReportedBatch
from asset_watcher.state_sidecars import SidecarSeen, SidecarState, Waiting, WaitingFiles
from asset_watcher.state_windows import Window, WindowState

# The feature mixins' values are importable from here, as before the split.
__all__ = [
    "DB_NAME",
    "DeadLetter",
    "KnownVersion",
    "OutboxCounts",
    "OutboxItem",
    "PendingBatch",
    "ReportedBatch",
    "SetAside",
    "SidecarSeen",
    "StateStore",
    "Waiting",
    "WaitingFiles",
    "Window",
    "order_key_parts",
]

log = logging.getLogger(__name__)

DB_NAME = "state.sqlite3"
LOCK_NAME = "lock"
# How often `ack_many` refreshes the time of the last delivery (see there).
LAST_SUCCESS_EVERY_SECONDS = 1.0

# Set-aside reports kept for `status`; older ones are dropped.
SET_ASIDE_KEPT = 1000


@dataclass(frozen=True)
class KnownVersion:
    """The last reported version of a file."""

    stat: FileStat
    digest: str | None


@dataclass(frozen=True)
class OutboxItem:
    """A stored report waiting for a 2xx."""

    id: int
    kind: EventKind
    order_key: str
    body: str  # the JSON text exactly as it will be sent
    attempts: int
    last_error: str | None = None  # of its latest failed attempt


@dataclass(frozen=True)
class DeadLetter:
    """A report Dagster rejected (a 4xx other than 401/403), kept for `retry-dead`."""

    id: int
    kind: EventKind
    order_key: str
    body: str
    failed_at: float
    error: str


@dataclass(frozen=True)
class SetAside:
    """A report taken out of the outbox without a 2xx that is no rejection (SPEC 6: a
    partitioned check evaluation Dagster already holds), kept for `status`."""

    id: int
    kind: EventKind
    order_key: str
    body: str
    set_aside_at: float
    reason: str


def order_key_parts(order_key: str) -> tuple[tuple[str, ...], str | None]:
    """(asset key parts, partition or None) back from a stored order key."""
    key, _, partition = order_key.partition("\x1e")
    return tuple(key.split("\x1f")), partition or None


@dataclass(frozen=True)
class OutboxCounts:
    tracked_files: int
    pending: int
    dead: int
    oldest_pending_at: float | None
    set_aside: int


class StateStore(BatchState, SidecarState, WindowState, StoreBase):
    """One SQLite connection shared by the agent's threads; every method holds `lock`."""

    def __init__(
        self,
        directory: Path | None,
        *,
        lock: bool = True,
        create: bool = True,
        read_only: bool = False,
    ) -> None:
        """`directory=None` keeps the state in memory (a dry run with no state yet).
        `read_only` (for `status` and dry runs) changes nothing in the directory."""
        self.directory = directory
        self.read_only = read_only
        self.lock = threading.RLock()
        self._batch_depth = 0
        self._last_success_written = 0.0
        self._lock_fd: int | None = None
        self.schema_version = SCHEMA_VERSION  # of the database as opened (a reader's may be older)
        if directory is None:
            self.db = self._open_db(":memory:")
            return
        try:
            if create and not read_only:
                directory.mkdir(parents=True, exist_ok=True, mode=0o750)
            if lock and not read_only:
                self._acquire_lock()
            self.db = self._connect(directory / DB_NAME)
        except OSError as exc:
            self.close()
            raise StateError(f"state directory {directory}: {exc.strerror or exc}") from None

    # -- lifecycle ---------------------------------------------------------------------

    def _acquire_lock(self) -> None:
        assert self.directory is not None
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise StateLockedError(str(self.directory), holder or "pid unknown") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _connect(self, path: Path) -> sqlite3.Connection:
        try:
            if self.read_only:
                db = sqlite3.connect(
                    f"{path.as_uri()}?mode=ro", uri=True, timeout=30, check_same_thread=False
                )
                try:
                    # An older schema is read as it is (nothing is migrated by a reader).
                    self.schema_version = _checked_version(db, path)
                    db.execute("SELECT COUNT(*) FROM outbox").fetchone()  # readable at all?
                except BaseException:
                    db.close()
                    raise
                return db
            return self._open_db(path)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise StateError(f"state database {path} is locked: {exc}") from None
            if self._lock_fd is None:  # only the agent holding the directory may set it aside
                raise StateError(f"state database {path} is unreadable: {exc}") from None
            # A corrupt database cannot be repaired here. Keep it for inspection and start
            # afresh: the catch-up scan reports every file on disk again, so nothing on
            # disk goes unreported.
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            log.error("state database %s is unreadable (%s); moved to %s", path, exc, aside)
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{path}{suffix}", f"{aside}{suffix}")
            return self._open_db(path)

    def _open_db(self, path: Path | str) -> sqlite3.Connection:
        db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            found = _checked_version(db, path)  # before anything is written: a newer one stays
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            if found < SCHEMA_VERSION:
                _migrate(db, path, found)
        except BaseException:
            db.close()
            raise
        self.schema_version = SCHEMA_VERSION
        return db

    def close(self) -> None:
        db = getattr(self, "db", None)
        if db is not None:
            db.close()
            self.db = None  # type: ignore[assignment]
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reported versions -------------------------------------------------------------

    @_locked
    def stat_keys_in_folder(self, folder: str) -> dict[str, int]:
        """`FileStat.key` of the reported version of each file directly inside `folder`,
        by file name: a rescan compares 100,000s of them and builds no objects."""
        rows = self.db.execute(
            "SELECT name, stat_key FROM files WHERE dir = ?", (os.fsencode(folder),)
        ).fetchall()
        return {name.decode("utf-8", "surrogateescape"): key for name, key in rows}

    @_locked
    def known(self, path: str) -> KnownVersion | None:
        row = self.db.execute(
            "SELECT size, mtime_ns, inode, ctime_ns, digest FROM files WHERE dir = ? AND name = ?",
            _split(path),
        ).fetchone()
        if row is None:
            return None
        size, mtime, inode, ctime, digest = row
        return KnownVersion(FileStat(size, mtime, inode, ctime), digest)

    @_locked
    def known_by_inode(self, inode: int) -> list[tuple[str, KnownVersion]]:
        """Reported versions with this inode number (a file renamed behind our back)."""
        rows = self.db.execute(
            "SELECT dir, name, size, mtime_ns, inode, ctime_ns, digest FROM files WHERE inode = ?",
            (inode,),
        )
        return [
            (os.fsdecode(d + b"/" + n), KnownVersion(FileStat(size, mtime, ino, ctime), digest))
            for d, n, size, mtime, ino, ctime, digest in rows
        ]

    @_locked
    def known_under(self, folder: str) -> list[str]:
        """Paths of the reported files anywhere below `folder` (it was removed or moved)."""
        raw = os.fsencode(folder).rstrip(b"/")
        rows = self.db.execute(
            "SELECT dir, name FROM files WHERE dir = ? OR (dir >= ? AND dir < ?)",
            (raw, raw + b"/", raw + b"0"),  # b"0" sorts right after b"/"
        )
        return [os.fsdecode(d + b"/" + n) for d, n in rows]

    def record_version(
        self,
        path: str,
        rule: str,
        stat: FileStat,
        digest: str | None,
        reports: Iterable[Report],
        windows: Iterable[Window] = (),
    ) -> None:
        """Store a file's new version and queue its reports, atomically; `windows` are the
        expectation windows the file settles (its `arrived_on_time` evaluation is among
        the reports)."""
        now = time.time()
        with self.transaction() as db:
            self._judge(db, windows, now)
            db.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    *_split(path),
                    rule,
                    stat.size,
                    stat.mtime_ns,
                    stat.inode,
                    stat.ctime_ns,
                    stat.key,
                    digest,
                    now,
                ),
            )
            self._enqueue(db, reports, now)

    def touch_version(self, path: str, stat: FileStat) -> None:
        """Remember new stat values of a file whose content did not change (no report)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE files SET size = ?, mtime_ns = ?, inode = ?, ctime_ns = ?, stat_key = ?"
                " WHERE dir = ? AND name = ?",
                (stat.size, stat.mtime_ns, stat.inode, stat.ctime_ns, stat.key, *_split(path)),
            )

    def move_version(self, source: str, destination: str) -> bool:
        """Carry a reported version over a rename within a rule; False if none was known."""
        with self.transaction() as db:
            db.execute("DELETE FROM files WHERE dir = ? AND name = ?", _split(destination))
            # What the checks read under the old name is no sidecar of the new one.
            for gone in (source, destination):
                db.execute("DELETE FROM sidecar_checks WHERE dir = ? AND name = ?", _split(gone))
            cursor = db.execute(
                "UPDATE files SET dir = ?, name = ? WHERE dir = ? AND name = ?",
                (*_split(destination), *_split(source)),
            )
            return cursor.rowcount > 0

    def forget(self, path: str, reports: Iterable[Report] = ()) -> None:
        """Drop a deleted file's version, queueing any reports about the deletion."""
        with self.transaction() as db:
            db.execute("DELETE FROM files WHERE dir = ? AND name = ?", _split(path))
            db.execute("DELETE FROM sidecar_checks WHERE dir = ? AND name = ?", _split(path))
            self._enqueue(db, reports, time.time())

    # -- outbox ------------------------------------------------------------------------

    def queue_reports(self, reports: Iterable[Report]) -> None:
        """Queue reports that belong to no file version; the caller wakes the deliverer."""
        with self.transaction() as db:
            self._enqueue(db, reports, time.time())

    def queue_replacing(self, report: Report) -> int:
        """Queue `report` in place of those of its kind and order key still in the outbox;
        returns how many it replaced. For reports of which only the newest matters (the
        heartbeat): an outage leaves one waiting, not one per interval. A replaced report
        that is in flight may still arrive; its answer then finds no row to change, and the
        deliverer's per-key order holds the new one back until that answer came."""
        with self.transaction() as db:
            replaced = db.execute(
                "DELETE FROM outbox WHERE kind = ? AND order_key = ?",
                (report.kind.value, report.order_key),
            ).rowcount
            self._enqueue(db, [report], time.time())
        return int(replaced)

    @_locked
    def due(self, now: float, limit: int, busy_keys: Iterable[str] = ()) -> list[OutboxItem]:
        """The oldest report of each order key, if it is due and its key is not in flight."""
        busy = set(busy_keys)
        # Walks the outbox oldest first and stops after enough heads: a backlog of 100,000
        # after an outage costs a few index look-ups per report, not a scan per round.
        rows = self.db.execute(
            "SELECT id, kind, order_key, body, attempts, last_error FROM outbox AS o"
            " WHERE next_attempt_at <= ? AND NOT EXISTS (SELECT 1 FROM outbox AS p"
            "  WHERE p.order_key = o.order_key AND p.id < o.id)"
            " ORDER BY id LIMIT ?",
            (now, limit + len(busy)),
        )
        items = []
        for row in rows:
            if row[2] in busy:
                continue
            items.append(OutboxItem(row[0], EventKind(row[1]), *row[2:]))
            if len(items) >= limit:
                break
        return items

    @_locked
    def next_due_at(self, busy_keys: Iterable[str] = ()) -> float | None:
        """When the next report may be sent: the earliest retry time among the heads of
        the order keys not in flight (a report behind its key's head waits for it, whatever
        its own time says). None if no such report is queued."""
        busy = set(busy_keys)
        rows = self.db.execute(
            "SELECT order_key, next_attempt_at FROM outbox"
            " WHERE id IN (SELECT MIN(id) FROM outbox GROUP BY order_key)"
        )
        times = [float(at) for key, at in rows if key not in busy]
        return min(times) if times else None

    def make_due(self, item_ids: Iterable[int]) -> None:
        """Clear the backoff of these reports (after an outage ends, so the oldest go first)."""
        ids = [(item_id,) for item_id in item_ids]
        if not ids:
            return
        with self.transaction() as db:
            db.executemany("UPDATE outbox SET next_attempt_at = 0 WHERE id = ?", ids)

    def make_all_due(self) -> None:
        """Clear every stored backoff: a new `scan` tries all that is pending at once."""
        with self.transaction() as db:
            db.execute("UPDATE outbox SET next_attempt_at = 0 WHERE next_attempt_at > 0")

    def ack_many(
        self,
        item_ids: list[int],
        checks: Iterable[tuple[str, str]] = (),
        partitions: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Remove delivered reports, in one transaction, and remember the partitioned
        check evaluations among them, (order key, check name) each, and the dynamic
        partitions added, (partitions definition, key) each. The time of the last
        success (for `status`) is written at most once a second: in a burst, writing it with
        every answer was a third of the cost of an acknowledgement."""
        if not item_ids:
            return
        now = time.time()
        write_time = not now - LAST_SUCCESS_EVERY_SECONDS < self._last_success_written <= now
        with self.transaction() as db:
            db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in item_ids])
            db.executemany(
                "INSERT OR IGNORE INTO check_evaluations VALUES (?, ?, ?)",
                [(order_key, name, now) for order_key, name in checks],
            )
            db.executemany(
                "INSERT OR IGNORE INTO dynamic_partitions VALUES (?, ?, ?)",
                [(name, key, now) for name, key in partitions],
            )
            if write_time:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('last_success', ?)", (str(now),))
        if write_time:
            self._last_success_written = now

    @_locked
    def has_check_evaluation(self, order_key: str, check_name: str) -> bool:
        """Whether Dagster holds this partitioned check's evaluation (one was delivered)."""
        row = self.db.execute(
            "SELECT 1 FROM check_evaluations WHERE order_key = ? AND check_name = ?",
            (order_key, check_name),
        ).fetchone()
        return row is not None

    def set_aside(self, item_id: int, reason: str, check: tuple[str, str]) -> None:
        """Take a partitioned check evaluation out of the outbox unsent (or not to be sent
        again) without making it a dead letter: Dagster holds `check` (order key, check
        name) now."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO set_aside"
                " SELECT id, kind, order_key, body, created_at, ?, ? FROM outbox WHERE id = ?",
                (now, reason, item_id),
            )
            db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
            db.execute("INSERT OR IGNORE INTO check_evaluations VALUES (?, ?, ?)", (*check, now))
            db.execute(
                "DELETE FROM set_aside WHERE id <= (SELECT id FROM set_aside"
                " ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (SET_ASIDE_KEPT,),
            )

    @_locked
    def set_aside_items(self, limit: int = 100) -> list[SetAside]:
        """The latest reports set aside, newest first, for `status`."""
        if self.schema_version < 2:  # a reader of a database not migrated yet
            return []
        rows = self.db.execute(
            "SELECT id, kind, order_key, body, set_aside_at, reason FROM set_aside"
            " ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [SetAside(row[0], EventKind(row[1]), *row[2:]) for row in rows]

    def retry_later(self, item_id: int, next_attempt_at: float, error: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?"
                " WHERE id = ?",
                (next_attempt_at, error, item_id),
            )
            self._note_error(db, error)

    def dead_letter(self, item_id: int, error: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO dead SELECT id, kind, order_key, body, created_at, ?, ? FROM outbox"
                " WHERE id = ?",
                (time.time(), error, item_id),
            )
            db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
            self._note_error(db, error)

    def dead_letter_with_followers(self, item_id: int, error: str, followers_error: str) -> int:
        """Dead-letter a report and every report of its order key queued after it (with
        `followers_error`), in one transaction; returns how many followed it. For a
        dynamic partition add: the reports behind it must not reach Dagster as if the key
        existed, and `retry-dead` brings them all back in their order."""
        now = time.time()
        with self.transaction() as db:
            row = db.execute("SELECT order_key FROM outbox WHERE id = ?", (item_id,)).fetchone()
            if row is None:
                return 0
            db.execute(
                "INSERT INTO dead SELECT id, kind, order_key, body, created_at, ?, ? FROM outbox"
                " WHERE id = ?",
                (now, error, item_id),
            )
            followers = db.execute(
                "INSERT INTO dead SELECT id, kind, order_key, body, created_at, ?, ? FROM outbox"
                " WHERE order_key = ? AND id > ?",
                (now, followers_error, row[0], item_id),
            ).rowcount
            db.execute("DELETE FROM outbox WHERE order_key = ? AND id >= ?", (row[0], item_id))
            self._note_error(db, error)
            return followers

    @_locked
    def has_dynamic_partition(self, partitions_def: str, partition_key: str) -> bool:
        """Whether Dagster acknowledged adding this key (so no add is queued for it)."""
        if self.schema_version < 3:  # a reader of a database not migrated yet
            return False
        row = self.db.execute(
            "SELECT 1 FROM dynamic_partitions WHERE partitions_def = ? AND partition_key = ?",
            (partitions_def, partition_key),
        ).fetchone()
        return row is not None

    def note_error(self, error: str) -> None:
        """Remember a delivery problem that is about no single report (401/403)."""
        with self.transaction() as db:
            self._note_error(db, error)

    @staticmethod
    def _note_error(db: sqlite3.Connection, error: str) -> None:
        db.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [("last_error", error), ("last_error_at", str(time.time()))],
        )

    def retry_dead(self) -> int:
        """Move every dead letter back to the outbox, due now; returns how many.

        Each keeps its original id (AUTOINCREMENT never hands an id out twice), so it
        goes before any newer report of its asset and partition still queued.
        """
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO outbox (id, kind, order_key, body, created_at)"
                " SELECT id, kind, order_key, body, created_at FROM dead ORDER BY id"
            )
            db.execute("DELETE FROM dead")
            return cursor.rowcount

    @_locked
    def dead_letter_items(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest dead letters, for `status`."""
        rows = self.db.execute(
            "SELECT id, kind, order_key, body, failed_at, error FROM dead ORDER BY id LIMIT ?",
            (limit,),
        )
        return [DeadLetter(row[0], EventKind(row[1]), *row[2:]) for row in rows]

    @_locked
    def counts(self) -> OutboxCounts:
        tracked = self.db.execute("SELECT COUNT(*) FROM files").fetchone()[0]
        pending, oldest = self.db.execute("SELECT COUNT(*), MIN(created_at) FROM outbox").fetchone()
        dead = self.db.execute("SELECT COUNT(*) FROM dead").fetchone()[0]
        aside = 0
        if self.schema_version >= 2:
            aside = self.db.execute("SELECT COUNT(*) FROM set_aside").fetchone()[0]
        return OutboxCounts(tracked, pending, dead, oldest, aside)
