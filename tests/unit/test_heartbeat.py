"""The heartbeat: its configuration, its body and metadata, replacing a pending one, and
its schedule on an injected clock."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from asset_watcher import __version__
from asset_watcher.config import Config, load_config
from asset_watcher.errors import ConfigError
from asset_watcher.heartbeat import (
    AgentFacts,
    HeartbeatSchedule,
    heartbeat_key,
    heartbeat_report,
    queue_heartbeat,
)
from asset_watcher.model import EventKind, FileStat
from asset_watcher.reports import event_report
from asset_watcher.settings import HeartbeatSettings
from asset_watcher.state import OutboxCounts, StateStore
from tests.conftest import CliRun


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


# -- configuration ---------------------------------------------------------------------


def test_heartbeat_is_off_by_default() -> None:
    settings = Config().heartbeat
    assert settings.every_seconds == 0 and not settings.enabled
    assert settings.asset_key == "asset_watcher/agents/{host}"
    assert settings.event == "observation"


def test_a_set_interval_and_key_load(config_file: Callable[[str], Path]) -> None:
    path = config_file(
        """
        [heartbeat]
        every_seconds = 300
        asset_key = "fleet/{host}/asset-watcher"
        """
    )
    settings = load_config(path).heartbeat
    assert settings.enabled and settings.every_seconds == 300
    assert heartbeat_key(settings, "data01") == ("fleet", "data01", "asset-watcher")


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("every_seconds = -5", "heartbeat.every_seconds: must be 0 (off) or at least 1 seconds"),
        ("every_seconds = 0.5", "heartbeat.every_seconds: must be 0 (off) or at least 1 seconds"),
        ('every_seconds = "often"', "heartbeat.every_seconds: "),
        ('asset_key = "agents/{name}"', "heartbeat.asset_key: unknown template field {name}"),
        ('asset_key = "agents/{host"', "heartbeat.asset_key: malformed template"),
        ('asset_key = "/"', "heartbeat.asset_key: asset key template is empty"),
        ('event = "check"', "heartbeat.event: "),
        ("every = 5", "heartbeat.every: unknown key"),
    ],
)
def test_heartbeat_problems_name_their_key(
    config_file: Callable[[str], Path], table: str, expected: str
) -> None:
    (problem,) = problems_of(config_file(f"[heartbeat]\n{table}\n"))
    assert problem.startswith(expected), problem


def test_check_config_exits_2_naming_the_key(
    config_file: Callable[[str], Path], cli: CliRun
) -> None:
    path = config_file('[heartbeat]\nevery_seconds = -1\nasset_key = "a/{rule}"\n')
    result = cli("check-config", "-c", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any("heartbeat.every_seconds:" in line for line in lines), lines
    assert any("heartbeat.asset_key:" in line for line in lines), lines


def test_environment_turns_the_heartbeat_on(
    config_file: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASSET_WATCHER_HEARTBEAT__EVERY_SECONDS", "60")
    assert load_config(config_file("")).heartbeat.every_seconds == 60


# -- the report ------------------------------------------------------------------------


def facts(**changes: object) -> AgentFacts:
    values: dict[str, object] = {
        "host": "data01",
        "rules": ("acme-orders", "partner-x"),
        "counts": OutboxCounts(
            tracked_files=12, pending=3, dead=1, oldest_pending_at=1000.0, set_aside=0
        ),
        "last_error": "HTTP 500: boom",
        "last_error_at": 1_700_000_000.0,
        "last_success_at": None,
        "uptime_seconds": 42.0,
        "now": 1042.5,
    }
    values.update(changes)
    return AgentFacts(**values)  # type: ignore[arg-type]


def test_heartbeat_body_is_an_observation_with_the_agents_facts() -> None:
    settings = HeartbeatSettings(every_seconds=30)
    report = heartbeat_report(settings, facts())
    assert report.kind is EventKind.OBSERVATION
    assert report.asset_key == ("asset_watcher", "agents", "data01")
    assert report.partition is None
    body = report.body
    assert body["asset_key"] == ["asset_watcher", "agents", "data01"]
    assert "partition" not in body and "data_version" not in body
    assert body["metadata"] == {
        "agent_version": __version__,
        "host": "data01",
        "rules": ["acme-orders", "partner-x"],
        "rule_count": 2,
        "tracked_files": 12,
        "pending": 3,
        "dead": 1,
        "oldest_pending_age_seconds": 42.5,
        "last_error": "HTTP 500: boom",
        "last_error_at": "2023-11-14T22:13:20.000000Z",
        "last_success_at": None,
        "uptime_seconds": 42.0,
        "heartbeat_every_seconds": 30,
    }
    assert "3 report(s) pending" in body["description"]
    json.dumps(body)  # what the outbox stores


def test_nothing_pending_and_no_error_read_as_null() -> None:
    counts = OutboxCounts(tracked_files=0, pending=0, dead=0, oldest_pending_at=None, set_aside=0)
    metadata = heartbeat_report(
        HeartbeatSettings(every_seconds=5),
        facts(counts=counts, last_error=None, last_error_at=None, rules=()),
    ).body["metadata"]
    assert metadata["oldest_pending_age_seconds"] is None
    assert metadata["last_error"] is None and metadata["last_error_at"] is None
    assert (metadata["pending"], metadata["rules"], metadata["rule_count"]) == (0, [], 0)


def test_materialization_when_configured() -> None:
    settings = HeartbeatSettings(every_seconds=5, event="materialization")
    assert heartbeat_report(settings, facts()).kind is EventKind.MATERIALIZATION


def test_facts_come_from_the_state_store() -> None:
    store = StateStore(None)
    try:
        file_report = event_report(EventKind.MATERIALIZATION, ("acme", "orders"))
        store.record_version("/d/a.csv", "acme", FileStat(1, 1, 1, 1), None, [file_report])
        store.record_version("/d/b.csv", "acme", FileStat(1, 1, 2, 1), None, [file_report])
        (item,) = store.due(now=1e12, limit=10)  # the head of the key
        store.dead_letter(item.id, "HTTP 422: no such asset")
        settings = HeartbeatSettings(every_seconds=5)
        created = store.counts().oldest_pending_at
        assert created is not None
        report, replaced = queue_heartbeat(
            store, settings, host="h1", rules=["acme"], uptime_seconds=1.0, now=created + 10
        )
        assert replaced == 0
        metadata = report.body["metadata"]
        assert (metadata["tracked_files"], metadata["pending"], metadata["dead"]) == (2, 1, 1)
        assert metadata["oldest_pending_age_seconds"] == pytest.approx(10, abs=0.01)
        assert metadata["last_error"] == "HTTP 422: no such asset"
        assert metadata["last_error_at"] is not None
    finally:
        store.close()


# -- no pile-up --------------------------------------------------------------------------


def test_a_new_heartbeat_replaces_the_pending_one_and_nothing_else() -> None:
    store = StateStore(None)
    settings = HeartbeatSettings(every_seconds=5)
    try:
        other = event_report(EventKind.MATERIALIZATION, ("asset_watcher", "agents", "h1"))
        store.queue_reports([other])  # same key, another kind: a rule's report, kept
        for number in range(5):
            _, replaced = queue_heartbeat(
                store, settings, host="h1", rules=[], uptime_seconds=number
            )
            assert replaced == (0 if number == 0 else 1)
        queue_heartbeat(store, settings, host="h2", rules=[], uptime_seconds=0)
        items = store.due(now=1e12, limit=100)
        kinds = sorted(
            (item.kind.value, tuple(json.loads(item.body)["asset_key"])) for item in items
        )
        # due() gives the head of each order key: the materialization holds back h1's beat.
        assert kinds == [
            ("materialization", ("asset_watcher", "agents", "h1")),
            ("observation", ("asset_watcher", "agents", "h2")),
        ]
        assert store.counts().pending == 3  # h1's rule report, h1's newest beat, h2's beat
    finally:
        store.close()


def test_the_replacing_heartbeat_is_the_newest() -> None:
    store = StateStore(None)
    settings = HeartbeatSettings(every_seconds=5)
    try:
        for uptime in (1.0, 2.0, 3.0):
            queue_heartbeat(store, settings, host="h1", rules=[], uptime_seconds=uptime)
        (item,) = store.due(now=1e12, limit=10)
        assert json.loads(item.body)["metadata"]["uptime_seconds"] == 3.0
    finally:
        store.close()


# -- schedule --------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_schedule_is_due_at_once_then_every_interval() -> None:
    clock = FakeClock()
    schedule = HeartbeatSchedule(30, clock=clock)
    assert schedule.due() and schedule.seconds_until_due() == 0
    schedule.sent()
    assert not schedule.due()
    clock.now += 29.9
    assert not schedule.due()
    assert schedule.seconds_until_due() == pytest.approx(0.1)
    clock.now += 0.1
    assert schedule.due()


def test_schedule_off_is_never_due() -> None:
    schedule = HeartbeatSchedule(0, clock=FakeClock())
    assert not schedule.due() and schedule.seconds_until_due() is None


def test_a_reloaded_interval_counts_from_the_last_heartbeat() -> None:
    clock = FakeClock()
    schedule = HeartbeatSchedule(300, clock=clock)
    schedule.sent()
    clock.now += 20
    schedule.set_interval(10)  # shorter: overdue already
    assert schedule.due()
    schedule.sent()
    schedule.set_interval(0)  # off
    clock.now += 1000
    assert not schedule.due()
    schedule.set_interval(60)  # on again: the last one was long ago
    assert schedule.due()
