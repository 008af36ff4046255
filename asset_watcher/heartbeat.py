"""The agent's heartbeat (SPEC 16): a report of its own asset, `asset_watcher/agents/{host}`,
saying what the agent is and how its outbox stands, every `heartbeat.every_seconds`.

Many agents report to one Dagster; each heartbeat asset's latest event shows when its agent
was last heard from, so a silent one stands out. The metadata keys are the names
`asset-watcher status --json` uses for the same facts, so a value reads the same in the
UI and on the host.

Only the newest heartbeat matters: it is queued in place of one still in the outbox
(`StateStore.queue_replacing`), so an outage leaves one heartbeat waiting, not one per
interval, and the one that arrives afterwards tells the present, not the outage's start.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from asset_watcher import __version__
from asset_watcher.model import EventKind, Report
from asset_watcher.reports import event_report, iso_utc
from asset_watcher.settings import HeartbeatSettings
from asset_watcher.state import OutboxCounts, StateStore


def heartbeat_key(settings: HeartbeatSettings, host: str) -> tuple[str, ...]:
    """The asset key parts of this host's heartbeat: split on `/` like a rule's key."""
    rendered = settings.asset_key.format_map({"host": host})
    return tuple(part for part in rendered.split("/") if part)


def heartbeat_kind(settings: HeartbeatSettings) -> EventKind:
    return EventKind(settings.event)


@dataclass(frozen=True)
class AgentFacts:
    """What one heartbeat tells, read at one moment."""

    host: str
    rules: tuple[str, ...]  # rule names, in configuration order
    counts: OutboxCounts
    last_error: str | None
    last_error_at: float | None  # time.time()
    last_success_at: float | None  # time.time() of the latest 2xx
    uptime_seconds: float
    now: float  # time.time()


def read_facts(
    store: StateStore,
    *,
    host: str,
    rules: Sequence[str],
    uptime_seconds: float,
    now: float,
) -> AgentFacts:
    """The facts from the state store (the outbox counts, the last error it kept)."""
    error_at = store.meta("last_error_at")
    success_at = store.meta("last_success")
    return AgentFacts(
        host=host,
        rules=tuple(rules),
        counts=store.counts(),
        last_error=store.meta("last_error"),
        last_error_at=float(error_at) if error_at else None,
        last_success_at=float(success_at) if success_at else None,
        uptime_seconds=uptime_seconds,
        now=now,
    )


def _iso(timestamp: float | None) -> str | None:
    return iso_utc(int(timestamp * 1e9)) if timestamp is not None else None


def heartbeat_metadata(facts: AgentFacts, every_seconds: float) -> dict[str, Any]:
    """The metadata of a heartbeat (README "Fleet" lists the keys). Values that are not
    known (no error yet, nothing pending) are null rather than left out, so each
    heartbeat shows every key and a cleared value reads as cleared."""
    counts = facts.counts
    oldest = counts.oldest_pending_at
    age = round(max(0.0, facts.now - oldest), 3) if oldest is not None else None
    return {
        "agent_version": __version__,
        "host": facts.host,
        "rules": list(facts.rules),
        "rule_count": len(facts.rules),
        "tracked_files": counts.tracked_files,
        "pending": counts.pending,
        "dead": counts.dead,
        "oldest_pending_age_seconds": age,
        "last_error": facts.last_error,
        "last_error_at": _iso(facts.last_error_at),
        "last_success_at": _iso(facts.last_success_at),
        "uptime_seconds": round(facts.uptime_seconds, 3),
        "heartbeat_every_seconds": every_seconds,
    }


def heartbeat_report(settings: HeartbeatSettings, facts: AgentFacts) -> Report:
    """The heartbeat's body: an observation (or, with `event = "materialization"`, a
    materialization) of this host's heartbeat asset, without partition or data version."""
    counts = facts.counts
    return event_report(
        heartbeat_kind(settings),
        heartbeat_key(settings, facts.host),
        metadata=heartbeat_metadata(facts, settings.every_seconds),
        description=(
            f"asset-watcher {__version__} on {facts.host}: {counts.pending} report(s) pending, "
            f"{counts.dead} dead"
        ),
    )


def queue_heartbeat(
    store: StateStore,
    settings: HeartbeatSettings,
    *,
    host: str,
    rules: Sequence[str],
    uptime_seconds: float,
    now: float | None = None,
) -> tuple[Report, int]:
    """Build this moment's heartbeat and queue it in place of any still pending; returns
    it and how many older ones it replaced. The caller wakes the deliverer."""
    facts = read_facts(
        store,
        host=host,
        rules=rules,
        uptime_seconds=uptime_seconds,
        now=time.time() if now is None else now,
    )
    report = heartbeat_report(settings, facts)
    return report, store.queue_replacing(report)


class HeartbeatSchedule:
    """When the next heartbeat is due, on an injected monotonic clock: at once when the
    heartbeat is on and none was sent yet, then `every_seconds` after the last one. A new
    interval (a reload) counts from the last heartbeat sent."""

    def __init__(self, every_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.every_seconds = every_seconds
        self._clock = clock
        self._last: float | None = None

    def set_interval(self, every_seconds: float) -> None:
        self.every_seconds = every_seconds

    def due(self) -> bool:
        if self.every_seconds <= 0:
            return False
        return self._last is None or self._clock() >= self._last + self.every_seconds

    def sent(self) -> None:
        self._last = self._clock()

    def seconds_until_due(self) -> float | None:
        """None while off; 0 when due."""
        if self.every_seconds <= 0:
            return None
        if self._last is None:
            return 0.0
        return max(0.0, self._last + self.every_seconds - self._clock())
