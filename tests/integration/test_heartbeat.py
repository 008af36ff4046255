"""The running agent's heartbeat: recorded by a real dagster-webserver with its metadata,
one after another; and while Dagster fails, at most one waits in the outbox."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from asset_watcher import __version__
from asset_watcher.config import Config, load_config
from asset_watcher.rules import short_host_name
from asset_watcher.state import StateStore
from tests.support.agent_run import OBSERVATION, InProcessAgent
from tests.support.dagster_server import DagsterServer
from tests.support.sink import RecordedRequest, Sink
from tests.support.waiting import poll_until


def heartbeat_config(tmp_path: Path, url: str, asset_key: str, **dagster: Any) -> Config:
    drop = tmp_path / "drop"
    drop.mkdir()
    return Config(
        dagster={"url": url, "timeout_seconds": 5, **dagster},
        state={"directory": str(tmp_path / "state")},
        defaults={"settle_seconds": 0.2, "rescan_interval_seconds": 0},
        watch=[{"name": "drop", "path": str(drop), "asset_key": "heartbeat-test/files"}],
        heartbeat={"every_seconds": 1, "asset_key": asset_key},
    )


def test_heartbeats_reach_dagster_with_their_metadata(
    tmp_path: Path, dagster: DagsterServer, unique_name: str
) -> None:
    host = short_host_name()
    config = heartbeat_config(tmp_path, dagster.url, f"{unique_name}/agents/{{host}}")
    agent = InProcessAgent(config).start()
    try:
        first, second = dagster.wait_for_observations(
            [unique_name, "agents", host], count=2, timeout=30
        )[:2]
    finally:
        assert agent.finish() == 0
    for record in (first, second):
        metadata = record.metadata
        assert metadata["agent_version"] == __version__
        assert metadata["host"] == host
        assert metadata["rules"] == ["drop"]
        assert record.metadata_types["rules"] == "JsonMetadataValue"
        assert isinstance(metadata["pending"], int) and metadata["pending"] >= 0
        assert metadata["dead"] == 0
        assert metadata["tracked_files"] == 0
        assert metadata["heartbeat_every_seconds"] == 1
        assert "last_error" in metadata and "oldest_pending_age_seconds" in metadata
        assert record.partition is None
        assert f"on {host}" in (record.description or "")
    # Two heartbeats, not one delivered twice: the second was built later.
    assert second.metadata["uptime_seconds"] > first.metadata["uptime_seconds"]
    assert second.timestamp >= first.timestamp


def heartbeats(requests: list[RecordedRequest]) -> list[RecordedRequest]:
    return [r for r in requests if r.path == OBSERVATION and r.json["asset_key"][0] == "fleet"]


def pending_in(state: Path) -> int:
    with StateStore(state, read_only=True) as store:
        return store.counts().pending


def test_heartbeats_do_not_pile_up_while_dagster_fails(tmp_path: Path, sink: Sink) -> None:
    sink.set_default_response(500)
    # Retries at least every second, so the sink sees the outbox's head change.
    config = heartbeat_config(tmp_path, sink.url, "fleet/{host}", backoff_max_seconds=1)
    state = tmp_path / "state"
    agent = InProcessAgent(config).start()
    try:
        most_pending = 0

        def newer_heartbeats_were_refused() -> bool:
            nonlocal most_pending
            refused = heartbeats(sink.requests)
            if refused:  # the outbox exists by now
                most_pending = max(most_pending, pending_in(state))
            uptimes = {r.json["metadata"]["uptime_seconds"] for r in refused}
            return len(uptimes) >= 4

        # Retried heads with four different bodies: each new heartbeat took the place of
        # the refused one (piled up, the oldest would be retried alone, per-key order).
        poll_until(newer_heartbeats_were_refused, timeout=60, interval=0.1)
        assert most_pending <= 1, f"{most_pending} reports pending at once"
        assert pending_in(state) <= 1
        refused = heartbeats(sink.requests)
        assert all(r.status == 500 for r in refused)
        latest_refused = max(r.json["metadata"]["uptime_seconds"] for r in refused)

        sink.reset()  # Dagster is back
        delivered = sink.wait_for(
            lambda requests: any(r.status == 200 for r in heartbeats(requests)), timeout=30
        )
        first_ok = next(r for r in heartbeats(delivered) if r.status == 200)
        # What arrives is the present, not a backlog from the outage's start.
        assert first_ok.json["metadata"]["uptime_seconds"] >= latest_refused
        assert json.loads(first_ok.body)["metadata"]["last_error"].startswith("HTTP 500")
        poll_until(lambda: pending_in(state) == 0, timeout=30, what="outbox drained")
    finally:
        assert agent.finish() == 0


def test_a_reload_changes_the_interval(tmp_path: Path, sink: Sink) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    path = tmp_path / "config.toml"

    def write_config(every_seconds: float) -> None:
        path.write_text(
            f'[dagster]\nurl = "{sink.url}"\n[state]\ndirectory = "{tmp_path / "state"}"\n'
            f'[[watch]]\npath = "{drop}"\nasset_key = "files"\n'
            f'[heartbeat]\nevery_seconds = {every_seconds}\nasset_key = "fleet/{{host}}"\n',
            encoding="utf-8",
        )

    write_config(3600)
    agent = InProcessAgent(load_config(path)).start()
    try:
        sink.wait_for(lambda requests: len(heartbeats(requests)) == 1, timeout=30)  # at start
        write_config(1)
        agent.signals.hangups += 1  # what the SIGHUP handler does
        # Within the old hour's interval only the new one can bring more heartbeats.
        beats = sink.wait_for(lambda requests: len(heartbeats(requests)) >= 3, timeout=30)
    finally:
        assert agent.finish() == 0
    assert heartbeats(beats)[-1].json["metadata"]["heartbeat_every_seconds"] == 1
