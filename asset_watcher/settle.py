"""Completion tracking: when a file has been quiet long enough to count as one version.

Pure bookkeeping with an injected clock; the caller does every stat and read. A file
becomes pending when a write finished (close-after-write, a rename into place) or when
polling or a scan saw it change. It is due once `settle_seconds` passed without a newer
event; the caller then looks at it again and `confirm`s: an unchanged size, mtime and
inode make it complete, anything else restarts the quiet period. However many events
arrive for one file, it is settled, and so hashed, once.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from asset_watcher.model import FileStat
from asset_watcher.paths import is_under
from asset_watcher.state import Waiting

V = TypeVar("V")


class Origin(str, enum.Enum):
    """How a pending file came to our attention; decides what counts as a new version."""

    WRITTEN = "written"  # close-after-write or a rename into place: an arrival
    SEEN = "seen"  # polling or a scan saw it differ: new only if stat (or content) says so


@dataclass
class _Entry:
    origin: Origin
    settle_seconds: float
    deadline: float
    stat: FileStat | None  # as last looked at; None: not looked at yet


@dataclass(frozen=True)
class Settled:
    """A file quiet for its settle time, ready to be fingerprinted."""

    path: str
    origin: Origin
    stat: FileStat


def _same(a: FileStat | None, b: FileStat | None) -> bool:
    return a is not None and b is not None and a.same_version(b)


class Settler:
    """Pending files by path, with their deadlines in a heap (stale heap rows are skipped)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def _arm(self, path: str, entry: _Entry, deadline: float) -> None:
        entry.deadline = deadline
        self._entries[path] = entry
        heapq.heappush(self._heap, (deadline, next(self._order), path))

    def written(
        self,
        path: str,
        stat: FileStat | None,
        settle_seconds: float,
        *,
        at: float | None = None,
    ) -> None:
        """A write finished or the file was renamed into place at `at` (default now):
        (re)start its quiet period. Outranks an earlier SEEN."""
        start = self.clock() if at is None else at
        self._arm(path, _Entry(Origin.WRITTEN, settle_seconds, 0.0, stat), start + settle_seconds)

    def seen(
        self,
        path: str,
        stat: FileStat,
        settle_seconds: float,
        *,
        quiet_for_seconds: float = 0.0,
    ) -> None:
        """Polling or a scan saw the file differ from its reported version.

        `quiet_for_seconds` is how long its mtime/ctime say it has not changed: a file
        found long after its last write needs no further wait. A file already pending
        keeps its origin and deadline unless the stat moved, which restarts the wait.
        """
        entry = self._entries.get(path)
        now = self.clock()
        if entry is not None:
            if entry.stat is None or not _same(entry.stat, stat):
                entry.stat = stat
                self._arm(path, entry, now + entry.settle_seconds)
            return
        remaining = min(settle_seconds, max(0.0, settle_seconds - quiet_for_seconds))
        self._arm(path, _Entry(Origin.SEEN, settle_seconds, 0.0, stat), now + remaining)

    def moved(self, source: str, destination: str) -> Origin | None:
        """Carry a pending entry over a rename; the origin it had, or None if none."""
        entry = self._entries.pop(source, None)
        if entry is None:
            return None
        self._arm(destination, entry, entry.deadline)
        return entry.origin

    def discard(self, path: str) -> bool:
        return self._entries.pop(path, None) is not None

    def discard_under(self, folder: str) -> list[str]:
        """Forget every pending file below `folder` (it was deleted or moved away)."""
        gone = [path for path in self._entries if path != folder and is_under(path, folder)]
        for path in gone:
            del self._entries[path]
        return gone

    def _valid_top(self) -> tuple[float, int, str] | None:
        while self._heap:
            deadline, _, path = self._heap[0]
            entry = self._entries.get(path)
            if entry is not None and entry.deadline == deadline:
                return self._heap[0]
            heapq.heappop(self._heap)
        return None

    def next_deadline(self) -> float | None:
        """When the earliest pending file is due (on the injected clock), if any."""
        top = self._valid_top()
        return top[0] if top is not None else None

    def due(self, limit: int | None = None) -> list[str]:
        """Paths whose quiet period is over, earliest first; they stay pending until
        `confirm`ed or discarded."""
        now = self.clock()
        paths: list[str] = []
        seen: set[str] = set()
        while (limit is None or len(paths) < limit) and (top := self._valid_top()) is not None:
            if top[0] > now:
                break
            heapq.heappop(self._heap)
            if top[2] not in seen:
                seen.add(top[2])
                paths.append(top[2])
        # Popped rows must come back if the caller does not settle them right away.
        for path in paths:
            entry = self._entries[path]
            heapq.heappush(self._heap, (entry.deadline, next(self._order), path))
        return paths

    def confirm(self, path: str, stat: FileStat | None) -> Settled | None:
        """The caller's fresh look at a due file. Complete when it matches the last look;
        restarted when it changed; dropped when it is gone (`stat` None)."""
        entry = self._entries.get(path)
        if entry is None:
            return None
        if stat is None:
            del self._entries[path]
            return None
        if not _same(entry.stat, stat):
            entry.stat = stat
            self._arm(path, entry, self.clock() + entry.settle_seconds)
            return None
        del self._entries[path]
        return Settled(path, entry.origin, stat)

    def restart(
        self, path: str, stat: FileStat | None, settle_seconds: float, origin: Origin
    ) -> None:
        """The file changed while it was read: wait again, keeping its origin (a newer
        event that arrived meanwhile wins)."""
        if path in self._entries:
            return
        self._arm(path, _Entry(origin, settle_seconds, 0.0, stat), self.clock() + settle_seconds)


