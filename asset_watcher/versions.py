"""The one answer to "is this a new version, and what do we do with it?".

`Versions.decide` looks at a file that seems complete (settled in `run`, found by a walk
in `scan`) and returns a `Decision`: a small closed set of frozen values. It reads what
it needs (the state, the file once) and writes nothing; `scan` and the pipeline only
apply what it decided, each in its own way (a scan skips what `run` would park or
retry).

The order of the questions is the same for both:

1. a folder on the way was swapped for a symbolic link → Skip
2. the stat equals the reported version's → Unchanged
3. no version under this name, but one under a name that is gone now (same inode, size
   and mtime, same rule, asset key and partition: a rename nobody paired) → CarryOver
4. (scan only) modified within the settle time → Skip
5. its ready marker is missing, or its checksum sidecar is and `wait_seconds` has not
   passed since the file's last change → Park
6. it cannot be read whole (written meanwhile, still open, unreadable) → Retry or Skip
7. only the ctime moved and the content is the same (chmod, chown) → Touch
8. otherwise → Record, with its reports

Rename memory lives here too, in one place: versions reported under a name that is gone
(found in the state by inode) and versions forgotten lately in `run` (`RecentlyGone`:
inotify reports a rename into a folder it does not watch yet as a deletion).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from asset_watcher import metrics
from asset_watcher.arrivals import expectations, file_arrival, with_arrival
from asset_watcher.checks import evaluate
from asset_watcher.fingerprint import (
    FileChangedError,
    NotRegularFileError,
    file_stat,
    fingerprint,
)
from asset_watcher.model import FileMatch, FileStat, Fingerprint, Report
from asset_watcher.paths import display_path, through_link
from asset_watcher.reports import check_report, reports_for_version
from asset_watcher.rules import Rule, owner
from asset_watcher.settings import ChecksumCheck
from asset_watcher.state import KnownVersion, SidecarSeen, StateStore, Window

log = logging.getLogger(__name__)

# How soon a file closed after writing but still open for writing is looked at again.
STILL_OPEN_RETRY_SECONDS = 1.0
# How long a deleted file's version is remembered, in case it was a rename inotify
# could not pair (into a folder whose watch did not exist yet).
GONE_SECONDS = 60.0


# -- decisions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Unchanged:
    """The reported version, as it was: nothing to do."""


@dataclass(frozen=True)
class Touch:
    """Same content, new stat (chmod, chown, touch -c): store the stat, report nothing."""

    stat: FileStat


@dataclass(frozen=True)
class CarryOver:
    """A reported version under another name: it moves to this one, reported nothing.
    `old_path` is the name whose version is still stored; None when it was forgotten
    already (`RecentlyGone`) and `digest` is what it had."""

    old_path: str | None
    stat: FileStat
    digest: str | None


@dataclass(frozen=True)
class Park:
    """Complete, but its ready marker (or checksum sidecar) is missing: wait for `marker`,
    the path of what it waits for; a sidecar only `until` (wall clock), then decide again."""

    marker: str
    what: str = "ready marker"
    until: float | None = None


@dataclass(frozen=True)
class Retry:
    """Not readable whole right now: look again after `after_seconds` (in `run`), with
    `stat` as the new starting point; a scan skips it for `reason`."""

    stat: FileStat
    after_seconds: float
    reason: str


@dataclass(frozen=True)
class Skip:
    """Not reported, for `reason` (logged by whoever applies it)."""

    reason: str


@dataclass(frozen=True)
class Record:
    """A new version: store it and queue its reports; `sidecars` are what its checksum
    checks read (remembered, so a later change of one re-evaluates its check)."""

    fingerprint: Fingerprint
    reports: tuple[Report, ...]
    sidecars: tuple[SidecarSeen, ...] = ()


@dataclass(frozen=True)
class Recheck:
    """Not a new version, but a checksum sidecar of it arrived or changed since it was
    reported: queue these check evaluations alone (SPEC 14)."""

    reports: tuple[Report, ...]
    sidecars: tuple[SidecarSeen, ...]


Decision = Unchanged | Touch | CarryOver | Park | Retry | Skip | Record


@dataclass(frozen=True)
class Look:
    """How the caller came to ask: what changes the answer between `run` and `scan`."""

    # Closed after writing (run): a read that finds it still open is a close signalled a
    # moment before the writer let go, looked at again soon rather than skipped.
    arrival: bool = False
    # `scan --force`: every file is a new version (no unchanged, no carry-over).
    force: bool = False
    # Wall-clock now, for a walk that has no settle bookkeeping (scan): a file modified
    # within its settle time is skipped. None: the caller settled it already (run).
    settle_at: float | None = None


# -- rename memory ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Gone:
    at: float
    known: KnownVersion
    asset: tuple[str, tuple[str, ...], str | None]  # rule, asset key, partition


def _asset(match: FileMatch) -> tuple[str, tuple[str, ...], str | None]:
    return (match.rule_name, match.asset_key, match.partition)


class RecentlyGone:
    """Versions of files deleted lately (by inode), for `GONE_SECONDS` on `clock`."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._by_inode: dict[int, _Gone] = {}

    def remember(self, known: KnownVersion, match: FileMatch) -> None:
        now = self.clock()
        self._by_inode = {
            inode: gone for inode, gone in self._by_inode.items() if now - gone.at < GONE_SECONDS
        }
        self._by_inode[known.stat.inode] = _Gone(now, known, _asset(match))

    def take(self, match: FileMatch, stat: FileStat) -> KnownVersion | None:
        """The version a file with this stat and asset had when it went, if it went
        lately: the file came back under a new name. Taken once."""
        gone = self._by_inode.get(stat.inode)
        if gone is None or self.clock() - gone.at >= GONE_SECONDS:
            return None
        known = gone.known
        if (known.stat.size, known.stat.mtime_ns) != (stat.size, stat.mtime_ns):
            return None
        if gone.asset != _asset(match):
            return None
        del self._by_inode[stat.inode]
        return known


