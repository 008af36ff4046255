"""The state database's schema as numbered migrations, and bringing a database up to date.

`state.StateStore` checks a database's version when it opens it and migrates an older one
(after a copy of it beside it); a newer one, written by a newer release, is left as it is.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from pathlib import Path

from asset_watcher.errors import StateError, StateVersionError

log = logging.getLogger(__name__)

# The schema, as numbered migrations: each one's statements run in the one transaction
# that brings a database up to SCHEMA_VERSION, which `PRAGMA user_version` then records.
# Version 1 is the schema of the releases before the version was recorded (their
# databases say 0); its statements create nothing that is already there, so on such a
# database they change nothing. Append new migrations; never edit a released one.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE IF NOT EXISTS files (
            dir BLOB NOT NULL,
            name BLOB NOT NULL,
            rule TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            inode INTEGER NOT NULL,
            ctime_ns INTEGER NOT NULL,
            stat_key INTEGER NOT NULL,
            digest TEXT,
            reported_at REAL NOT NULL,
            PRIMARY KEY (dir, name)
        ) WITHOUT ROWID""",
        # Recognises a move whose two halves inotify could not pair (into a new folder).
        "CREATE INDEX IF NOT EXISTS files_by_inode ON files (inode)",
        """CREATE TABLE IF NOT EXISTS outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            order_key TEXT NOT NULL,
            body TEXT NOT NULL,
            created_at REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL DEFAULT 0,
            last_error TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS outbox_by_order_key ON outbox (order_key, id)",
        """CREATE TABLE IF NOT EXISTS dead (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            order_key TEXT NOT NULL,
            body TEXT NOT NULL,
            created_at REAL NOT NULL,
            failed_at REAL NOT NULL,
            error TEXT NOT NULL
        )""",
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ),
    2: (
        # Partitioned check evaluations Dagster holds (it keeps one per asset, check and
        # partition, SPEC 6): a repeat is not sent.
        """CREATE TABLE check_evaluations (
            order_key TEXT NOT NULL,
            check_name TEXT NOT NULL,
            recorded_at REAL NOT NULL,
            PRIMARY KEY (order_key, check_name)
        ) WITHOUT ROWID""",
        # Reports taken out of the outbox without a 2xx that are not Dagster's rejections
        # (not dead letters, not requeued by retry-dead), with the reason, for `status`.
        """CREATE TABLE set_aside (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            order_key TEXT NOT NULL,
            body TEXT NOT NULL,
            created_at REAL NOT NULL,
            set_aside_at REAL NOT NULL,
            reason TEXT NOT NULL
        )""",
    ),
    3: (
        # [watch.expect] (SPEC 15): since when each rule's expectation is watched (windows
        # due before that are not judged), and each window judged, once: `on_time` when
        # its file came before the deadline, `missed` when the deadline passed without
        # it (`arrived_at` then is when a late file came, if one did).
        """CREATE TABLE expectations (
            rule TEXT PRIMARY KEY,
            since REAL NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE expected_windows (
            rule TEXT NOT NULL,
            due_at INTEGER NOT NULL,
            outcome TEXT NOT NULL,
            arrived_at REAL,
            evaluated_at REAL NOT NULL,
            PRIMARY KEY (rule, due_at)
        ) WITHOUT ROWID""",
        # Partition keys Dagster acknowledged adding to a dynamic partitions definition:
        # a later version of the same key queues no add (SPEC 16).
        """CREATE TABLE dynamic_partitions (
            partitions_def TEXT NOT NULL,
            partition_key TEXT NOT NULL,
            added_at REAL NOT NULL,
            PRIMARY KEY (partitions_def, partition_key)
        ) WITHOUT ROWID""",
    ),
    4: (
        # Batches (SPEC 13): each batch's last reported completion (the marker's or
        # manifest's stat, or for quiet batches the members' stats) and its members then,
        # so a completion is reported once across restarts and a member changed after it
        # can be named.
        """CREATE TABLE batches (
            rule TEXT NOT NULL,
            folder BLOB NOT NULL,
            grp TEXT NOT NULL,
            completion TEXT NOT NULL,
            members TEXT NOT NULL,
            data_version TEXT,
            reported_at REAL NOT NULL,
            PRIMARY KEY (rule, folder, grp)
        ) WITHOUT ROWID""",
        # Batches seen incomplete, with what they wait for and since when (their oldest
        # member's mtime), for `status` and `explain` while the agent runs or after.
        """CREATE TABLE pending_batches (
            rule TEXT NOT NULL,
            folder BLOB NOT NULL,
            grp TEXT NOT NULL,
            waiting_for TEXT NOT NULL,
            since REAL NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (rule, folder, grp)
        ) WITHOUT ROWID""",
        # Checksum sidecars (SPEC 14): the sidecar each reported file's checksum check
        # read, and its `FileStat.key` then (NULL: missing), so a sidecar that arrives or
        # changes later re-evaluates the check alone, once.
        """CREATE TABLE sidecar_checks (
            dir BLOB NOT NULL,
            name BLOB NOT NULL,
            check_name TEXT NOT NULL,
            sidecar BLOB NOT NULL,
            sidecar_key INTEGER,
            PRIMARY KEY (dir, name, check_name)
        ) WITHOUT ROWID""",
        "CREATE INDEX sidecar_checks_by_sidecar ON sidecar_checks (sidecar)",
    ),
}
SCHEMA_VERSION = max(MIGRATIONS)


def _schema_version(db: sqlite3.Connection) -> int:
    """The recorded version; 1 for a database of the releases before it was recorded."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version == 0 and db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone():
        return 1
    return version


def _checked_version(db: sqlite3.Connection, path: Path | str) -> int:
    version = _schema_version(db)
    if version > SCHEMA_VERSION:
        raise StateVersionError(
            f"state database {path} has schema version {version}, written by a newer "
            f"release of asset-watcher; this one knows versions up to {SCHEMA_VERSION}. The "
            "database was left unchanged: run the newer release on it"
        )
    return version


def _migrate(db: sqlite3.Connection, path: Path | str, found: int) -> None:
    """Bring the database from version `found` to SCHEMA_VERSION in one transaction,
    after a copy of it (version 1 and later: a fresh database needs none) beside it."""
    backup = None
    if found > 0 and isinstance(path, Path):
        backup = _backup(db, path, found)
        log.warning(
            "state database %s has schema version %d; migrating it to version %d "
            "(a copy of it is at %s)",
            path,
            found,
            SCHEMA_VERSION,
            backup,
        )
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            current = _checked_version(db, path)  # another process may have migrated it
            for number in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[number]:
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    except sqlite3.Error as exc:  # not corruption: the database is as it was
        kept = f"; a copy from before is at {backup}" if backup else ""
        raise StateError(
            f"cannot migrate state database {path} from schema version {found} to "
            f"{SCHEMA_VERSION}: {exc}; it is unchanged{kept}"
        ) from None


def _backup(db: sqlite3.Connection, path: Path, version: int) -> Path:
    """A consistent copy through SQLite's backup API (the WAL's content included)."""
    target = path.with_name(f"{path.name}.v{version}.bak")
    if target.exists():  # an earlier attempt's copy stays as it is
        target = path.with_name(f"{path.name}.v{version}.{time.time_ns()}.bak")
    try:
        copy = sqlite3.connect(target)
        try:
            db.backup(copy)
        finally:
            copy.close()
    except sqlite3.Error as exc:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        raise StateError(
            f"cannot back up state database {path} to {target} before migrating it: {exc}; "
            "nothing was changed"
        ) from None
    return target
