"""arrivals.py: which file is for which due time, and windows that closed, on an injected
clock, real files and a real state store (restarts reopen it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from asset_watcher.arrivals import WindowTimer
from asset_watcher.config import Config
from asset_watcher.expect import zone
from asset_watcher.fingerprint import stat_of
from asset_watcher.rules import compile_rules, owner
from asset_watcher.state import StateStore
from asset_watcher.versions import Record, Versions

BERLIN = zone("Europe/Berlin")
CHECK = "arrived_on_time"


def berlin(*parts: int) -> float:
    return datetime(*parts, tzinfo=BERLIN).timestamp()  # type: ignore[misc]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class World:
    """A drop folder with one expected rule, its state, and the agent's two halves that
    judge windows: Versions (a file arrives) and WindowTimer (a window closes)."""

    def __init__(self, tmp_path: Path, start: float, expect: dict[str, Any], **rule: Any):
        self.drop = tmp_path / "drop"
        self.drop.mkdir(exist_ok=True)
        self.state = tmp_path / "state"
        self.clock = Clock(start)
        config = Config(
            watch=[
                {
                    "path": str(self.drop),
                    "asset_key": "partner/orders",
                    "expect": {"timezone": "Europe/Berlin", **expect},
                    **rule,
                }
            ]
        )
        self.rules = compile_rules(config)
        self.seen: set[int] = set()
        self.open()

    def open(self) -> None:
        """Start (again): a store on the same directory, a new timer judging at start."""
        self.store = StateStore(self.state)
        self.versions = Versions(self.store, self.rules, clock=self.clock)
        self.timer = WindowTimer(self.store, self.rules, clock=self.clock)

    def restart(self, at: float) -> None:
        self.store.close()
        self.clock.now = at
        self.open()

    def queued(self) -> list[dict[str, Any]]:
        """Bodies queued since the last look (the outbox is never delivered here)."""
        # Read directly: `due` gives the head of each order key only.
        rows = self.store.db.execute("SELECT id, kind, body FROM outbox ORDER BY id").fetchall()
        new = [(i, k, b) for i, k, b in rows if i not in self.seen]
        self.seen.update(i for i, _, _ in new)
        return [{"kind": k, **json.loads(b)} for _, k, b in new]

    def tick(self, at: float) -> list[dict[str, Any]]:
        self.clock.now = at
        self.timer.tick()
        return self.queued()

    def arrive(self, name: str, at: float) -> list[dict[str, Any]]:
        self.clock.now = at
        path = self.drop / name
        path.write_text(f"{name} {at}\n")
        match = owner(self.rules, str(path))
        assert match is not None
        decision = self.versions.decide(self.rules[0], match, stat_of(path.stat()), None)
        assert isinstance(decision, Record), decision
        self.versions.record(match, decision)
        return self.queued()


def checks(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [b for b in bodies if b["kind"] == "check" and b["check_name"] == CHECK]


def materializations(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [b for b in bodies if b["kind"] == "materialization"]


@pytest.fixture
def daily(tmp_path: Path) -> Iterator[World]:
    """Due at 06:00 Berlin every day, window closes at 07:00; watched since day 1 00:00."""
    world = World(tmp_path, berlin(2025, 6, 2), {"cron": "0 6 * * *", "grace_minutes": 60})
    yield world
    world.store.close()


@pytest.fixture
def daily_partitioned(tmp_path: Path) -> Iterator[World]:
    world = World(
        tmp_path,
        berlin(2025, 6, 2),
        {"cron": "0 6 * * *", "grace_minutes": 60, "partition": "{due:%Y-%m-%d}"},
        regex=r"orders_(?P<day>\d{4}-\d{2}-\d{2})",
        partition="{day}",
    )
    yield world
    world.store.close()


def test_an_on_time_file_passes_right_after_its_own_report(daily: World) -> None:
    bodies = daily.arrive("orders.csv", berlin(2025, 6, 2, 6, 20))
    assert [b["kind"] for b in bodies] == ["materialization", "check"]
    (check,) = checks(bodies)
    assert check["passed"] is True
    assert check["metadata"] == {
        "due_at": "2025-06-02T06:00:00+02:00",
        "deadline": "2025-06-02T07:00:00+02:00",
        "arrived_at": "2025-06-02T06:20:00+02:00",
        "lateness_seconds": 1200,
        "path": "orders.csv",
    }
    assert "partition" not in check
    # The window is judged: its deadline passing adds nothing.
    assert daily.tick(berlin(2025, 6, 2, 7, 0, 1)) == []


def test_an_early_file_passes_with_negative_lateness(daily: World) -> None:
    (check,) = checks(daily.arrive("orders.csv", berlin(2025, 6, 2, 5, 50)))
    assert (check["passed"], check["metadata"]["lateness_seconds"]) == (True, -600)


def test_a_missed_window_fails_once_with_its_severity(tmp_path: Path) -> None:
    world = World(
        tmp_path, berlin(2025, 6, 2), {"cron": "0 6 * * *", "grace_minutes": 60, "severity": "WARN"}
    )
    assert world.tick(berlin(2025, 6, 2, 6, 59, 59)) == []  # open until 07:00
    (check,) = checks(world.tick(berlin(2025, 6, 2, 7, 0)))
    assert (check["passed"], check["severity"]) == (False, "WARN")
    assert check["metadata"] == {
        "due_at": "2025-06-02T06:00:00+02:00",
        "deadline": "2025-06-02T07:00:00+02:00",
        "missing": True,
    }
    assert world.tick(berlin(2025, 6, 2, 9)) == []
    world.store.close()


def test_a_late_file_carries_its_lateness_and_no_second_evaluation(daily: World) -> None:
    assert len(checks(daily.tick(berlin(2025, 6, 2, 7, 1)))) == 1  # failed
    bodies = daily.arrive("orders.csv", berlin(2025, 6, 2, 8, 30))
    assert checks(bodies) == []
    (event,) = materializations(bodies)
    assert event["metadata"]["due_at"] == "2025-06-02T06:00:00+02:00"
    assert event["metadata"]["lateness_seconds"] == 9000
    # One late file fills one missed window; the next file counts for tomorrow (early).
    (check,) = checks(daily.arrive("orders2.csv", berlin(2025, 6, 2, 9)))
    assert check["metadata"]["due_at"] == "2025-06-03T06:00:00+02:00"
    assert check["metadata"]["lateness_seconds"] == -21 * 3600


def test_a_late_file_right_after_the_deadline_judges_the_window_itself(daily: World) -> None:
    # The timer has not looked since the deadline: the file's transaction judges it.
    bodies = daily.arrive("orders.csv", berlin(2025, 6, 2, 7, 0, 1))
    assert [b["kind"] for b in bodies] == ["materialization", "check"]
    assert checks(bodies)[0]["passed"] is False
    assert materializations(bodies)[0]["metadata"]["lateness_seconds"] == 3601
    assert daily.tick(berlin(2025, 6, 2, 7, 1)) == []


def test_partitioned_files_are_for_the_due_time_with_their_partition(
    daily_partitioned: World,
) -> None:
    world = daily_partitioned
    # Tomorrow's file, a day early.
    (check,) = checks(world.arrive("orders_2025-06-03.csv", berlin(2025, 6, 2, 5)))
    assert (check["partition"], check["passed"]) == ("2025-06-03", True)
    assert check["metadata"]["lateness_seconds"] == -25 * 3600
    # Today's window closes without today's file.
    (missed,) = checks(world.tick(berlin(2025, 6, 2, 7)))
    assert (missed["partition"], missed["passed"]) == ("2025-06-02", False)
    # Today's file, late: lateness in its materialization, no second evaluation.
    bodies = world.arrive("orders_2025-06-02.csv", berlin(2025, 6, 2, 10))
    assert checks(bodies) == []
    assert materializations(bodies)[0]["metadata"]["lateness_seconds"] == 4 * 3600
    # Tomorrow's file again, and tomorrow's deadline: the window was judged once.
    assert checks(world.arrive("orders_2025-06-03b.csv", berlin(2025, 6, 3, 6))) == []
    assert world.tick(berlin(2025, 6, 3, 7, 30)) == []
    # A file for a day no due time has (outside the search) is just a file.
    assert checks(world.arrive("orders_2024-01-01.csv", berlin(2025, 6, 3, 8))) == []


def test_a_file_a_moment_after_its_window_was_judged_missed_is_late(
    daily_partitioned: World,
) -> None:
    """Within the second after the deadline the search for open windows still meets the
    due time; the timer judged it missed already, so the file is late for it (it was
    taken for a file sent again, and got no lateness)."""
    world = daily_partitioned
    (missed,) = checks(world.tick(berlin(2025, 6, 2, 7)))
    assert missed["passed"] is False
    bodies = world.arrive("orders_2025-06-02.csv", berlin(2025, 6, 2, 7) + 0.5)
    assert checks(bodies) == []
    assert materializations(bodies)[0]["metadata"]["lateness_seconds"] == 3600.5


def test_windows_closed_while_stopped_are_judged_at_start_once(daily: World) -> None:
    daily.arrive("orders.csv", berlin(2025, 6, 2, 6, 5))  # day 1 on time
    daily.restart(berlin(2025, 6, 5, 12))  # stopped through days 2, 3, 4 (and 5's 07:00)
    missed = checks(daily.queued()) or checks(daily.tick(berlin(2025, 6, 5, 12)))
    assert [c["metadata"]["due_at"][:10] for c in missed] == [
        "2025-06-03",
        "2025-06-04",
        "2025-06-05",
    ]
    assert all(c["passed"] is False for c in missed)
    daily.restart(berlin(2025, 6, 5, 13))
    assert daily.tick(berlin(2025, 6, 5, 13)) == []


def test_catch_up_reaches_back_seven_days_at_most(daily: World) -> None:
    daily.tick(berlin(2025, 6, 2, 1))
    now = berlin(2025, 6, 20, 12)
    daily.restart(now)
    missed = checks(daily.tick(now))
    deadlines = [datetime.fromisoformat(c["metadata"]["deadline"]).timestamp() for c in missed]
    assert len(missed) == 7
    assert min(deadlines) >= now - timedelta(days=7).total_seconds()
    assert missed[-1]["metadata"]["due_at"] == "2025-06-20T06:00:00+02:00"


def test_windows_due_before_the_expectation_was_watched_are_not_judged(
    tmp_path: Path,
) -> None:
    # First start at 06:30, inside the 06:00 window: it was not watched when it came due.
    world = World(tmp_path, berlin(2025, 6, 2, 6, 30), {"cron": "0 6 * * *", "grace_minutes": 60})
    assert world.tick(berlin(2025, 6, 2, 8)) == []
    assert len(checks(world.tick(berlin(2025, 6, 3, 7)))) == 1
    world.store.close()


def test_a_window_across_the_spring_forward_gap(tmp_path: Path) -> None:
    world = World(tmp_path, berlin(2025, 3, 29, 12), {"cron": "30 2 * * *", "grace_minutes": 30})
    (missed,) = checks(world.tick(berlin(2025, 3, 30, 4)))
    assert missed["metadata"]["due_at"] == "2025-03-30T03:00:00+02:00"
    assert missed["metadata"]["deadline"] == "2025-03-30T03:30:00+02:00"
    world.store.close()


def test_the_repeated_hour_is_one_window(tmp_path: Path) -> None:
    world = World(tmp_path, berlin(2025, 10, 25, 12), {"cron": "30 2 * * *", "grace_minutes": 10})
    # 02:35 CEST: on time for the first 02:30; the second 02:30 (CET) is no due time.
    (passed,) = checks(world.arrive("orders.csv", berlin(2025, 10, 26, 2, 35)))
    assert passed["metadata"]["due_at"] == "2025-10-26T02:30:00+02:00"
    assert world.tick(berlin(2025, 10, 26, 4)) == []
    world.store.close()
