"""Batches (SPEC 13): many files in one folder, one asset version.

What a batch is, read from a folder: its members grouped by the rule's `group`, its
marker and manifest (never members), the batch's own match (key, partition and
description from the fields its members share), the manifest's entries and the
`manifest` check, and the per-member checks folded into one evaluation per check. The
decision (is the batch complete, is it a new version) is `batch_versions.decide_batches`;
this module holds what it is built from, and `BatchFolders`, the run-mode bookkeeping of
which folders to look at when (an injected clock, like settle.py).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import os
import re
import stat as stat_module
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from asset_watcher.checks import CheckResult
from asset_watcher.model import FileMatch, FileStat, Fingerprint, Report
from asset_watcher.paths import display_path, utf8_path
from asset_watcher.reports import check_report
from asset_watcher.rules import Rule

MANIFEST_CHECK = "manifest"
# Names listed in a check's metadata stop here (the counts are always whole).
NAMES_SHOWN = 100
# A manifest larger than this is not read (it is a list of names, not data).
MANIFEST_MAX_BYTES = 64 * 1024 * 1024
# Hex digest length -> algorithm, for `HASH  name` manifest lines.
_HEX_ALGORITHMS = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}
_DIGEST_LINE = re.compile(r"([0-9a-fA-F]{32,128}) [ *](.+)\Z")
_DIGEST_KEYS = ("sha256", "blake2b", "sha1", "md5", "sha512")


@dataclass(frozen=True)
class BatchId:
    """A batch: a rule's files in one folder whose group renders `group`."""

    rule: str
    folder: str  # absolute
    group: str

    def describe(self) -> str:
        return f"batch {display_path(self.folder)} (group {self.group!r}, rule {self.rule})"


@dataclass(frozen=True)
class FolderFile:
    name: str
    path: str
    stat: FileStat


@dataclass
class Group:
    """What a folder holds of one batch, before anything is read."""

    id: BatchId
    fields: dict[str, str]
    members: list[tuple[FileMatch, FileStat]] = field(default_factory=list)
    marker: FolderFile | None = None
    manifest: FolderFile | None = None
    marker_name: str | None = None
    manifest_name: str | None = None


