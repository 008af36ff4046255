"""Checksum sidecars (SPEC 14) against the real dagster-webserver: matching, mismatching,
missing once `wait_seconds` passed, and late (re-evaluated alone), in `scan` and `run`."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from asset_watcher.config import Config, load_config
from asset_watcher.rules import compile_rules
from asset_watcher.scan import scan
from asset_watcher.state import StateStore
from tests.conftest import CliRun
from tests.integration.test_checks_dagster import deliver_all
from tests.support.agent_run import InProcessAgent, write
from tests.support.dagster_server import CheckEvaluationRecord, DagsterServer
from tests.support.waiting import poll_until

WAIT = 300.0


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def partner_rule(name: str, drop: Path, unique_name: str, wait: float) -> dict[str, object]:
    drop.mkdir(exist_ok=True)
    return {
        "name": name,
        "path": str(drop),
        "asset_key": f"{unique_name}/{{stem}}",  # one unpartitioned asset per file
        "checks": [
            {"type": "checksum", "sidecar": "{relpath}.sha256", "wait_seconds": wait},
            # A list in the folder, in another algorithm: a second digest, from the same read.
            {"type": "checksum", "name": "md5sums", "sidecar": "MD5SUMS", "wait_seconds": 0,
             "severity": "WARN"},
        ],
    }  # fmt: skip


def config_for(dagster: DagsterServer, tmp_path: Path, *rules: dict[str, object]) -> Config:
    return Config(
        dagster={"url": dagster.url},
        state={"directory": str(tmp_path / "state")},
        defaults={"settle_seconds": 0, "rescan_interval_seconds": 0},
        watch=list(rules),
    )


def evaluations(
    dagster: DagsterServer, unique_name: str, stem: str, count: int, check: str = "checksum"
) -> list[CheckEvaluationRecord]:
    records = dagster.wait_for_check_evaluations([unique_name, stem], count=count)
    return [r for r in records if r.check_name == check]


def scan_once(config: Config, now: float | None = None) -> tuple[int, int, int]:
    clock = (lambda: now) if now is not None else time.time
    with StateStore(config.state.resolved_directory()) as store:
        result = scan(compile_rules(config), store, clock=clock)
        deliver_all(config, store)
    return result.reported, result.skipped, result.rechecked


def test_scan_matching_mismatching_missing_and_late_sidecars(
    dagster: DagsterServer, unique_name: str, tmp_path: Path
) -> None:
    drop = tmp_path / "drop"
    config = config_for(dagster, tmp_path, partner_rule("partner", drop, unique_name, WAIT))
    good, bad, late = b"id,qty\n1,2\n", b"id,qty\n9,9\n", b"id,qty\n3,4\n"
    write(drop / "good.csv", good)
    write(drop / "good.csv.sha256", f"{sha256(good).upper()}  good.csv\n")
    write(drop / "bad.csv", bad)
    write(drop / "bad.csv.sha256", f"SHA256 (bad.csv) = {sha256(good)}\n")  # someone else's
    write(drop / "late.csv", late)
    write(drop / "MD5SUMS", f"{md5(good)}  good.csv\n{md5(bad)} *bad.csv\n")

    # late.csv's sidecar is missing and the file is younger than wait_seconds: skipped.
    assert scan_once(config) == (2, 1, 0)
    (good_check,) = evaluations(dagster, unique_name, "good", count=2)
    assert good_check.passed is True
    assert good_check.metadata["expected"] == good_check.metadata["actual"] == sha256(good)
    assert good_check.metadata["algorithm"] == "sha256"
    assert good_check.metadata["sidecar"] == str(drop / "good.csv.sha256")
    (bad_check,) = evaluations(dagster, unique_name, "bad", count=2)
    assert (bad_check.passed, bad_check.severity) == (False, "ERROR")
    assert bad_check.metadata["expected"] == sha256(good)
    assert bad_check.metadata["actual"] == sha256(bad)
    (bad_md5,) = evaluations(dagster, unique_name, "bad", count=2, check="md5sums")
    assert (bad_md5.passed, bad_md5.severity) == (True, "WARN")
    assert bad_md5.metadata["algorithm"] == "md5"
    assert bad_md5.metadata["actual"] == md5(bad)
    assert dagster.materializations([unique_name, "late"]) == []
    # Sidecars and the list are never reported as files.
    assert not [k for k in dagster.all_asset_keys() if k[0] == unique_name and k[1] != "good"
                and k[1] not in ("bad", "late")]  # fmt: skip

    # Once wait_seconds passed since the file changed: reported, the check failed.
    assert scan_once(config, now=time.time() + WAIT + 1) == (1, 0, 0)
    (missing,) = evaluations(dagster, unique_name, "late", count=2)
    assert missing.passed is False
    assert missing.metadata["sidecar_missing"] is True
    assert "missing" in missing.metadata["error"]
    (not_listed,) = evaluations(dagster, unique_name, "late", count=2, check="md5sums")
    assert "none named 'late.csv'" in not_listed.metadata["error"]

    # The sidecar comes late: the next scan evaluates the check again, alone.
    write(drop / "late.csv.sha256", f"{sha256(late)}\n")
    assert scan_once(config) == (0, 0, 1)
    first, again = evaluations(dagster, unique_name, "late", count=3)
    assert (first.passed, again.passed) == (False, True)
    assert again.metadata["reevaluated"] is True
    assert again.metadata["expected"] == sha256(late)
    assert len(dagster.materializations([unique_name, "late"])) == 1
    assert scan_once(config) == (0, 0, 0)  # once per sidecar change


def test_run_waits_for_sidecars_reports_missing_ones_and_rechecks_late_ones(
    dagster: DagsterServer, unique_name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asset_watcher")
    drop, short_drop = tmp_path / "drop", tmp_path / "short"
    config = config_for(
        dagster,
        tmp_path,
        partner_rule("partner", drop, unique_name, WAIT),
        # Sidecars waited for one second only: the missing case.
        partner_rule("short", short_drop, unique_name, 1.0),
    )
    agent = InProcessAgent(config).start()
    try:
        poll_until(lambda: "ready: watching" in caplog.text, timeout=30)
        # The sidecar first, then the file: reported at once, the check passing.
        data = b"id,qty\n5,6\n"
        write(drop / "first.csv.sha256", f"{sha256(data)} *first.csv\n")
        write(drop / "first.csv", data)
        (first,) = evaluations(dagster, unique_name, "first", count=2)
        assert first.passed is True

        # The file first: it waits for its sidecar (not reported), which then comes.
        write(drop / "waits.csv", data + b"7,8\n")
        poll_until(lambda: "waits.csv is complete; waiting for its checksum sidecar" in caplog.text)
        assert dagster.materializations([unique_name, "waits"]) == []
        write(drop / "waits.csv.sha256.part", f"{sha256(b'wrong')}\n").rename(
            drop / "waits.csv.sha256"
        )  # renamed into place, as SFTP clients do
        (mismatch,) = evaluations(dagster, unique_name, "waits", count=2)
        assert mismatch.passed is False
        assert mismatch.metadata["expected"] == sha256(b"wrong")

        # No sidecar within wait_seconds: reported, the check failed saying so.
        late = b"late\n"
        write(short_drop / "late.csv", late)
        (missing,) = evaluations(dagster, unique_name, "late", count=2)
        assert (missing.passed, missing.metadata["sidecar_missing"]) == (False, True)
        # It comes after all: the check alone is evaluated again.
        write(short_drop / "late.csv.sha256", f"{sha256(late)}  late.csv\n")
        _, again = evaluations(dagster, unique_name, "late", count=3)
        assert again.passed is True
        assert again.metadata["reevaluated"] is True
        assert len(dagster.materializations([unique_name, "late"])) == 1
    finally:
        assert agent.finish() == 0


def test_status_lists_waiting_files_and_a_sidecar_written_while_stopped_is_checked_at_start(
    dagster: DagsterServer,
    unique_name: str,
    tmp_path: Path,
    cli: CliRun,
    config_file: Callable[[str], Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="asset_watcher")
    drop, short_drop = tmp_path / "drop", tmp_path / "short"
    drop.mkdir()
    short_drop.mkdir()
    rules = "".join(
        f"""
        [[watch]]
        name = "{name}"
        path = "{folder}"
        asset_key = "{unique_name}/{{stem}}"
        [[watch.checks]]
        type = "checksum"
        sidecar = "{{relpath}}.sha256"
        wait_seconds = {wait}
        """
        for name, folder, wait in (("partner", drop, WAIT), ("short", short_drop, 0))
    )
    path = config_file(
        f"""
        [dagster]
        url = "{dagster.url}"
        [state]
        directory = "{tmp_path / "state"}"
        [defaults]
        settle_seconds = 0
        rescan_interval_seconds = 0
        """
        + rules
    )
    config = load_config(path)

    def status() -> dict[str, Any]:
        shown = cli("status", "-c", str(path), "--json")
        assert shown.returncode == 0, shown.stderr
        return json.loads(shown.stdout)  # type: ignore[no-any-return]

    agent = InProcessAgent(config).start()
    try:
        poll_until(lambda: "ready: watching" in caplog.text, timeout=30)
        write(drop / "waits.csv", b"id\n1\n")
        late = b"late\n"
        write(short_drop / "late.csv", late)
        (missing,) = evaluations(dagster, unique_name, "late", count=1)
        assert missing.passed is False
        # Noted within a second of the file parking (it is not per event).
        poll_until(
            lambda: [w["path"] for w in status()["waiting_files"]] == [str(drop / "waits.csv")]
        )
    finally:
        assert agent.finish() == 0
    # The agent stopped: what it left waiting, and what was reported without its sidecar.
    shown = status()
    (waiting,) = shown["waiting_files"]
    since = (drop / "waits.csv").stat().st_ctime
    assert (waiting["waits_for"], waiting["what"]) == (
        f"{drop}/waits.csv.sha256",
        "checksum sidecar",
    )
    assert waiting["since"] == pytest.approx(since, abs=1e-3)
    assert waiting["until"] == pytest.approx(since + WAIT, abs=1e-3)
    assert 0 <= waiting["age_seconds"] < 60
    assert shown["reported_without_sidecar"] == [
        {"path": str(short_drop / "late.csv"), "check_name": "checksum",
         "sidecar": str(short_drop / "late.csv.sha256")},
    ]  # fmt: skip
    text = cli("status", "-c", str(path)).stdout
    assert f"waiting {drop}/waits.csv: for its checksum sidecar {drop}/waits.csv.sha256," in text
    assert f"reported without its sidecar {short_drop}/late.csv: check checksum," in text

    # While it is stopped late.csv's sidecar comes: the next start's catch-up scan finds
    # it and evaluates the check again, alone, once; a second start evaluates nothing.
    write(short_drop / "late.csv.sha256", f"{sha256(late)}  late.csv\n")
    for start in range(2):
        caplog.clear()
        agent = InProcessAgent(config).start()
        try:
            poll_until(lambda: "catch-up scan done" in caplog.text, timeout=30)
            if start == 0:
                _, again = evaluations(dagster, unique_name, "late", count=2)
                assert (again.passed, again.metadata["reevaluated"]) == (True, True)
        finally:
            assert agent.finish() == 0
        with StateStore(config.state.resolved_directory()) as store:
            assert store.counts().pending == 0  # nothing left unsent that a count would miss
    assert len(evaluations(dagster, unique_name, "late", count=2)) == 2
    assert len(dagster.materializations([unique_name, "late"])) == 1
    assert status()["reported_without_sidecar"] == []
