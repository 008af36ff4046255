"""[watch.expect] end to end: the agent's `arrived_on_time` evaluations and a late file's
lateness, as the real dagster-webserver records them.

A cron due every minute with no grace closes a window seconds after the start (the
agent's wall clock is set to a few seconds before a minute's end), and a daily one takes
a file dated tomorrow as an early (so passing) arrival.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from asset_watcher.config import Config
from asset_watcher.state import StateStore
from tests.support.agent_run import InProcessAgent, write
from tests.support.dagster_server import DagsterServer
from tests.support.waiting import poll_until

CHECK = "arrived_on_time"


def test_on_time_missed_and_late_files_in_dagster(
    tmp_path: Path, dagster: DagsterServer, unique_name: str
) -> None:
    daily, minutely = tmp_path / "daily", tmp_path / "minutely"
    daily.mkdir()
    minutely.mkdir()
    state = tmp_path / "state"
    config = Config(
        dagster={"url": dagster.url},
        state={"directory": str(state)},
        defaults={"settle_seconds": 0.2},
        watch=[
            {
                "path": str(daily),
                "asset_key": f"{unique_name}/daily",
                "regex": r"orders_(?P<day>\d{4}-\d{2}-\d{2})\.csv$",
                "partition": "{day}",
                "expect": {
                    "cron": "0 0 * * *",
                    "timezone": "UTC",
                    "grace_minutes": 60,
                    "partition": "{due:%Y-%m-%d}",
                },
            },
            {
                "path": str(minutely),
                "asset_key": f"{unique_name}/minutely",
                "regex": r"m_(?P<minute>\d{8}T\d{4})\.csv$",
                "partition": "{minute}",
                "expect": {
                    "cron": "* * * * *",
                    "timezone": "UTC",
                    "grace_minutes": 0,
                    "partition": "{due:%Y%m%dT%H%M}",
                    "severity": "WARN",
                },
            },
        ],
    )
    # The agent's clock runs a few seconds before a minute's end, so the minutely window
    # closes soon instead of up to a minute from now.
    offset = 57.0 - time.time() % 60
    agent = InProcessAgent(config, wall_clock=lambda: time.time() + offset).start()
    try:
        # An early file for tomorrow: a passing evaluation with its metadata.
        now = datetime.fromtimestamp(time.time() + offset, timezone.utc)
        tomorrow = (now + timedelta(days=1)).strftime("%Y-%m-%d")
        write(daily / f"orders_{tomorrow}.csv", b"id\n1\n")
        (passed,) = dagster.wait_for_check_evaluations([unique_name, "daily"], CHECK, timeout=30)
        assert (passed.passed, passed.partition) == (True, tomorrow)
        assert passed.metadata["due_at"] == f"{tomorrow}T00:00:00+00:00"
        assert passed.metadata["deadline"] == f"{tomorrow}T01:00:00+00:00"
        assert passed.metadata["lateness_seconds"] < 0
        assert passed.metadata["path"] == f"orders_{tomorrow}.csv"
        assert passed.metadata["arrived_at"] < passed.metadata["due_at"]

        # A minute's window closes without its file: a failed evaluation.
        missed = dagster.wait_for_check_evaluations([unique_name, "minutely"], CHECK, timeout=90)[0]
        assert (missed.passed, missed.severity) == (False, "WARN")
        assert missed.metadata["missing"] is True
        assert missed.metadata["due_at"] == missed.metadata["deadline"]
        assert missed.partition is not None

        # Its file comes late: lateness in the materialization, no second evaluation.
        write(minutely / f"m_{missed.partition}.csv", b"late\n")
        (late,) = dagster.wait_for_materializations(
            [unique_name, "minutely"], partition=missed.partition, timeout=30
        )
        assert late.metadata["due_at"] == missed.metadata["due_at"]
        assert late.metadata["lateness_seconds"] > 0
        order_key = f"{unique_name}\x1fminutely\x1e{missed.partition}"

        def nothing_queued_for_it() -> bool:
            with StateStore(state, read_only=True) as store:
                return all(item.order_key != order_key for item in store.due(1e18, 10_000))

        poll_until(nothing_queued_for_it, timeout=30)
    finally:
        assert agent.finish() == 0
    evaluations = [
        e
        for e in dagster.check_evaluations([unique_name, "minutely"], CHECK)
        if e.partition == missed.partition
    ]
    assert len(evaluations) == 1
    assert dagster.check_evaluations([unique_name, "daily"], CHECK) == [passed]