def folder_files(rule: Rule, folder: str) -> list[FolderFile]:
    """The regular files directly in `folder` (links only when the rule follows them)."""
    follow = rule.settings.follow_symlinks
    found = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=follow)
                except OSError:
                    continue  # vanished meanwhile
                if not stat_module.S_ISREG(st.st_mode):
                    continue
                stat = FileStat(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
                found.append(FolderFile(entry.name, f"{folder}/{entry.name}", stat))
    except OSError:
        return []
    return found


def _render(template: str | None, fields: Mapping[str, str]) -> str | None:
    if template is None:
        return None
    try:
        return template.format_map(dict(fields))
    except KeyError:
        return None


def groups_in(
    rule: Rule,
    folder: str,
    files: Sequence[FolderFile],
    owned: Callable[[str], FileMatch | None],
) -> list[Group]:
    """The batches of `rule` in `folder`: members are the files `owned` says this rule
    owns (ignore list, glob and regex apply), markers and manifests are not members."""
    batch = rule.settings.batch
    assert batch is not None
    by_name = {f.name: f for f in files}
    groups: dict[str, Group] = {}
    for file in files:
        if rule.is_batch_control(file.path):
            continue
        match = owned(file.path)
        if match is None or match.rule_name != rule.name:
            continue
        rendered = rule.batch_group(match)
        if rendered is None:
            continue
        value, fields = rendered
        group = groups.get(value)
        if group is None:
            group = groups[value] = Group(BatchId(rule.name, folder, value), fields)
        group.members.append((match, file.stat))
    if not groups and batch.control_templates:
        # A marker or manifest alone (its members not here yet, or not at all): the batch
        # waits for them, and `explain`/`status` say so. Only the default-like groups that
        # render from the folder alone can be named without a member.
        rel = rule.relative(folder) or ""
        fields = {
            "reldir": "" if rel == "." else rel,
            "parent": os.path.basename(folder),
            "rule": rule.name,
            "host": rule.host,
        }
        alone = _render(batch.group, fields)
        if alone is not None:
            groups[alone] = Group(BatchId(rule.name, folder, alone), fields)
    for group in groups.values():
        group.marker_name = _render(batch.marker, group.fields)
        group.manifest_name = _render(batch.manifest, group.fields)
        group.marker = by_name.get(group.marker_name or "\x00")
        group.manifest = by_name.get(group.manifest_name or "\x00")
    return sorted(groups.values(), key=lambda g: g.id.group)


def batch_match(rule: Rule, group: Group) -> FileMatch | str:
    """The batch's own match: its key, partition and description rendered from the fields
    its members share; its path is the folder. Or why they do not render."""
    settings = rule.settings
    fields = group.fields
    key_text = _render(settings.asset_key, fields)
    partition = _render(settings.partition, fields) if settings.partition else None
    description = _render(settings.description, fields) if settings.description else None
    if key_text is None or (settings.partition and partition is None):
        return "the batch's templates do not render from its shared fields"
    key = tuple(part for part in key_text.split("/") if part)
    if not key:
        return "asset key renders empty"
    rel = rule.relative(group.id.folder) or ""
    return FileMatch(
        rule_name=rule.name,
        path=group.id.folder,
        relpath="" if rel == "." else rel,
        asset_key=key,
        partition=partition,
        description=description if settings.description else None,
        fields=dict(fields),
    )


def member_signature(members: Iterable[tuple[str, FileStat]]) -> dict[str, list[int]]:
    """Each member's name -> [size, mtime_ns, inode]: what the state remembers of a
    reported batch, to tell (and name) members changed after its report."""
    return {name: [s.size, s.mtime_ns, s.inode] for name, s in sorted(members)}


def signature_digest(signature: Mapping[str, list[int]]) -> str:
    text = json.dumps(signature, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def changed_members(before: Mapping[str, list[int]], now: Mapping[str, list[int]]) -> list[str]:
    """Members added, changed or gone since `before`, by name."""
    names = set(before) | set(now)
    return sorted(n for n in names if before.get(n) != now.get(n))


# -- manifests ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestEntry:
    name: str
    size: int | None = None
    digest: str | None = None  # lower-case hex
    algorithm: str | None = None


@dataclass(frozen=True)
class Manifest:
    entries: tuple[ManifestEntry, ...]
    error: str | None = None  # why it could not be read; then `entries` is empty

    @property
    def names(self) -> set[str]:
        return {entry.name for entry in self.entries}


def _clean_name(name: str) -> str:
    return name[2:] if name.startswith("./") else name


def _json_entry(item: Any, default_algorithm: str) -> ManifestEntry | None:
    if isinstance(item, str):
        return ManifestEntry(_clean_name(item))
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        return None
    size = item.get("size", item.get("size_bytes"))
    size = size if isinstance(size, int) and not isinstance(size, bool) else None
    for key in (default_algorithm, *_DIGEST_KEYS):
        value = item.get(key)
        if isinstance(value, str) and value:
            return ManifestEntry(_clean_name(item["name"]), size, value.lower(), key)
    return ManifestEntry(_clean_name(item["name"]), size)


def parse_manifest(data: bytes, default_algorithm: str) -> Manifest:
    """JSON (`{"files": [{"name", "size", "sha256"}]}` or a plain list of names) or text
    (one name per line, or `HASH  name` as sha256sum writes it; `#` lines are comments)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return Manifest((), "not UTF-8 text")
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            document = json.loads(stripped)
        except ValueError as exc:
            return Manifest((), f"invalid JSON: {exc}")
        items = document.get("files") if isinstance(document, dict) else document
        if not isinstance(items, list):
            return Manifest((), 'JSON manifest needs {"files": [...]} or a list')
        entries = [_json_entry(item, default_algorithm) for item in items]
        if any(entry is None for entry in entries):
            return Manifest((), "every JSON entry needs a name (a string, or an object's name)")
        return Manifest(tuple(e for e in entries if e is not None))
    parsed = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        found = _DIGEST_LINE.match(line)
        if found is not None and len(found.group(1)) in _HEX_ALGORITHMS:
            hex_digest = found.group(1).lower()
            algorithm = _HEX_ALGORITHMS[len(hex_digest)]
            if len(hex_digest) == 128 and default_algorithm == "blake2b":
                algorithm = "blake2b"  # both are 512 bits; the rule's hash decides
            parsed.append(ManifestEntry(_clean_name(found.group(2)), None, hex_digest, algorithm))
        else:
            parsed.append(ManifestEntry(_clean_name(line)))
    return Manifest(tuple(parsed))


def read_manifest(path: str, default_algorithm: str, *, follow_symlinks: bool = False) -> Manifest:
    flags = os.O_RDONLY | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        return Manifest((), f"cannot read: {exc.strerror or exc}")
    with os.fdopen(fd, "rb") as handle:
        try:
            data = handle.read(MANIFEST_MAX_BYTES + 1)
        except OSError as exc:
            return Manifest((), f"cannot read: {exc.strerror or exc}")
    if len(data) > MANIFEST_MAX_BYTES:
        return Manifest((), f"larger than {MANIFEST_MAX_BYTES} bytes")
    return parse_manifest(data, default_algorithm)


def manifest_check(
    match: FileMatch,
    manifest_path: str,
    manifest: Manifest,
    members: Mapping[str, Fingerprint],
) -> Report:
    """The `manifest` check of a batch: every listed member present with the listed size
    and digest, no unlisted member. Digests in another algorithm than the rule's hash are
    counted as unverified, not failed."""
    listed = {entry.name: entry for entry in manifest.entries}
    missing = sorted(set(listed) - set(members))
    extra = sorted(set(members) - set(listed))
    wrong_size, wrong_digest, unverified = [], [], 0
    for name, entry in sorted(listed.items()):
        print_ = members.get(name)
        if print_ is None:
            continue
        if entry.size is not None and entry.size != print_.stat.size:
            wrong_size.append({"name": name, "expected": entry.size, "actual": print_.stat.size})
        if entry.digest is not None:
            if entry.algorithm != print_.algorithm or print_.digest is None:
                unverified += 1
            elif entry.digest != print_.digest:
                wrong_digest.append(
                    {"name": name, "expected": entry.digest, "actual": print_.digest}
                )
    passed = manifest.error is None and not (missing or extra or wrong_size or wrong_digest)
    metadata: dict[str, Any] = {
        "path": utf8_path(manifest_path),
        "listed": len(listed),
        "present": len(set(listed) & set(members)),
        "missing": missing[:NAMES_SHOWN],
        "missing_count": len(missing),
        "extra": extra[:NAMES_SHOWN],
        "extra_count": len(extra),
        "wrong_size": wrong_size[:NAMES_SHOWN],
        "wrong_digest": wrong_digest[:NAMES_SHOWN],
    }
    if unverified:
        metadata["digests_unverified"] = unverified
    if manifest.error is not None:
        metadata["error"] = manifest.error
    return check_report(
        match.asset_key, MANIFEST_CHECK, passed=passed, metadata=metadata, partition=match.partition
    )


def folded_checks(
    rule: Rule, match: FileMatch, results: Mapping[str, Sequence[CheckResult]]
) -> list[Report]:
    """One evaluation per configured check for the batch, from each member's results
    (`results` by member name): passed only when every member passed; the failing
    members named, with the first few failures' own metadata."""
    reports = []
    for check in rule.settings.checks:
        failed = [
            (name, result)
            for name, member_results in sorted(results.items())
            for result in member_results
            if result.check_name == check.check_name and not result.passed
        ]
        metadata: dict[str, Any] = {
            "members_checked": len(results),
            "members_failed": len(failed),
            "failed_members": [name for name, _ in failed[:NAMES_SHOWN]],
        }
        if failed:
            metadata["failures"] = [
                {"name": name, **{k: v for k, v in r.metadata.items() if k != "path"}}
                for name, r in failed[:10]
            ]
        reports.append(
            check_report(
                match.asset_key,
                check.check_name,
                passed=not failed,
                severity=check.severity,
                metadata=metadata,
                partition=match.partition,
            )
        )
    return reports


# -- run mode: which folders to look at, when ---------------------------------------------


class BatchFolders:
    """Folders of batch rules to evaluate, each at its deadline on `clock`. A change in a
    folder pushes its deadline back (the folder settles as a whole, and a burst of 2,000
    members costs one evaluation, not 2,000); a batch that waits for time (quiet, a
    member still settling) asks to be looked at again no later than then."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._deadlines: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, int, tuple[str, str]]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._deadlines)

    def _arm(self, key: tuple[str, str], deadline: float) -> None:
        self._deadlines[key] = deadline
        heapq.heappush(self._heap, (deadline, next(self._order), key))

    def touched(self, rule: str, folder: str, settle_seconds: float) -> None:
        """Something changed in `folder`: look at it once it was quiet that long."""
        self._arm((rule, folder), self.clock() + settle_seconds)

    def later(self, rule: str, folder: str, seconds: float) -> None:
        """Look again in `seconds` at the latest."""
        key, deadline = (rule, folder), self.clock() + max(0.0, seconds)
        current = self._deadlines.get(key)
        if current is None or deadline < current:
            self._arm(key, deadline)

    def discard_under(self, folder: str) -> None:
        prefix = folder.rstrip("/") + "/"
        for key in [k for k in self._deadlines if k[1] == folder or k[1].startswith(prefix)]:
            del self._deadlines[key]

    def next_deadline(self) -> float | None:
        while self._heap:
            deadline, _, key = self._heap[0]
            if self._deadlines.get(key) == deadline:
                return deadline
            heapq.heappop(self._heap)  # superseded
        return None

    def due(self) -> list[tuple[str, str]]:
        """(rule, folder) pairs whose deadline passed, each once."""
        now, found = self.clock(), []
        while (deadline := self.next_deadline()) is not None and deadline <= now:
            _, _, key = heapq.heappop(self._heap)
            del self._deadlines[key]
            found.append(key)
        return found
