"""Reads back what a Dagster instance recorded; runs in the Dagster environment, not the agent's.

The agent's test environment is built from the service lock file and has no dagster in it
(dagster pins watchdog<7, which no data host gets). So the tests ask this small process,
started with the Dagster environment's Python, one JSON line per question on stdin, and it
answers one JSON line on stdout: ``{"ok": value}`` or ``{"error": "text"}``. Every question
opens a fresh ``DagsterInstance`` on the given ``DAGSTER_HOME``, so it sees every event the
webserver has committed so far. Answers are plain values (lists, dicts, str, int).

Only the standard library and dagster are imported here: not asset_watcher, not tests.
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any

RUNLESS_RUN_ID = ""  # run id of events reported through the REST API (no run)


def _plain_metadata(metadata: Any) -> tuple[dict[str, Any], dict[str, str]]:
    values: dict[str, Any] = {}
    types: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        values[str(key)] = getattr(value, "value", value)
        types[str(key)] = type(value).__name__
    return values, types


def _asset_events(home: str, kind: str, key: list[str], partition: str | None) -> list[dict]:
    from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

    instance = DagsterInstance.from_config(home)
    try:
        records_filter: Any = AssetKey(key)
        if partition is not None:
            records_filter = AssetRecordsFilter(
                asset_key=AssetKey(key), asset_partitions=[partition]
            )
        fetch = (
            instance.fetch_materializations
            if kind == "materialization"
            else instance.fetch_observations
        )
        out: list[dict] = []
        cursor: str | None = None
        while True:
            result = fetch(records_filter, limit=1000, cursor=cursor, ascending=True)
            for rec in result.records:
                event = (
                    rec.asset_materialization
                    if kind == "materialization"
                    else rec.asset_observation
                )
                if event is None:
                    continue
                metadata, metadata_types = _plain_metadata(event.metadata)
                out.append(
                    {
                        "kind": kind,
                        "asset_key": list(event.asset_key.path),
                        "partition": event.partition,
                        "description": event.description,
                        "metadata": metadata,
                        "metadata_types": metadata_types,
                        "tags": dict(event.tags or {}),
                        "run_id": rec.run_id,
                        "storage_id": rec.storage_id,
                        "timestamp": rec.timestamp,
                    }
                )
            if not result.has_more:
                return out
            cursor = result.cursor
    finally:
        instance.dispose()


def _check_evaluations(home: str, key: list[str]) -> list[dict]:
    from dagster import DagsterEventType, DagsterInstance

    instance = DagsterInstance.from_config(home)
    try:
        conn = instance.event_log_storage.get_records_for_run(
            RUNLESS_RUN_ID, of_type=DagsterEventType.ASSET_CHECK_EVALUATION, ascending=True
        )
        out = []
        for rec in conn.records:
            entry = rec.event_log_entry
            evaluation = entry.dagster_event.event_specific_data
            if list(evaluation.asset_key.path) != key:
                continue
            metadata, metadata_types = _plain_metadata(evaluation.metadata)
            out.append(
                {
                    "asset_key": list(evaluation.asset_key.path),
                    "check_name": evaluation.check_name,
                    "passed": bool(evaluation.passed),
                    "severity": evaluation.severity.value,
                    "metadata": metadata,
                    "metadata_types": metadata_types,
                    "partition": getattr(evaluation, "partition", None),
                    "description": evaluation.description,
                    "run_id": entry.run_id,
                    "storage_id": rec.storage_id,
                    "timestamp": entry.timestamp,
                }
            )
        return out
    finally:
        instance.dispose()


def _check_execution_statuses(home: str, key: list[str], check_name: str) -> list[str]:
    from dagster import AssetCheckKey, AssetKey, DagsterInstance

    instance = DagsterInstance.from_config(home)
    try:
        history = instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(AssetKey(key), check_name), limit=100_000
        )
        return [rec.status.value for rec in sorted(history, key=lambda rec: rec.id)]
    finally:
        instance.dispose()


def _all_asset_keys(home: str) -> list[list[str]]:
    from dagster import DagsterInstance

    instance = DagsterInstance.from_config(home)
    try:
        return sorted(list(key.path) for key in instance.all_asset_keys())
    finally:
        instance.dispose()


def _dynamic_partitions(home: str, name: str) -> list[str]:
    from dagster import DagsterInstance

    instance = DagsterInstance.from_config(home)
    try:
        return list(instance.get_dynamic_partitions(name))
    finally:
        instance.dispose()


def answer(question: dict[str, Any]) -> Any:
    home, op = question["home"], question["op"]
    if op == "asset_events":
        return _asset_events(home, question["kind"], question["key"], question.get("partition"))
    if op == "check_evaluations":
        return _check_evaluations(home, question["key"])
    if op == "check_execution_statuses":
        return _check_execution_statuses(home, question["key"], question["check_name"])
    if op == "all_asset_keys":
        return _all_asset_keys(home)
    if op == "dynamic_partitions":
        return _dynamic_partitions(home, question["name"])
    if op == "version":
        from dagster import __version__

        return __version__
    raise ValueError(f"unknown question {op!r}")


def main() -> int:
    # Dagster's own warnings must not end up on stdout, which carries the answers.
    warnings.simplefilter("ignore")
    import dagster  # noqa: F401  (import once, up front: every answer after it is quick)

    print(json.dumps({"ok": "ready"}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            reply = {"ok": answer(json.loads(line))}
        except Exception as exc:  # one bad question must not end the probe
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
