"""What `scan` puts on the wire, seen by a real loopback HTTP server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.conftest import CliRun
from tests.support.sink import Sink


def config_for(config_file: Callable[[str], Path], url: str, tmp_path: Path) -> Path:
    drop = tmp_path / "drop"
    drop.mkdir(exist_ok=True)
    (drop / "a.csv").write_text("a\n")
    return config_file(
        f"""
        [dagster]
        url = "{url}/some/prefix/"
        [state]
        directory = "{tmp_path / "state"}"
        [[watch]]
        path = "{drop}"
        asset_key = "k/{{stem}}"
        settle_seconds = 0
        """
    )


def test_headers_path_and_body(
    sink: Sink, cli: CliRun, config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    config = config_for(config_file, sink.url, tmp_path)
    result = cli("-c", str(config), "scan", env={"DAGSTER_CLOUD_API_TOKEN": "tok-123"})
    assert result.returncode == 0, result.stderr
    (request,) = sink.requests
    assert request.method == "POST"
    assert request.path == "/some/prefix/report_asset_materialization/"
    assert request.header("content-type") == "application/json"
    assert request.header("dagster-cloud-api-token") == "tok-123"
    assert request.json["asset_key"] == ["k", "a"]
    assert "tok-123" not in result.stdout + result.stderr


def test_no_token_header_without_a_token(
    sink: Sink, cli: CliRun, config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    config = config_for(config_file, sink.url, tmp_path)
    result = cli("-c", str(config), "scan")
    assert result.returncode == 0, result.stderr
    (request,) = sink.requests
    assert request.header("dagster-cloud-api-token") is None


def test_rejected_report_is_dead_lettered_and_scan_exits_1(
    sink: Sink, cli: CliRun, config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    config = config_for(config_file, sink.url, tmp_path)
    sink.fail_next(1, 400, message="Empty asset key")
    result = cli("-c", str(config), "scan")
    assert result.returncode == 1
    assert "0 pending, 1 dead" in result.stderr
    status = cli("-c", str(config), "status")
    assert "dead: 1" in status.stdout
    assert "Empty asset key" in status.stdout
