"""Report values and the JSON bodies of the three External Assets REST endpoints (and
of the dynamic partition add that goes ahead of them).

The asset key goes in the body as a list of parts: Dagster turns a list into a
multi-part AssetKey and keeps every character of every part, which neither the URL path
nor a `/`-joined string would.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from asset_watcher.checks import data_rows, run_checks
from asset_watcher.model import (
    PARTITION_KEY_FIELD,
    PARTITIONS_DEF_FIELD,
    EventKind,
    FileMatch,
    Fingerprint,
    Report,
)
from asset_watcher.paths import utf8_path
from asset_watcher.rules import Rule


def file_uri(path: str, host: str) -> str:
    """`file://host/abs/path`, percent-encoded from the path's raw bytes."""
    return f"file://{host}{quote(os.fsencode(path), safe='/')}"


def iso_utc(timestamp_ns: int) -> str:
    moment = datetime.fromtimestamp(timestamp_ns / 1e9, tz=timezone.utc)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def file_metadata(
    match: FileMatch,
    print_: Fingerprint,
    *,
    host: str,
    static: Mapping[str, Any],
    count_rows: bool = False,
    header_lines: bool = False,
) -> dict[str, Any]:
    """The metadata of SPEC section 4; the rule's static table sits under the file's keys.

    `dagster/row_count` counts lines, less the first when `header_lines` says it is a header.
    """
    metadata: dict[str, Any] = dict(static)
    metadata["path"] = utf8_path(match.path)
    metadata["dagster/uri"] = file_uri(match.path, host)
    metadata["size_bytes"] = print_.stat.size
    if print_.digest is not None:
        metadata[print_.algorithm] = print_.digest
    metadata["modified_at"] = iso_utc(print_.stat.mtime_ns)
    metadata["host"] = host
    metadata["rule"] = match.rule_name
    if count_rows and print_.line_count is not None:
        metadata["dagster/row_count"] = data_rows(print_.line_count, header_lines)
    return metadata


def event_report(
    kind: EventKind,
    asset_key: tuple[str, ...],
    *,
    metadata: Mapping[str, Any] | None = None,
    partition: str | None = None,
    description: str | None = None,
    data_version: str | None = None,
) -> Report:
    """A materialization or observation body; empty optional fields are left out."""
    body: dict[str, Any] = {"asset_key": list(asset_key)}
    if metadata:
        body["metadata"] = dict(metadata)
    if data_version is not None:
        body["data_version"] = data_version
    if description is not None:
        body["description"] = description
    if partition is not None:
        body["partition"] = partition
    return Report(kind=kind, asset_key=asset_key, body=body, partition=partition)


def check_report(
    asset_key: tuple[str, ...],
    check_name: str,
    *,
    passed: bool,
    severity: str = "ERROR",
    metadata: Mapping[str, Any] | None = None,
    partition: str | None = None,
) -> Report:
    body: dict[str, Any] = {
        "asset_key": list(asset_key),
        "check_name": check_name,
        "passed": passed,
        "severity": severity,
    }
    if metadata:
        body["metadata"] = dict(metadata)
    if partition is not None:
        body["partition"] = partition
    return Report(kind=EventKind.CHECK, asset_key=asset_key, body=body, partition=partition)


def partition_add_report(asset_key: tuple[str, ...], partitions_def: str, partition: str) -> Report:
    """Adds `partition` to the dynamic partitions definition `partitions_def`. It carries
    the asset key and partition of the reports it goes ahead of, so it shares their order
    key and the outbox delivers it first."""
    body = {PARTITIONS_DEF_FIELD: partitions_def, PARTITION_KEY_FIELD: partition}
    return Report(kind=EventKind.PARTITION, asset_key=asset_key, body=body, partition=partition)


def file_report(
    match: FileMatch,
    print_: Fingerprint,
    kind: EventKind,
    *,
    static: Mapping[str, Any],
    count_rows: bool = False,
    header_lines: bool = False,
    host: str,
) -> Report:
    """The report for one completed file version."""
    return event_report(
        kind,
        match.asset_key,
        metadata=file_metadata(
            match,
            print_,
            host=host,
            static=static,
            count_rows=count_rows,
            header_lines=header_lines,
        ),
        partition=match.partition,
        description=match.description,
        data_version=print_.digest,
    )


