"""The version decision for batches (SPEC 13): one Decision per batch, applied by scan
and the pipeline.

`decide_batches` looks at a batch rule's folder as a whole (in `run` when a change in it
settled, in a scan when it was walked, in `explain` without reading the members) and
returns one `BatchDecision` per batch; `apply_batch` stores what a decision changes. A
file of a batch is never decided on its own (`versions.Versions.decide`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from asset_watcher import metrics
from asset_watcher.batches import (
    BatchId,
    Group,
    batch_match,
    changed_members,
    folded_checks,
    folder_files,
    groups_in,
    manifest_check,
    member_signature,
    read_manifest,
    signature_digest,
)
from asset_watcher.checks import CheckResult, run_checks
from asset_watcher.model import EventKind, FileMatch, FileStat, Fingerprint, Report
from asset_watcher.paths import display_path
from asset_watcher.reports import BatchMember, batch_reports
from asset_watcher.rules import Rule, owner
from asset_watcher.versions import Look, Versions, _Unreadable, read_version

log = logging.getLogger(__name__)

# The default look (frozen): a batch looked at now, not forced.
_LOOK = Look()


# A batch (SPEC 13) gets its own small set: it is decided folder by folder, not file by file.


@dataclass(frozen=True)
class BatchWaits:
    """Incomplete: `waiting_for` says what for. Look again in `again_in_seconds` (a wait
    for time), or when something changes in the folder (None)."""

    batch: BatchId
    waiting_for: str
    since: float  # wall clock: its oldest member's mtime (or its marker's)
    again_in_seconds: float | None = None


@dataclass(frozen=True)
class BatchUnchanged:
    """This completion was reported already. `changed`: members added, changed or gone
    since then, which wait for the next completion."""

    batch: BatchId
    changed: tuple[str, ...] = ()
    since: float = 0.0


@dataclass(frozen=True)
class BatchReady:
    """Complete and new (only when asked not to read the members: `explain`)."""

    batch: BatchId
    file_count: int


@dataclass(frozen=True)
class BatchRecord:
    """A completed batch, a new version: store its completion and queue its reports."""

    batch: BatchId
    match: FileMatch
    completion: str
    members: dict[str, list[int]]
    data_version: str | None
    reports: tuple[Report, ...]


@dataclass(frozen=True)
class BatchSkip:
    batch: BatchId
    reason: str


BatchDecision = BatchWaits | BatchUnchanged | BatchReady | BatchRecord | BatchSkip


def _quiet_since(stat: FileStat) -> float:
    """When a file was last written by its own timestamps (ctime cannot be set back)."""
    return max(stat.mtime_ns, stat.ctime_ns) / 1e9


def _names(names: Sequence[str], shown: int = 5) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def decide_batches(
    versions: Versions, rule: Rule, folder: str, look: Look = _LOOK, *, read: bool = True
) -> list[BatchDecision]:
    """What to do with each batch of `rule` in `folder` (SPEC 13), in `run` (a change
    in the folder settled), in a scan (a folder walked) and in `explain` (`read=False`:
    the members are not read, a complete new batch is `BatchReady`)."""
    now = look.settle_at if look.settle_at is not None else versions.clock()
    files = folder_files(rule, folder)

    def owned(path: str) -> FileMatch | None:
        return owner(versions.rules, path)

    return [
        _decide_batch(versions, rule, group, now, look, read)
        for group in groups_in(rule, folder, files, owned)
    ]


def _decide_batch(
    versions: Versions, rule: Rule, group: Group, now: float, look: Look, read: bool
) -> BatchDecision:
    batch, settings = group.id, rule.settings.batch
    assert settings is not None
    settle = rule.settings.settle_seconds
    members = {os.path.basename(m.path): (m, st) for m, st in group.members}
    signature = member_signature((name, st) for name, (_, st) in members.items())
    since = min((st.mtime_ns / 1e9 for _, st in members.values()), default=now)
    if settings.complete_when == "quiet":
        newest = max((_quiet_since(st) for _, st in members.values()), default=now)
        left = settings.quiet_seconds - (now - newest) if settings.quiet_seconds else 0.0
        # A future timestamp (a sender's clock) waits one quiet time, not until then.
        left = min(left, settings.quiet_seconds or 0.0)
        if left > 0:
            what = f"{left:.0f}s more without a new or changed member (quiet_seconds)"
            return BatchWaits(batch, what, since, left)
        completion, signal = "quiet " + signature_digest(signature), None
    else:
        is_marker = settings.complete_when == "marker"
        signal = group.marker if is_marker else group.manifest
        name = group.marker_name if is_marker else group.manifest_name
        if signal is None:
            what = f"its {'marker' if is_marker else 'manifest'} {name}"
            return BatchWaits(batch, what, since)
        since = min(since, signal.stat.mtime_ns / 1e9)
        st = signal.stat
        completion = f"{settings.complete_when} {st.inode} {st.mtime_ns} {st.size}"
    # Every member and the marker or manifest quiet for the settle time (a future
    # timestamp, a sender's clock, says nothing about a write).
    stats = [(n, st) for n, (_, st) in members.items()]
    if signal is not None:
        stats.append((signal.name, signal.stat))
    settling = sorted(n for n, st in stats if 0 <= now - _quiet_since(st) < settle)
    if settling:
        return BatchWaits(batch, f"{_names(settling)} to settle", since, settle)
    reported = versions.store.reported_batch(batch.rule, batch.folder, batch.group)
    if reported is not None and reported.completion == completion and not look.force:
        changed = tuple(changed_members(reported.members, signature))
        return BatchUnchanged(batch, changed, since)
    manifest = None
    if group.manifest is not None and settings.complete_when == "manifest":
        follow = rule.settings.follow_symlinks
        manifest = read_manifest(group.manifest.path, rule.settings.hash, follow_symlinks=follow)
        missing = sorted(manifest.names - set(members))
        waited = now - group.manifest.stat.mtime_ns / 1e9
        give_up = settings.quiet_seconds
        if missing and manifest.error is None and (give_up is None or waited < give_up):
            what = (
                f"{len(missing)} of the {len(manifest.names)} members its manifest lists: "
                + _names(missing)
            )
            return BatchWaits(batch, what, since, None if give_up is None else give_up - waited)
    if not read:
        return BatchReady(batch, len(members))
    return _read_batch(rule, group, members, completion, manifest, since)


def _read_batch(
    rule: Rule,
    group: Group,
    members: dict[str, tuple[FileMatch, FileStat]],
    completion: str,
    manifest: Any,
    since: float,
) -> BatchDecision:
    """Each member read once (its fingerprint, its checks), then the batch's reports."""
    batch = group.id
    prints: dict[str, Fingerprint] = {}
    results: dict[str, list[CheckResult]] = {}
    for name, (match, stat) in sorted(members.items()):
        print_ = read_version(rule, match)
        if isinstance(print_, _Unreadable):
            if print_.being_written:
                again = rule.settings.settle_seconds
                return BatchWaits(batch, f"{name}: {print_.reason}", since, again)
            log.info("batch member %s left out: %s", display_path(match.path), print_.reason)
            continue
        if not print_.stat.same_version(stat):  # written since it was listed
            return BatchWaits(batch, f"{name} to settle", since, rule.settings.settle_seconds)
        prints[name], results[name] = print_, run_checks(rule, match, print_)
    found = batch_match(rule, group)
    if isinstance(found, str):
        return BatchSkip(batch, found)
    checks = folded_checks(rule, found, results)
    if manifest is not None and group.manifest is not None:
        checks.append(manifest_check(found, group.manifest.path, manifest, prints))
    members_read = [BatchMember(name, print_) for name, print_ in prints.items()]
    for print_ in prints.values():
        if print_.digest is not None:
            metrics.bytes_hashed(print_.stat.size)
    signature = member_signature((name, p.stat) for name, p in prints.items())
    reports = batch_reports(rule, found, members_read, checks)
    data_version = next((r.body.get("data_version") for r in reports if r.kind is rule.event), None)
    return BatchRecord(batch, found, completion, signature, data_version, tuple(reports))


