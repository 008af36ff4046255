"""Ready markers: where a data file's marker is, and which files are markers."""

from __future__ import annotations

from pathlib import Path

import pytest

from asset_watcher.config import Config
from asset_watcher.model import FileMatch
from asset_watcher.rules import Rule, compile_rules, marker_rule


def rule_with(tmp_path: Path, marker: str, **extra: object) -> Rule:
    config = Config(
        watch=[{"path": str(tmp_path), "asset_key": "k/{stem}", "ready_marker": marker, **extra}]
    )
    (rule,) = compile_rules(config, host="data01")
    return rule


@pytest.mark.parametrize(
    ("marker", "data", "expected"),
    [
        ("{relpath}.done", "d/orders.csv", "d/orders.csv.done"),
        ("{reldir}/{stem}.ok", "d/orders.csv", "d/orders.ok"),
        ("{reldir}/{stem}.ok", "orders.csv", "orders.ok"),  # empty reldir stays inside
        ("{reldir}/_SUCCESS", "orders.csv", "_SUCCESS"),
        ("markers/{name}.{host}", "orders.csv", "markers/orders.csv.data01"),
    ],
)
def test_marker_for_and_is_marker_agree(
    tmp_path: Path, marker: str, data: str, expected: str
) -> None:
    rule = rule_with(tmp_path, marker)
    match = rule.match(str(tmp_path / data))
    assert isinstance(match, FileMatch)
    assert rule.marker_for(match) == str(tmp_path / expected)
    assert rule.is_marker(str(tmp_path / expected))
    assert not rule.is_marker(str(tmp_path / data))


def test_markers_are_owned_by_nobody(tmp_path: Path) -> None:
    marked = rule_with(tmp_path, "{relpath}.done")
    other = Config(watch=[{"path": str(tmp_path), "asset_key": "all"}])
    rules = [marked, *compile_rules(other, host="h")]
    assert marker_rule(rules, str(tmp_path / "x.csv.done")) is marked
    assert marker_rule(rules, str(tmp_path / "x.csv")) is None
    assert marker_rule(rules, "/elsewhere/x.csv.done") is None
    assert not rule_with(tmp_path, "{relpath}.done").is_marker(str(tmp_path))