def deleted_report(match: FileMatch, *, host: str) -> Report:
    """An observation saying the file is gone (`on_delete = "observe"`)."""
    metadata = {
        "path": utf8_path(match.path),
        "dagster/uri": file_uri(match.path, host),
        "deleted": True,
        "host": host,
        "rule": match.rule_name,
    }
    return event_report(
        EventKind.OBSERVATION, match.asset_key, metadata=metadata, partition=match.partition
    )


def reports_for_version(rule: Rule, match: FileMatch, print_: Fingerprint) -> list[Report]:
    """Everything one completed file version yields: its event, then one result per check;
    first, for a rule with `dynamic_partitions`, the add of its partition key (the outbox
    leaves it out when the key was added or is queued already).

    All of them share the asset key and partition, so the outbox delivers the checks after
    the materialization (or observation) they belong to. `dagster/row_count` agrees with the
    rule's row_count check, if it has one: without the header line when that check has one.
    """
    header_lines = any(c.type == "row_count" and c.header for c in rule.settings.checks)
    report = file_report(
        match,
        print_,
        rule.event,
        static=rule.settings.metadata,
        count_rows=rule.settings.count_rows,
        header_lines=header_lines,
        host=rule.host,
    )
    checks = [
        check_report(
            match.asset_key,
            result.check_name,
            passed=result.passed,
            severity=result.severity,
            metadata=result.metadata,
            partition=match.partition,
        )
        for result in run_checks(rule, match, print_)
    ]
    adds = []
    if rule.settings.dynamic_partitions is not None and match.partition is not None:
        adds.append(
            partition_add_report(match.asset_key, rule.settings.dynamic_partitions, match.partition)
        )
    return [*adds, report, *checks]


# -- batches (SPEC 13) ------------------------------------------------------------------

# The `files` list of a batch report stops here (`files_truncated` says so).
BATCH_FILES_SHOWN = 1000


@dataclass(frozen=True)
class BatchMember:
    """One fingerprinted member of a completed batch."""

    name: str
    print_: Fingerprint


def batch_data_version(members: Sequence[BatchMember], algorithm: str) -> str | None:
    """The hex digest (the rule's algorithm) of the sorted `name<TAB>digest` lines, each
    ending in a newline: the same files give the same version. None without digests."""
    if algorithm == "none":
        return None
    lines = sorted(f"{m.name}\t{m.print_.digest or ''}\n" for m in members)
    digest = hashlib.new(algorithm)
    for line in lines:
        digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def batch_metadata(
    match: FileMatch,
    members: Sequence[BatchMember],
    *,
    host: str,
    static: Mapping[str, Any],
) -> dict[str, Any]:
    """SPEC 13's metadata; `match` is the batch's (its path the folder)."""
    ordered = sorted(members, key=lambda m: m.name)
    files = []
    for member in ordered[:BATCH_FILES_SHOWN]:
        entry: dict[str, Any] = {"name": member.name, "size_bytes": member.print_.stat.size}
        if member.print_.digest is not None:
            entry[member.print_.algorithm] = member.print_.digest
        files.append(entry)
    metadata: dict[str, Any] = dict(static)
    metadata["path"] = utf8_path(match.path)
    metadata["dagster/uri"] = file_uri(match.path, host)
    metadata["file_count"] = len(ordered)
    metadata["size_bytes"] = sum(m.print_.stat.size for m in ordered)
    metadata["files"] = files
    metadata["files_truncated"] = len(ordered) > BATCH_FILES_SHOWN
    if ordered:
        metadata["modified_at"] = iso_utc(max(m.print_.stat.mtime_ns for m in ordered))
    metadata["host"] = host
    metadata["rule"] = match.rule_name
    return metadata


def batch_reports(
    rule: Rule,
    match: FileMatch,
    members: Sequence[BatchMember],
    checks: Sequence[Report],
) -> list[Report]:
    """A completed batch's reports: (its partition's add), its one event, its checks."""
    event = event_report(
        rule.event,
        match.asset_key,
        metadata=batch_metadata(match, members, host=rule.host, static=rule.settings.metadata),
        partition=match.partition,
        description=match.description,
        data_version=batch_data_version(members, rule.settings.hash),
    )
    adds = []
    if rule.settings.dynamic_partitions is not None and match.partition is not None:
        adds.append(
            partition_add_report(match.asset_key, rule.settings.dynamic_partitions, match.partition)
        )
    return [*adds, event, *checks]
