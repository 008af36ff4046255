"""The run-mode thread: file changes in, decisions applied, reports into the outbox.

The `Pipeline` is the only writer of new versions while the agent runs. File changes
from the observers and files found by the `Scanner` arrive on one queue, in order. It
keeps the settle bookkeeping (`settle.py`), tells renames and deletions apart, parks
files whose ready marker is missing, and asks `versions.py` what a quiet file is; it
only applies the answer. Versions are committed in batches, and the deliverer is woken
once per batch.

It shares one code path with `scan` and `explain` for ownership (`rules.owner`) and with
`scan` for the version decision (`Versions.decide`).
"""

from __future__ import annotations

import logging
import os
import queue
import stat as stat_module
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from asset_watcher.batch_versions import (
    BatchRecord,
    BatchUnchanged,
    BatchWaits,
    apply_batch,
    decide_batches,
    describe_batch,
)
from asset_watcher.batches import BatchFolders
from asset_watcher.errors import StateError
from asset_watcher.fingerprint import file_stat, stat_of
from asset_watcher.model import Change, ChangeKind, FileMatch, FileStat, Found
from asset_watcher.paths import display_path
from asset_watcher.reports import deleted_report
from asset_watcher.rules import Owners, Rule, owner
from asset_watcher.settle import LinkRenames, MarkerWaits, Origin, Settled, Settler
from asset_watcher.state import StateStore
from asset_watcher.versions import (
    CarryOver,
    Decision,
    Look,
    Park,
    RecentlyGone,
    Record,
    Retry,
    Skip,
    Touch,
    Versions,
    describe_carry_over,
)

log = logging.getLogger(__name__)

# Events handled before the pipeline looks at due files again, and due files settled
# before it looks at events again: neither starves the other during a burst.
BATCH = 500
# Files recorded per commit: fewer commits in a burst, and the store (which the deliverer
# shares) is never held for long.
COMMIT_BATCH = 100
# How long a wait may last before the thread looks at its queue and deadlines again.
IDLE_WAIT_SECONDS = 0.5
# Retry delay for a version that could not be recorded (state directory full).
STATE_RETRY_SECONDS = 30.0

_STOP = object()
_FILE_CHANGES = (
    ChangeKind.CREATED, ChangeKind.WRITTEN, ChangeKind.MODIFIED, ChangeKind.MOVED,
    ChangeKind.DELETED,
)  # fmt: skip
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


@dataclass(frozen=True)
class _RuleSet:
    """What a reload swaps, in one assignment: the pipeline never sees half of one."""

    owners: Owners
    versions: Versions


