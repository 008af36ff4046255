"""expect.py: cron due times in an IANA zone, across DST both ways; config errors."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from asset_watcher.arrivals import MISSED, expectations, missed_report
from asset_watcher.config import load_config
from asset_watcher.errors import ConfigError
from asset_watcher.expect import Schedule, check_cron, zone
from asset_watcher.rules import compile_rules
from asset_watcher.state import StateStore, Window
from tests.conftest import CliRun

BERLIN = zone("Europe/Berlin")


def at(*parts: int, fold: int = 0) -> float:
    return datetime(*parts, tzinfo=BERLIN, fold=fold).timestamp()  # type: ignore[misc]


def due_times(cron: str, start: float, count: int) -> list[str]:
    schedule = Schedule(cron, BERLIN, 0)
    return [
        schedule.local(d).isoformat() for d in itertools.islice(schedule.due_times(start), count)
    ]


def test_daily_due_times_follow_the_wall_clock_across_both_changes() -> None:
    assert due_times("0 6 * * *", at(2025, 3, 29), 3) == [
        "2025-03-29T06:00:00+01:00",
        "2025-03-30T06:00:00+02:00",
        "2025-03-31T06:00:00+02:00",
    ]
    assert due_times("0 6 * * *", at(2025, 10, 25, 12), 2) == [
        "2025-10-26T06:00:00+01:00",
        "2025-10-27T06:00:00+01:00",
    ]


def test_a_skipped_local_time_is_due_once_when_the_clocks_jump() -> None:
    assert due_times("30 2 * * *", at(2025, 3, 29, 12), 2) == [
        "2025-03-30T03:00:00+02:00",
        "2025-03-31T02:30:00+02:00",
    ]
    # Several skipped times and the real 03:00 fall together into one due time.
    assert due_times("*/30 1-3 * * *", at(2025, 3, 30), 5) == [
        "2025-03-30T01:00:00+01:00",
        "2025-03-30T01:30:00+01:00",
        "2025-03-30T03:00:00+02:00",
        "2025-03-30T03:30:00+02:00",
        "2025-03-31T01:00:00+02:00",
    ]


def test_a_repeated_local_time_is_due_once_at_its_first_occurrence() -> None:
    assert due_times("30 2 * * *", at(2025, 10, 25, 12), 2) == [
        "2025-10-26T02:30:00+02:00",
        "2025-10-27T02:30:00+01:00",
    ]
    # Started inside the repeated hour's second pass: its times were due in the first.
    assert due_times("*/20 2 * * *", at(2025, 10, 26, 2, 10, fold=1), 1) == [
        "2025-10-27T02:00:00+01:00"
    ]


def test_the_previous_due_time_inside_the_repeated_hour() -> None:
    schedule = Schedule("*/15 * * * *", BERLIN, 0)
    before = at(2025, 10, 26, 2, 5, fold=1)  # 02:05 CET, an hour after 02:05 CEST
    # 02:00 was due at its first occurrence (CEST), so the latest due time is 02:45 CEST.
    assert schedule.local(schedule.previous_due(before) or 0).isoformat() == (
        "2025-10-26T02:45:00+02:00"
    )
    latest = itertools.islice(schedule.due_times_before(before), 3)
    assert [schedule.local(d).isoformat() for d in latest] == [
        "2025-10-26T02:45:00+02:00",
        "2025-10-26T02:30:00+02:00",
        "2025-10-26T02:15:00+02:00",
    ]


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("0 0 30 2 *", "never fires"),
        ("61 * * * *", "invalid cron"),
        ("* * * *", "expected five fields"),
        ("0 0 * * * 2030", "expected five fields"),
    ],
)
def test_crons_that_cannot_be_used(cron: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_cron(cron)


def test_a_leap_day_cron_fires() -> None:
    assert check_cron("0 0 29 2 *") == "0 0 29 2 *"


def test_config_errors_name_the_expect_keys(drop: Path, config_file: Callable[[str], Path]) -> None:
    path = config_file(
        f"""
        [[watch]]
        path = "{drop}"
        asset_key = "partner/orders"
        [watch.expect]
        cron = "0 0 30 2 *"
        timezone = "Mars/Olympus"
        partition = "{{day}}"

        [[watch]]
        path = "{drop}"
        asset_key = "partner/{{stem}}"
        [watch.expect]
        cron = "0 6 * * *"

        [[watch]]
        path = "{drop}"
        asset_key = "partner/x"
        [watch.expect]
        cron = "0 6 * * *"
        partition = "{{due:%Y-%m-%d}}"

        [[watch]]
        path = "{drop}"
        asset_key = "partner/y"
        [watch.expect]
        cron = "0 6 * * *"
        grace_minutes = -1
        """
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = caught.value.problems
    assert any(p.startswith("watch[1].expect.cron: ") and "never fires" in p for p in problems)
    assert any(p.startswith("watch[1].expect.timezone: ") and "Mars" in p for p in problems)
    assert any(p.startswith("watch[1].expect.partition: ") for p in problems)
    assert any(p.startswith("watch[2].expect: ") and "stem" in p for p in problems)
    assert any(p.startswith("watch[4].expect.grace_minutes: ") for p in problems)
    assert any(p.startswith("watch[3].expect: ") and "partition" in p for p in problems)


def test_the_default_zone_is_the_hosts(
    drop: Path, config_file: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    path = config_file(
        f"""
        [[watch]]
        path = "{drop}"
        asset_key = "partner/orders"
        [watch.expect]
        cron = "0 6 * * 1-5"
        """
    )
    expect = load_config(path).watch[0].expect
    assert expect is not None
    assert (expect.timezone, expect.grace_minutes, expect.check_name, expect.severity) == (
        "America/New_York",
        60.0,
        "arrived_on_time",
        "ERROR",
    )


def test_check_config_rejects_a_bad_cron_and_zone_naming_the_keys(
    cli: CliRun, drop: Path, config_file: Callable[[str], Path]
) -> None:
    path = config_file(
        f"""
        [[watch]]
        path = "{drop}"
        asset_key = "partner/orders"
        [watch.expect]
        cron = "0 6 * *"
        timezone = "Europe/Nowhere"
        """
    )
    result = cli("check-config", "-c", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert "asset-watcher: watch[1].expect.cron: expected five fields" in result.stderr
    assert "asset-watcher: watch[1].expect.timezone: unknown IANA" in result.stderr
    assert len(lines) == 2


def test_explain_and_status_show_the_next_due_time_and_missed_windows(
    cli: CliRun, tmp_path: Path, drop: Path, config_file: Callable[[str], Path]
) -> None:
    state = tmp_path / "state"
    path = config_file(
        f"""
        [state]
        directory = "{state}"
        [[watch]]
        name = "orders"
        path = "{drop}"
        asset_key = "partner/orders"
        regex = 'orders_(?P<day>\\d{{8}})'
        partition = "{{day}}"
        [watch.expect]
        cron = "0 6 * * *"
        timezone = "UTC"
        partition = "{{due:%Y%m%d}}"
        """
    )
    now = time.time()
    expectation = expectations(compile_rules(load_config(path)))["orders"]
    upcoming = expectation.schedule.next_due(now)
    explained = cli("explain", "-c", str(path), str(drop / "orders_20250101.csv"))
    assert explained.returncode == 0, explained.stderr
    assert f"  next due: {expectation.iso(upcoming)}\n" in explained.stdout
    assert f"  next due partition: {expectation.partition_of(upcoming)}\n" in explained.stdout
    # An agent watched it from two days ago and judged yesterday's window missed.
    yesterday = expectation.schedule.previous_due(now - 86400 + 1) or 0
    with StateStore(state) as store:
        store.expectation_since("orders", now - 2 * 86400)
        store.queue_window_reports(
            [(Window("orders", yesterday, MISSED), missed_report(expectation, yesterday))]
        )
    status = cli("status", "-c", str(path), "--json")
    assert status.returncode == 0, status.stderr
    (shown,) = json.loads(status.stdout)["expected_arrivals"]
    assert shown["next_due"] == expectation.iso(upcoming)
    assert shown["missed"] == [expectation.iso(yesterday)]
    text = cli("status", "-c", str(path)).stdout
    assert f"  missed: due {expectation.iso(yesterday)}, no file came\n" in text
