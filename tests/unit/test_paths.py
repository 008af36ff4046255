"""paths.py: display text, "is under", "reached through a link"."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from asset_watcher.paths import display_path, is_under, relative_to, through_link, utf8_path


def test_display_path_escapes_what_could_forge_a_log_line() -> None:
    name = "/drop/evil\nINFO fake line\x1b[31m.csv"
    assert "\n" not in display_path(name) and "\x1b" not in display_path(name)
    assert display_path(name) == "/drop/evil\\nINFO fake line\\x1b[31m.csv"
    assert utf8_path(name) == name  # report metadata keeps the real name
    raw = "/drop/caf" + b"\xe9".decode("utf-8", "surrogateescape")
    assert display_path(raw) == utf8_path(raw) == "/drop/caf\\xe9"


@pytest.mark.parametrize(
    ("path", "folder", "under", "relative"),
    [
        ("/drop", "/drop", True, None),
        ("/drop/a.csv", "/drop", True, "a.csv"),
        ("/drop/a.csv", "/drop/", True, "a.csv"),
        ("/drop/sub/a.csv", "/drop", True, "sub/a.csv"),
        ("/dropped/a.csv", "/drop", False, None),
        ("/a.csv", "/", True, "a.csv"),
        ("/", "/", True, None),
        ("/other", "/drop", False, None),
    ],
)
def test_is_under_and_relative_to(
    path: str, folder: str, under: bool, relative: str | None
) -> None:
    assert is_under(path, folder) is under
    assert relative_to(folder, path) == relative


def test_through_link_tells_paths_that_pass_a_link(tmp_path: Path) -> None:
    (tmp_path / "real" / "deeper").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    root = str(tmp_path)
    assert not through_link(root, f"{root}/real/deeper/file")
    assert not through_link(root, f"{root}/link")  # the last step is the caller's
    assert through_link(root, f"{root}/link/deeper/file")
    assert through_link(os.fsencode(root), os.fsencode(f"{root}/link/file"))
    assert through_link(root, f"{root}/missing/file")
