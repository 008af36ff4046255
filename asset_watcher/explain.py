"""`explain PATH`: which rule owns a file and why, its batch, its sidecars, its expected arrival."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

from asset_watcher.config import Config
from asset_watcher.errors import EXIT_OK
from asset_watcher.status import open_existing_store


def show(config: Config, paths: Sequence[str]) -> int:
    from asset_watcher.fingerprint import file_stat
    from asset_watcher.paths import display_path
    from asset_watcher.rules import compile_rules, explain

    rules = compile_rules(config)
    by_name = {rule.name: rule for rule in rules}
    for raw in paths:
        path = os.path.abspath(raw)
        print(display_path(path))
        if file_stat(path) is None:
            print("  note: not a regular file here now (explained by name only)")
        match, reasons = explain(rules, path)
        for rule_name, reason in reasons:
            print(f"  rule {rule_name}: no: {reason}")
        control = next((r for r in rules if r.is_batch_control(path)), None)
        if match is None and control is not None:
            _explain_batch(config, rules, control, path)
            continue
        if match is None:
            print("  not reported: no rule owns it")
            continue
        rule = by_name[match.rule_name]
        real = os.path.join(rule.real_root, match.relpath)
        if not rule.settings.follow_symlinks and os.path.realpath(path) != real:
            print("  not reported: reached through a symbolic link (links are not followed)")
            continue
        print(f"  rule {rule.name}: owns it")
        print(f"  event: {rule.event.value}")
        print(f"  asset key parts: {json.dumps(list(match.asset_key), ensure_ascii=False)}")
        print(f"  partition: {match.partition if match.partition is not None else '(none)'}")
        if rule.settings.dynamic_partitions and match.partition is not None:
            print(
                f"  dynamic partitions: {rule.settings.dynamic_partitions} (the key is added "
                "before its first report)"
            )
        if match.description:
            print(f"  description: {match.description}")
        marker = rule.marker_for(match)
        if marker:
            print(f"  ready marker: {display_path(marker)}")
        for check in rule.settings.checks:
            print(f"  check: {check.check_name} ({check.type}, {check.severity})")
        _explain_sidecars(rule, match)
        _explain_expectation(rule)
        if rule.is_batch:
            _explain_batch(config, rules, rule, path)
    return EXIT_OK


def _explain_batch(config: Config, rules: Any, rule: Any, path: str) -> None:
    """Which batch a file (or marker, or manifest) belongs to, and what it still waits
    for: the batch decision without reading the members (no state change)."""
    from asset_watcher.batch_versions import BatchWaits, decide_batches, describe_batch
    from asset_watcher.versions import Versions

    batch = rule.settings.batch
    how = {"marker": batch.marker, "manifest": batch.manifest}.get(batch.complete_when)
    shown = f" {how}" if how else f" after {batch.quiet_seconds:g}s without a change"
    print(
        f"  batch of rule {rule.name}: group {batch.group!r},"
        f" complete by {batch.complete_when}{shown}"
    )
    with open_existing_store(config, read_only=True) as store:
        versions = Versions(store, rules)
        decisions = decide_batches(versions, rule, os.path.dirname(path), read=False)
    for decision in decisions:
        print(f"  {describe_batch(decision)}")
        if isinstance(decision, BatchWaits):
            print(f"    incomplete for {time.time() - decision.since:.0f}s")


def _explain_sidecars(rule: Any, match: Any) -> None:
    from asset_watcher.fingerprint import file_stat
    from asset_watcher.paths import display_path
    from asset_watcher.reports import iso_utc
    from asset_watcher.versions import sidecar_wait

    for check in rule.checksum_checks:
        sidecar = rule.sidecar_for(match, check)
        present = sidecar is not None and os.path.exists(sidecar)
        print(
            f"  checksum sidecar ({check.check_name}, {check.digest_algorithm}): "
            f"{display_path(sidecar or '(cannot render)')}"
            f" ({'present' if present else 'missing'}; waited for up to {check.wait_seconds:g}s)"
        )
    stat = file_stat(match.path, rule.settings.follow_symlinks)
    waiting = sidecar_wait(rule, match, stat, time.time()) if stat is not None else None
    if waiting is not None and waiting.until is not None:
        print(
            f"  waits for its sidecar {display_path(waiting.marker)} until "
            f"{iso_utc(int(waiting.until * 1e9))}, then is reported with the check failed"
        )


def _explain_expectation(rule: Any) -> None:
    from asset_watcher.arrivals import expectation_of

    expectation = expectation_of(rule)
    if expectation is None:
        return
    expect = rule.settings.expect
    due = expectation.schedule.next_due(time.time())
    print(
        f"  expected: {expect.cron} ({expect.timezone}), window {expect.grace_minutes:g} min,"
        f" check {expectation.check_name} ({expectation.severity})"
    )
    print(f"  next due: {expectation.iso(due)}")
    partition = expectation.partition_of(due)
    if partition is not None:
        print(f"  next due partition: {partition}")
