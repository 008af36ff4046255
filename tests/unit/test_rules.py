"""Rule matching and templates: first match wins, ignore lists, key parts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from asset_watcher.config import load_config
from asset_watcher.globs import glob_to_regex
from asset_watcher.model import FileMatch
from asset_watcher.rules import Rule, compile_rules, explain, owner


@pytest.mark.parametrize(
    ("glob", "path", "matches"),
    [
        ("**/*", "a.csv", True),
        ("**/*", "x/y/a.csv", True),
        ("*.csv", "a.csv", True),
        ("*.csv", "x/a.csv", False),
        ("**/orders_*.csv", "orders_1.csv", True),
        ("**/orders_*.csv", "in/2026/orders_1.csv", True),
        ("**/orders_*.csv", "in/2026/orders_1.csv.tmp", False),
        ("in/*/data.?", "in/x/data.1", True),
        ("in/*/data.?", "in/x/y/data.1", False),
        ("[ab]*.txt", "b1.txt", True),
        ("[!ab]*.txt", "b1.txt", False),
        ("a+b (1).csv", "a+b (1).csv", True),
        # As in fnmatch: `]` first in a set is a member; set operators are plain members.
        ("[!]x].csv", "y.csv", True),
        ("[!]x].csv", "].csv", False),
        ("[]x].csv", "].csv", True),
        ("[a&&b].csv", "&.csv", True),
        ("[a||b].csv", "|.csv", True),
        ("[[x].csv", "[.csv", True),
    ],
)
def test_glob(glob: str, path: str, matches: bool) -> None:
    assert bool(glob_to_regex(glob).match(path)) is matches


@pytest.mark.parametrize("glob", ["[z-a].csv", "x/[!9-0]*", "[a--b]"])
def test_a_reversed_range_is_an_invalid_glob(glob: str) -> None:
    with pytest.raises(ValueError, match="reversed character range"):
        glob_to_regex(glob)


@pytest.fixture
def rules(config_file: Callable[[str], Path], tmp_path: Path) -> list[Rule]:
    (tmp_path / "drop").mkdir()
    path = config_file(
        f"""
        [[watch]]
        name = "acme-orders"
        path = "{tmp_path}/drop"
        glob = "**/orders_*.csv"
        regex = 'orders_(?P<date>\\d{{4}}-\\d{{2}}-\\d{{2}})\\.csv$'
        asset_key = "acme/orders"
        partition = "{{date}}"
        description = "Orders of {{date}} from {{host}}"
        ready_marker = "{{relpath}}.done"

        [[watch]]
        name = "everything"
        path = "{tmp_path}/drop"
        asset_key = "files/{{reldir}}/{{stem}}"
        partition = "{{name}}|{{suffix}}|{{parent}}|{{relpath}}|{{rule}}"
        recursive = false
        """
    )
    return compile_rules(load_config(path), host="data01")


def test_first_matching_rule_owns_the_file(rules: list[Rule], tmp_path: Path) -> None:
    match = owner(rules, f"{tmp_path}/drop/orders_2026-11-26.csv")
    assert isinstance(match, FileMatch)
    assert match.rule_name == "acme-orders"
    assert match.asset_key == ("acme", "orders")
    assert match.partition == "2026-11-26"
    assert match.description == "Orders of 2026-11-26 from data01"
    assert rules[0].marker_for(match) == f"{tmp_path}/drop/orders_2026-11-26.csv.done"


def test_file_fields(rules: list[Rule], tmp_path: Path) -> None:
    match = owner(rules, f"{tmp_path}/drop/report.tar.gz")
    assert isinstance(match, FileMatch)
    assert match.rule_name == "everything"
    assert match.asset_key == ("files", "report.tar")  # empty {reldir} part dropped
    assert match.partition == "report.tar.gz|.gz|drop|report.tar.gz|everything"


@pytest.mark.parametrize(
    ("relpath", "reason"),
    [
        (".hidden.csv", "ignored by '.*'"),
        ("orders_2026-11-26.csv.filepart", "ignored by '*.filepart'"),
        ("sub/plain.txt", "not recursive"),
        (".in.orders_2026-11-26.csv.", "ignored by '.*'"),
    ],
)
def test_files_no_rule_owns(rules: list[Rule], tmp_path: Path, relpath: str, reason: str) -> None:
    match, reasons = explain(rules, f"{tmp_path}/drop/{relpath}")
    assert match is None
    assert [name for name, _ in reasons] == ["acme-orders", "everything"]
    assert reason in reasons[-1][1]


def test_outside_every_root(rules: list[Rule], tmp_path: Path) -> None:
    match, reasons = explain(rules, f"{tmp_path}/dropping/orders_2026-11-26.csv")
    assert match is None
    assert all(reason.startswith("outside") for _, reason in reasons)


def test_regex_mismatch_falls_through_to_next_rule(rules: list[Rule], tmp_path: Path) -> None:
    match, reasons = explain(rules, f"{tmp_path}/drop/orders_yesterday.csv")
    assert match is not None and match.rule_name == "everything"
    assert "regex" in reasons[0][1]


@pytest.mark.parametrize(
    "part",
    ["with space", "hash#tag", "per%cent", "what?", "naïve-日本"],
)
def test_awkward_characters_survive_in_key_parts(
    config_file: Callable[[str], Path], tmp_path: Path, part: str
) -> None:
    path = config_file(
        f"""
        [[watch]]
        path = "{tmp_path}"
        asset_key = "drops/{{stem}}"
        """
    )
    (rule,) = compile_rules(load_config(path))
    match = rule.match(f"{tmp_path}/{part}.csv")
    assert isinstance(match, FileMatch)
    assert match.asset_key == ("drops", part)


def test_undecodable_name_is_refused_with_a_reason(
    config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    path = config_file(
        f"""
        [[watch]]
        path = "{tmp_path}"
        asset_key = "drops/{{name}}"
        [[watch]]
        name = "static"
        path = "{tmp_path}"
        asset_key = "drops/static"
        """
    )
    dynamic, static = compile_rules(load_config(path))
    weird = f"{tmp_path}/" + b"caf\xe9.csv".decode("utf-8", "surrogateescape")
    reason = dynamic.match(weird)
    assert isinstance(reason, str) and "not valid UTF-8" in reason
    match = static.match(weird)
    assert isinstance(match, FileMatch) and match.asset_key == ("drops", "static")


def test_ready_markers_are_never_owned(config_file: Callable[[str], Path], tmp_path: Path) -> None:
    path = config_file(
        f"""
        [[watch]]
        name = "data"
        path = "{tmp_path}"
        glob = "*.csv"
        asset_key = "d/{{stem}}"
        ready_marker = "{{relpath}}.done"
        [[watch]]
        name = "everything"
        path = "{tmp_path}"
        asset_key = "all/{{name}}"
        """
    )
    rules = compile_rules(load_config(path))
    match, reasons = explain(rules, f"{tmp_path}/a.csv.done")
    assert match is None
    assert reasons == [("data", "a ready marker of this rule; markers are not reported")]
    assert owner(rules, f"{tmp_path}/a.csv.done") is None
    found = owner(rules, f"{tmp_path}/a.csv")
    assert found is not None and found.rule_name == "data"