# How often at most `MarkerWaits.to_note` hands out what waits, to be written for
# `status`: a burst of parked files costs one write a second, not one per file.
WAITS_NOTED_SECONDS = 1.0


class MarkerWaits:
    """Settled files waiting for their ready marker (or checksum sidecar), by marker path.
    A wait may end at a wall-clock deadline (`until`): a sidecar is waited for only so long.

    It also says when what waits changed since it was last noted (`to_note`), so the
    caller can write it down for `status`; it starts changed, so a new agent's first note
    replaces what a stopped one left (those files are found again by the catch-up scan).
    """

    def __init__(self) -> None:
        self._by_marker: dict[str, dict[str, Settled]] = {}
        self._marker_of: dict[str, str] = {}  # data path -> marker path
        self._until: dict[str, float] = {}  # data path -> when its wait ends
        self._what: dict[str, str] = {}  # data path -> what its marker is
        self._changed = True
        self._noted_at: float | None = None

    def __len__(self) -> int:
        return len(self._marker_of)

    def park(
        self, marker: str, settled: Settled, until: float | None = None, what: str = "ready marker"
    ) -> None:
        self.unpark(settled.path)
        self._by_marker.setdefault(marker, {})[settled.path] = settled
        self._marker_of[settled.path] = marker
        self._what[settled.path] = what
        if until is not None:
            self._until[settled.path] = until
        self._changed = True

    def expired(self, now: float) -> list[Settled]:
        """The files whose wait ended by `now` (no longer waiting)."""
        due = [path for path, until in self._until.items() if until <= now]
        return [settled for path in due if (settled := self.unpark(path)) is not None]

    def waiting(self) -> list[Waiting]:
        """Every waiting file, since its last change (the ctime its sidecar wait counts
        from)."""
        return [
            Waiting(
                path,
                marker,
                self._what.get(path, "ready marker"),
                self._by_marker[marker][path].stat.ctime_ns / 1e9,
                self._until.get(path),
            )
            for path, marker in self._marker_of.items()
        ]

    def to_note(self, now: float, *, last: bool = False) -> list[Waiting] | None:
        """What waits, when it changed since the last note and that was at least
        WAITS_NOTED_SECONDS before `now` (monotonic), or this is the `last` note; else
        None. Handing it out counts as noting it: a caller that fails to write it calls
        `note_failed`."""
        if not self._changed:
            return None
        recent = self._noted_at is not None and now - self._noted_at < WAITS_NOTED_SECONDS
        if recent and not last:
            return None
        self._changed, self._noted_at = False, now
        return self.waiting()

    def note_failed(self) -> None:
        self._changed = True

    def unpark(self, path: str) -> Settled | None:
        """Stop waiting for `path` (deleted, renamed); what was waiting, if anything."""
        marker = self._marker_of.pop(path, None)
        self._until.pop(path, None)
        self._what.pop(path, None)
        if marker is None:
            return None
        self._changed = True
        waiting = self._by_marker.get(marker, {})
        settled = waiting.pop(path, None)
        if not waiting:
            self._by_marker.pop(marker, None)
        return settled

    def appeared(self, marker: str) -> list[Settled]:
        """`marker` now exists: the files that waited for it (no longer waiting)."""
        waiting = self._by_marker.pop(marker, {})
        for path in waiting:
            self._marker_of.pop(path, None)
            self._until.pop(path, None)
            self._what.pop(path, None)
        if waiting:
            self._changed = True
        return list(waiting.values())


