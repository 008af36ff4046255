"""What every part of the state store shares: the connection, its lock, transactions.

`state.StateStore` and the feature mixins it inherits (`state_batches`, `state_sidecars`,
`state_windows`) are built on `StoreBase`; `_locked` serializes a method on its lock.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from asset_watcher.errors import StateError
from asset_watcher.model import EventKind, Report

T = TypeVar("T")


def _partition_add_needless(
    db: sqlite3.Connection, order_key: str, body: str, added: tuple[str, str]
) -> bool:
    """Whether a dynamic partition add can be left out: Dagster acknowledged the key, or
    the same add is queued already for this order key (it goes ahead of this version's
    reports as well). An add queued under another asset's order key does not count: it
    is not ordered before these reports."""
    if db.execute(
        "SELECT 1 FROM dynamic_partitions WHERE partitions_def = ? AND partition_key = ?", added
    ).fetchone():
        return True
    queued = db.execute(
        "SELECT 1 FROM outbox WHERE order_key = ? AND kind = ? AND body = ? LIMIT 1",
        (order_key, EventKind.PARTITION.value, body),
    ).fetchone()
    return queued is not None


def _split(path: str) -> tuple[bytes, bytes]:
    raw = os.fsencode(path)
    head, _, tail = raw.rpartition(b"/")
    return head, tail


def _locked(method: Callable[..., T]) -> Callable[..., T]:
    """Serialize a method on the store's lock: one connection is shared by threads."""

    @functools.wraps(method)
    def wrapper(self: StoreBase, *args: Any, **kwargs: Any) -> T:
        with self.lock:
            try:
                return method(self, *args, **kwargs)
            except sqlite3.Error as exc:
                raise StateError(f"state database in {self.directory}: {exc}") from None

    return wrapper


class StoreBase:
    """The connection and lock a `StateStore` opens; see `state.StateStore`."""

    directory: Path | None
    db: sqlite3.Connection
    lock: threading.RLock
    schema_version: int
    _batch_depth: int

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; a full disk becomes a StateError, never silence."""
        with self.lock, self._errors_as_state_errors():
            if self._batch_depth:
                yield from self._savepoint()
                return
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def _savepoint(self) -> Iterator[sqlite3.Connection]:
        """A transaction inside a batch: atomic on its own, committed with the batch."""
        self._batch_depth += 1
        name = f"change_{self._batch_depth}"
        try:
            self.db.execute(f"SAVEPOINT {name}")
            try:
                yield self.db
            except BaseException:
                if self.db.in_transaction:  # SQLite may have rolled back the whole batch
                    self.db.execute(f"ROLLBACK TO {name}")
                    self.db.execute(f"RELEASE {name}")
                raise
            self.db.execute(f"RELEASE {name}")
        finally:
            self._batch_depth -= 1

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Many changes, one commit: each `transaction()` inside becomes a savepoint. The
        store stays locked for the batch, so keep it short."""
        with self.transaction():
            self._batch_depth += 1
            try:
                yield
            finally:
                self._batch_depth -= 1

    @contextlib.contextmanager
    def _errors_as_state_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "full" in str(exc) or getattr(exc, "sqlite_errorcode", None) == 13:
                raise StateError(f"state directory {self.directory} is full: {exc}") from None
            raise StateError(f"state database: {exc}") from None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise StateError(f"state directory {self.directory} is full") from None
            raise

    @staticmethod
    def _enqueue(db: sqlite3.Connection, reports: Iterable[Report], now: float) -> None:
        rows = []
        for report in reports:
            body = json.dumps(report.body, ensure_ascii=False)
            added = report.dynamic_partition
            if added is not None and _partition_add_needless(db, report.order_key, body, added):
                continue
            rows.append((report.kind.value, report.order_key, body, now))
        db.executemany(
            "INSERT INTO outbox (kind, order_key, body, created_at) VALUES (?, ?, ?, ?)", rows
        )

    @_locked
    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None