def apply_batch(versions: Versions, decision: BatchDecision) -> None:
    """Store what a batch decision changes (a scan's dry run applies nothing)."""
    batch = decision.batch
    if isinstance(decision, BatchRecord):
        versions.store.record_batch(
            batch.rule, batch.folder, batch.group, decision.completion,
            decision.members, decision.data_version, decision.reports,
        )  # fmt: skip
    elif isinstance(decision, BatchWaits):
        since = decision.since
        versions.store.note_pending_batch(
            batch.rule, batch.folder, batch.group, decision.waiting_for, since
        )
    elif isinstance(decision, BatchUnchanged):
        waiting = None
        if decision.changed:
            waiting = (
                f"its next completion: {len(decision.changed)} member(s) changed "
                "since it was reported"
            )
        versions.store.note_pending_batch(
            batch.rule, batch.folder, batch.group, waiting, decision.since
        )


def describe_batch(decision: BatchDecision) -> str:
    """One log line for a batch decision."""
    batch = decision.batch.describe()
    if isinstance(decision, BatchRecord):
        event = next((r for r in decision.reports if r.kind is not EventKind.CHECK), None)
        count = event.body.get("metadata", {}).get("file_count") if event else None
        key = "/".join(decision.match.asset_key)
        part = f" [{decision.match.partition}]" if decision.match.partition else ""
        return f"reported {batch}: {key}{part}, {count} file(s)"
    if isinstance(decision, BatchWaits):
        return f"{batch} is incomplete: waits for {decision.waiting_for}"
    if isinstance(decision, BatchUnchanged):
        if decision.changed:
            return (
                f"{batch}: member(s) {_names(list(decision.changed))} changed after the batch "
                "was reported; they wait for its next completion"
            )
        return f"{batch}: reported already"
    if isinstance(decision, BatchReady):
        return f"{batch} is complete ({decision.file_count} file(s)): reported at its next look"
    return f"skipped {batch}: {decision.reason}"