class Pipeline:
    """Changes in; new versions and their reports out, into the outbox."""

    def __init__(
        self,
        rules: Sequence[Rule],
        store: StateStore,
        *,
        on_queued: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.on_queued = on_queued  # the one call out: wakes the deliverer
        self.wall_clock = wall_clock
        self.settler = Settler(clock)
        self.queue: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self.counts = PipelineCounts()
        self._links = LinkRenames()
        self._waits = MarkerWaits()
        self._gone = RecentlyGone(clock)
        self._batch_folders = BatchFolders(clock)  # [watch.batch] folders to look at, when
        self._in_batch = False
        self._queued_in_batch = False
        self.set_rules(rules)

    # -- called from other threads -----------------------------------------------------

    def submit(self, item: Change | Found) -> None:
        self.queue.put(item)

    def backlog(self) -> int:
        return self.queue.qsize() + len(self.settler)

    def set_rules(self, rules: Sequence[Rule]) -> None:
        """Swap in reloaded rules; they take effect for the next item."""
        versions = Versions(self.store, rules, recently_gone=self._gone, clock=self.wall_clock)
        self._rules = _RuleSet(Owners(rules), versions)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules.owners.rules

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
            self.settle_batches()
            self.waits_due()
            self.note_waits()
        self.note_waits(last=True)  # what still waits stays readable for `status`
        if self._waits:
            log.info("%d file(s) still wait for their ready marker", len(self._waits))

    def _poll(self) -> Item | None:
        try:
            return self.queue.get_nowait()
        except queue.Empty:
            return None

    def _next_item(self) -> Item | None:
        deadlines = (self.settler.next_deadline(), self._batch_folders.next_deadline())
        deadline = min((d for d in deadlines if d is not None), default=None)
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

    def waits_due(self) -> None:
        """Decide again on files whose wait for a checksum sidecar is over: they are
        reported now, their check saying the sidecar is missing."""
        for settled in self._waits.expired(self.wall_clock()):
            found = self._rules.owners(settled.path)
            if found is not None:
                self._complete(settled, *found)

    def note_waits(self, *, last: bool = False) -> None:
        """Write down what waits for `status` (when it changed; see MarkerWaits.to_note)."""
        waiting = self._waits.to_note(self.settler.clock(), last=last)
        if waiting is None:
            return
        try:
            self.store.note_waiting(waiting, self.wall_clock())
        except StateError as exc:  # only `status` misses it: try again at the next change
            log.warning("could not note the files waiting for markers or sidecars: %s", exc)
            self._waits.note_failed()

    def _settle(self, path: str) -> None:
        try:
            found = self._rules.owners(path)
            stat = file_stat(path, found[0].settings.follow_symlinks) if found else None
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

    def _queued(self) -> None:
        if self._in_batch:
            self._queued_in_batch = True
        else:
            self.on_queued()

    # -- changes -----------------------------------------------------------------------

    # -- batches (SPEC 13): a change in a batch's folder makes the folder due ------------

    def _batch_rule(self, path: str) -> Rule | None:
        """The batch rule whose member, marker or manifest `path` is, if any."""
        found = self._rules.owners(path)
        if found is not None:
            return found[0] if found[0].is_batch else None
        return next((rule for rule in self.rules if rule.is_batch_control(path)), None)

    def _batch_touched(self, *paths: str | None) -> bool:
        """Make the batch folders of `paths` due once they settle; True when every one of
        them is a batch's (nothing else to do with the change)."""
        every = True
        for path in paths:
            rule = self._batch_rule(path) if path else None
            if rule is None:
                every = every and not path
                continue
            assert path is not None
            folder = os.path.dirname(path)
            self._batch_folders.touched(rule.name, folder, rule.settings.settle_seconds)
        return every

    def settle_batches(self) -> None:
        """Decide each due batch folder, and apply it: record a completed batch with its
        reports, remember what an incomplete one waits for (and look again when that is
        time)."""
        for rule_name, folder in self._batch_folders.due():
            rule = self._rules.owners.rule(rule_name)
            if rule is None or not rule.is_batch:
                continue  # reloaded away
            versions = self._rules.versions
            try:
                decisions = decide_batches(versions, rule, folder)
                with self.store.batch():
                    for decision in decisions:
                        apply_batch(versions, decision)
            except StateError as exc:
                log.error("cannot record batches in %s, trying again later: %s",
                          display_path(folder), exc)  # fmt: skip
                self._batch_folders.later(rule_name, folder, STATE_RETRY_SECONDS)
                continue
            for decision in decisions:
                if isinstance(decision, BatchRecord):
                    self.counts.reported += 1
                    self.on_queued()
                elif isinstance(decision, BatchWaits) and decision.again_in_seconds is not None:
                    self._batch_folders.later(rule_name, folder, decision.again_in_seconds)
                if not isinstance(decision, BatchUnchanged) or decision.changed:
                    log.info("%s", describe_batch(decision))

    def _found(self, item: Found) -> None:
        if self._batch_touched(item.path):
            return
        # A marker or sidecar that came while the agent was stopped (or whose events were
        # lost) is found by the catch-up or a periodic scan: never a reported version, it
        # is found each time; the sidecar's stored key makes its check evaluated once.
        self._marker_appeared(item.path)
        self._sidecar_written(item.path)
        found = self._rules.owners(item.path)
        if found is None:
            return
        quiet = quiet_for_seconds(item.stat, self.wall_clock())
        self.settler.seen(
            item.path, item.stat, found[0].settings.settle_seconds, quiet_for_seconds=quiet
        )

    def _change(self, change: Change) -> None:
        kind = change.kind
        if kind in _FILE_CHANGES and self._batch_touched(change.path, change.dest):
            return
        if kind in (ChangeKind.WRITTEN, ChangeKind.CREATED, ChangeKind.MODIFIED):
            if kind is ChangeKind.WRITTEN:
                self._links.closed(change.path, change.at)  # owned or not: a temporary name
            self._marker_appeared(change.path)
            if kind is ChangeKind.CREATED:
                self._created(change)
                return
            self._sidecar_written(change.path)
            found = self._rules.owners(change.path)
            if found is None:
                return
            settings = found[0].settings
            stat = file_stat(change.path, settings.follow_symlinks)
            if stat is None:  # gone already, or not a regular file (a symbolic link)
                return
            if kind is ChangeKind.WRITTEN:
                self.settler.written(change.path, stat, settings.settle_seconds, at=change.at)
            else:
                quiet = quiet_for_seconds(stat, self.wall_clock())
                self.settler.seen(
                    change.path, stat, settings.settle_seconds, quiet_for_seconds=quiet
                )
        elif kind is ChangeKind.MOVED and change.dest:
            self._links.moved(change.path)
            self._moved(change.path, change.dest, change.at)
        elif kind is ChangeKind.DELETED:
            self._deleted(change.path)
            self._link_renamed(change.path, change.at)
        elif kind is ChangeKind.FOLDER_DELETED:
            self._batch_folders.discard_under(change.path)
            for path in self.settler.discard_under(change.path):
                self._waits.unpark(path)
            for path in self.store.known_under(change.path):
                self._deleted(path)
        # Folder arrivals, a gone root, overflows and failed watches are the watches'
        # business (watches.py): they never reach this queue.

    def _created(self, change: Change) -> None:
        """A new name. Usually a writer's: its close-after-write follows, and a slow upload
        must not be settled half-written. But a hard link (OpenSSH's sftp-server renames
        with link() + unlink()) gets no close event: when the content is older than the
        name (link() moves the ctime, not the mtime) or has another name, it arrived. When
        neither shows (a link within the last write's clock tick, the old name already
        gone), the old name's deletion tells it: see `_link_renamed`."""
        found = self._rules.owners(change.path)
        if found is None:
            return
        settings = found[0].settings
        try:
            st = os.stat(change.path, follow_symlinks=settings.follow_symlinks)
        except OSError:
            return
        if not stat_module.S_ISREG(st.st_mode):
            return
        linked = st.st_nlink > 1 or (st.st_size > 0 and st.st_mtime_ns < st.st_ctime_ns)
        if linked:
            self.settler.written(change.path, stat_of(st), settings.settle_seconds, at=change.at)
        elif st.st_size > 0:  # a writer's, or a link made within the last write's tick
            self._links.created(change.path, change.at, stat_of(st))

    def _link_renamed(self, old: str, at: float) -> None:
        """The old name of a link() + unlink() rename went: if a new name appeared in its
        folder just before, unwritten since, that name arrived (see LinkRenames)."""
        for path, size, mtime_ns in self._links.deleted(old, at):
            found = self._rules.owners(path)
            if found is None:
                continue
            settings = found[0].settings
            stat = file_stat(path, settings.follow_symlinks)
            if stat is None or (stat.size, stat.mtime_ns) != (size, mtime_ns):
                continue  # gone, or still being written: its writer's close will come
            log.debug("%s was linked into place from %s", display_path(path), display_path(old))
            self.settler.written(path, stat, settings.settle_seconds, at=at)
            return

    def _moved(self, source: str, destination: str, at: float) -> None:
        self._marker_appeared(destination)
        self._sidecar_written(destination)
        carried = self.settler.moved(source, destination)
        parked = self._waits.unpark(source)
        dest = self._rules.owners(destination)
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
        stat = file_stat(destination, rule.settings.follow_symlinks)
        if stat is None:
            self.settler.discard(destination)
            return
        self.settler.written(destination, stat, rule.settings.settle_seconds, at=at)

    def _already_carried(self, path: str, rule: Rule) -> bool:
        known = self.store.known(path)
        stat = file_stat(path, rule.settings.follow_symlinks)
        return (
            known is not None
            and stat is not None
            and (known.stat.inode, known.stat.size, known.stat.mtime_ns)
            == (stat.inode, stat.size, stat.mtime_ns)
        )

    def _deleted(self, path: str) -> None:
        self.settler.discard(path)
        self._waits.unpark(path)
        known = self.store.known(path)
        if known is None:
            return
        match = owner(self.rules, path)
        rule = self._rules.owners.rule(match.rule_name) if match is not None else None
        reports = []
        if rule is not None and match is not None and rule.settings.on_delete == "observe":
            reports = [deleted_report(match, host=rule.host)]
        self.store.forget(path, reports)
        if match is not None:
            # inotify reports a rename into a folder not watched yet as a deletion: the
            # file found under its new name soon is no new version.
            self._gone.remember(known, match)
        self.counts.deleted += 1
        log.info("deleted %s%s", display_path(path), " (observed)" if reports else "")
        if reports:
            self.on_queued()

    def _marker_appeared(self, path: str) -> None:
        for settled in self._waits.appeared(path):
            found = self._rules.owners(settled.path)
            if found is not None:
                self._complete(settled, *found)

    def _sidecar_written(self, path: str) -> None:
        """A checksum sidecar was written (or renamed into place): the reported files
        whose checks read it are evaluated again, the checks alone (SPEC 14)."""
        if not any(rule.is_sidecar(path) for rule in self.rules):
            return
        for data in self.store.sidecar_readers(path):
            found = self._rules.owners(data)
            known = self.store.known(data)
            if found is None or known is None:
                continue
            rule, match = found
            recheck = self._rules.versions.recheck(rule, match, known)
            if recheck is not None:
                self._rules.versions.apply_recheck(match, recheck)
                log.info("%s: its checksum sidecar %s changed; check evaluated again",
                         display_path(data), display_path(path))  # fmt: skip
                self._queued()

    # -- a settled file ----------------------------------------------------------------

    def _complete(self, settled: Settled, rule: Rule, match: FileMatch) -> None:
        """Ask what a quiet file is, and apply the answer."""
        if rule.is_batch:  # reached through a rename: its batch decides
            self._batch_touched(settled.path)
            return
        known = self.store.known(settled.path)
        look = Look(arrival=settled.origin is Origin.WRITTEN)
        self._apply(self._rules.versions.decide(rule, match, settled.stat, known, look),
                    settled, rule, match)  # fmt: skip

    def _apply(self, decision: Decision, settled: Settled, rule: Rule, match: FileMatch) -> None:
        path = settled.path
        if isinstance(decision, Record):
            self._record(decision, settled, rule, match)
        elif isinstance(decision, Touch):
            self.store.touch_version(path, decision.stat)
        elif isinstance(decision, CarryOver):
            if self._rules.versions.carry_over(match, decision):
                self.counts.moved += 1
                log.info("%s", describe_carry_over(match, decision))
        elif isinstance(decision, Park):
            log.info("%s is complete; waiting for its %s %s", display_path(path),
                     decision.what, display_path(decision.marker))  # fmt: skip
            self._waits.park(decision.marker, settled, decision.until, decision.what)
        elif isinstance(decision, Retry):
            self.settler.restart(path, decision.stat, decision.after_seconds, settled.origin)
        elif isinstance(decision, Skip):
            self.counts.skipped += 1
            log.info("skipped %s: %s", display_path(path), decision.reason)
        # Unchanged: nothing to do

    def _record(self, decision: Record, settled: Settled, rule: Rule, match: FileMatch) -> None:
        try:
            self._rules.versions.record(match, decision)
        except StateError as exc:
            log.error("cannot record %s, trying again later: %s", display_path(match.path), exc)
            retry = max(rule.settings.settle_seconds, STATE_RETRY_SECONDS)
            self.settler.restart(match.path, None, retry, settled.origin)
            return
        self.counts.reported += 1
        log.info(
            "reported %s: %s%s, %d bytes",
            display_path(match.path),
            "/".join(match.asset_key),
            f" [{match.partition}]" if match.partition else "",
            decision.fingerprint.stat.size,
        )
        self._queued()


def _describe(item: Item) -> str:
    if isinstance(item, Change):
        what = f"{item.kind.value} {display_path(item.path)}"
        return what + (f" -> {display_path(item.dest)}" if item.dest else "")
    if isinstance(item, Found):
        return display_path(item.path)
    return repr(item)
