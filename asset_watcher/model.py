"""Small frozen values passed between the pipeline stages. Imports nothing internal."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class EventKind(str, enum.Enum):
    """What a report tells Dagster; the value names the REST endpoint (`report_asset_...`)."""

    MATERIALIZATION = "materialization"
    OBSERVATION = "observation"
    CHECK = "check"
    # Not a REST report: a partition key added to a dynamic partitions definition through
    # Dagster's GraphQL `addDynamicPartition`, queued ahead of the key's first report.
    PARTITION = "partition"

    @property
    def endpoint(self) -> str:
        if self is EventKind.PARTITION:
            return "graphql"
        return f"report_asset_{self.value}/"


@dataclass(frozen=True)
class FileStat:
    """What one lstat says about a file: enough to tell whether it changed since reported."""

    size: int
    mtime_ns: int
    inode: int
    ctime_ns: int

    def same_version(self, other: FileStat) -> bool:
        return (self.size, self.mtime_ns, self.inode) == (other.size, other.mtime_ns, other.inode)

    @property
    def key(self) -> int:
        """All four values folded into one integer, so a rescan compares one number per file.

        Equal keys mean an unchanged file; unequal keys send the file to the full
        comparison, so a Python whose tuple hash differs costs speed, never correctness."""
        return stat_key(self.size, self.mtime_ns, self.inode, self.ctime_ns)


def stat_key(size: int, mtime_ns: int, inode: int, ctime_ns: int) -> int:
    return hash((size, mtime_ns, inode, ctime_ns))


@dataclass(frozen=True)
class Fingerprint:
    """The result of one read of a file."""

    stat: FileStat
    algorithm: str  # "none" when no digest was computed
    digest: str | None
    first_line: bytes = b""
    line_count: int | None = None  # newline-terminated lines plus a final unterminated one
    # Digests in other algorithms from the same read (a checksum sidecar's), as pairs.
    extra_digests: tuple[tuple[str, str], ...] = ()

    def digest_in(self, algorithm: str) -> str | None:
        """The file's digest in `algorithm`, if the read computed it."""
        if algorithm == self.algorithm:
            return self.digest
        return dict(self.extra_digests).get(algorithm)


@dataclass(frozen=True)
class FileMatch:
    """A file owned by a rule, with its rendered templates."""

    rule_name: str
    path: str  # absolute, os.fsdecode'd (surrogateescape for non-UTF-8 bytes)
    relpath: str
    asset_key: tuple[str, ...]
    partition: str | None
    description: str | None
    fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Report:
    """One request body for one of the three endpoints, ready to be stored and sent."""

    kind: EventKind
    asset_key: tuple[str, ...]
    body: Mapping[str, Any]
    partition: str | None = None

    @property
    def order_key(self) -> str:
        """Reports with the same order key are delivered in the order they were queued."""
        return "\x1f".join(self.asset_key) + "\x1e" + (self.partition or "")

    @property
    def dynamic_partition(self) -> tuple[str, str] | None:
        """(partitions definition, partition key) a PARTITION report adds, else None."""
        if self.kind is not EventKind.PARTITION:
            return None
        return dynamic_partition_of(self.body)


# The body of a PARTITION report: what the agent stores and the GraphQL variables it
# sends (with the repository selector of the configuration in force when it is sent).
PARTITIONS_DEF_FIELD = "partitionsDefName"
PARTITION_KEY_FIELD = "partitionKey"


def dynamic_partition_of(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """(partitions definition, partition key) of a PARTITION report's body, else None."""
    name, key = body.get(PARTITIONS_DEF_FIELD), body.get(PARTITION_KEY_FIELD)
    return (name, key) if isinstance(name, str) and isinstance(key, str) else None


class ChangeKind(str, enum.Enum):
    """The small vocabulary the rest of the agent understands."""

    CREATED = "created"  # a file appeared (inotify): it may still be being written
    WRITTEN = "written"  # closed after writing, or moved into the tree from outside
    MODIFIED = "modified"  # polling saw it appear or change (no close events there)
    MOVED = "moved"  # renamed within the watched tree: path -> dest
    DELETED = "deleted"  # removed, or moved out of the tree
    FOLDER_CREATED = "folder-created"  # a subfolder appeared (its watch is already in place)
    FOLDER_MOVED_IN = "folder-moved-in"  # a folder came from outside: not watched yet
    FOLDER_DELETED = "folder-deleted"  # a subfolder was removed or moved out
    ROOT_GONE = "root-gone"  # the watched folder itself was deleted
    OVERFLOW = "overflow"  # the kernel dropped events
    WATCH_FAILED = "watch-failed"  # a subfolder could not be watched (errno set)


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    path: str
    dest: str | None = None
    root: str = ""  # the watched folder that reported it
    at: float = 0.0  # time.monotonic() when the handler saw it
    errno: int | None = None


@dataclass(frozen=True)
class Found:
    """A file a scan found to differ from its reported version."""

    path: str
    stat: FileStat
