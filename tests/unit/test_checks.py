"""Each check evaluator on real small files, the reports a version yields, check config errors."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from asset_watcher import checks as checks_module
from asset_watcher.checks import CheckResult, evaluate
from asset_watcher.config import load_config
from asset_watcher.errors import ConfigError
from asset_watcher.fingerprint import fingerprint
from asset_watcher.model import EventKind, FileMatch, Fingerprint
from asset_watcher.reports import reports_for_version
from asset_watcher.rules import compile_rules
from asset_watcher.settings import (
    CsvHeaderCheck,
    GzipCheck,
    JsonCheck,
    NameRegexCheck,
    RowCountCheck,
    SizeCheck,
)
from asset_watcher.state import StateStore

PACKAGE = Path(checks_module.__file__).parent

Check = Any
Evaluate = Callable[..., CheckResult]


def match_for(path: Path) -> FileMatch:
    return FileMatch(
        rule_name="r",
        path=str(path),
        relpath=path.name,
        asset_key=("a", "b"),
        partition=None,
        description=None,
    )


@pytest.fixture
def check_file(tmp_path: Path) -> Evaluate:
    """Write `content` to `name`, fingerprint it as the agent does, evaluate `check` on it."""

    def run(check: Check, content: bytes, name: str = "data.csv") -> CheckResult:
        path = tmp_path / name
        path.write_bytes(content)
        print_ = fingerprint(str(path), count_lines=True)
        return evaluate(check, match_for(path), print_)

    return run


# -- size ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("low", "high", "size", "passed"),
    [
        (1, None, 0, False),
        (1, None, 1, True),
        (None, 10, 10, True),
        (None, 10, 11, False),
        (2, 4, 3, True),
        (0, 0, 0, True),
    ],
)
def test_size(
    check_file: Evaluate, low: int | None, high: int | None, size: int, passed: bool
) -> None:
    result = check_file(SizeCheck(type="size", min_bytes=low, max_bytes=high), b"x" * size)
    assert result.passed is passed
    assert result.check_name == "size"
    assert result.severity == "ERROR"
    assert result.metadata["size_bytes"] == size
    assert result.metadata.get("min_bytes") == low
    assert result.metadata.get("max_bytes") == high
    assert result.metadata["path"].endswith("/data.csv")


def test_name_and_severity_are_carried(check_file: Evaluate) -> None:
    check = SizeCheck(type="size", name="not_empty", severity="WARN", min_bytes=1)
    result = check_file(check, b"")
    assert (result.check_name, result.severity, result.passed) == ("not_empty", "WARN", False)


# -- name_regex ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "name", "passed"),
    [
        (r"^orders_\d{4}-\d{2}-\d{2}\.csv$", "orders_2026-11-26.csv", True),
        (r"^orders_\d{4}-\d{2}-\d{2}\.csv$", "orders_latest.csv", False),
        (r"\.csv$", "orders_latest.csv", True),  # searched, like the rule's regex
        (r"^ORDERS", "orders.csv", False),
    ],
)
def test_name_regex(check_file: Evaluate, pattern: str, name: str, passed: bool) -> None:
    result = check_file(NameRegexCheck(type="name_regex", pattern=pattern), b"x", name=name)
    assert result.passed is passed
    assert result.metadata["name"] == name
    assert result.metadata["pattern"] == pattern


def test_name_regex_on_undecodable_name(tmp_path: Path) -> None:
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.csv")
    with open(raw, "wb") as handle:
        handle.write(b"x")
    path = os.fsdecode(raw)
    match = FileMatch("r", path, os.path.basename(path), ("a",), None, None)
    result = evaluate(
        NameRegexCheck(type="name_regex", pattern=r"\.csv$"), match, fingerprint(path)
    )
    assert result.passed is True
    assert result.metadata["name"] == "caf\\xe9.csv"  # valid UTF-8 for the JSON body


# -- csv_header ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "exact", "passed"),
    [
        (b"id,name,amount\n1,a,2\n", True, True),
        (b"id,name,amount\r\n1,a,2\r\n", True, True),
        (b"\xef\xbb\xbfid,name,amount\n", True, True),  # a UTF-8 BOM is not part of `id`
        (b'"id", "name" ,amount\n', True, True),  # quoted, padded
        (b"id,amount,name\n", True, False),  # order matters when exact
        (b"id,amount,name\n", False, True),
        (b"id,name,amount,extra\n", True, False),
        (b"id,name,amount,extra\n", False, True),
        (b"id,name\n", False, False),
        (b"", True, False),
        (b"id,name,amount", True, True),  # no newline at all
    ],
)
def test_csv_header(check_file: Evaluate, content: bytes, exact: bool, passed: bool) -> None:
    check = CsvHeaderCheck(type="csv_header", columns=["id", "name", "amount"], exact=exact)
    result = check_file(check, content)
    assert result.passed is passed
    assert result.metadata["expected_columns"] == ["id", "name", "amount"]
    assert result.metadata["exact"] is exact
    assert "error" not in result.metadata


def test_csv_header_metadata_names_missing_and_unexpected(check_file: Evaluate) -> None:
    check = CsvHeaderCheck(type="csv_header", columns=["id", "name"])
    result = check_file(check, b"id;name\n")
    assert result.passed is False
    assert result.metadata["columns"] == ["id;name"]
    assert result.metadata["missing_columns"] == ["id", "name"]
    assert result.metadata["unexpected_columns"] == ["id;name"]
    semicolon = CsvHeaderCheck(type="csv_header", columns=["id", "name"], delimiter=";")
    assert check_file(semicolon, b"id;name\n").passed is True


def test_csv_header_undecodable_first_line_fails_with_reason(check_file: Evaluate) -> None:
    check = CsvHeaderCheck(type="csv_header", columns=["id"])
    result = check_file(check, b"id,caf\xe9\n1,2\n")
    assert result.passed is False
    assert "not valid UTF-8" in result.metadata["error"]
    assert result.metadata["check_could_not_run"] is True


# -- row_count ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "header", "rows"),
    [
        (b"id\n1\n2\n3\n", True, 3),
        (b"id\n1\n2\n3", True, 3),  # final line without newline still counts
        (b"id\n1\n2\n3\n", False, 4),
        (b"id\n", True, 0),
        (b"", True, 0),
        (b"", False, 0),
    ],
)
def test_row_count_rows(check_file: Evaluate, content: bytes, header: bool, rows: int) -> None:
    check = RowCountCheck(type="row_count", min_rows=0, header=header)
    result = check_file(check, content)
    assert result.metadata["row_count"] == rows
    assert result.metadata["header"] is header


@pytest.mark.parametrize(
    ("low", "high", "passed"), [(3, None, True), (4, None, False), (None, 3, True), (1, 2, False)]
)
def test_row_count_bounds(
    check_file: Evaluate, low: int | None, high: int | None, passed: bool
) -> None:
    result = check_file(
        RowCountCheck(type="row_count", min_rows=low, max_rows=high), b"h\n1\n2\n3\n"
    )
    assert result.passed is passed
    assert result.metadata.get("min_rows") == low
    assert result.metadata.get("max_rows") == high


def test_row_count_without_counted_lines_fails_with_reason(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(b"h\n1\n")
    print_ = fingerprint(str(path))  # count_lines not asked for
    result = evaluate(RowCountCheck(type="row_count", min_rows=1), match_for(path), print_)
    assert result.passed is False
    assert "not counted" in result.metadata["error"]


# -- json ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "lines", "passed"),
    [
        (b'{"a": [1, 2]}\n', False, True),
        (b'\xef\xbb\xbf{"a": 1}', False, True),
        (b"[1, 2", False, False),
        (b"", False, False),
        (b'{"a": 1}\n{"a": 2}\n', False, False),  # two documents are not one JSON value
        (b'{"a": 1}\n{"a": 2}\n', True, True),
        (b'{"a": 1}\r\n\n{"a": 2}', True, True),  # blank lines skipped
        (b"", True, True),  # no records at all
        (b'{"a": 1}\n{"a": \n', True, False),
        (b'{"a": "caf\xe9"}', False, False),
        (b'{"a": "caf\xe9"}\n', True, False),
    ],
)
def test_json(check_file: Evaluate, content: bytes, lines: bool, passed: bool) -> None:
    result = check_file(JsonCheck(type="json", lines=lines), content, name="data.json")
    assert result.passed is passed
    assert result.metadata["lines"] is lines
    assert ("error" in result.metadata) is not passed


def test_json_lines_failure_names_the_line(check_file: Evaluate) -> None:
    result = check_file(
        JsonCheck(type="json", lines=True), b'{"a": 1}\n{"a": 2}\nnot json\n{}\n', "x.jsonl"
    )
    assert result.passed is False
    assert (result.metadata["line"], result.metadata["records"]) == (3, 2)
    assert "Expecting value" in result.metadata["error"]
    good = check_file(JsonCheck(type="json", lines=True), b'{"a": 1}\n{"a": 2}\n', "y.jsonl")
    assert good.metadata["records"] == 2


def test_json_of_vanished_file_fails_with_reason(tmp_path: Path) -> None:
    path = tmp_path / "gone.json"
    path.write_bytes(b"{}")
    print_ = fingerprint(str(path))
    path.unlink()
    result = evaluate(JsonCheck(type="json"), match_for(path), print_)
    assert result.passed is False
    assert result.metadata["check_could_not_run"] is True
    assert "vanished" in result.metadata["error"]


def test_reread_of_changed_file_fails_with_reason(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(b"{}")
    print_ = fingerprint(str(path))
    path.write_bytes(b'{"longer": true}')
    result = evaluate(JsonCheck(type="json"), match_for(path), print_)
    assert result.passed is False
    assert "changed after it was fingerprinted" in result.metadata["error"]


def test_reread_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_bytes(b"{}")
    path = tmp_path / "drop.json"
    path.write_bytes(b"{}")
    print_ = fingerprint(str(path))
    path.unlink()
    path.symlink_to(secret)
    result = evaluate(JsonCheck(type="json"), match_for(path), print_)
    assert result.passed is False
    assert "cannot read" in result.metadata["error"]


def test_huge_json_document_is_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(b"{}")
    real = fingerprint(str(path))
    big = Fingerprint(
        stat=type(real.stat)(
            size=checks_module.JSON_MAX_BYTES + 1,
            mtime_ns=real.stat.mtime_ns,
            inode=real.stat.inode,
            ctime_ns=real.stat.ctime_ns,
        ),
        algorithm=real.algorithm,
        digest=real.digest,
    )
    result = evaluate(JsonCheck(type="json"), match_for(path), big)
    assert result.passed is False
    assert "lines = true" in result.metadata["error"]


# -- gzip ---------------------------------------------------------------------------------


def test_gzip_complete(check_file: Evaluate) -> None:
    payload = os.urandom(3 << 20)  # several read chunks, incompressible
    result = check_file(GzipCheck(type="gzip"), gzip.compress(payload), name="x.gz")
    assert result.passed is True
    assert result.metadata["uncompressed_bytes"] == len(payload)
    assert result.metadata["compressed_bytes"] > 0


def test_gzip_multi_member(check_file: Evaluate) -> None:
    content = gzip.compress(b"a" * 10) + gzip.compress(b"b" * 5)
    result = check_file(GzipCheck(type="gzip"), content, name="x.gz")
    assert (result.passed, result.metadata["uncompressed_bytes"]) == (True, 15)


@pytest.mark.parametrize(
    ("mangle", "error"),
    [
        (lambda data: data[: len(data) // 2], "end-of-stream"),  # truncated upload
        (lambda data: b"not gzip at all", "Not a gzipped file"),
        (lambda data: data[:-8] + b"\0\0\0\0" + data[-4:], "CRC check failed"),
        (lambda data: b"", "empty file"),
    ],
)
def test_gzip_broken(check_file: Evaluate, mangle: Callable[[bytes], bytes], error: str) -> None:
    data = gzip.compress(os.urandom(100_000))
    result = check_file(GzipCheck(type="gzip"), mangle(data), name="x.gz")
    assert result.passed is False
    assert error in result.metadata["error"]


def test_gzip_of_vanished_file_fails_with_reason(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(b"abc"))
    print_ = fingerprint(str(path))
    path.unlink()
    result = evaluate(GzipCheck(type="gzip", severity="WARN"), match_for(path), print_)
    assert (result.passed, result.severity) == (False, "WARN")
    assert "vanished" in result.metadata["error"]


# -- reports for a version ------------------------------------------------------------------


def test_reports_for_version_event_first_then_one_per_check(
    tmp_path: Path, config_file: Callable[[str], Path]
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "orders_2026-11-26.csv").write_bytes(b"id,amount\n1,2\n3,4\n")
    config = load_config(
        config_file(
            f"""
            [state]
            directory = "{tmp_path / "state"}"
            [[watch]]
            path = "{drop}"
            regex = 'orders_(?P<date>[0-9-]+)\\.csv$'
            asset_key = "acme/orders"
            partition = "{{date}}"
            count_rows = true
            [[watch.checks]]
            type = "size"
            min_bytes = 1
            [[watch.checks]]
            type = "csv_header"
            name = "header"
            columns = ["id", "amount", "vendor"]
            severity = "WARN"
            [[watch.checks]]
            type = "row_count"
            min_rows = 2
            """
        )
    )
    (rule,) = compile_rules(config, host="data01")
    match = rule.match(str(drop / "orders_2026-11-26.csv"))
    assert isinstance(match, FileMatch)
    print_ = fingerprint(match.path, count_lines=rule.needs_line_count)
    reports = reports_for_version(rule, match, print_)

    assert [r.kind for r in reports] == [EventKind.MATERIALIZATION, *[EventKind.CHECK] * 3]
    # Agrees with the row_count check, which says the first line is a header.
    assert reports[0].body["metadata"]["dagster/row_count"] == 2
    assert {r.order_key for r in reports} == {reports[0].order_key}  # delivered in order
    bodies = [r.body for r in reports[1:]]
    assert [(b["check_name"], b["passed"], b["severity"]) for b in bodies] == [
        ("size", True, "ERROR"),
        ("header", False, "WARN"),
        ("row_count", True, "ERROR"),
    ]
    assert all(b["asset_key"] == ["acme", "orders"] for b in bodies)
    assert all(b["partition"] == "2026-11-26" for b in bodies)
    assert bodies[2]["metadata"]["row_count"] == 2

    # One transaction stores the version with all four reports.
    with StateStore(tmp_path / "state") as store:
        store.record_version(match.path, rule.name, print_.stat, print_.digest, reports)
        assert store.counts().pending == 4
        # Same asset key and partition: one at a time, the event before its checks.
        delivered = []
        while due := store.due(now=1e12, limit=10):
            (item,) = due
            delivered.append(item.kind)
            store.ack_many([item.id])
        assert delivered == [r.kind for r in reports]


@pytest.mark.parametrize(
    ("checks_toml", "row_count"),
    [
        ("", 3),  # no row_count check: every line counts
        ('[[watch.checks]]\ntype = "row_count"\nmin_rows = 0\nheader = false', 3),
        ('[[watch.checks]]\ntype = "row_count"\nmin_rows = 0', 2),
    ],
)
def test_count_rows_metadata(
    tmp_path: Path, config_file: Callable[[str], Path], checks_toml: str, row_count: int
) -> None:
    (tmp_path / "x.csv").write_bytes(b"id\n1\n2")
    config = load_config(
        config_file(
            f'[[watch]]\npath = "{tmp_path}"\nasset_key = "a"\ncount_rows = true\n{checks_toml}\n'
        )
    )
    (rule,) = compile_rules(config)
    match = rule.match(str(tmp_path / "x.csv"))
    assert isinstance(match, FileMatch)
    print_ = fingerprint(match.path, count_lines=rule.needs_line_count)
    report = reports_for_version(rule, match, print_)[0]
    assert report.body["metadata"]["dagster/row_count"] == row_count


# -- configuration errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("check_toml", "key", "message"),
    [
        ('type = "size"', "watch[1].checks[1]", "needs min_bytes or max_bytes"),
        ('type = "size"\nmin_bytes = -1', "watch[1].checks[1].min_bytes", "greater than or"),
        ('type = "size"\nmin_bytes = 5\nmax_bytes = 4', "watch[1].checks[1]", "greater than"),
        ('type = "row_count"', "watch[1].checks[1]", "needs min_rows or max_rows"),
        ('type = "row_count"\nmax_rows = "ten"', "watch[1].checks[1].max_rows", "integer"),
        ('type = "name_regex"\npattern = "("', "watch[1].checks[1].pattern", "invalid regular"),
        ('type = "csv_header"\ncolumns = []', "watch[1].checks[1].columns", "at least 1"),
        ('type = "csv_header"\ncolumns = ["a", " "]', "watch[1].checks[1].columns", "empty"),
        (
            'type = "csv_header"\ncolumns = ["a"]\ndelimiter = ";;"',
            "watch[1].checks[1].delimiter",
            "at most 1",
        ),
        ('type = "json"\nlines = "maybe"', "watch[1].checks[1].lines", "boolean"),
        ('type = "gzip"\nlevel = 9', "watch[1].checks[1].level", "unknown key"),
        ('type = "gzip"\nseverity = "INFO"', "watch[1].checks[1].severity", "'WARN' or 'ERROR'"),
        ('type = "gzip"\nname = ""', "watch[1].checks[1].name", "at least 1"),
        ('type = "zip"', "watch[1].checks[1]", "unknown check type"),
        ("min_bytes = 1", "watch[1].checks[1]", "`type` is required"),
    ],
)
def test_invalid_check_parameters_name_the_key(
    tmp_path: Path,
    config_file: Callable[[str], Path],
    check_toml: str,
    key: str,
    message: str,
) -> None:
    path = config_file(
        f'[[watch]]\npath = "{tmp_path}"\nasset_key = "a"\n[[watch.checks]]\n{check_toml}\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (problem,) = caught.value.problems
    assert problem.startswith(f"{key}: "), problem
    assert message in problem


def test_duplicate_check_names_are_a_config_error(
    tmp_path: Path, config_file: Callable[[str], Path]
) -> None:
    path = config_file(
        f"""
        [[watch]]
        path = "{tmp_path}"
        asset_key = "a"
        [[watch.checks]]
        type = "size"
        min_bytes = 1
        [[watch.checks]]
        type = "size"
        max_bytes = 10
        """
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [
        "watch[1].checks: checks[1] and checks[2] are both named 'size'; give one a distinct `name`"
    ]


def test_invalid_check_exits_2_naming_the_key(
    cli: Callable[..., Any], tmp_path: Path, config_file: Callable[[str], Path]
) -> None:
    path = config_file(
        f'[[watch]]\npath = "{tmp_path}"\nasset_key = "a"\n'
        '[[watch.checks]]\ntype = "row_count"\nmin_rows = 3\nmax_rows = 1\n'
    )
    result = cli("check-config", "-c", str(path))
    assert result.returncode == 2
    assert "watch[1].checks[1]: min_rows is greater than max_rows" in result.stderr
    assert "Traceback" not in result.stderr
