"""What `scan` puts on the wire, seen by a real loopback HTTP server."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import pytest

from asset_watcher.model import EventKind
from asset_watcher.reporter import Answer, Reporter
from asset_watcher.retry import Verdict
from asset_watcher.settings import DagsterSettings
from asset_watcher.state import DB_NAME
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


def test_status_and_scan_around_dead_letters(
    sink: Sink, cli: CliRun, config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    config = config_for(config_file, sink.url, tmp_path)
    fresh = cli("-c", str(config), "status", "--json")
    assert fresh.returncode == 0, fresh.stderr  # a fresh host is healthy
    assert '"pending": 0' in fresh.stdout

    secret = "tok-SECRET-42"
    sink.fail_next(1, 400, message=f"bad request; you sent header {secret}")
    first = cli("-c", str(config), "scan", env={"DAGSTER_CLOUD_API_TOKEN": secret})
    assert first.returncode == 1
    status = cli("-c", str(config), "status", "--json", env={"DAGSTER_CLOUD_API_TOKEN": secret})
    assert '"dead": 1' in status.stdout
    assert secret not in first.stdout + first.stderr + status.stdout + status.stderr

    # An old dead letter alone does not fail every later run.
    (tmp_path / "drop" / "b.csv").write_text("b\n")
    second = cli("-c", str(config), "scan")
    assert second.returncode == 0, second.stderr
    assert "dead-lettered before this run" in second.stderr


def test_read_only_commands_leave_a_broken_database_alone(
    cli: CliRun, config_file: Callable[[str], Path], tmp_path: Path, sink: Sink
) -> None:
    config = config_for(config_file, sink.url, tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    (state / DB_NAME).write_bytes(b"this is not a database" * 100)
    for args in (("status",), ("scan", "--dry-run")):
        result = cli("-c", str(config), *args)
        assert result.returncode == 1, result.stderr
        assert "unreadable" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in state.iterdir()) == [DB_NAME]


def test_explain_says_links_are_not_followed(
    cli: CliRun, config_file: Callable[[str], Path], tmp_path: Path, sink: Sink
) -> None:
    config = config_for(config_file, sink.url, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text("s\n")
    (tmp_path / "drop" / "linked").symlink_to(outside, target_is_directory=True)
    result = cli("-c", str(config), "explain", str(tmp_path / "drop" / "linked" / "secret.csv"))
    assert result.returncode == 0, result.stderr
    assert "not reported: reached through a symbolic link" in result.stdout
    scanned = cli("-c", str(config), "scan")
    assert scanned.returncode == 0, scanned.stderr
    assert all("secret" not in str(r.json) for r in sink.requests)


def post_through_proxy(monkeypatch: pytest.MonkeyPatch, proxy: str, url: str) -> Answer:
    """One observation to `url` with `proxy` as $HTTP_PROXY (no NO_PROXY)."""
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    reporter = Reporter(DagsterSettings(url=url))
    try:
        return reporter.post(EventKind.OBSERVATION, '{"asset_key": ["a"]}')
    finally:
        reporter.close()


def test_an_http_proxy_from_the_environment_is_used(
    sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the sink plays the proxy
    answer = post_through_proxy(monkeypatch, sink.url, "http://dagster.example:3000/prefix")
    assert answer.verdict is Verdict.DELIVERED
    (request,) = sink.requests
    assert request.target == "http://dagster.example:3000/prefix/report_asset_observation/"
    assert request.header("content-type") == "application/json"


def test_a_proxy_with_a_user_gets_basic_auth_and_its_password_is_never_shown(
    sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    host_port = sink.url.removeprefix("http://")
    proxy = f"http://alice:s%40cret@{host_port}"
    answer = post_through_proxy(monkeypatch, proxy, "http://dagster.example:3000")
    assert answer.verdict is Verdict.DELIVERED
    (request,) = sink.requests
    assert request.target == "http://dagster.example:3000/report_asset_observation/"
    expected = base64.b64encode(b"alice:s@cret").decode()
    assert request.header("proxy-authorization") == f"Basic {expected}"

    # A proxy kind urllib3 cannot speak: delivery waits, and the error names no password.
    proxy = f"socks5://alice:s%40cret@{host_port}"
    answer = post_through_proxy(monkeypatch, proxy, "http://dagster.example:3000")
    assert answer.verdict is Verdict.RETRY
    assert "socks5://" in answer.detail
    assert "cret" not in answer.detail and "alice" not in answer.detail
