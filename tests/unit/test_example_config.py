"""config.example.toml documents every key the models accept, and it loads."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from asset_watcher.config import RuleDefaults, WatchRule, load_config
from asset_watcher.settings import (
    ChecksumCheck,
    CsvHeaderCheck,
    DagsterSettings,
    ExpectSettings,
    GzipCheck,
    HeartbeatSettings,
    JsonCheck,
    MetricsSettings,
    NameRegexCheck,
    RowCountCheck,
    SizeCheck,
    StateSettings,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"


def documented_keys() -> set[str]:
    """Keys written in the example, commented out or not."""
    keys = set()
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        found = re.match(r"\s*#?\s*([a-z_]+)\s*=", line)
        if found:
            keys.add(found.group(1))
        table = re.match(r"\s*#?\s*\[\[?[a-z_]+\.([a-z_]+)\]\]?", line)
        if table:
            keys.add(table.group(1))
    return keys


@pytest.mark.parametrize(
    "model",
    [DagsterSettings, StateSettings, RuleDefaults, WatchRule, MetricsSettings, SizeCheck,
     NameRegexCheck, CsvHeaderCheck, RowCountCheck, JsonCheck, GzipCheck, HeartbeatSettings,
     ExpectSettings, ChecksumCheck],
)  # fmt: skip
def test_every_key_is_documented(model: type) -> None:
    missing = set(model.model_fields) - documented_keys()  # type: ignore[attr-defined]
    assert not missing, f"config.example.toml does not document {sorted(missing)}"


def test_documented_defaults_are_the_real_ones() -> None:
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert data["defaults"] == RuleDefaults().model_dump()
    dagster = DagsterSettings().model_dump()
    dagster.pop("token_file")
    dagster.pop("location")  # no default: commented out
    assert data["dagster"] == dagster
    assert data["heartbeat"] == HeartbeatSettings().model_dump()


def test_example_loads_once_its_folder_exists(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8").replace("/srv/sftp/acme/upload", str(tmp_path))
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    config = load_config(path)
    assert config.watch[0].rule_name == "acme-orders"
