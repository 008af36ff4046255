"""Data-quality checks on one completed file version: check type -> evaluator -> CheckResult.

Size, name, first line and line count come from the fingerprint's single read; only the
`json` and `gzip` checks open the file again, and only when a rule configures them. A
check that cannot run (the file vanished or changed, undecodable bytes) is a failed
result that says why: it is never dropped and never stops the file's own report.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
import re
import stat as stat_module
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from asset_watcher.model import FileMatch, Fingerprint
from asset_watcher.paths import display_path, utf8_path
from asset_watcher.rules import Rule
from asset_watcher.settings import (
    CheckSettings,
    ChecksumCheck,
    CsvHeaderCheck,
    GzipCheck,
    JsonCheck,
    NameRegexCheck,
    RowCountCheck,
    SizeCheck,
)
from asset_watcher.sidecars import SIDECAR_MAX_BYTES, expected_digest

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
# A whole-file JSON document is parsed in memory; past this size the check cannot run
# (JSON Lines, `lines = true`, streams and has no limit).
JSON_MAX_BYTES = 256 * 1024 * 1024
UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class CheckResult:
    """One evaluation of one configured check on one file version."""

    check_name: str
    passed: bool
    severity: str  # "WARN" | "ERROR"
    metadata: Mapping[str, Any]


class CheckCannotRun(Exception):
    """The check could not look at the file; the message says why."""


Outcome = tuple[bool, dict[str, Any]]


def _bounds(**bounds: int | None) -> dict[str, int]:
    return {key: value for key, value in bounds.items() if value is not None}


def _within(value: int, low: int | None, high: int | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


# -- evaluators on the fingerprint ----------------------------------------------------------


def _size(check: SizeCheck, match: FileMatch, print_: Fingerprint, follow: bool) -> Outcome:
    size = print_.stat.size
    metadata = {"size_bytes": size, **_bounds(min_bytes=check.min_bytes, max_bytes=check.max_bytes)}
    return _within(size, check.min_bytes, check.max_bytes), metadata


def _name_regex(
    check: NameRegexCheck, match: FileMatch, print_: Fingerprint, follow: bool
) -> Outcome:
    name = os.path.basename(match.path)
    # search, like the rule's own `regex`: anchor the pattern to match the whole name.
    passed = re.search(check.pattern, name) is not None
    return passed, {"name": utf8_path(name), "pattern": check.pattern}


def _csv_header(
    check: CsvHeaderCheck, match: FileMatch, print_: Fingerprint, follow: bool
) -> Outcome:
    raw = print_.first_line.removeprefix(UTF8_BOM)
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckCannotRun(f"the first line is not valid UTF-8 (byte {exc.start})") from None
    try:
        row = next(csv.reader([line], delimiter=check.delimiter, skipinitialspace=True), [])
    except csv.Error as exc:
        raise CheckCannotRun(f"the first line is not CSV: {exc}") from None
    columns = [column.strip() for column in row]
    expected = [column.strip() for column in check.columns]
    missing = [column for column in expected if column not in columns]
    metadata: dict[str, Any] = {
        "columns": columns,
        "expected_columns": expected,
        "exact": check.exact,
    }
    if missing:
        metadata["missing_columns"] = missing
    if check.exact:
        unexpected = [column for column in columns if column not in expected]
        if unexpected:
            metadata["unexpected_columns"] = unexpected
        return columns == expected, metadata
    return not missing, metadata


def data_rows(line_count: int, header: bool) -> int:
    """Data lines of a file of `line_count` lines, without its header line when it has one."""
    return max(line_count - 1, 0) if header else line_count


def _row_count(
    check: RowCountCheck, match: FileMatch, print_: Fingerprint, follow: bool
) -> Outcome:
    if print_.line_count is None:
        raise CheckCannotRun("the file's lines were not counted")
    rows = data_rows(print_.line_count, check.header)
    metadata = {
        "row_count": rows,
        **_bounds(min_rows=check.min_rows, max_rows=check.max_rows),
        "header": check.header,
    }
    return _within(rows, check.min_rows, check.max_rows), metadata


# -- evaluators that read the file again -----------------------------------------------------


@contextmanager
def _reopen(path: str, print_: Fingerprint, follow: bool) -> Iterator[IO[bytes]]:
    """Open the very version that was fingerprinted, or say why it cannot be read."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise CheckCannotRun("the file vanished before the check could read it") from None
    except OSError as exc:
        raise CheckCannotRun(f"cannot read the file: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        now = os.fstat(fd)
        if not stat_module.S_ISREG(now.st_mode) or (
            now.st_size,
            now.st_mtime_ns,
            now.st_ino,
        ) != (print_.stat.size, print_.stat.mtime_ns, print_.stat.inode):
            raise CheckCannotRun("the file changed after it was fingerprinted")
        yield handle


def _json(check: JsonCheck, match: FileMatch, print_: Fingerprint, follow: bool) -> Outcome:
    if not check.lines and print_.stat.size > JSON_MAX_BYTES:
        raise CheckCannotRun(
            f"{print_.stat.size} bytes is more than the {JSON_MAX_BYTES} a JSON document may "
            "have to be parsed in memory (JSON Lines files: set lines = true)"
        )
    with _reopen(match.path, print_, follow) as handle:
        if check.lines:
            return _json_lines(handle)
        data = handle.read()
    try:
        json.loads(data)
    except UnicodeDecodeError as exc:
        return False, {"lines": False, "error": f"not UTF-8 text: {exc.reason} at byte {exc.start}"}
    except ValueError as exc:  # json.JSONDecodeError
        return False, {"lines": False, "error": str(exc)}
    return True, {"lines": False}


def _json_lines(handle: IO[bytes]) -> Outcome:
    """Every non-blank line is one JSON value (blank lines, e.g. a final one, are skipped)."""
    records = 0
    for number, line in enumerate(handle, start=1):
        if number == 1:
            line = line.removeprefix(UTF8_BOM)
        if not line.strip():
            continue
        try:
            json.loads(line)
        except UnicodeDecodeError as exc:
            error = f"not UTF-8 text: {exc.reason} at byte {exc.start}"
            return False, {"lines": True, "records": records, "line": number, "error": error}
        except ValueError as exc:
            return False, {"lines": True, "records": records, "line": number, "error": str(exc)}
        records += 1
    return True, {"lines": True, "records": records}


def _gzip(check: GzipCheck, match: FileMatch, print_: Fingerprint, follow: bool) -> Outcome:
    if print_.stat.size == 0:
        return False, {"compressed_bytes": 0, "error": "empty file (a gzip file has a header)"}
    uncompressed = 0
    with _reopen(match.path, print_, follow) as handle:
        stream = gzip.GzipFile(fileobj=handle, mode="rb")
        try:
            while chunk := stream.read(CHUNK_BYTES):
                uncompressed += len(chunk)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            message = str(exc) or type(exc).__name__
            return False, {
                "compressed_bytes": print_.stat.size,
                "uncompressed_bytes_before_error": uncompressed,
                "error": message,
            }
        except OSError as exc:
            raise CheckCannotRun(f"cannot read the file: {exc.strerror or exc}") from None
    return True, {"compressed_bytes": print_.stat.size, "uncompressed_bytes": uncompressed}


# -- checksum sidecars (SPEC 14) ------------------------------------------------------------


class SidecarMissing(CheckCannotRun):
    """The sidecar does not exist (yet)."""


def read_sidecar(path: str, follow: bool) -> str:
    """A sidecar's text (names decoded as file names are), or why it cannot be had."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise SidecarMissing(f"the sidecar {utf8_path(path)} is missing") from None
    except OSError as exc:
        raise CheckCannotRun(f"cannot read the sidecar: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        now = os.fstat(fd)
        if not stat_module.S_ISREG(now.st_mode):
            raise CheckCannotRun("the sidecar is not a regular file")
        if now.st_size > SIDECAR_MAX_BYTES:
            raise CheckCannotRun(f"the sidecar has {now.st_size} bytes, more than a sidecar has")
        try:
            data = handle.read(SIDECAR_MAX_BYTES + 1)
        except OSError as exc:
            raise CheckCannotRun(f"cannot read the sidecar: {exc.strerror or exc}") from None
    return data.decode("utf-8", "surrogateescape")


def checksum_outcome(
    check: ChecksumCheck, match: FileMatch, print_: Fingerprint, sidecar: str | None, follow: bool
) -> Outcome:
    """Compare the file's digest with its sidecar's. A missing, unreadable or unfitting
    sidecar is a failed check whose `error` says why (never one that could not run:
    the file itself was read fine)."""
    algorithm = check.digest_algorithm
    actual = print_.digest_in(algorithm)
    metadata: dict[str, Any] = {"algorithm": algorithm, "actual": actual}
    if sidecar is None:
        return False, {**metadata, "error": f"the sidecar template {check.sidecar!r} cannot render"}
    metadata["sidecar"] = utf8_path(sidecar)
    if actual is None:
        raise CheckCannotRun(f"the file's {algorithm} digest was not computed")
    try:
        text = read_sidecar(sidecar, follow)
    except SidecarMissing as exc:
        return False, {**metadata, "error": str(exc), "sidecar_missing": True}
    except CheckCannotRun as exc:
        return False, {**metadata, "error": str(exc)}
    name = os.path.basename(match.path)
    try:
        expected = expected_digest(text, name, match.relpath, algorithm)
    except ValueError as exc:
        return False, {**metadata, "error": str(exc)}
    return expected == actual, {**metadata, "expected": expected}


EVALUATORS: Mapping[str, Callable[[Any, FileMatch, Fingerprint, bool], Outcome]] = {
    "size": _size,
    "name_regex": _name_regex,
    "csv_header": _csv_header,
    "row_count": _row_count,
    "json": _json,
    "gzip": _gzip,
}


def evaluate(
    check: CheckSettings,
    match: FileMatch,
    print_: Fingerprint,
    *,
    follow_symlinks: bool = False,
    rule: Rule | None = None,
) -> CheckResult:
    """Run one check on one fingerprinted file; a check that cannot run fails with its reason.
    A checksum check needs the `rule` (where its sidecar lies)."""
    try:
        if isinstance(check, ChecksumCheck):
            sidecar = rule.sidecar_for(match, check) if rule is not None else None
            passed, metadata = checksum_outcome(check, match, print_, sidecar, follow_symlinks)
        else:
            passed, metadata = EVALUATORS[check.type](check, match, print_, follow_symlinks)
    except CheckCannotRun as exc:
        passed, metadata = False, {"error": str(exc), "check_could_not_run": True}
    except Exception as exc:  # a bug here must not cost the file its report
        log.exception("check %s crashed on %s", check.check_name, display_path(match.path))
        passed, metadata = False, {"error": f"internal error: {exc!r}", "check_could_not_run": True}
    metadata = {"path": utf8_path(match.path), **metadata}
    return CheckResult(check.check_name, passed, check.severity, metadata)


def run_checks(rule: Rule, match: FileMatch, print_: Fingerprint) -> list[CheckResult]:
    """Every check of the rule on one completed file version, in configured order."""
    follow = rule.settings.follow_symlinks
    return [
        evaluate(check, match, print_, follow_symlinks=follow, rule=rule)
        for check in rule.settings.checks
    ]
