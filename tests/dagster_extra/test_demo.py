"""`asset-watcher demo`: its own real webserver, a dropped file shown in Dagster, a clean stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from asset_watcher.rules import short_host_name
from tests.conftest import REPO_ROOT, CliRun
from tests.support.dagster_server import DagsterServer, free_port
from tests.support.waiting import poll_value

STARTUP_TIMEOUT_SECONDS = 120.0
REPORT_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 40.0

NODES_QUERY = """{ assetNodes { assetKey { path } isExecutable
  assetMaterializations(limit: 10) { partition }
  assetChecksOrError { ... on AssetChecks { checks { name
    executionForLatestMaterialization { status evaluation { severity } } } } } } }"""


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (the demo's folder)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry}: {cmdline}")
    return found


def accepts_connections(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def demo_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    port = free_port()
    output = tmp_path / "demo-output.txt"
    with open(output, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "asset_watcher", "demo", "--port", str(port)],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process, port, output
    finally:
        if process.poll() is None:  # the test failed before stopping it
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_TIMEOUT_SECONDS)
        for line in processes_mentioning(str(tmp_path)):  # last resort, by pid
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
        if process.poll() is None:
            process.kill()
            process.wait()


def test_demo_shows_a_dropped_file_with_its_checks_and_stops_cleanly(
    demo_process: tuple[subprocess.Popen[bytes], int, Path], tmp_path: Path
) -> None:
    process, port, output = demo_process

    def ready() -> str:
        assert process.poll() is None, output.read_text(errors="replace")
        return output.read_text(errors="replace")

    poll_value(ready, lambda text: "Ctrl-C stops both" in text, STARTUP_TIMEOUT_SECONDS, 0.2)
    assert (tmp_path / "drop").is_dir()
    assert (tmp_path / "demo" / "config.toml").is_file()
    server = DagsterServer(home=tmp_path / "demo" / "dagster_home")
    server.port = port  # read back from the demo's webserver; this object does not own it
    try:
        check_the_demo(process, port, output, tmp_path, server)
    finally:
        server.stop()  # only its probe: the demo's webserver is not this object's


def check_the_demo(
    process: subprocess.Popen[bytes], port: int, output: Path, tmp_path: Path, server: DagsterServer
) -> None:

    # build_definitions as loaded by the real webserver: keys and checks as configured.
    nodes = server.graphql(NODES_QUERY)["data"]["assetNodes"]
    declared = {
        tuple(node["assetKey"]["path"]): sorted(
            c["name"] for c in node["assetChecksOrError"]["checks"]
        )
        for node in nodes
    }
    assert declared == {
        ("demo", "csv_files"): ["plain_name", "row_count", "size"],
        ("demo", "json_files"): ["json"],
        ("demo", "other_files"): ["size"],
        ("asset_watcher", "agents", short_host_name()): [],  # the heartbeat, on in the demo
    }
    assert not any(node["isExecutable"] for node in nodes)
    (beat, *_) = server.wait_for_observations(
        ["asset_watcher", "agents", short_host_name()], timeout=REPORT_TIMEOUT_SECONDS
    )
    assert beat.metadata["rules"] == ["demo-csv", "demo-json", "demo-other"]

    (tmp_path / "drop" / "hello.csv").write_bytes(b"id,name\n1,a\n2,b\n")
    (tmp_path / "drop" / "broken.json").write_bytes(b'{"a": ')

    (materialization,) = server.wait_for_materializations(
        ["demo", "csv_files"], timeout=REPORT_TIMEOUT_SECONDS
    )
    assert materialization.metadata["path"] == str(tmp_path / "drop" / "hello.csv")
    assert materialization.metadata["dagster/row_count"] == 2
    checks = server.wait_for_check_evaluations(
        ["demo", "csv_files"], count=3, timeout=REPORT_TIMEOUT_SECONDS
    )
    assert {(c.check_name, c.passed) for c in checks} == {
        ("size", True),
        ("row_count", True),
        ("plain_name", True),
    }
    (json_check,) = server.wait_for_check_evaluations(
        ["demo", "json_files"], "json", timeout=REPORT_TIMEOUT_SECONDS
    )
    assert json_check.passed is False

    # The reports attached to the declared assets: no new key, checks shown with results.
    nodes = {
        tuple(n["assetKey"]["path"]): n for n in server.graphql(NODES_QUERY)["data"]["assetNodes"]
    }
    assert set(nodes) == set(declared)
    csv_node = nodes["demo", "csv_files"]
    assert len(csv_node["assetMaterializations"]) == 1
    statuses = {
        c["name"]: c["executionForLatestMaterialization"]["status"]
        for c in csv_node["assetChecksOrError"]["checks"]
    }
    assert statuses == {"size": "SUCCEEDED", "row_count": "SUCCEEDED", "plain_name": "SUCCEEDED"}
    json_checks = nodes["demo", "json_files"]["assetChecksOrError"]["checks"]
    assert json_checks[0]["executionForLatestMaterialization"]["status"] == "FAILED"
    assert json_checks[0]["executionForLatestMaterialization"]["evaluation"]["severity"] == "ERROR"

    # Ctrl-C stops the watcher and the webserver with its code server.
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=STOP_TIMEOUT_SECONDS) == 0, output.read_text()
    assert "demo stopped" in output.read_text()
    assert "Traceback" not in output.read_text()
    assert not accepts_connections(port)
    assert processes_mentioning(str(tmp_path)) == []


def test_demo_refuses_a_busy_port(cli: CliRun, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("demo", "--port", str(port), cwd=tmp_path)
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "--port" in result.stderr
    assert not (tmp_path / "demo").exists()  # nothing written before the checks pass
