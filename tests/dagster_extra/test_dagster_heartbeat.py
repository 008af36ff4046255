"""build_definitions(heartbeat=...): the agent's heartbeat asset, and its freshness policy
where Dagster can judge one."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest

from asset_watcher.dagster import build_definitions


def specs_by_key(defs: dg.Definitions) -> dict[dg.AssetKey, dg.AssetSpec]:
    return {spec.key: spec for spec in defs.assets or [] if isinstance(spec, dg.AssetSpec)}


def test_heartbeat_asset_is_declared_for_the_host(config_file: Callable[[str], Path]) -> None:
    path = config_file("[heartbeat]\nevery_seconds = 30\n")
    specs = specs_by_key(build_definitions(path, host="data01", heartbeat=True))
    spec = specs[dg.AssetKey(["asset_watcher", "agents", "data01"])]
    assert spec.group_name == "asset_watcher"
    assert spec.metadata["heartbeat_every_seconds"] == 30
    assert "data01" in (spec.description or "")
    # Observed heartbeats: Dagster's freshness looks at materializations only.
    assert spec.freshness_policy is None
    dg.Definitions.validate_loadable(build_definitions(path, host="data01", heartbeat=True))


def test_a_materialized_heartbeat_gets_a_time_window_policy(
    config_file: Callable[[str], Path],
) -> None:
    path = config_file(
        '[heartbeat]\nevery_seconds = 120\nevent = "materialization"\nasset_key = "fleet/{host}"\n'
    )
    defs = build_definitions(path, heartbeat_hosts=["data01", "data02"])
    specs = specs_by_key(defs)
    assert set(specs) == {dg.AssetKey(["fleet", "data01"]), dg.AssetKey(["fleet", "data02"])}
    if not hasattr(dg.FreshnessPolicy, "time_window"):
        pytest.skip("this Dagster has no FreshnessPolicy.time_window")
    policy = specs[dg.AssetKey(["fleet", "data01"])].freshness_policy
    assert policy is not None
    assert policy.fail_window.to_timedelta() == timedelta(minutes=6)  # 3 intervals
    dg.Definitions.validate_loadable(defs)


def test_short_intervals_keep_dagsters_one_minute_floor(
    config_file: Callable[[str], Path],
) -> None:
    path = config_file('[heartbeat]\nevery_seconds = 1\nevent = "materialization"\n')
    (spec,) = specs_by_key(build_definitions(path, host="h", heartbeat=True)).values()
    if not hasattr(dg.FreshnessPolicy, "time_window"):
        pytest.skip("this Dagster has no FreshnessPolicy.time_window")
    assert spec.freshness_policy.fail_window.to_timedelta() == timedelta(minutes=1)


def test_heartbeat_follows_the_configuration_unless_asked(
    config_file: Callable[[str], Path],
) -> None:
    off = config_file("")
    assert specs_by_key(build_definitions(off, host="h")) == {}
    assert list(specs_by_key(build_definitions(off, host="h", heartbeat=True))) == [
        dg.AssetKey(["asset_watcher", "agents", "h"])
    ]
    on = config_file("[heartbeat]\nevery_seconds = 60\n")
    assert len(specs_by_key(build_definitions(on, host="h"))) == 1
    assert specs_by_key(build_definitions(on, host="h", heartbeat=False)) == {}
