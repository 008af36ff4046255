"""Report bodies and endpoint URLs, as SPEC section 4 lays them out."""

from __future__ import annotations

import pytest

from asset_watcher.model import EventKind, FileMatch, FileStat, Fingerprint
from asset_watcher.reporter import endpoint_url
from asset_watcher.reports import check_report, file_report, file_uri


@pytest.mark.parametrize(
    ("base", "kind", "url"),
    [
        ("http://localhost:3000", EventKind.MATERIALIZATION,
         "http://localhost:3000/report_asset_materialization/"),
        ("https://dagster.example.com/dagster", EventKind.OBSERVATION,
         "https://dagster.example.com/dagster/report_asset_observation/"),
        ("https://org.dagster.plus/prod/", EventKind.CHECK,
         "https://org.dagster.plus/prod/report_asset_check/"),
    ],
)  # fmt: skip
def test_endpoint_url_keeps_the_base_path(base: str, kind: EventKind, url: str) -> None:
    assert endpoint_url(base, kind) == url


def test_file_report_body() -> None:
    match = FileMatch(
        rule_name="acme-orders",
        path="/srv/sftp/acme/upload/orders_2026-11-26.csv",
        relpath="orders_2026-11-26.csv",
        asset_key=("acme", "orders"),
        partition="2026-11-26",
        description="Orders",
    )
    print_ = Fingerprint(
        stat=FileStat(size=42, mtime_ns=1_764_115_200_000_000_000, inode=7, ctime_ns=1),
        algorithm="sha256",
        digest="ab" * 32,
        line_count=3,
    )
    report = file_report(
        match,
        print_,
        EventKind.MATERIALIZATION,
        static={"vendor": "acme", "size_bytes": "overridden"},
        count_rows=True,
        host="data01",
    )
    assert report.kind is EventKind.MATERIALIZATION
    assert report.body == {
        "asset_key": ["acme", "orders"],
        "partition": "2026-11-26",
        "description": "Orders",
        "data_version": "ab" * 32,
        "metadata": {
            "vendor": "acme",
            "path": "/srv/sftp/acme/upload/orders_2026-11-26.csv",
            "dagster/uri": "file://data01/srv/sftp/acme/upload/orders_2026-11-26.csv",
            "size_bytes": 42,
            "sha256": "ab" * 32,
            "modified_at": "2025-11-26T00:00:00.000000Z",
            "host": "data01",
            "rule": "acme-orders",
            "dagster/row_count": 3,
        },
    }
    assert report.order_key != check_report(("acme", "orders"), "c", passed=True).order_key


def test_uri_is_percent_encoded_from_raw_bytes() -> None:
    path = "/srv/drop/a b#?%" + b"\xe9".decode("utf-8", "surrogateescape")
    assert file_uri(path, "h") == "file://h/srv/drop/a%20b%23%3F%25%E9"


def test_check_body() -> None:
    report = check_report(("a", "b"), "size", passed=False, severity="WARN", partition="p")
    assert report.kind is EventKind.CHECK
    assert report.body == {
        "asset_key": ["a", "b"],
        "check_name": "size",
        "passed": False,
        "severity": "WARN",
        "partition": "p",
    }
