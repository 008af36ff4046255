"""Asset checks and row counts, from files on disk to what the real dagster-webserver records."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from pathlib import Path

from asset_watcher.config import Config, load_config
from asset_watcher.delivery import Deliverer
from asset_watcher.fingerprint import fingerprint
from asset_watcher.model import FileMatch
from asset_watcher.reporter import Reporter
from asset_watcher.reports import reports_for_version
from asset_watcher.rules import compile_rules
from asset_watcher.scan import scan
from asset_watcher.state import StateStore
from tests.conftest import CliRun
from tests.support.dagster_server import CheckEvaluationRecord, DagsterServer


def deliver_all(config: Config, store: StateStore) -> None:
    reporter = Reporter(config.dagster, config.token)
    try:
        Deliverer(store, reporter).drain(patience_seconds=10)
    finally:
        reporter.close()
    counts = store.counts()
    assert (counts.pending, counts.dead) == (0, 0), store.dead_letter_items()


def scan_and_deliver(config: Config) -> None:
    with StateStore(config.state.resolved_directory()) as store:
        result = scan(compile_rules(config), store)
        assert result.skipped == 0
        deliver_all(config, store)


def by_check_and_partition(
    records: list[CheckEvaluationRecord],
) -> dict[tuple[str, str | None], CheckEvaluationRecord]:
    found = {(r.check_name, r.partition): r for r in records}
    assert len(found) == len(records), "one evaluation per check and file"
    return found


def test_each_check_type_passes_and_fails(
    dagster: DagsterServer,
    unique_name: str,
    tmp_path: Path,
    config_file: Callable[[str], Path],
) -> None:
    drop = tmp_path / "drop"
    for folder in ("csv", "json", "gz"):
        (drop / folder).mkdir(parents=True)
    (drop / "csv" / "good.csv").write_bytes(b"id,name\n1,a\n2,b\n")
    (drop / "csv" / "bad.csv").write_bytes(b"x\n")
    (drop / "json" / "good.json").write_bytes(b'{"a": 1}\n')
    (drop / "json" / "bad.json").write_bytes(b'{"a": 1}\n{"a":\n')
    (drop / "gz" / "good.gz").write_bytes(gzip.compress(b"payload" * 1000))
    (drop / "gz" / "bad.gz").write_bytes(gzip.compress(os.urandom(5000))[:-100])
    config = load_config(
        config_file(
            f"""
            [dagster]
            url = "{dagster.url}"
            [state]
            directory = "{tmp_path / "state"}"
            [defaults]
            settle_seconds = 0

            [[watch]]
            path = "{drop / "csv"}"
            asset_key = "{unique_name}/csv"
            partition = "{{stem}}"
            count_rows = true
            [[watch.checks]]
            type = "size"
            min_bytes = 10
            max_bytes = 1000
            [[watch.checks]]
            type = "name_regex"
            pattern = '^good'
            severity = "WARN"
            [[watch.checks]]
            type = "csv_header"
            columns = ["id", "name"]
            [[watch.checks]]
            type = "row_count"
            min_rows = 2
            max_rows = 3
            severity = "WARN"

            [[watch]]
            path = "{drop / "json"}"
            asset_key = "{unique_name}/json"
            partition = "{{stem}}"
            [[watch.checks]]
            type = "json"
            [[watch.checks]]
            type = "json"
            name = "json_lines"
            lines = true

            [[watch]]
            path = "{drop / "gz"}"
            asset_key = "{unique_name}/gz"
            partition = "{{stem}}"
            [[watch.checks]]
            type = "gzip"
            severity = "WARN"
            """
        )
    )
    scan_and_deliver(config)

    csv_key, json_key, gz_key = ([unique_name, kind] for kind in ("csv", "json", "gz"))
    csv = by_check_and_partition(dagster.wait_for_check_evaluations(csv_key, count=8))
    expected_csv = {
        # check: (severity, passed for good, passed for bad)
        "size": ("ERROR", True, False),
        "name_regex": ("WARN", True, False),
        "csv_header": ("ERROR", True, False),
        "row_count": ("WARN", True, False),
    }
    for name, (severity, good_passes, bad_passes) in expected_csv.items():
        assert csv[name, "good"].passed is good_passes
        assert csv[name, "bad"].passed is bad_passes
        assert csv[name, "good"].severity == csv[name, "bad"].severity == severity
    # Metadata holds the observed value and the bound, with Dagster's types.
    assert csv["size", "bad"].metadata == {
        "path": str(drop / "csv" / "bad.csv"),
        "size_bytes": 2,
        "min_bytes": 10,
        "max_bytes": 1000,
    }
    assert csv["size", "bad"].metadata_types["size_bytes"] == "IntMetadataValue"
    assert csv["row_count", "good"].metadata["row_count"] == 2
    assert csv["row_count", "bad"].metadata["row_count"] == 0
    assert csv["row_count", "bad"].metadata["min_rows"] == 2
    assert csv["csv_header", "bad"].metadata["columns"] == ["x"]
    assert csv["csv_header", "bad"].metadata["missing_columns"] == ["id", "name"]
    assert csv["name_regex", "bad"].metadata["pattern"] == "^good"

    # dagster/row_count on the materialization, data rows as the row_count check counts them.
    (good_mat,) = dagster.materializations(csv_key, partition="good")
    (bad_mat,) = dagster.materializations(csv_key, partition="bad")
    assert good_mat.metadata["dagster/row_count"] == 2
    assert good_mat.metadata_types["dagster/row_count"] == "IntMetadataValue"
    assert bad_mat.metadata["dagster/row_count"] == 0
    # Each check is reported after its own file's materialization.
    for (_, partition), record in csv.items():
        own = good_mat if partition == "good" else bad_mat
        assert record.storage_id > own.storage_id

    json_checks = by_check_and_partition(dagster.wait_for_check_evaluations(json_key, count=4))
    assert json_checks["json", "good"].passed is True
    assert json_checks["json_lines", "good"].passed is True
    assert json_checks["json_lines", "good"].metadata["records"] == 1
    assert json_checks["json", "bad"].passed is False
    assert json_checks["json_lines", "bad"].passed is False
    assert json_checks["json_lines", "bad"].metadata["line"] == 2
    assert "line 2" in json_checks["json", "bad"].metadata["error"]

    gz = by_check_and_partition(dagster.wait_for_check_evaluations(gz_key, count=2))
    assert (gz["gzip", "good"].passed, gz["gzip", "good"].severity) == (True, "WARN")
    assert gz["gzip", "good"].metadata["uncompressed_bytes"] == 7000
    assert (gz["gzip", "bad"].passed, gz["gzip", "bad"].severity) == (False, "WARN")
    assert "end-of-stream" in gz["gzip", "bad"].metadata["error"]

    # The table the UI reads holds one row per evaluation (two partitions each).
    assert sorted(dagster.check_execution_statuses(csv_key, "size")) == ["FAILED", "SUCCEEDED"]
    assert sorted(dagster.check_execution_statuses(gz_key, "gzip")) == ["FAILED", "SUCCEEDED"]


def test_unpartitioned_checks_and_row_count_without_check(
    dagster: DagsterServer,
    unique_name: str,
    tmp_path: Path,
    config_file: Callable[[str], Path],
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "events.jsonl").write_bytes(b'{"n": 1}\n{"n": 2}\n{"n": 3}\n')
    config = load_config(
        config_file(
            f"""
            [dagster]
            url = "{dagster.url}"
            [state]
            directory = "{tmp_path / "state"}"
            [[watch]]
            path = "{drop}"
            asset_key = "{unique_name}/events"
            event = "observation"
            count_rows = true
            settle_seconds = 0
            [[watch.checks]]
            type = "json"
            lines = true
            """
        )
    )
    scan_and_deliver(config)
    (observation,) = dagster.wait_for_observations([unique_name, "events"])
    assert observation.metadata["dagster/row_count"] == 3  # no header: every line
    (check,) = dagster.wait_for_check_evaluations([unique_name, "events"], "json")
    assert (check.passed, check.partition, check.severity) == (True, None, "ERROR")
    assert check.storage_id > observation.storage_id


def test_check_that_cannot_run_is_reported_failed(
    dagster: DagsterServer,
    unique_name: str,
    tmp_path: Path,
    config_file: Callable[[str], Path],
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    path = drop / "x.json.gz"
    path.write_bytes(gzip.compress(b"{}"))
    config = load_config(
        config_file(
            f"""
            [dagster]
            url = "{dagster.url}"
            [state]
            directory = "{tmp_path / "state"}"
            [[watch]]
            path = "{drop}"
            asset_key = "{unique_name}/x"
            partition = "{{name}}"
            [[watch.checks]]
            type = "gzip"
            [[watch.checks]]
            type = "size"
            min_bytes = 1
            """
        )
    )
    (rule,) = compile_rules(config)
    match = rule.match(str(path))
    assert isinstance(match, FileMatch)
    print_ = fingerprint(match.path)
    path.unlink()  # gone between the fingerprint and the gzip check's own read
    reports = reports_for_version(rule, match, print_)
    with StateStore(tmp_path / "state") as store:
        store.record_version(match.path, rule.name, print_.stat, print_.digest, reports)
        deliver_all(config, store)

    checks = by_check_and_partition(dagster.wait_for_check_evaluations([unique_name, "x"], count=2))
    gzip_check = checks["gzip", "x.json.gz"]
    assert gzip_check.passed is False
    assert "vanished" in gzip_check.metadata["error"]
    assert gzip_check.metadata["check_could_not_run"] is True
    assert checks["size", "x.json.gz"].passed is True  # from the one read, still valid
    assert len(dagster.materializations([unique_name, "x"], partition="x.json.gz")) == 1


def resend(path: Path, version: int) -> None:
    """The partner sends the same file again: renamed into place, its own mtime."""
    part = path.with_name(path.name + ".part")
    part.write_bytes(b"id\n1\n")
    mtime_ns = (1_700_000_000 + version) * 10**9
    os.utime(part, ns=(mtime_ns, mtime_ns))
    os.replace(part, path)


def partitioned_check_config(
    config_file: Callable[[str], Path], url: str, tmp_path: Path, key: str
) -> Path:
    return config_file(
        f"""
        [dagster]
        url = "{url}"
        [state]
        directory = "{tmp_path / "state"}"
        [[watch]]
        path = "{tmp_path / "drop"}"
        regex = '^orders_(?P<day>[0-9-]+)\\.csv$'
        asset_key = "{key}/orders"
        partition = "{{day}}"
        settle_seconds = 0
        [[watch.checks]]
        type = "size"
        min_bytes = 1
        """
    )


def test_a_file_resent_for_a_partition_with_checks_never_jams_delivery(
    dagster: DagsterServer,
    unique_name: str,
    tmp_path: Path,
    config_file: Callable[[str], Path],
    cli: CliRun,
) -> None:
    (tmp_path / "drop").mkdir()
    path = tmp_path / "drop" / "orders_2026-11-26.csv"
    config = partitioned_check_config(config_file, dagster.url, tmp_path, unique_name)
    key = [unique_name, "orders"]
    for version in range(3):  # sent, then re-sent twice
        resend(path, version)
        result = cli("-c", str(config), "scan")
        assert result.returncode == 0, result.stderr
        assert "1 reported" in result.stderr
    # Every materialization arrived, in order.
    materializations = dagster.wait_for_materializations(key, count=3, partition="2026-11-26")
    assert [m.metadata["modified_at"] for m in materializations] == [
        f"2023-11-14T22:13:2{n}.000000Z" for n in range(3)
    ]
    status = cli("-c", str(config), "status", "--json")
    data = json.loads(status.stdout)
    assert (data["pending"], data["dead"], data["set_aside"]) == (0, 0, 2)
    assert {entry["check_name"] for entry in data["set_aside_reports"]} == {"size"}
    assert all("one evaluation per" in entry["reason"] for entry in data["set_aside_reports"])
    # Dagster holds the first evaluation alone: the repeats were not sent at all, and with
    # nothing pending nothing is left to send.
    (evaluation,) = dagster.check_evaluations(key, "size")
    assert (evaluation.partition, evaluation.passed) == ("2026-11-26", True)
    assert dagster.check_execution_statuses(key, "size") == ["SUCCEEDED"]


def test_a_repeat_the_agent_did_not_know_of_is_sent_once_more_then_set_aside(
    dagster: DagsterServer,
    unique_name: str,
    tmp_path: Path,
    config_file: Callable[[str], Path],
    cli: CliRun,
) -> None:
    (tmp_path / "drop").mkdir()
    path = tmp_path / "drop" / "orders_2026-11-26.csv"
    config = partitioned_check_config(config_file, dagster.url, tmp_path, unique_name)
    key = [unique_name, "orders"]
    # Dagster already holds this partition's evaluation (an earlier release, by hand, ...).
    by_hand = cli(
        "-c", str(config), "report", "check", "--asset-key", f"{unique_name}/orders",
        "--check-name", "size", "--passed", "--partition", "2026-11-26",
    )  # fmt: skip
    assert by_hand.returncode == 0, by_hand.stderr
    resend(path, 0)
    first = cli("-c", str(config), "scan")
    assert first.returncode == 0, first.stderr
    assert "1 set aside" in first.stderr
    assert "Dagster answered 500 twice to the check size" in first.stderr
    resend(path, 1)
    second = cli("-c", str(config), "scan")  # the next version goes through
    assert second.returncode == 0, second.stderr
    materializations = dagster.wait_for_materializations(key, count=2, partition="2026-11-26")
    assert len(materializations) == 2
    data = json.loads(cli("-c", str(config), "status", "--json").stdout)
    assert (data["pending"], data["dead"], data["set_aside"]) == (0, 0, 2)
    # One by hand, at most two attempts of ours (each written, then answered 500).
    assert len(dagster.check_evaluations(key, "size")) <= 3
