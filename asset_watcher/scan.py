"""The directory walk behind `scan`, the catch-up at start and the periodic rescans, and
the one-shot `scan`, which applies the decisions of `versions.py` to what it walks.

A walk sees no writes, so it decides from stat alone: a file whose size, mtime and inode
match its reported version is unchanged and never opened. Only a changed ctime (an
upload that preserved the sender's mtime) costs a hash, to tell content from chmod.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from asset_watcher.batch_versions import (
    BatchRecord,
    BatchSkip,
    BatchUnchanged,
    BatchWaits,
    apply_batch,
    decide_batches,
    describe_batch,
)
from asset_watcher.fingerprint import stat_of
from asset_watcher.model import FileMatch, FileStat, Report
from asset_watcher.paths import display_path
from asset_watcher.reports import iso_utc
from asset_watcher.rules import Rule, is_utf8, owner
from asset_watcher.state import KnownVersion, StateStore
from asset_watcher.versions import (
    CarryOver,
    Look,
    Park,
    Record,
    Retry,
    Skip,
    Touch,
    Unchanged,
    Versions,
    describe_carry_over,
)

log = logging.getLogger(__name__)


@dataclass
class ScanResult:
    files_seen: int = 0
    unchanged: int = 0
    reported: int = 0  # file versions (each may carry several reports)
    skipped: int = 0
    rechecked: int = 0  # reported files whose checksum sidecar arrived or changed since


@dataclass(frozen=True)
class Candidate:
    path: str
    folder: str
    name: str
    stat: FileStat


def listing(
    rule: Rule, start: str | None = None, *, recursive: bool | None = None
) -> Iterator[tuple[str, int, list[os.DirEntry[str]]]]:
    """Each folder under the rule's root (or `start`, a folder below it), an open
    descriptor of it, and its files (not yet stat'ed), skipping ignored names. Stat a file
    relative to the descriptor (`os.stat(name, dir_fd=...)`): that spares resolving its
    whole path again.

    Symbolic links are not followed unless the rule says so; folders that vanish or
    cannot be listed mid-walk are logged and passed over.
    """
    follow = rule.settings.follow_symlinks
    descend = rule.settings.recursive and (recursive is None or recursive)
    ignored = rule.ignore_regex.match if rule.ignore_regex is not None else None
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    top = start or rule.root
    stack = [top]
    while stack:
        folder = stack.pop()
        files = []
        try:
            # Only the configured root may itself be reached through a link.
            nofollow = 0 if follow or folder == rule.root else os.O_NOFOLLOW
            fd = os.open(folder, flags | nofollow)
        except OSError as exc:
            log.warning("cannot list %s: %s", display_path(folder), exc.strerror)
            continue
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    if ignored is not None and ignored(entry.name):
                        continue
                    try:
                        if entry.is_file(follow_symlinks=follow):
                            files.append(entry)
                        elif descend and entry.is_dir(follow_symlinks=follow):
                            stack.append(f"{folder}/{entry.name}")
                    except OSError as exc:  # vanished between listing and looking
                        log.info("skipped %s/%s: %s", display_path(folder), entry.name, exc)
            yield folder, fd, files
        except OSError as exc:
            log.warning("cannot list %s: %s", display_path(folder), exc.strerror)
        finally:
            os.close(fd)


def walk(
    rule: Rule, start: str | None = None, *, recursive: bool | None = None
) -> Iterator[tuple[str, list[Candidate]]]:
    """Like `listing`, with each file's stat; files that vanish meanwhile are left out."""
    follow = rule.settings.follow_symlinks
    for folder, fd, entries in listing(rule, start, recursive=recursive):
        candidates = []
        for entry in entries:
            try:
                st = os.stat(entry.name, dir_fd=fd, follow_symlinks=follow)
            except OSError:
                continue
            path = f"{folder}/{entry.name}"
            candidates.append(Candidate(path, folder, entry.name, stat_of(st)))
        yield folder, candidates


def scan(
    rules: Sequence[Rule],
    store: StateStore,
    *,
    force: bool = False,
    dry_run: bool = False,
    emit: Callable[[Report, FileMatch], None] | None = None,
    progress: Callable[[int], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> ScanResult:
    """Report every new or changed file owned by `rules` (all of them with `force`)."""
    result = ScanResult()
    versions = Versions(store, rules, clock=clock)  # the same now for settle and sidecar waits
    for rule in rules:
        if rule.is_batch:
            _scan_batches(rule, versions, result, force=force, dry_run=dry_run, emit=emit,
                          progress=progress, clock=clock)  # fmt: skip
            continue
        follow = rule.settings.follow_symlinks
        for folder, fd, entries in listing(rule):
            known = store.stat_keys_in_folder(folder) if entries else {}
            result.files_seen += len(entries)
            unchanged = 0
            for entry in entries:
                try:
                    st = os.stat(entry.name, dir_fd=fd, follow_symlinks=follow)
                except OSError as exc:
                    log.info("skipped %s/%s: %s", display_path(folder), entry.name, exc.strerror)
                    continue
                # The hot path of a rescan: one integer compared, no objects built, no call
                # (the hash is `model.stat_key`, written out).
                if not force and known.get(entry.name) == hash(
                    (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
                ):
                    unchanged += 1
                    if rule.checksum_checks:
                        _recheck(rule, versions, f"{folder}/{entry.name}", result, dry_run, emit)
                    continue
                path = f"{folder}/{entry.name}"
                candidate = Candidate(path, folder, entry.name, stat_of(st))
                previous = store.known(path) if entry.name in known else None
                look = Look(force=force, settle_at=clock())
                _scan_file(
                    rule, versions, candidate, previous, result,
                    look=look, dry_run=dry_run, emit=emit,
                )  # fmt: skip
            result.unchanged += unchanged
            if progress is not None:
                progress(result.files_seen)
    return result


def _scan_batches(
    rule: Rule,
    versions: Versions,
    result: ScanResult,
    *,
    force: bool,
    dry_run: bool,
    emit: Callable[[Report, FileMatch], None] | None,
    progress: Callable[[int], None] | None,
    clock: Callable[[], float],
) -> None:
    """A batch rule's folders, each decided as a whole (SPEC 13): the same batches as
    `run` sees; an incomplete one is left for a later scan (and `status` lists it)."""
    for folder, _, entries in listing(rule):
        result.files_seen += len(entries)
        if not entries:
            continue
        look = Look(force=force, settle_at=clock())
        for decision in decide_batches(versions, rule, folder, look):
            if not dry_run:
                apply_batch(versions, decision)
            if isinstance(decision, BatchRecord):
                result.reported += 1
                log.info("%s", describe_batch(decision))
                if emit is not None:
                    for report in decision.reports:
                        emit(report, decision.match)
            elif isinstance(decision, BatchUnchanged):
                result.unchanged += 1
                if decision.changed:
                    log.info("%s", describe_batch(decision))
            elif isinstance(decision, (BatchWaits, BatchSkip)):
                result.skipped += 1
                log.info("%s", describe_batch(decision))
        if progress is not None:
            progress(result.files_seen)


def _scan_file(
    rule: Rule,
    versions: Versions,
    candidate: Candidate,
    previous: KnownVersion | None,
    result: ScanResult,
    *,
    look: Look,
    dry_run: bool,
    emit: Callable[[Report, FileMatch], None] | None,
) -> None:
    # The same decision as `explain` and `run`. Another rule's walk reports what it owns.
    match = owner(versions.rules, candidate.path)
    if match is None:
        reason = rule.match(candidate.path)
        if isinstance(reason, str) and not is_utf8(candidate.path):
            log.info("skipped %s: %s", display_path(candidate.path), reason)
            result.skipped += 1
        return
    if match.rule_name != rule.name:
        return
    decision = versions.decide(rule, match, candidate.stat, previous, look)
    if isinstance(decision, Record):
        if not dry_run:
            versions.record(match, decision)
        result.reported += 1
        if emit is not None:
            for report in decision.reports:
                emit(report, match)
    elif isinstance(decision, Unchanged):
        result.unchanged += 1
    elif isinstance(decision, Touch):
        result.unchanged += 1  # chmod/chown or touch -c: same content, not a new version
        if not dry_run:
            versions.store.touch_version(candidate.path, decision.stat)
    elif isinstance(decision, CarryOver):
        result.unchanged += 1
        if not dry_run and versions.carry_over(match, decision):
            log.info("%s", describe_carry_over(match, decision))
    else:  # a walk has no one to wait: what `run` parks or retries, a scan skips
        log.info("skipped %s: %s", display_path(candidate.path), _skip_reason(decision))
        result.skipped += 1


def _recheck(
    rule: Rule,
    versions: Versions,
    path: str,
    result: ScanResult,
    dry_run: bool,
    emit: Callable[[Report, FileMatch], None] | None,
) -> None:
    """An unchanged file's checksum checks again, when a sidecar arrived or changed since
    they read it (SPEC 14): one stat per sidecar, a read only when one changed."""
    match = owner(versions.rules, path)
    known = versions.store.known(path)
    if match is None or match.rule_name != rule.name or known is None:
        return
    decision = versions.recheck(rule, match, known)
    if decision is None:
        return
    if not dry_run:
        versions.apply_recheck(match, decision)
    result.rechecked += 1
    log.info("%s: its checksum sidecar changed; check evaluated again", display_path(path))
    if emit is not None:
        for report in decision.reports:
            emit(report, match)


def _skip_reason(decision: Park | Retry | Skip) -> str:
    if isinstance(decision, Park):
        reason = f"waiting for its {decision.what} {display_path(decision.marker)}"
        if decision.until is not None:
            reason += f" until {iso_utc(int(decision.until * 1e9))}"
        return reason
    return decision.reason
