"""Batches (SPEC 13) end to end against a real dagster-webserver: marker, manifest (JSON
and sha256sum text) and quiet batches in `run` and `scan`, restarts, and `kill -9`."""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from asset_watcher.config import Config
from tests.conftest import CliRun
from tests.support.agent_run import AgentProcess, InProcessAgent, write
from tests.support.dagster_server import DagsterServer

PARTS = {"part-00000.csv": b"id\n1\n", "part-00001.csv": b"id\n2\n3\n"}


def data_version(members: dict[str, bytes]) -> str:
    lines = sorted(
        f"{name}\t{hashlib.sha256(data).hexdigest()}\n" for name, data in members.items()
    )
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def agent_config(
    tmp_path: Path, dagster: DagsterServer, drop: Path, key: str, batch: dict[str, Any], **rule: Any
) -> Config:
    return Config(
        dagster={"url": dagster.url, "timeout_seconds": 5},
        state={"directory": str(tmp_path / "state")},
        defaults={"settle_seconds": 0.3, "rescan_interval_seconds": 0},
        watch=[{"path": str(drop), "asset_key": f"{key}/{{parent}}", "batch": batch, **rule}],
    )


def test_marker_batch_in_run_is_one_materialization(
    tmp_path: Path, dagster: DagsterServer, drop: Path, unique_name: str
) -> None:
    config = agent_config(
        tmp_path, dagster, drop, unique_name,
        {"complete_when": "marker", "marker": "_SUCCESS"},
        metadata={"vendor": "acme"},
        checks=[{"type": "size", "min_bytes": 1}],
    )  # fmt: skip
    agent = InProcessAgent(config).start()
    try:
        folder = drop / "2026-11-26"
        folder.mkdir()
        for name, data in PARTS.items():
            write(folder / name, data)
        write(folder / "_SUCCESS", b"")
        (event,) = dagster.wait_for_materializations([unique_name, "2026-11-26"], timeout=30)
        # A second batch is the barrier: once it is in, the first was not sent twice.
        other = drop / "2026-11-27"
        other.mkdir()
        write(other / "part-00000.csv", b"x\n")
        write(other / "_SUCCESS", b"")
        dagster.wait_for_materializations([unique_name, "2026-11-27"], timeout=30)
        (check,) = dagster.wait_for_check_evaluations([unique_name, "2026-11-26"], timeout=30)
    finally:
        assert agent.finish() == 0
    assert len(dagster.materializations([unique_name, "2026-11-26"])) == 1
    assert event.data_version == data_version(PARTS)
    meta = event.metadata
    assert meta["file_count"] == 2
    assert meta["size_bytes"] == sum(len(d) for d in PARTS.values())
    assert event.metadata_types["files"] == "JsonMetadataValue"
    assert [f["name"] for f in meta["files"]] == sorted(PARTS)
    assert meta["files_truncated"] is False
    assert meta["path"] == str(folder)
    assert str(meta["dagster/uri"]).endswith(str(folder))
    assert meta["vendor"] == "acme" and "modified_at" in meta
    assert check.check_name == "size" and check.passed is True
    assert check.metadata["members_checked"] == 2


def scan_config(
    config_file: Callable[[str], Path], dagster: DagsterServer, drop: Path, state: Path,
    key: str, batch: str,
) -> Path:  # fmt: skip
    return config_file(
        f"""
        [dagster]
        url = "{dagster.url}"
        timeout_seconds = 5
        [state]
        directory = "{state}"
        [defaults]
        settle_seconds = 0
        [[watch]]
        name = "deliveries"
        path = "{drop}"
        asset_key = "{key}/{{parent}}"
        [watch.batch]
        """
        + textwrap.dedent(batch)
    )


