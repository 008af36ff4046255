"""Catch-up, periodic and on-demand rescans: the scanner thread.

The `Scanner` walks folders (the catch-up at start, periodic rescans per rule, a full
rescan asked for after an overflow, a failed watch or a reload, and single new folders)
and hands the pipeline only files whose stat differs from their reported version, as
`Found` values: an unchanged tree costs one stat per file and no reads. It paces itself
on the pipeline's backlog, so a first start over a full drop folder stays bounded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from asset_watcher.model import Found
from asset_watcher.rules import Rule
from asset_watcher.scan import Candidate, walk
from asset_watcher.state import StateStore

log = logging.getLogger(__name__)

# A scan pauses while this many files wait in the pipeline (bounded memory on a
# first start over a full drop folder).
SCAN_BACKLOG_LIMIT = 5000
# The longest wait for work before looking at the schedule again.
IDLE_WAIT_SECONDS = 10.0
# How often a paused scan looks at the pipeline's backlog again.
PACE_WAIT_SECONDS = 0.05


@dataclass
class _Full:
    rule_names: set[str]
    reason: str
    started_at: float = 0.0
    files_seen: int = 0
    submitted: int = 0


@dataclass
class ScannerState:
    running: str | None = None  # the reason of the full scan under way
    next_due: dict[str, float] = field(default_factory=dict)


class Scanner:
    """Walks folders on request and on schedule; hands changed files to the pipeline."""

    def __init__(
        self,
        rules: Sequence[Rule],
        store: StateStore,
        submit: Callable[[Found], None],
        *,
        backlog: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.submit = submit
        self.backlog = backlog
        self.clock = clock
        self._cond = threading.Condition()
        self._folders: list[tuple[str, bool]] = []
        self._full: _Full | None = None  # waiting to start
        self._intervals: dict[str, float] = {}
        self.state = ScannerState()
        self._stopping = False
        self.set_rules(rules)

    # -- called from other threads ---------------------------------------------------

    def set_rules(self, rules: Sequence[Rule], intervals: dict[str, float] | None = None) -> None:
        """Swap rules; `intervals` (rule name -> seconds, 0 = never) sets periodic rescans."""
        with self._cond:
            self.rules = tuple(rules)
            if intervals is None:
                intervals = {r.name: r.settings.rescan_interval_seconds for r in rules}
            now = self.clock()
            for name, seconds in intervals.items():
                old = self._intervals.get(name)
                if old != seconds or name not in self.state.next_due:
                    if seconds > 0:
                        self.state.next_due[name] = now + seconds
                    else:
                        self.state.next_due.pop(name, None)
            self._intervals = dict(intervals)
            for name in list(self.state.next_due):
                if name not in intervals:
                    del self.state.next_due[name]
            self._cond.notify_all()

    def request_full(self, rule_names: Iterable[str] | None, reason: str) -> None:
        """Rescan these rules (None: all) soon; requests made before it starts merge."""
        with self._cond:
            names = set(rule_names) if rule_names is not None else {r.name for r in self.rules}
            if not names:
                return
            if self._full is None:
                self._full = _Full(names, reason)
            else:
                self._full.rule_names |= names
            self._cond.notify_all()

    def request_folder(self, folder: str, recursive: bool) -> None:
        """Scan one folder now (a new subfolder whose watch was just added)."""
        with self._cond:
            self._folders.append((folder, recursive))
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    # -- the thread --------------------------------------------------------------------

    def _next_work(self) -> tuple[str, bool] | _Full | None:
        """Wait for the next request or scheduled rescan; None when stopping."""
        with self._cond:
            while not self._stopping:
                if self._folders:
                    return self._folders.pop(0)
                now = self.clock()
                for name, due in self.state.next_due.items():
                    if due <= now:
                        self.state.next_due[name] = now + self._intervals.get(name, 0)
                        if self._full is None:
                            self._full = _Full({name}, "periodic rescan")
                        else:
                            self._full.rule_names.add(name)
                if self._full is not None:
                    full, self._full = self._full, None
                    return full
                wait = IDLE_WAIT_SECONDS
                if self.state.next_due:
                    wait = min(wait, max(0.0, min(self.state.next_due.values()) - now))
                self._cond.wait(wait)
            return None

    def run(self) -> None:
        while (work := self._next_work()) is not None:
            if isinstance(work, _Full):
                self._scan_full(work)
            else:
                self._scan_folder(*work)

    def _take_folder(self) -> tuple[str, bool] | None:
        with self._cond:
            return self._folders.pop(0) if self._folders else None

    def _stopped(self) -> bool:
        with self._cond:
            return self._stopping

    def _pace(self) -> bool:
        """Wait while the pipeline is busy; False when stopping."""
        while self.backlog() > SCAN_BACKLOG_LIMIT:
            with self._cond:
                if self._stopping:
                    return False
                self._cond.wait(PACE_WAIT_SECONDS)
        return not self._stopped()

    def _rules_for(self, folder: str) -> list[Rule]:
        return [r for r in self.rules if r.root == folder or r.relative(folder) is not None]

    def _scan_folder(self, folder: str, recursive: bool) -> None:
        for rule in self._rules_for(folder):
            if rule.root != folder and not rule.settings.recursive:
                continue
            for current, candidates in walk(rule, folder, recursive=recursive):
                self._submit_changed(current, candidates)

    def _scan_full(self, work: _Full) -> None:
        work.started_at = self.clock()
        names = ", ".join(sorted(work.rule_names))
        self.state.running = work.reason
        log.info("%s of %s started", work.reason, names)
        try:
            for rule in self.rules:
                if rule.name not in work.rule_names:
                    continue
                for folder, candidates in walk(rule):
                    work.files_seen += len(candidates)
                    work.submitted += self._submit_changed(folder, candidates)
                    # New subfolders must not wait for a long rescan to finish.
                    while (pending := self._take_folder()) is not None:
                        self._scan_folder(*pending)
                    if not self._pace():
                        log.info("%s interrupted by shutdown", work.reason)
                        return
        finally:
            self.state.running = None
        seconds = self.clock() - work.started_at
        log.info(
            "%s done in %.1fs: %d files seen, %d new or changed",
            work.reason,
            seconds,
            work.files_seen,
            work.submitted,
        )

    def _submit_changed(self, folder: str, candidates: list[Candidate]) -> int:
        if not candidates:
            return 0
        known = self.store.stat_keys_in_folder(folder)
        submitted = 0
        for candidate in candidates:
            if known.get(candidate.name) != candidate.stat.key:  # the pipeline looks closer
                self.submit(Found(candidate.path, candidate.stat))
                submitted += 1
        return submitted
