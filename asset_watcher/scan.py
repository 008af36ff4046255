"""The directory walk behind `scan`, the catch-up at start and the periodic rescans.

A walk sees no writes, so it decides from stat alone: a file whose size, mtime and inode
match its reported version is unchanged and never opened. Only a changed ctime (an
upload that preserved the sender's mtime) costs a hash, to tell content from chmod.
"""

from __future__ import annotations

import logging
import os
import stat as stat_module
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from asset_watcher import metrics
from asset_watcher.fingerprint import FileChangedError, NotRegularFileError, fingerprint, stat_of
from asset_watcher.model import FileMatch, FileStat, Fingerprint, Report
from asset_watcher.paths import display_path
from asset_watcher.reports import reports_for_version
from asset_watcher.rules import Rule, is_utf8, owner
from asset_watcher.state import KnownVersion, StateStore

log = logging.getLogger(__name__)


@dataclass
class ScanResult:
    files_seen: int = 0
    unchanged: int = 0
    reported: int = 0  # file versions (each may carry several reports)
    skipped: int = 0


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


def is_changed(candidate: FileStat, known: KnownVersion | None) -> bool | None:
    """True/False from stat alone; None when only the ctime moved and content must decide."""
    if known is None or not candidate.same_version(known.stat):
        return True
    if candidate.ctime_ns != known.stat.ctime_ns:
        return None
    return False


STILL_BEING_WRITTEN = "still being written"


def take_version(rule: Rule, match: FileMatch) -> Fingerprint | str:
    """Read a file that looks complete; the reason to skip it otherwise."""
    marker = rule.marker_for(match)
    if marker is not None and not os.path.lexists(marker):
        return f"waiting for its ready marker {display_path(marker)}"
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
        )
    except FileChangedError:
        return STILL_BEING_WRITTEN
    except NotRegularFileError as exc:
        return str(exc.strerror)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    if print_.digest is not None:
        metrics.bytes_hashed(print_.stat.size)
    return print_


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
    for rule in rules:
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
                    continue
                path = f"{folder}/{entry.name}"
                candidate = Candidate(path, folder, entry.name, stat_of(st))
                previous = store.known(path) if entry.name in known else None
                changed = True if force else is_changed(candidate.stat, previous)
                _scan_file(
                    rule,
                    rules,
                    candidate,
                    previous,
                    changed,
                    store,
                    result,
                    dry_run=dry_run,
                    force=force,
                    emit=emit,
                    now=clock(),
                )
            result.unchanged += unchanged
            if progress is not None:
                progress(result.files_seen)
    return result


def _scan_file(
    rule: Rule,
    rules: Sequence[Rule],
    candidate: Candidate,
    previous: KnownVersion | None,
    changed: bool | None,
    store: StateStore,
    result: ScanResult,
    *,
    dry_run: bool,
    force: bool,
    emit: Callable[[Report, FileMatch], None] | None,
    now: float,
) -> None:
    # The same decision as `explain` and `run`. Another rule's walk reports what it owns.
    match = owner(rules, candidate.path)
    if match is None:
        reason = rule.match(candidate.path)
        if isinstance(reason, str) and not is_utf8(candidate.path):
            log.info("skipped %s: %s", display_path(candidate.path), reason)
            result.skipped += 1
        return
    if match.rule_name != rule.name:
        return
    if previous is None and not force and carry_over_rename(store, rules, match, candidate.stat):
        result.unchanged += 1
        return
    settle = rule.settings.settle_seconds
    # A future mtime (a sender's clock, a preserved timestamp) says nothing about an
    # ongoing write; only a recent one does.
    if 0 <= now - candidate.stat.mtime_ns / 1e9 < settle:
        log.info(
            "skipped %s: modified less than %gs ago, not settled yet",
            display_path(candidate.path),
            settle,
        )
        result.skipped += 1
        return
    print_ = take_version(rule, match)
    if isinstance(print_, str):
        log.info("skipped %s: %s", display_path(candidate.path), print_)
        result.skipped += 1
        return
    if changed is None and previous is not None and print_.digest == previous.digest:
        result.unchanged += 1  # chmod/chown or touch -c: same content, not a new version
        if not dry_run:
            store.touch_version(candidate.path, print_.stat)
        return
    reports = reports_for_version(rule, match, print_)
    if not dry_run:
        store.record_version(candidate.path, rule.name, print_.stat, print_.digest, reports)
        metrics.file_detected()
    result.reported += 1
    if emit is not None:
        for report in reports:
            emit(report, match)


def carry_over_rename(
    store: StateStore, rules: Sequence[Rule], match: FileMatch, stat: FileStat
) -> str | None:
    """A reported file renamed while nobody watched (or where inotify could not pair the
    rename): same inode, size and mtime as a reported version whose path is gone, owned by
    the same rule with the same asset key and partition. Carry its version over to the new
    path, as SPEC 3 says a rename within a rule is not a new version; returns the old path."""
    for old_path, version in store.known_by_inode(stat.inode):
        if (version.stat.size, version.stat.mtime_ns) != (stat.size, stat.mtime_ns):
            continue
        if old_path == match.path or os.path.lexists(old_path):
            continue
        previous = owner(rules, old_path)
        if previous is None or (previous.rule_name, previous.asset_key, previous.partition) != (
            match.rule_name,
            match.asset_key,
            match.partition,
        ):
            continue
        if store.move_version(old_path, match.path):
            log.info("%s was renamed from %s: not a new version",
                     display_path(match.path), display_path(old_path))  # fmt: skip
            return old_path
    return None


def file_stat(path: str, follow_symlinks: bool = False) -> FileStat | None:
    """The stat of a regular file, or None for anything else (or nothing)."""
    try:
        st = os.stat(path, follow_symlinks=follow_symlinks)
    except OSError:
        return None
    return stat_of(st) if stat_module.S_ISREG(st.st_mode) else None
