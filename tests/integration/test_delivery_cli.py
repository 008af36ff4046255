"""`scan`, `status` and `retry-dead` as an operator runs them, against a loopback sink."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, CliRun
from tests.support.sink import RecordedRequest, Sink

TOKEN = "tok-3f9a-never-printed"


@pytest.fixture
def configure(
    config_file: Callable[[str], Path], tmp_path: Path, drop: Path, sink: Sink
) -> Callable[..., Path]:
    def make(max_in_flight: int = 8) -> Path:
        return config_file(
            f"""
            [dagster]
            url = "{sink.url}"
            max_in_flight = {max_in_flight}
            timeout_seconds = 5
            backoff_max_seconds = 0.3

            [state]
            directory = "{tmp_path / "state"}"

            [defaults]
            settle_seconds = 0

            [[watch]]
            name = "drop"
            path = "{drop}"
            asset_key = "drop/{{stem}}"
            """
        )

    return make


def stem(req: RecordedRequest) -> str:
    return str(req.json["asset_key"][1])


def status(cli: CliRun, config: Path) -> dict[str, object]:
    result = cli("status", "--json", "-c", str(config))
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_400_dead_letters_one_report_status_shows_it_retry_dead_delivers_it(
    cli: CliRun, configure: Callable[..., Path], drop: Path, sink: Sink
) -> None:
    config = configure()
    for name in ("a", "b", "bad", "c", "d"):
        (drop / f"{name}.csv").write_text(f"{name}\n")
    message = "Error constructing AssetMaterialization: nope"
    sink.fail_next(None, 400, message=message, match=lambda r: stem(r) == "bad")

    first = cli("scan", "-c", str(config))
    assert first.returncode == 1, first.stderr  # a dead letter is failed work
    assert sorted((stem(r), r.status) for r in sink.requests) == [
        ("a", 200),
        ("b", 200),
        ("bad", 400),
        ("c", 200),
        ("d", 200),
    ]
    assert "4 delivered, 0 pending, 1 dead" in first.stderr
    assert message in first.stderr  # the log line names Dagster's reason

    state = status(cli, config)
    assert (state["tracked_files"], state["pending"], state["dead"]) == (5, 0, 1)
    assert state["last_error"] == f"HTTP 400: {message}"
    (letter,) = state["dead_letters"]  # type: ignore[misc]
    assert letter["asset_key"] == ["drop", "bad"]
    assert letter["event"] == "materialization"
    assert letter["error"] == f"HTTP 400: {message}"
    text = cli("status", "-c", str(config))
    assert "dead: 1" in text.stdout
    assert f"dead materialization drop/bad: HTTP 400: {message}" in text.stdout

    sink.reset()
    retry = cli("retry-dead", "-c", str(config))
    assert (retry.returncode, retry.stdout.strip()) == (0, "requeued 1 dead-lettered report(s)")
    assert (status(cli, config)["pending"], status(cli, config)["dead"]) == (1, 0)

    second = cli("scan", "-c", str(config))
    assert second.returncode == 0, second.stderr
    assert [(stem(r), r.status) for r in sink.requests[5:]] == [("bad", 200)]
    assert (status(cli, config)["pending"], status(cli, config)["dead"]) == (0, 0)


def test_401_scan_keeps_everything_names_the_asset_never_the_token(
    cli: CliRun, configure: Callable[..., Path], drop: Path, sink: Sink
) -> None:
    config = configure(max_in_flight=2)
    for name in ("x", "y", "z"):
        (drop / f"{name}.csv").write_text(name)
    sink.set_default_response(401)

    result = cli("scan", "-c", str(config), env={"DAGSTER_CLOUD_API_TOKEN": TOKEN})
    assert result.returncode == 1
    assert all(r.header("Dagster-Cloud-Api-Token") == TOKEN for r in sink.requests)
    assert "token is missing, wrong or lacks permission" in result.stderr
    assert "materialization of drop/" in result.stderr
    assert "0 delivered, 3 pending, 0 dead" in result.stderr
    state = status(cli, config)
    assert (state["pending"], state["dead"]) == (3, 0)
    assert "token is missing" in str(state["last_error"])

    sink.reset()
    result = cli("scan", "-c", str(config), env={"DAGSTER_CLOUD_API_TOKEN": TOKEN})
    assert result.returncode == 0, result.stderr
    assert sorted(stem(r) for r in sink.requests if r.status == 200) == ["x", "y", "z"]
    for output in (result.stdout, result.stderr, json.dumps(state)):
        assert TOKEN not in output


def test_sigkill_mid_delivery_restart_delivers_all_with_few_duplicates(
    configure: Callable[..., Path], drop: Path, sink: Sink, tmp_path: Path
) -> None:
    files, max_in_flight = 1000, 8
    config = configure(max_in_flight=max_in_flight)
    for n in range(files):
        (drop / f"f{n:04d}.csv").write_text(f"{n}\n")
    sink.set_delay(0.02)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "asset_watcher", "scan", "-c", str(config)]
    with open(tmp_path / "first.log", "w") as log:
        victim = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            sink.wait_for_count(300, timeout=60)
        finally:
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    received_before = sink.count
    assert received_before < files  # it really died mid-delivery

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    # A request the kill cut short arrives with a truncated body: it is no report.
    counts = Counter(stem(r) for r in sink.requests if r.json is not None)
    assert set(counts) == {f"f{n:04d}" for n in range(files)}
    duplicates = sum(counts.values()) - files
    assert duplicates <= max_in_flight, duplicates


FULL_DISK_SCRIPT = """
mount -t tmpfs -o size=192k tmpfs "$STATE" || exit 99
"$PY" -m asset_watcher scan -c "$CFG" >/dev/null 2>"$OUT/first.err"; echo $? >"$OUT/first.rc"
"$PY" -m asset_watcher status --json -c "$CFG" >"$OUT/status.json" 2>"$OUT/status.err"
mount -o remount,size=16m "$STATE"
"$PY" -m asset_watcher scan -c "$CFG" >/dev/null 2>"$OUT/second.err"; echo $? >"$OUT/second.rc"
"""


def test_full_state_disk_is_reported_clearly_and_loses_nothing(
    configure: Callable[..., Path], drop: Path, sink: Sink, tmp_path: Path
) -> None:
    """A real full filesystem: a 192 KiB tmpfs as the state directory, in a private mount
    namespace (skipped where user namespaces or tmpfs mounts are not allowed)."""
    files = 300
    config = configure()
    state, out = tmp_path / "state", tmp_path / "out"
    state.mkdir()
    out.mkdir()
    for n in range(files):
        (drop / f"f{n:04d}.csv").write_text(f"{n}\n")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "PY": sys.executable,
        "CFG": str(config),
        "STATE": str(state),
        "OUT": str(out),
    }
    command = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", FULL_DISK_SCRIPT]
    try:
        ran = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        pytest.skip("unshare is not installed")
    if ran.returncode == 99 or not (out / "first.rc").exists():
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {ran.stderr.strip()}")

    first_err = (out / "first.err").read_text()
    assert (out / "first.rc").read_text().strip() == "1", first_err
    assert f"asset-watcher: state directory {state} is full" in first_err
    assert "Traceback" not in first_err
    # What was recorded before the disk filled is intact and queued; nothing was lost.
    recorded = json.loads((out / "status.json").read_text())
    assert 0 < recorded["tracked_files"] < files
    assert recorded["pending"] == recorded["tracked_files"]
    # With room again, the next scan finds the rest and delivers every file once.
    assert (out / "second.rc").read_text().strip() == "0", (out / "second.err").read_text()
    counts = Counter(stem(r) for r in sink.requests)
    assert counts == Counter({f"f{n:04d}": 1 for n in range(files)})