# -- reading a file once ------------------------------------------------------------------


@dataclass(frozen=True)
class _Unreadable:
    reason: str
    being_written: bool = False


def read_version(rule: Rule, match: FileMatch) -> Fingerprint | _Unreadable:
    """One read of a file that looks complete: its fingerprint, or why not."""
    try:
        print_ = fingerprint(
            match.path,
            rule.settings.hash,
            count_lines=rule.needs_line_count,
            follow_symlinks=rule.settings.follow_symlinks,
            expected_real_path=(
                None
                if rule.settings.follow_symlinks
                else os.path.join(rule.real_root, match.relpath)
            ),
            extra_algorithms=rule.extra_algorithms,
        )
    except FileChangedError:
        return _Unreadable("still being written", being_written=True)
    except NotRegularFileError as exc:
        return _Unreadable(str(exc.strerror))
    except OSError as exc:
        return _Unreadable(f"cannot read: {exc.strerror or exc}")
    if print_.digest is not None:
        metrics.bytes_hashed(print_.stat.size)
    return print_


# -- the decision -------------------------------------------------------------------------


class Versions:
    """Decides with the state store and the rules (swapped on reload by the caller)."""

    def __init__(
        self,
        store: StateStore,
        rules: Sequence[Rule],
        *,
        recently_gone: RecentlyGone | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.rules = tuple(rules)
        self.recently_gone = recently_gone
        self.clock = clock  # wall clock: when a file arrived, for [watch.expect]
        self.expectations = expectations(self.rules)

    def decide(
        self,
        rule: Rule,
        match: FileMatch,
        stat: FileStat,
        known: KnownVersion | None,
        look: Look = Look(),
    ) -> Decision:
        """What to do with `match`'s file, last seen as `stat`; `known` is its reported
        version (the caller usually has it already)."""
        follow = rule.settings.follow_symlinks
        if not follow and through_link(rule.root, match.path):
            # A folder on the way was swapped for a symbolic link after it was listed.
            return Skip("a folder on its path is a symbolic link")
        content_decides = False
        if known is not None and not look.force and stat.same_version(known.stat):
            if stat == known.stat:
                return Unchanged()
            content_decides = True  # only the ctime moved: a rename, chmod or upload
        if known is None and not look.force:
            carried = self._carried_over(match, stat)
            if carried is not None:
                return carried
        settle = rule.settings.settle_seconds
        # A future mtime (a sender's clock, a preserved timestamp) says nothing about an
        # ongoing write; only a recent one does.
        if look.settle_at is not None and 0 <= look.settle_at - stat.mtime_ns / 1e9 < settle:
            return Skip(f"modified less than {settle:g}s ago, not settled yet")
        marker = rule.marker_for(match)
        if marker is not None and not os.path.lexists(marker):
            return Park(marker)
        waiting = sidecar_wait(rule, match, stat, self.clock())
        if waiting is not None:
            return waiting
        # Looked at before the checks read them: a sidecar changing meanwhile is seen again.
        sidecars = tuple(sidecar_seen(rule, match, check) for check in rule.checksum_checks)
        print_ = read_version(rule, match)
        if isinstance(print_, _Unreadable):
            now = file_stat(match.path, follow)
            if now is not None and now != stat:
                return Retry(now, settle, print_.reason)  # written again
            if now is not None and look.arrival and print_.being_written:
                # Closed, yet open for writing: the kernel signals the close a moment
                # before the writer lets go, or another writer has it. Look again soon.
                return Retry(now, max(settle, STILL_OPEN_RETRY_SECONDS), print_.reason)
            return Skip(print_.reason)
        if content_decides and known is not None and print_.digest == known.digest:
            return Touch(print_.stat)
        return Record(print_, tuple(reports_for_version(rule, match, print_)), sidecars)

    def recheck(self, rule: Rule, match: FileMatch, known: KnownVersion) -> Recheck | None:
        """The checksum checks to evaluate again for a reported, unchanged file: those
        whose sidecar arrived or changed since they read it. None when there are none,
        or when the file itself changed (its new version brings its checks)."""
        if not rule.checksum_checks:
            return None
        before = self.store.sidecars_seen(match.path)
        changed: list[tuple[ChecksumCheck, SidecarSeen]] = []
        for check in rule.checksum_checks:
            seen = before.get(check.check_name)
            if seen is None:
                continue  # never read for this version (an earlier release, a rename)
            now = sidecar_seen(rule, match, check)
            if now.key is not None and now != seen:
                changed.append((check, now))
        if not changed:
            return None
        print_ = self._digests(rule, match, known, {c.digest_algorithm for c, _ in changed})
        if print_ is None:
            return None
        follow = rule.settings.follow_symlinks
        reports = []
        for check, _ in changed:
            result = evaluate(check, match, print_, follow_symlinks=follow, rule=rule)
            reports.append(
                check_report(
                    match.asset_key,
                    result.check_name,
                    passed=result.passed,
                    severity=result.severity,
                    metadata={**result.metadata, "reevaluated": True},
                    partition=match.partition,
                )
            )
        return Recheck(tuple(reports), tuple(seen for _, seen in changed))

    def _digests(
        self, rule: Rule, match: FileMatch, known: KnownVersion, algorithms: set[str]
    ) -> Fingerprint | None:
        """The reported version's digests in `algorithms`: the stored one when that is
        all, else from one more read (which must find the same version)."""
        if algorithms == {rule.settings.hash} and known.digest is not None:
            return Fingerprint(known.stat, rule.settings.hash, known.digest)
        print_ = read_version(rule, match)
        if isinstance(print_, _Unreadable) or not print_.stat.same_version(known.stat):
            return None
        if known.digest is not None and print_.digest != known.digest:
            return None
        return print_

    def apply_recheck(self, match: FileMatch, decision: Recheck) -> None:
        self.store.note_sidecars(match.path, decision.sidecars, decision.reports)

    def _carried_over(self, match: FileMatch, stat: FileStat) -> CarryOver | None:
        """A reported file renamed while nobody watched (or where inotify could not pair
        the rename): SPEC 3 says a rename within a rule is not a new version."""
        for old_path, version in self.store.known_by_inode(stat.inode):
            if (version.stat.size, version.stat.mtime_ns) != (stat.size, stat.mtime_ns):
                continue
            if old_path == match.path or os.path.lexists(old_path):
                continue
            previous = owner(self.rules, old_path)
            if previous is not None and _asset(previous) == _asset(match):
                return CarryOver(old_path, stat, version.digest)
        if self.recently_gone is not None:
            known = self.recently_gone.take(match, stat)
            if known is not None:
                return CarryOver(None, stat, known.digest)
        return None

    # -- applying what both callers apply alike ---------------------------------------------

    def carry_over(self, match: FileMatch, decision: CarryOver) -> bool:
        """Move the version to `match`'s name; False when the old one vanished meanwhile."""
        if decision.old_path is None:
            self.store.record_version(
                match.path, match.rule_name, decision.stat, decision.digest, []
            )
            return True
        return self.store.move_version(decision.old_path, match.path)

    def record(self, match: FileMatch, decision: Record) -> None:
        print_ = decision.fingerprint
        expectation = self.expectations.get(match.rule_name)
        # One commit, under the store's lock from judging the file's window to storing
        # it (the agent's timer judges closing windows under the same lock, so a window
        # gets one evaluation); the sidecars its checks read are stored with it, so a
        # crash cannot leave a version whose late sidecar would never be looked at.
        with self.store.batch():
            reports = decision.reports
            windows: tuple[Window, ...] = ()
            if expectation is not None:
                since = self.store.expectation_started(match.rule_name)
                arrival = file_arrival(expectation, match, self.clock(), self.store, since)
                if arrival is not None:
                    reports, windows = with_arrival(reports, arrival), (arrival.window,)
            self.store.record_version(
                match.path, match.rule_name, print_.stat, print_.digest, reports, windows
            )
            if decision.sidecars:
                self.store.note_sidecars(match.path, decision.sidecars)
        metrics.file_detected()


def sidecar_wait(rule: Rule, match: FileMatch, stat: FileStat, now: float) -> Park | None:
    """The checksum sidecar the file still waits for at `now` (what `decide` parks it
    for and `explain` says): missing (or empty: created, not written yet) while
    `wait_seconds` have not passed since the file last changed. That is its ctime, the
    write or the rename into place: the same in `run` and `scan` and across restarts,
    and never in the future like a sender's mtime."""
    for check in rule.checksum_checks:
        sidecar = rule.sidecar_for(match, check)
        if sidecar is None or _has_content(sidecar):
            continue
        until = stat.ctime_ns / 1e9 + check.wait_seconds
        if now < until:
            return Park(sidecar, what="checksum sidecar", until=until)
    return None


def sidecar_seen(rule: Rule, match: FileMatch, check: ChecksumCheck) -> SidecarSeen:
    """A checksum check's sidecar as it is now; its key None while missing or empty."""
    sidecar = rule.sidecar_for(match, check) or ""
    stat = file_stat(sidecar, follow_symlinks=True) if sidecar else None
    key = stat.key if stat is not None and stat.size > 0 else None
    return SidecarSeen(check.check_name, sidecar, key)


def _has_content(path: str) -> bool:
    try:
        return os.stat(path).st_size > 0
    except OSError:
        return False


def describe_carry_over(match: FileMatch, decision: CarryOver) -> str:
    if decision.old_path is None:
        return f"{display_path(match.path)} came back under a new name: not a new version"
    return (
        f"{display_path(match.path)} was renamed from {display_path(decision.old_path)}: "
        "not a new version"
    )
