"""`asset-watcher scan` and `report` end to end against a real dagster-webserver."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CliRun
from tests.support.dagster_server import DagsterServer


def scan_config(
    config_file: Callable[[str], Path], url: str, drop: Path, state: Path, key: str
) -> Path:
    return config_file(
        f"""
        [dagster]
        url = "{url}"
        timeout_seconds = 5
        [state]
        directory = "{state}"
        [defaults]
        settle_seconds = 0
        [[watch]]
        name = "orders"
        path = "{drop}"
        glob = "**/orders_*.csv"
        regex = 'orders_(?P<date>\\d{{4}}-\\d{{2}}-\\d{{2}})\\.csv$'
        asset_key = "{key}/orders"
        partition = "{{date}}"
        metadata = {{ vendor = "acme" }}
        """
    )


def test_scan_reports_each_version_once(
    dagster: DagsterServer,
    cli: CliRun,
    config_file: Callable[[str], Path],
    drop: Path,
    tmp_path: Path,
    unique_name: str,
) -> None:
    files = {"2026-11-25": b"id,qty\n1,2\n", "2026-11-26": b"id,qty\n3,4\n5,6\n"}
    for date, content in files.items():
        (drop / f"orders_{date}.csv").write_bytes(content)
    (drop / "orders_2026-11-27.csv.filepart").write_bytes(b"partial")
    config = scan_config(config_file, dagster.url, drop, tmp_path / "state", unique_name)
    key = [unique_name, "orders"]

    first = cli("-c", str(config), "scan")
    assert first.returncode == 0, first.stderr
    for date, content in files.items():
        (event,) = dagster.wait_for_materializations(key, partition=date)
        digest = hashlib.sha256(content).hexdigest()
        assert event.asset_key == key
        assert event.partition == date
        assert event.data_version == digest
        assert event.metadata["size_bytes"] == len(content)
        assert event.metadata_types["size_bytes"] == "IntMetadataValue"
        assert event.metadata["sha256"] == digest
        assert event.metadata["path"] == str(drop / f"orders_{date}.csv")
        assert event.metadata["vendor"] == "acme"
        assert event.metadata["rule"] == "orders"
        assert str(event.metadata["dagster/uri"]).endswith(f"{drop}/orders_{date}.csv")
    assert len(dagster.materializations(key)) == 2

    second = cli("-c", str(config), "scan")
    assert second.returncode == 0, second.stderr
    assert "0 reported, 2 unchanged" in second.stderr
    assert len(dagster.materializations(key)) == 2

    dry = cli("-c", str(config), "scan", "--dry-run", "--force", "--json")
    assert dry.returncode == 0, dry.stderr
    printed = [json.loads(line) for line in dry.stdout.splitlines()]
    assert sorted(p["partition"] for p in printed) == sorted(files)
    assert all(p["body"]["asset_key"] == key for p in printed)
    assert len(dagster.materializations(key)) == 2

    forced = cli("-c", str(config), "scan", "--force")
    assert forced.returncode == 0, forced.stderr
    dagster.wait_for_materializations(key, count=4)
    assert len(dagster.materializations(key, partition="2026-11-26")) == 2


@pytest.mark.parametrize("server", ["dagster", "dagster_prefixed"])
def test_awkward_key_parts_arrive_unchanged(
    request: pytest.FixtureRequest,
    server: str,
    cli: CliRun,
    config_file: Callable[[str], Path],
    drop: Path,
    tmp_path: Path,
    unique_name: str,
) -> None:
    dagster: DagsterServer = request.getfixturevalue(server)
    stem = "we ird#%?é"
    (drop / f"{stem}.csv").write_text("x\n")
    config = config_file(
        f"""
        [dagster]
        url = "{dagster.url}"
        [state]
        directory = "{tmp_path / "state"}"
        [[watch]]
        path = "{drop}"
        asset_key = "{unique_name}/{{stem}}"
        settle_seconds = 0
        """
    )
    result = cli("-c", str(config), "scan")
    assert result.returncode == 0, result.stderr
    (event,) = dagster.wait_for_materializations([unique_name, stem])
    assert event.asset_key == [unique_name, stem]
    assert [unique_name, stem] in dagster.all_asset_keys()


def test_report_by_hand(
    dagster: DagsterServer, cli: CliRun, config_file: Callable[[str], Path], unique_name: str
) -> None:
    config = config_file(f'[dagster]\nurl = "{dagster.url}"\n')
    result = cli(
        "-c", str(config), "report", "observation", "--asset-key", f"{unique_name}/manual",
        "--partition", "p1", "--metadata", "note=hello", "--metadata", "rows:=12",
        "--data-version", "v1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (event,) = dagster.wait_for_observations([unique_name, "manual"])
    assert event.partition == "p1"
    assert event.metadata == {"note": "hello", "rows": 12}
    assert event.data_version == "v1"


def test_report_exits_1_when_dagster_is_unreachable(
    cli: CliRun, config_file: Callable[[str], Path]
) -> None:
    config = config_file('[dagster]\nurl = "http://127.0.0.1:9"\ntimeout_seconds = 2\n')
    result = cli("-c", str(config), "report", "materialization", "--asset-key", "a/b")
    assert result.returncode == 1
    assert "cannot reach http://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr


def test_scan_leaves_undelivered_reports_queued(
    cli: CliRun,
    config_file: Callable[[str], Path],
    drop: Path,
    tmp_path: Path,
    dagster: DagsterServer,
    unique_name: str,
) -> None:
    (drop / "orders_2026-01-01.csv").write_text("a\n")
    down = scan_config(config_file, "http://127.0.0.1:9", drop, tmp_path / "state", unique_name)
    down.write_text(down.read_text().replace("timeout_seconds = 5", "timeout_seconds = 0.3"))
    result = cli("-c", str(down), "scan")
    assert result.returncode == 1
    assert "1 pending" in result.stderr
    status = cli("-c", str(down), "status", "--json")
    assert json.loads(status.stdout)["pending"] == 1

    up = scan_config(config_file, dagster.url, drop, tmp_path / "state", unique_name)
    result = cli("-c", str(up), "scan")
    assert result.returncode == 0, result.stderr
    assert "0 reported" in result.stderr and "1 delivered" in result.stderr
    dagster.wait_for_materializations([unique_name, "orders"], partition="2026-01-01")


def test_config_errors_exit_2_one_line_each(
    cli: CliRun, config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    config = config_file(
        f"""
        [dagster]
        url = "localhost:3000"
        [[watch]]
        path = "{tmp_path}"
        regex = '(unclosed'
        asset_key = "x/{{nope}}"
        """
    )
    result = cli("-c", str(config), "scan")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith("asset-watcher: dagster.url:") for line in lines), lines
    assert any(line.startswith("asset-watcher: watch[1].regex:") for line in lines), lines
    assert "Traceback" not in result.stderr


def test_check_config_redacts_the_token(
    cli: CliRun, config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    secret = "dagster-token-s3cr3t-value"
    config = config_file(f'[[watch]]\npath = "{tmp_path}"\nasset_key = "a"\n')
    result = cli(
        "-c", str(config), "--log-level", "debug", "check-config",
        env={"DAGSTER_CLOUD_API_TOKEN": secret},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["dagster"]["token"].startswith("**********")
    assert resolved["watch"][0]["settle_seconds"] == 2.0
    assert secret not in result.stdout + result.stderr


def test_token_never_leaks_on_failure(
    cli: CliRun, config_file: Callable[[str], Path], drop: Path, tmp_path: Path
) -> None:
    secret = "dagster-token-s3cr3t-value"
    (drop / "orders_2026-01-01.csv").write_text("a\n")
    config = scan_config(config_file, "http://127.0.0.1:9", drop, tmp_path / "state", "k")
    config.write_text(config.read_text().replace("timeout_seconds = 5", "timeout_seconds = 0.2"))
    env = {"DAGSTER_CLOUD_API_TOKEN": secret}
    for args in (("scan",), ("status", "--json"), ("report", "check", "--asset-key", "a",
                 "--check-name", "c", "--passed")):  # fmt: skip
        result = cli("-c", str(config), "--log-level", "debug", *args, env=env)
        assert secret not in result.stdout + result.stderr


def test_explain(
    cli: CliRun, config_file: Callable[[str], Path], drop: Path, tmp_path: Path
) -> None:
    config = scan_config(config_file, "http://127.0.0.1:9", drop, tmp_path / "state", "acme")
    result = cli(
        "-c", str(config), "explain", str(drop / "orders_2026-11-26.csv"), str(drop / "x.txt")
    )
    assert result.returncode == 0, result.stderr
    assert 'asset key parts: ["acme", "orders"]' in result.stdout
    assert "partition: 2026-11-26" in result.stdout
    assert "not reported: no rule owns it" in result.stdout
    assert not (tmp_path / "state").exists()  # explain touches no state
