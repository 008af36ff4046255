"""What the running agent does with a change: settle it, read it once, queue its reports.

Two threads. The `Pipeline` owns the settle bookkeeping and is the only writer of new
versions: changes from the observers and files found by the `Scanner` arrive on one
queue, in order. The `Scanner` walks folders (catch-up at start, periodic and on-demand
rescans, new subfolders) and hands over only files whose stat differs from their
reported version, so an unchanged tree costs one stat per file and no reads.

Both share one code path with `scan` and `explain` for ownership (`rules.owner`) and for
reading a file (`scan.take_version`).
"""

from __future__ import annotations

import logging
import os
import queue
import stat as stat_module
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from asset_watcher import metrics
from asset_watcher.errors import StateError
from asset_watcher.fingerprint import stat_of
from asset_watcher.model import Change, ChangeKind, FileMatch, FileStat
from asset_watcher.paths import display_path, through_link
from asset_watcher.reports import deleted_report, reports_for_version
from asset_watcher.rules import Rule, is_utf8, owner
from asset_watcher.scan import (
    STILL_BEING_WRITTEN,
    Candidate,
    carry_over_rename,
    file_stat,
    is_changed,
    take_version,
    walk,
)
from asset_watcher.settle import LinkRenames, Origin, Settled, Settler
from asset_watcher.state import KnownVersion, StateStore

log = logging.getLogger(__name__)

# Events handled before the pipeline looks at due files again, and due files settled
# before it looks at events again: neither starves the other during a burst.
BATCH = 500
# Files recorded per commit: fewer commits in a burst, and the store (which the deliverer
# shares) is never held for long.
COMMIT_BATCH = 100
# How long a deleted file's version is kept in memory, in case it was a rename inotify
# could not pair (into a folder whose watch did not exist yet).
GONE_SECONDS = 60.0
# A scan pauses while this many files wait in the pipeline (bounded memory on a
# first start over a full drop folder).
SCAN_BACKLOG_LIMIT = 5000
# How long a wait may last before a thread looks at its stop event again.
IDLE_WAIT_SECONDS = 0.5
# Ownership decisions remembered (path -> rule and match): a new file's events (create,
# close) and its settling ask the same question several times.
OWNER_CACHE_SIZE = 4096
# How soon a file closed after writing but still open for writing is looked at again.
STILL_OPEN_RETRY_SECONDS = 1.0
# Retry delay for a version that could not be recorded (state directory full).
STATE_RETRY_SECONDS = 30.0


@dataclass(frozen=True)
class Found:
    """A file a scan found to differ from its reported version."""

    path: str
    stat: FileStat


_STOP = object()
Item = Change | Found | object


def quiet_for_seconds(stat: FileStat, now: float) -> float:
    """How long, by its own timestamps, a file has not been written (ctime cannot be set
    back by a client that preserves mtimes)."""
    return now - max(stat.mtime_ns, stat.ctime_ns) / 1e9


@dataclass
class PipelineCounts:
    reported: int = 0  # file versions recorded (each with its reports)
    skipped: int = 0
    moved: int = 0
    deleted: int = 0


