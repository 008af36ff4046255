"""build_definitions, loaded by Dagster in-process: keys, specs and checks as configured."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from asset_watcher.dagster import build_definitions
from asset_watcher.errors import ConfigError


@pytest.fixture
def defs_config(tmp_path: Path, config_file: Callable[[str], Path]) -> Path:
    sftp = tmp_path / "srv" / "sftp" / "acme"
    sftp.mkdir(parents=True)
    return config_file(
        f"""
        [[watch]]
        name = "orders"
        path = "{sftp}"
        glob = "orders_*.csv"
        regex = 'orders_(?P<date>[0-9-]+)[.]csv$'
        asset_key = "acme/orders"
        partition = "{{date}}"
        description = "Orders from ACME ({{rule}})"
        [[watch.checks]]
        type = "size"
        min_bytes = 1
        [[watch.checks]]
        type = "csv_header"
        name = "header"
        columns = ["id", "amount"]
        severity = "WARN"

        [[watch]]
        name = "per-file"
        path = "{tmp_path}"
        glob = "*.json"
        asset_key = "drops/{{stem}}"
        [[watch.checks]]
        type = "json"

        [[watch]]
        name = "logs"
        path = "/nowhere/on/this/host"
        asset_key = "{{host}}/logs / {{rule}}"
        event = "observation"

        [[watch]]
        name = "orders-late"
        path = "{sftp}"
        glob = "late/*.csv"
        asset_key = "acme/orders"
        [[watch.checks]]
        type = "size"
        max_bytes = 5
        [[watch.checks]]
        type = "row_count"
        min_rows = 1
        """
    )


def test_assets_and_checks_as_configured(
    defs_config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="asset_watcher.dagster"):
        defs = build_definitions(defs_config, host="data01")
    graph = defs.resolve_asset_graph()

    orders, logs = dg.AssetKey(["acme", "orders"]), dg.AssetKey(["data01", "logs ", " logs"])
    assert set(graph.get_all_asset_keys()) == {orders, logs}
    node = graph.get(orders)
    assert not node.is_executable  # external: Dagster records the agent's reports only
    assert node.group_name == "asset_watcher"
    assert node.description == "Orders from ACME (orders)"
    assert node.kinds == {"sftp"}
    assert node.metadata["dagster/uri"] == f"file://data01{defs_config.parent}/srv/sftp/acme"
    assert node.metadata["partition_template"] == "{date}"
    assert node.partitions_def is None  # see the module docstring
    assert graph.get(logs).kinds == {"file"}
    assert "observed by asset-watcher" in (graph.get(logs).description or "")

    # One AssetCheckSpec per check; the second rule with the same key adds its own names.
    assert set(graph.asset_check_keys) == {
        dg.AssetCheckKey(orders, "size"),
        dg.AssetCheckKey(orders, "header"),
        dg.AssetCheckKey(orders, "row_count"),
    }
    header = graph.get_check_spec(dg.AssetCheckKey(orders, "header"))
    assert header.metadata["columns"] == ["id", "amount"]
    assert header.metadata["severity"] == "WARN"
    size = graph.get_check_spec(dg.AssetCheckKey(orders, "size"))
    assert size.metadata["min_bytes"] == 1  # the first rule's `size` wins

    skipped = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert skipped == [
        "rule 'per-file' is not declared in Dagster: its asset key 'drops/{stem}' uses the "
        "per-file field(s) {stem}, so each file names its own asset (Dagster learns those "
        "keys from the reports)"
    ]


def test_key_parts_are_the_agents(tmp_path: Path, config_file: Callable[[str], Path]) -> None:
    path = config_file(
        f'[[watch]]\npath = "{tmp_path}"\nasset_key = "/we ird#%?é//日本 語/"\n'
        '[[watch.checks]]\ntype = "gzip"\n'
    )
    graph = build_definitions(path).resolve_asset_graph()
    key = dg.AssetKey(["we ird#%?é", "日本 語"])
    assert set(graph.get_all_asset_keys()) == {key}
    assert set(graph.asset_check_keys) == {dg.AssetCheckKey(key, "gzip")}


def test_config_path_from_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, config_file: Callable[[str], Path]
) -> None:
    monkeypatch.setenv(
        "ASSET_WATCHER_CONFIG",
        str(config_file(f'[[watch]]\npath = "{tmp_path}"\nasset_key = "from/env"\n')),
    )
    assert set(build_definitions().resolve_asset_graph().get_all_asset_keys()) == {
        dg.AssetKey(["from", "env"])
    }


def test_bad_config_is_a_config_error(tmp_path: Path, config_file: Callable[[str], Path]) -> None:
    path = config_file(f'[[watch]]\npath = "{tmp_path}"\nasset_key = "a/{{nope}}"\n')
    with pytest.raises(ConfigError, match=r"watch\[1\]\.asset_key: unknown template field"):
        build_definitions(path)


def test_an_expectation_declares_its_check_and_a_cron_freshness_policy(
    tmp_path: Path, config_file: Callable[[str], Path]
) -> None:
    from asset_watcher.dagster import deadline_cron

    path = config_file(
        f"""
        [[watch]]
        path = "{tmp_path}"
        asset_key = "acme/daily"
        [watch.expect]
        cron = "30 6 * * 1-5"
        timezone = "Europe/Berlin"
        grace_minutes = 45
        check_name = "on_time"

        [[watch]]
        path = "{tmp_path}"
        asset_key = "acme/late_evening"
        [watch.expect]
        cron = "0 23 * * *"
        timezone = "UTC"
        grace_minutes = 120
        """
    )
    graph = build_definitions(path).resolve_asset_graph()
    daily, evening = dg.AssetKey(["acme", "daily"]), dg.AssetKey(["acme", "late_evening"])
    assert dg.AssetCheckKey(daily, "on_time") in graph.asset_check_keys
    assert dg.AssetCheckKey(evening, "arrived_on_time") in graph.asset_check_keys
    policy = graph.get(daily).freshness_policy
    assert policy is not None
    assert (policy.deadline_cron, policy.timezone) == ("15 7 * * 1-5", "Europe/Berlin")
    # A deadline on the next day is no cron of its own: no policy, the check remains.
    assert graph.get(evening).freshness_policy is None
    assert deadline_cron("*/5 * * * *", 1) is None
    assert deadline_cron("10 * * * *", 5) == "15 * * * *"


def test_a_dynamic_partitions_rule_declares_its_definition(
    tmp_path: Path, config_file: Callable[[str], Path]
) -> None:
    path = config_file(
        f"""
        [dagster]
        location = "data_host"
        [[watch]]
        path = "{tmp_path}"
        asset_key = "acme/orders"
        partition = "{{stem}}"
        dynamic_partitions = "acme_days"
        [[watch]]
        path = "{tmp_path}"
        asset_key = "acme/plain"
        partition = "{{stem}}"
        """
    )
    graph = build_definitions(path).resolve_asset_graph()
    orders = graph.get(dg.AssetKey(["acme", "orders"])).partitions_def
    assert orders == dg.DynamicPartitionsDefinition(name="acme_days")
    assert graph.get(dg.AssetKey(["acme", "plain"])).partitions_def is None


def test_a_manifest_batch_declares_its_manifest_check(
    tmp_path: Path, config_file: Callable[[str], Path]
) -> None:
    config = config_file(
        f"""
        [[watch]]
        name = "deliveries"
        path = "{tmp_path}"
        asset_key = "partner/deliveries"
        [watch.batch]
        complete_when = "manifest"
        manifest = "MANIFEST.json"
        [[watch.checks]]
        type = "size"
        min_bytes = 1
        """
    )
    graph = build_definitions(config, host="data01").resolve_asset_graph()
    key = dg.AssetKey(["partner", "deliveries"])
    assert set(graph.asset_check_keys) == {
        dg.AssetCheckKey(key, "size"),
        dg.AssetCheckKey(key, "manifest"),
    }
    spec = graph.get_check_spec(dg.AssetCheckKey(key, "manifest"))
    assert spec.metadata["manifest"] == "MANIFEST.json"


def test_a_checksum_check_is_declared_with_its_sidecar_and_wait(
    tmp_path: Path, config_file: Callable[[str], Path]
) -> None:
    config = config_file(
        f"""
        [[watch]]
        path = "{tmp_path}"
        asset_key = "partner/orders"
        [[watch.checks]]
        type = "checksum"
        sidecar = "{{relpath}}.sha256"
        wait_seconds = 120
        [[watch.checks]]
        type = "checksum"
        name = "md5sums"
        sidecar = "MD5SUMS"
        algorithm = "md5"
        severity = "WARN"
        """
    )
    graph = build_definitions(config, host="data01").resolve_asset_graph()
    key = dg.AssetKey(["partner", "orders"])
    assert set(graph.asset_check_keys) == {
        dg.AssetCheckKey(key, "checksum"),
        dg.AssetCheckKey(key, "md5sums"),
    }
    own = graph.get_check_spec(dg.AssetCheckKey(key, "checksum")).metadata
    assert (own["type"], own["sidecar"], own["wait_seconds"]) == (
        "checksum",
        "{relpath}.sha256",
        120,
    )
    listed = graph.get_check_spec(dg.AssetCheckKey(key, "md5sums")).metadata
    assert (listed["sidecar"], listed["algorithm"], listed["severity"]) == (
        "MD5SUMS",
        "md5",
        "WARN",
    )