def test_manifest_batches_json_and_sha256sum_with_a_failed_check(
    dagster: DagsterServer,
    cli: CliRun,
    config_file: Callable[[str], Path],
    drop: Path,
    tmp_path: Path,
    unique_name: str,
) -> None:
    good, bad = drop / "good", drop / "bad"
    for folder in (good, bad):
        folder.mkdir()
        for name, data in PARTS.items():
            (folder / name).write_bytes(data)
    listing = [
        {"name": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
        for n, d in PARTS.items()
    ]
    (good / "manifest.json").write_text(json.dumps({"files": listing}))
    sums = f"{hashlib.sha256(PARTS['part-00000.csv']).hexdigest()}  part-00000.csv\n"
    sums += f"{'0' * 64}  part-00001.csv\n"
    (bad / "manifest.json").write_text(sums)  # sha256sum's text, one digest wrong
    config = scan_config(
        config_file, dagster, drop, tmp_path / "state", unique_name,
        'complete_when = "manifest"\nmanifest = "manifest.json"\n',
    )  # fmt: skip
    result = cli("-c", str(config), "scan")
    assert result.returncode == 0, result.stderr
    for folder in (good, bad):
        (event,) = dagster.wait_for_materializations([unique_name, folder.name], timeout=30)
        assert event.data_version == data_version(PARTS)
        assert event.metadata["file_count"] == 2  # the manifest is no member
    (passed,) = dagster.wait_for_check_evaluations([unique_name, "good"], timeout=30)
    assert passed.check_name == "manifest" and passed.passed is True
    (failed,) = dagster.wait_for_check_evaluations([unique_name, "bad"], timeout=30)
    assert failed.passed is False
    assert [w["name"] for w in failed.metadata["wrong_digest"]] == ["part-00001.csv"]
    again = cli("-c", str(config), "scan")
    assert again.returncode == 0, again.stderr
    assert "0 reported" in again.stderr
    assert len(dagster.materializations([unique_name, "good"])) == 1


def test_scan_over_complete_and_incomplete_batches_across_runs(
    dagster: DagsterServer,
    cli: CliRun,
    config_file: Callable[[str], Path],
    drop: Path,
    tmp_path: Path,
    unique_name: str,
) -> None:
    done, waiting = drop / "done", drop / "waiting"
    for folder in (done, waiting):
        folder.mkdir()
        (folder / "part-0").write_bytes(b"a")
    (done / "_SUCCESS").write_bytes(b"")
    config = scan_config(
        config_file, dagster, drop, tmp_path / "state", unique_name,
        'complete_when = "marker"\nmarker = "_SUCCESS"\n',
    )  # fmt: skip
    first = cli("-c", str(config), "scan")
    assert first.returncode == 0, first.stderr
    dagster.wait_for_materializations([unique_name, "done"], timeout=30)
    status = cli("-c", str(config), "status")
    assert "waiting" in status.stdout and "its marker _SUCCESS" in status.stdout, status.stdout
    (waiting / "_SUCCESS").write_bytes(b"")
    second = cli("-c", str(config), "scan")
    assert second.returncode == 0, second.stderr
    dagster.wait_for_materializations([unique_name, "waiting"], timeout=30)
    third = cli("-c", str(config), "scan")
    assert "0 reported" in third.stderr, third.stderr
    assert len(dagster.materializations([unique_name, "done"])) == 1
    assert len(dagster.materializations([unique_name, "waiting"])) == 1


def test_quiet_batch_in_run(
    tmp_path: Path, dagster: DagsterServer, drop: Path, unique_name: str
) -> None:
    config = agent_config(
        tmp_path, dagster, drop, unique_name, {"complete_when": "quiet", "quiet_seconds": 1.0}
    )
    agent = InProcessAgent(config).start()
    try:
        folder = drop / "q"
        folder.mkdir()
        for name, data in PARTS.items():
            write(folder / name, data)
        (event,) = dagster.wait_for_materializations([unique_name, "q"], timeout=30)
        write(folder / "part-00002.csv", b"late\n")  # after the report: a new version
        events = dagster.wait_for_materializations([unique_name, "q"], count=2, timeout=30)
    finally:
        assert agent.finish() == 0
    assert event.metadata["file_count"] == 2
    assert events[-1].metadata["file_count"] == 3
    assert event.data_version == data_version(PARTS)


@pytest.fixture
def processes() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for process in started:
        process.kill()


def test_kill_9_while_a_batch_completes_reports_it_once(
    tmp_path: Path,
    dagster: DagsterServer,
    config_file: Callable[[str], Path],
    drop: Path,
    unique_name: str,
    processes: list[AgentProcess],
) -> None:
    config = config_file(
        f"""
        [dagster]
        url = "{dagster.url}"
        timeout_seconds = 5
        [state]
        directory = "{tmp_path / "state"}"
        [defaults]
        settle_seconds = 1.0
        rescan_interval_seconds = 0
        [[watch]]
        path = "{drop}"
        asset_key = "{unique_name}/{{parent}}"
        [watch.batch]
        complete_when = "marker"
        marker = "_SUCCESS"
        """
    )
    first = AgentProcess(config, tmp_path / "first.log").start()
    processes.append(first)
    first.wait_ready()
    folder = drop / "k"
    folder.mkdir()
    for name, data in PARTS.items():
        write(folder / name, data)
    write(folder / "_SUCCESS", b"")
    os.kill(first.pid, 9)  # within the settle second: before the batch is decided
    first.wait()
    second = AgentProcess(config, tmp_path / "second.log").start()
    processes.append(second)
    second.wait_ready()
    (event,) = dagster.wait_for_materializations([unique_name, "k"], timeout=30)
    # Killed again once it is reported: a third start reports nothing new.
    second.wait_log("reported batch")
    os.kill(second.pid, 9)
    second.wait()
    barrier = drop / "barrier"
    barrier.mkdir()
    write(barrier / "p", b"x")
    write(barrier / "_SUCCESS", b"")
    third = AgentProcess(config, tmp_path / "third.log").start()
    processes.append(third)
    dagster.wait_for_materializations([unique_name, "barrier"], timeout=30)
    assert len(dagster.materializations([unique_name, "k"])) == 1
    assert event.data_version == data_version(PARTS)