class Pipeline:
    """Changes in; new versions and their reports out, into the outbox."""

    def __init__(
        self,
        rules: Sequence[Rule],
        store: StateStore,
        *,
        on_queued: Callable[[], None] = lambda: None,
        control: Callable[[Change], None] = lambda change: None,
        request_folder_scan: Callable[[str, bool], None] = lambda folder, recursive: None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.on_queued = on_queued
        self._in_batch = False
        self._queued_in_batch = False
        self.control = control
        self.request_folder_scan = request_folder_scan
        self.wall_clock = wall_clock
        self.settler = Settler(clock)
        self._links = LinkRenames()
        self.queue: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self.counts = PipelineCounts()
        # marker path -> {data path: its settled version}, for files waiting on a marker
        self._parked: dict[str, dict[str, Settled]] = {}
        self._parked_marker: dict[str, str] = {}  # data path -> marker path
        # inode -> (when, version, (rule, key, partition)) of files reported gone lately
        self._gone: dict[int, tuple[float, KnownVersion, tuple[object, ...]]] = {}
        self.set_rules(rules)

    # -- called from other threads ---------------------------------------------------

    def submit(self, item: Change | Found) -> None:
        self.queue.put(item)

    def backlog(self) -> int:
        return self.queue.qsize() + len(self.settler)

    def set_rules(self, rules: Sequence[Rule]) -> None:
        """Swap in reloaded rules (takes effect for the next item); one assignment, so
        the pipeline never sees half of a reload."""
        owners: dict[str, tuple[Rule, FileMatch] | None] = {}  # for these rules only
        self._ruleset = (tuple(rules), {rule.name: rule for rule in rules}, owners)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._ruleset[0]

    def stop(self) -> None:
        self.queue.put(_STOP)

    # -- the thread --------------------------------------------------------------------

    def run(self) -> None:
        """Until `stop()`: handle changes, settle files whose quiet time is over. On stop,
        changes already queued are handled and due files are recorded; files still
        settling are left to the next start's catch-up scan."""
        stopping = False
        while not stopping:
            item = self._next_item()
            handled = 0
            while item is not None:
                if item is _STOP:
                    stopping = True
                else:
                    self.handle(item)
                handled += 1
                item = self._poll() if handled < BATCH or stopping else None
            self.settle_due()
        if self._parked:
            log.info("%d file(s) still wait for their ready marker", len(self._parked_marker))

    def _poll(self) -> Item | None:
        try:
            return self.queue.get_nowait()
        except queue.Empty:
            return None

    def _next_item(self) -> Item | None:
        deadline = self.settler.next_deadline()
        timeout = IDLE_WAIT_SECONDS
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline - self.settler.clock()))
        try:
            return self.queue.get(timeout=timeout) if timeout > 0 else self.queue.get_nowait()
        except queue.Empty:
            return None

    def handle(self, item: Item) -> None:
        """One change or found file (what `run` does for each queued item)."""
        try:
            if isinstance(item, Found):
                self._found(item)
            elif isinstance(item, Change):
                self._change(item)
        except StateError as exc:
            # The state cannot be written (full disk): carrying on would drop this change
            # for good. Stop; the agent exits 1 and the next start's catch-up scan
            # finds what was not recorded.
            log.error("could not record %s: %s", _describe(item), exc)
            raise
        except Exception:  # one odd file must not stop the agent
            log.exception("could not handle %r", item)

    def settle_due(self) -> None:
        """Look again at files whose quiet time is over; record those still unchanged, all
        in one commit (a burst of small files costs one commit per batch, not per file)."""
        due = self.settler.due(limit=BATCH)
        for start in range(0, len(due), COMMIT_BATCH):
            self._in_batch, self._queued_in_batch = True, False
            try:
                with self.store.batch():
                    for path in due[start : start + COMMIT_BATCH]:
                        self._settle(path)
            finally:
                self._in_batch = False
            if self._queued_in_batch:
                self.on_queued()  # once the batch is committed: the deliverer can read it

    def _settle(self, path: str) -> None:
        try:
            found = self._owner(path)
            stat = file_stat(path, self._follow(found[0])) if found else None
            settled = self.settler.confirm(path, stat)
            if settled is not None and found is not None:
                self._complete(settled, *found)
            elif found is None:
                self.settler.discard(path)
        except StateError as exc:  # as in `handle`: stop rather than lose it
            log.error("could not record %s: %s", display_path(path), exc)
            raise
        except Exception:
            self.settler.discard(path)
            log.exception("could not settle %s", display_path(path))

    # -- ownership ---------------------------------------------------------------------

    @staticmethod
    def _follow(rule: Rule) -> bool:
        return rule.settings.follow_symlinks

    def _owner(self, path: str) -> tuple[Rule, FileMatch] | None:
        """The owning rule and match; None for unowned files and ready markers."""
        rules, by_name, owners = self._ruleset
        if path in owners:
            return owners[path]
        match = owner(rules, path)
        found = (by_name[match.rule_name], match) if match is not None else None
        if match is None and not is_utf8(path) and any(r.relative(path) for r in rules):
            log.info(
                "skipped %s: its name is not valid UTF-8 and the rule's templates use it",
                display_path(path),
            )
        if len(owners) >= OWNER_CACHE_SIZE:
            owners.clear()
        owners[path] = found
        return found

    # -- changes -----------------------------------------------------------------------

    def _found(self, item: Found) -> None:
        found = self._owner(item.path)
        if found is None:
            return
        rule = found[0]
        self.settler.seen(
            item.path,
            item.stat,
            rule.settings.settle_seconds,
            quiet_for_seconds=quiet_for_seconds(item.stat, self.wall_clock()),
        )

    def _change(self, change: Change) -> None:
        kind = change.kind
        if kind in (ChangeKind.WRITTEN, ChangeKind.CREATED, ChangeKind.MODIFIED):
            if kind is ChangeKind.WRITTEN:
                self._links.closed(change.path, change.at)  # owned or not: a temporary name
            self._marker_appeared(change.path)
            if kind is ChangeKind.CREATED:
                self._created(change)
                return
            found = self._owner(change.path)
            if found is None:
                return
            rule = found[0]
            stat = file_stat(change.path, self._follow(rule))
            if stat is None:  # gone already, or not a regular file (a symbolic link)
                return
            settle = rule.settings.settle_seconds
            if kind is ChangeKind.WRITTEN:
                self.settler.written(change.path, stat, settle, at=change.at)
            else:
                quiet = quiet_for_seconds(stat, self.wall_clock())
                self.settler.seen(change.path, stat, settle, quiet_for_seconds=quiet)
        elif kind is ChangeKind.MOVED and change.dest:
            self._links.moved(change.path)
            self._moved(change.path, change.dest, change.at)
        elif kind is ChangeKind.DELETED:
            self._deleted(change.path)
            self._link_renamed(change.path, change.at)
        elif kind is ChangeKind.FOLDER_CREATED:
            # The watch is in place; files written before it existed are found by a scan.
            self.request_folder_scan(change.path, False)
        elif kind is ChangeKind.FOLDER_DELETED:
            for path in self.settler.discard_under(change.path):
                self._unpark(path)
            for path in self.store.known_under(change.path):
                self._deleted(path)
        else:  # FOLDER_MOVED_IN, ROOT_GONE, OVERFLOW, WATCH_FAILED: the agent's business
            self.control(change)

    def _created(self, change: Change) -> None:
        """A new name. Usually a writer's: its close-after-write follows, and a slow upload
        must not be settled half-written. But a hard link (OpenSSH's sftp-server renames
        with link() + unlink()) gets no close event: when the content is older than the
        name (link() moves the ctime, not the mtime) or has another name, it arrived. When
        neither shows (a link within the last write's clock tick, the old name already
        gone), the old name's deletion tells it: see `_link_renamed`."""
        found = self._owner(change.path)
        if found is None:
            return
        rule = found[0]
        try:
            st = os.stat(change.path, follow_symlinks=self._follow(rule))
        except OSError:
            return
        if not stat_module.S_ISREG(st.st_mode):
            return
        linked = st.st_nlink > 1 or (st.st_size > 0 and st.st_mtime_ns < st.st_ctime_ns)
        if linked:
            settle = rule.settings.settle_seconds
            self.settler.written(change.path, stat_of(st), settle, at=change.at)
        elif st.st_size > 0:  # a writer's, or a link made within the last write's tick
            self._links.created(change.path, change.at, stat_of(st))

    def _link_renamed(self, old: str, at: float) -> None:
        """The old name of a link() + unlink() rename went: if a new name appeared in its
        folder just before, unwritten since, that name arrived (see LinkRenames)."""
        for path, size, mtime_ns in self._links.deleted(old, at):
            found = self._owner(path)
            if found is None:
                continue
            rule = found[0]
            stat = file_stat(path, self._follow(rule))
            if stat is None or (stat.size, stat.mtime_ns) != (size, mtime_ns):
                continue  # gone, or still being written: its writer's close will come
            log.debug("%s was linked into place from %s", display_path(path), display_path(old))
            self.settler.written(path, stat, rule.settings.settle_seconds, at=at)
            return

    def _moved(self, source: str, destination: str, at: float) -> None:
        self._marker_appeared(destination)
        carried = self.settler.moved(source, destination)
        parked = self._unpark(source)
        dest = self._owner(destination)
        src_match = owner(self.rules, source)
        if dest is None:
            self.settler.discard(destination)
            self._deleted(source)
            return
        rule, dest_match = dest
        same_asset = (
            src_match is not None
            and src_match.rule_name == dest_match.rule_name
            and (src_match.asset_key, src_match.partition)
            == (dest_match.asset_key, dest_match.partition)
        )
        if same_asset and self.store.move_version(source, destination):
            # A rename within the rule: the reported version moves with the file.
            self.counts.moved += 1
            log.debug("moved %s -> %s", display_path(source), display_path(destination))
            return
        if same_asset and self._already_carried(destination, rule):
            return  # a scan of the new folder saw the new name first and carried it over
        # A rename into place (from a temporary name, another rule or another key).
        if src_match is not None:
            self._deleted(source)
        if carried is not None and parked is None:
            return  # still settling; it completes under its new name
        stat = file_stat(destination, self._follow(rule))
        if stat is None:
            self.settler.discard(destination)
            return
        self.settler.written(destination, stat, rule.settings.settle_seconds, at=at)

    def _already_carried(self, path: str, rule: Rule) -> bool:
        known = self.store.known(path)
        stat = file_stat(path, self._follow(rule))
        return (
            known is not None
            and stat is not None
            and (known.stat.inode, known.stat.size, known.stat.mtime_ns)
            == (stat.inode, stat.size, stat.mtime_ns)
        )

    def _deleted(self, path: str) -> None:
        self.settler.discard(path)
        self._unpark(path)
        known = self.store.known(path)
        if known is None:
            return
        rules, by_name, _ = self._ruleset
        match = owner(rules, path)
        rule = by_name.get(match.rule_name) if match is not None else None
        reports = []
        if rule is not None and match is not None and rule.settings.on_delete == "observe":
            reports = [deleted_report(match, host=rule.host)]
        self.store.forget(path, reports)
        if match is not None:
            self._remember_gone(path, known, match)
        self.counts.deleted += 1
        log.info("deleted %s%s", display_path(path), " (observed)" if reports else "")
        if reports:
            self.on_queued()

    def _remember_gone(self, path: str, known: KnownVersion, match: FileMatch) -> None:
        """inotify reports a rename into a folder not watched yet as a deletion: remember
        the version for a while, so the file found under its new name is no new version."""
        now = self.settler.clock()
        self._gone = {
            inode: entry for inode, entry in self._gone.items() if now - entry[0] < GONE_SECONDS
        }
        self._gone[known.stat.inode] = (now, known, (match.rule_name, match.asset_key,
                                                     match.partition))  # fmt: skip

    def _moved_out_and_in(self, match: FileMatch, stat: FileStat) -> bool:
        entry = self._gone.get(stat.inode)
        if entry is None or self.settler.clock() - entry[0] >= GONE_SECONDS:
            return False
        _, known, asset = entry
        if (known.stat.size, known.stat.mtime_ns) != (stat.size, stat.mtime_ns) or asset != (
            match.rule_name,
            match.asset_key,
            match.partition,
        ):
            return False
        del self._gone[stat.inode]
        self.store.record_version(match.path, match.rule_name, stat, known.digest, [])
        log.debug("%s came back under a new name: not a new version", display_path(match.path))
        return True

    # -- ready markers -----------------------------------------------------------------

    def _park(self, marker: str, settled: Settled) -> None:
        self._unpark(settled.path)
        self._parked.setdefault(marker, {})[settled.path] = settled
        self._parked_marker[settled.path] = marker

    def _unpark(self, path: str) -> Settled | None:
        marker = self._parked_marker.pop(path, None)
        if marker is None:
            return None
        waiting = self._parked.get(marker, {})
        settled = waiting.pop(path, None)
        if not waiting:
            self._parked.pop(marker, None)
        return settled

    def _marker_appeared(self, path: str) -> None:
        waiting = self._parked.pop(path, None)
        if not waiting:
            return
        for data_path, settled in waiting.items():
            self._parked_marker.pop(data_path, None)
            found = self._owner(data_path)
            if found is not None:
                self._complete(settled, *found)

    # -- a settled file ----------------------------------------------------------------

    def _complete(self, settled: Settled, rule: Rule, match: FileMatch) -> None:
        """Record a new version of a quiet file, unless it is none."""
        path = settled.path
        if not self._follow(rule) and through_link(rule.root, path):
            # A folder on the way was swapped for a symbolic link after it was listed.
            log.info("skipped %s: a folder on its path is a symbolic link", display_path(path))
            return
        known = self.store.known(path)
        changed: bool | None = True
        if settled.origin is Origin.WRITTEN:
            if known is not None and known.stat.same_version(settled.stat):
                if known.stat == settled.stat:
                    return  # opened for writing and closed without a change
                # Only the ctime moved (a rename or chmod taken for an arrival): as in a
                # scan, the content decides.
                changed = None
        else:
            changed = is_changed(settled.stat, known)
            if changed is False:
                return
        # A rename inotify could not pair (into a folder whose watch did not exist yet).
        if known is None and (
            carry_over_rename(self.store, self.rules, match, settled.stat)
            or self._moved_out_and_in(match, settled.stat)
        ):
            self.counts.moved += 1
            return
        marker = rule.marker_for(match)
        if marker is not None and not os.path.lexists(marker):
            log.info(
                "%s is complete; waiting for its ready marker %s",
                display_path(path),
                display_path(marker),
            )
            self._park(marker, settled)
            return
        print_ = take_version(rule, match)
        settle = rule.settings.settle_seconds
        if isinstance(print_, str):
            now = file_stat(path, self._follow(rule))
            closed_just_now = settled.origin is Origin.WRITTEN and print_ == STILL_BEING_WRITTEN
            if now is not None and now != settled.stat:
                self.settler.restart(path, now, settle, settled.origin)  # written again
            elif now is not None and closed_just_now:
                # Closed, yet open for writing: the kernel signals the close a moment
                # before the writer lets go, or another writer has it. Look again soon.
                retry = max(settle, STILL_OPEN_RETRY_SECONDS)
                self.settler.restart(path, now, retry, settled.origin)
            else:
                self.counts.skipped += 1
                log.info("skipped %s: %s", display_path(path), print_)
            return
        if changed is None and known is not None and print_.digest == known.digest:
            self.store.touch_version(path, print_.stat)  # chmod/chown: same content
            return
        reports = reports_for_version(rule, match, print_)
        try:
            self.store.record_version(path, rule.name, print_.stat, print_.digest, reports)
            metrics.file_detected()
        except StateError as exc:
            log.error("cannot record %s, trying again later: %s", display_path(path), exc)
            self.settler.restart(path, None, max(settle, STATE_RETRY_SECONDS), settled.origin)
            return
        self.counts.reported += 1
        log.info(
            "reported %s: %s%s, %d bytes",
            display_path(path),
            "/".join(match.asset_key),
            f" [{match.partition}]" if match.partition else "",
            print_.stat.size,
        )
        if self._in_batch:
            self._queued_in_batch = True
        else:
            self.on_queued()


def _describe(item: Item) -> str:
    if isinstance(item, Change):
        what = f"{item.kind.value} {display_path(item.path)}"
        return what + (f" -> {display_path(item.dest)}" if item.dest else "")
    if isinstance(item, Found):
        return display_path(item.path)
    return repr(item)


# -- the scanner --------------------------------------------------------------------------


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
    scans_done: int = 0
    last_scan_seconds: float | None = None
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
                wait = IDLE_WAIT_SECONDS * 20
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

    def _stopped(self) -> bool:
        with self._cond:
            return self._stopping

    def _pace(self) -> bool:
        """Wait while the pipeline is busy; False when stopping."""
        while self.backlog() > SCAN_BACKLOG_LIMIT:
            with self._cond:
                if self._stopping:
                    return False
                self._cond.wait(0.05)
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
                    while self._folders:
                        with self._cond:
                            pending = self._folders.pop(0) if self._folders else None
                        if pending is not None:
                            self._scan_folder(*pending)
                    if not self._pace():
                        log.info("%s interrupted by shutdown", work.reason)
                        return
        finally:
            self.state.running = None
        seconds = self.clock() - work.started_at
        self.state.scans_done += 1
        self.state.last_scan_seconds = seconds
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
