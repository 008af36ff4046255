"""What `status` shows: the state read back for people, as text or JSON."""

from __future__ import annotations

import json
import time
from typing import Any

from asset_watcher.config import Config
from asset_watcher.errors import EXIT_OK


def open_existing_store(config: Config, *, read_only: bool) -> Any:
    """The agent's state, without its lock; an empty one in memory when there is none yet
    (a fresh host is healthy, not broken)."""
    from asset_watcher.state import DB_NAME, StateStore

    directory = config.state.resolved_directory()
    if not (directory / DB_NAME).exists():
        return StateStore(None)
    return StateStore(directory, lock=False, create=False, read_only=read_only)


STATUS_DEAD_LISTED = 20  # dead letters shown by `status`


def show(config: Config, *, as_json: bool) -> int:
    from asset_watcher.arrivals import expectations, overview
    from asset_watcher.paths import display_path
    from asset_watcher.rules import compile_rules
    from asset_watcher.state import order_key_parts

    with open_existing_store(config, read_only=True) as store:
        now = time.time()
        expected = [
            overview(expectation, store, now, store.expectation_started(name))
            for name, expectation in expectations(compile_rules(config)).items()
        ]
        counts = store.counts()
        last_error = store.meta("last_error")
        last_error_at = store.meta("last_error_at")
        last_success = store.meta("last_success")
        dead = store.dead_letter_items(STATUS_DEAD_LISTED)
        aside = store.set_aside_items(STATUS_DEAD_LISTED)
        batches = store.pending_batches()
        waiting = store.waiting()
        unsidecared = store.missing_sidecars()
    age = time.time() - counts.oldest_pending_at if counts.oldest_pending_at else None
    dead_letters = []
    for letter in dead:
        key, partition = order_key_parts(letter.order_key)
        dead_letters.append(
            {
                "event": letter.kind.value,
                "asset_key": list(key),
                "partition": partition,
                "failed_at": letter.failed_at,
                "error": letter.error,
            }
        )
    set_aside = []
    for entry in aside:
        key, partition = order_key_parts(entry.order_key)
        try:
            check_name = json.loads(entry.body).get("check_name")
        except (ValueError, AttributeError):
            check_name = None
        set_aside.append(
            {
                "event": entry.kind.value,
                "asset_key": list(key),
                "partition": partition,
                "check_name": check_name,
                "set_aside_at": entry.set_aside_at,
                "reason": entry.reason,
            }
        )
    data = {
        "state_directory": str(config.state.resolved_directory()),
        "tracked_files": counts.tracked_files,
        "pending": counts.pending,
        "dead": counts.dead,
        "set_aside": counts.set_aside,
        "oldest_pending_age_seconds": round(age, 3) if age is not None else None,
        "last_success_at": float(last_success) if last_success else None,
        "last_error": last_error,
        "last_error_at": float(last_error_at) if last_error_at else None,
        "dead_letters": dead_letters,
        "set_aside_reports": set_aside,
        # Written by `run` and `scan` each time they look at a batch's folder.
        "incomplete_batches": [
            {
                "rule": b.rule,
                "folder": b.folder,
                "group": b.group,
                "waiting_for": b.waiting_for,
                "age_seconds": round(now - b.since, 3),
                "seen_at": b.updated_at,
            }
            for b in batches
        ],
        # Written by `run` (at most once a second) when what waits changes; kept after it
        # stops, and replaced when it starts again.
        "waiting_noted_at": waiting.noted_at if waiting else None,
        "waiting_files_total": waiting.total if waiting else 0,
        "waiting_files": [
            {
                "path": display_path(w.path),
                "waits_for": display_path(w.waits_for),
                "what": w.what,
                "age_seconds": round(now - w.since, 3),
                "since": w.since,
                "until": w.until,
            }
            for w in (waiting.files if waiting else ())
        ],
        # Reported files whose checksum check last failed for a missing sidecar: a late
        # sidecar still re-evaluates it.
        "reported_without_sidecar": [
            {
                "path": display_path(m.path),
                "check_name": m.check_name,
                "sidecar": display_path(m.sidecar),
            }
            for m in unsidecared
        ],
        "expected_arrivals": [
            {
                "rule": o.rule,
                "next_due": o.next_due,
                "next_partition": o.next_partition,
                "overdue": list(o.overdue),
                "missed": list(o.missed),
            }
            for o in expected
        ],
    }
    if as_json:
        print(json.dumps(data, ensure_ascii=False))
        return EXIT_OK
    for name, value in data.items():
        if isinstance(value, list):
            continue  # listed below, one line each
        if name.endswith("_at") and isinstance(value, float):
            value = f"{_iso_local(value)} ({time.time() - value:.0f}s ago)"
        print(f"{name}: {value if value is not None else '-'}")
    for entry in dead_letters:
        partition = f" [{entry['partition']}]" if entry["partition"] else ""
        print(
            f"  dead {entry['event']} {'/'.join(entry['asset_key'])}{partition}: {entry['error']}"
        )
    if counts.dead > len(dead_letters):
        print(f"  ... and {counts.dead - len(dead_letters)} more dead letter(s)")
    for entry in set_aside:
        partition = f" [{entry['partition']}]" if entry["partition"] else ""
        what = f"check {entry['check_name']}" if entry["check_name"] else entry["event"]
        print(f"  set aside {what} of {'/'.join(entry['asset_key'])}{partition}: {entry['reason']}")
    if counts.set_aside > len(set_aside):
        print(f"  ... and {counts.set_aside - len(set_aside)} more set aside before those")
    for entry in data["incomplete_batches"]:
        print(
            f"batch {entry['folder']} (group {entry['group']!r}, rule {entry['rule']}): "
            f"waits for {entry['waiting_for']}, {entry['age_seconds']:.0f}s old"
        )
    for entry in data["waiting_files"]:
        until = f", until {_iso_local(entry['until'])}" if entry["until"] is not None else ""
        print(
            f"waiting {entry['path']}: for its {entry['what']} {entry['waits_for']},"
            f" {entry['age_seconds']:.0f}s since its last change{until}"
        )
    if data["waiting_files_total"] > len(data["waiting_files"]):
        print(f"  ... and {data['waiting_files_total'] - len(data['waiting_files'])} more waiting")
    for entry in data["reported_without_sidecar"]:
        print(
            f"reported without its sidecar {entry['path']}: check {entry['check_name']},"
            f" {entry['sidecar']} missing (it is evaluated again when it comes)"
        )
    for o in expected:
        partition = f" [{o.next_partition}]" if o.next_partition else ""
        print(f"expected {o.rule}: next due {o.next_due}{partition}")
        for due in o.overdue:
            print(f"  overdue: due {due}, no file yet (window still open)")
        for due in o.missed:
            print(f"  missed: due {due}, no file came")
    return EXIT_OK


def _iso_local(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(timestamp))
