"""`scan` as an operator runs it around an outage, and what it writes to stderr."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asset_watcher.state import DB_NAME
from tests.conftest import CliRun
from tests.support.sink import RecordedRequest, Sink


def config_for(config_file: Callable[[str], Path], url: str, tmp_path: Path) -> Path:
    drop = tmp_path / "drop"
    drop.mkdir(exist_ok=True)
    for name in ("a", "b", "c"):
        (drop / f"{name}.csv").write_text(f"{name}\n")
    return config_file(
        f"""
        [dagster]
        url = "{url}"
        timeout_seconds = 1
        [state]
        directory = "{tmp_path / "state"}"
        [[watch]]
        path = "{drop}"
        asset_key = "k/{{stem}}"
        settle_seconds = 0
        """
    )


def json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line parsed as JSON (fails on the first that is not)."""
    entries = []
    for line in stderr.splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict) and "message" in entry and "level" in entry, line
        entries.append(entry)
    return entries


def test_scan_after_an_outage_delivers_what_an_earlier_scan_backed_off(
    sink: Sink, cli: CliRun, config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    config = config_for(config_file, sink.url, tmp_path)
    sink.down()
    first = cli("-c", str(config), "scan")
    assert first.returncode == 1, first.stderr
    assert "0 delivered, 3 pending" in first.stderr
    assert "cannot reach" in first.stderr
    # The earlier run stored a retry time far beyond the next scan's patience for one.
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / DB_NAME)) as db:
        db.execute(
            "UPDATE outbox SET next_attempt_at = 4e9 WHERE id = (SELECT MIN(id) FROM outbox)"
        )
        db.commit()
    sink.up()
    second = cli("-c", str(config), "scan")
    assert second.returncode == 0, second.stderr
    assert "3 delivered, 0 pending, 0 dead" in second.stderr
    assert sorted(r.json["asset_key"][1] for r in sink.requests) == ["a", "b", "c"]


def test_json_logs_make_every_stderr_line_json_and_name_only_what_is_left(
    sink: Sink, cli: CliRun, config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    config = config_for(config_file, sink.url, tmp_path)

    def asset(name: str) -> Callable[[RecordedRequest], bool]:
        return lambda request: bool(request.json and request.json["asset_key"][1] == name)

    sink.fail_next(1, 503, message="sink: briefly down", match=asset("a"))  # then recovers
    sink.fail_next(None, 422, message="sink: no such asset", match=asset("b"))
    result = cli("-c", str(config), "--log-format", "json", "scan")
    assert result.returncode == 1, result.stderr  # b was dead-lettered
    entries = json_lines(result.stderr)
    (summary,) = [e for e in entries if "files seen" in e["message"]]
    assert (summary["reported"], summary["delivered"], summary["pending"], summary["dead"]) == (
        3,
        2,
        0,
        1,
    )
    (note,) = [e for e in entries if "in this run" in e["message"]]
    assert note["level"] == "error"
    assert "no such asset" in note["message"]
    # The 503 was retried and recovered from: it is no reason for the failure.
    assert not any("briefly down" in e["message"] for e in entries if e["level"] == "error")

    sink.reset()
    clean = cli("-c", str(config), "--log-format", "json", "scan")
    assert clean.returncode == 0, clean.stderr
    assert [e["level"] for e in json_lines(clean.stderr)] == [
        "info",
        "warning",
    ]  # summary, old dead letter


def test_json_logs_for_a_recovered_failure_mention_no_error(
    sink: Sink, cli: CliRun, config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    config = config_for(config_file, sink.url, tmp_path)
    sink.fail_next(1, 500, message="sink: one bad moment")
    result = cli("-c", str(config), "--log-format", "json", "scan")
    assert result.returncode == 0, result.stderr
    entries = json_lines(result.stderr)
    assert not [e for e in entries if e["level"] == "error"]
    (summary,) = [e for e in entries if "files seen" in e["message"]]
    assert (summary["delivered"], summary["pending"], summary["dead"]) == (3, 0, 0)


def test_json_logs_for_errors_before_any_scan(
    cli: CliRun, config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    config = config_file('[dagster]\nurl = "localhost:3000"\n')
    result = cli("-c", str(config), "--log-format", "json", "scan")
    assert result.returncode == 2
    (entry,) = json_lines(result.stderr)
    assert entry["level"] == "error" and "dagster.url" in entry["message"]
