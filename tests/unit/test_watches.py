"""Which folders get a watch of their own."""

from __future__ import annotations

from pathlib import Path

from asset_watcher.config import Config
from asset_watcher.rules import compile_rules
from asset_watcher.watches import plan_watches

# -- plan_watches --------------------------------------------------------------------------


def test_one_watch_per_folder_and_none_inside_a_recursive_one(tmp_path: Path) -> None:
    for name in ("a", "a/b", "c"):
        (tmp_path / name).mkdir()
    config = Config(
        defaults={"observer": "inotify"},
        watch=[
            {"name": "a1", "path": str(tmp_path / "a"), "asset_key": "a1/{stem}"},
            {"name": "a2", "path": str(tmp_path / "a"), "asset_key": "a2/{stem}"},
            {"name": "ab", "path": str(tmp_path / "a/b"), "asset_key": "ab/{stem}"},
            {
                "name": "c",
                "path": str(tmp_path / "c"),
                "asset_key": "c",
                "recursive": False,
            },
            {
                "name": "cp",
                "path": str(tmp_path / "c"),
                "asset_key": "cp",
                "observer": "polling",
                "poll_interval_seconds": 3,
            },
        ],
    )
    plans = {(p.root, p.kind): p for p in plan_watches(compile_rules(config, host="h"))}
    assert set(plans) == {
        (str(tmp_path / "a"), "inotify"),
        (str(tmp_path / "c"), "inotify"),
        (str(tmp_path / "c"), "polling"),
    }
    assert plans[(str(tmp_path / "a"), "inotify")].rule_names == ("a1", "a2", "ab")
    assert not plans[(str(tmp_path / "c"), "inotify")].recursive
    assert plans[(str(tmp_path / "c"), "polling")].poll_interval_seconds == 3
    assert not plans[(str(tmp_path / "c"), "polling")].may_fall_back


def test_a_non_recursive_watch_does_not_cover_subfolders(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    config = Config(
        defaults={"observer": "inotify"},
        watch=[
            {"name": "top", "path": str(tmp_path), "asset_key": "t", "recursive": False},
            {"name": "sub", "path": str(tmp_path / "sub"), "asset_key": "s"},
        ],
    )
    roots = sorted(p.root for p in plan_watches(compile_rules(config, host="h")))
    assert roots == [str(tmp_path), str(tmp_path / "sub")]