# How close together a hard-link rename's events come (see LinkRenames).
LINK_RENAME_SECONDS = 5.0
# Folders holding candidates at most; past this (files created and never closed, in
# folders with no new file since) they are all dropped. Each folder's candidates are
# pruned to the last LINK_RENAME_SECONDS whenever a new one comes.
LINK_CANDIDATE_FOLDERS_MAX = 10_000


class LinkRenames:
    """Tells a rename by link() + unlink() (OpenSSH's sftp-server, for a client's plain
    rename request) from its events, when the new name itself cannot tell: a link() in
    the same clock tick as the last write leaves ctime == mtime and, once the old name is
    gone, one link. The events still do: the old name was closed after writing, then the
    new name appeared, then the old name went, all within a moment, and the new name was
    never written to itself.

    Pure bookkeeping: the caller stats the candidates it is given back and decides.
    """

    def __init__(self) -> None:
        self._closed: dict[str, float] = {}  # path -> when closed after writing, oldest first
        # folder -> {new path: (when it appeared, size, mtime_ns)}, oldest first
        self._candidates: dict[str, dict[str, tuple[float, int, int]]] = {}

    def closed(self, path: str, at: float) -> None:
        """`path` was closed after writing: a name a link may be made from; and no
        candidate any more (its own writer closed it)."""
        self._forget(path)
        self._closed.pop(path, None)
        self._closed[path] = at
        _drop_older(self._closed, at - LINK_RENAME_SECONDS, lambda when: when)

    def created(self, path: str, at: float, stat: FileStat) -> None:
        """`path` appeared with content and looks like a writer's new file; it may also be
        the new name of a link."""
        if len(self._candidates) >= LINK_CANDIDATE_FOLDERS_MAX:
            self._candidates.clear()
        folder = self._candidates.setdefault(os.path.dirname(path), {})
        _drop_older(folder, at - LINK_RENAME_SECONDS, lambda entry: entry[0])
        folder.pop(path, None)
        folder[path] = (at, stat.size, stat.mtime_ns)

    def moved(self, path: str) -> None:
        self._forget(path)
        self._closed.pop(path, None)

    def deleted(self, path: str, at: float) -> list[tuple[str, int, int]]:
        """The candidates that `path`'s deletion makes look like its new name: (path,
        size and mtime_ns when it appeared), the oldest first."""
        self._forget(path)
        closed_at = self._closed.pop(path, None)
        if closed_at is None or at - closed_at > LINK_RENAME_SECONDS:
            return []
        folder = self._candidates.get(os.path.dirname(path), {})
        return [
            (new, size, mtime_ns)
            for new, (when, size, mtime_ns) in folder.items()
            if closed_at <= when <= at
        ]

    def _forget(self, path: str) -> None:
        folder = self._candidates.get(os.path.dirname(path))
        if folder is not None and folder.pop(path, None) is not None and not folder:
            del self._candidates[os.path.dirname(path)]


def _drop_older(entries: dict[str, V], before: float, when: Callable[[V], float]) -> None:
    """Drop the entries from before `before` off the front of an oldest-first dict."""
    while entries:
        oldest = next(iter(entries))
        if when(entries[oldest]) >= before:
            return
        del entries[oldest]
