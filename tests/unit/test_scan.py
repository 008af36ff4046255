"""The scan's walk and its change rule: stat decides, content only when ctime alone moved."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from asset_watcher import versions as versions_module
from asset_watcher.config import load_config
from asset_watcher.model import Report
from asset_watcher.rules import Rule, compile_rules
from asset_watcher.scan import scan, walk
from asset_watcher.state import StateStore


def make_rules(config_file: Callable[[str], Path], root: Path, extra: str = "") -> list[Rule]:
    path = config_file(
        f"""
        [defaults]
        settle_seconds = 0
        [[watch]]
        path = "{root}"
        asset_key = "drops/{{stem}}"
        {extra}
        """
    )
    return compile_rules(load_config(path))


def test_walk_prunes_ignored_names_and_skips_links(fs: FakeFilesystem) -> None:
    from asset_watcher.config import WatchRule

    fs.create_file("/drop/a.csv")
    fs.create_file("/drop/.hidden/b.csv")
    fs.create_file("/drop/sub/c.csv.filepart")
    fs.create_file("/drop/sub/deeper/d.csv")
    fs.create_file("/outside/secret")
    fs.create_symlink("/drop/link.csv", "/outside/secret")
    fs.create_symlink("/drop/linkdir", "/outside")
    settings = WatchRule(path=Path("/drop"), asset_key="x")  # [defaults] as they come
    rule = Rule(settings=settings, host="h")
    found = sorted(c.path for _, files in walk(rule) for c in files)
    assert found == ["/drop/a.csv", "/drop/sub/deeper/d.csv"]
    settings.recursive = False
    assert sorted(c.path for _, files in walk(rule) for c in files) == ["/drop/a.csv"]


@pytest.fixture
def read_counter(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every file the scan opens for reading."""
    opened: list[str] = []
    real = versions_module.fingerprint

    def counting(path: str, *args: Any, **kwargs: Any) -> Any:
        opened.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(versions_module, "fingerprint", counting)
    return opened


def reports_of(rules: list[Rule], store: StateStore, **kwargs: Any) -> list[Report]:
    emitted: list[Report] = []
    scan(rules, store, emit=lambda report, match: emitted.append(report), **kwargs)
    return emitted


def test_unchanged_files_are_not_read_again(
    config_file: Callable[[str], Path], tmp_path: Path, read_counter: list[str]
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    for i in range(5):
        (drop / f"f{i}.csv").write_text(f"{i}\n")
    rules = make_rules(config_file, drop)
    with StateStore(tmp_path / "state") as store:
        assert len(reports_of(rules, store)) == 5
        assert store.counts().pending == 5
        read_counter.clear()
        assert reports_of(rules, store) == []
        assert read_counter == []
        assert len(reports_of(rules, store, force=True)) == 5
        assert store.counts().pending == 10


def test_what_counts_as_a_new_version(
    config_file: Callable[[str], Path], tmp_path: Path, read_counter: list[str]
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    target = drop / "data.csv"
    target.write_text("one\n")
    rules = make_rules(config_file, drop)
    with StateStore(tmp_path / "state") as store:
        assert len(reports_of(rules, store)) == 1
        before = target.stat()

        # chmod moves only the ctime: one read to compare content, no report.
        target.chmod(0o600)
        read_counter.clear()
        assert reports_of(rules, store) == []
        assert read_counter == [str(target)]
        read_counter.clear()
        assert reports_of(rules, store) == []  # the new ctime was remembered
        assert read_counter == []

        # An upload that preserved size and mtime but changed content: reported.
        target.write_text("two\n")
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
        (report,) = reports_of(rules, store)
        assert report.body["metadata"]["size_bytes"] == 4

        # Same content written again (a re-sent file) is a new version too.
        target.write_text("two\n")
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
        assert len(reports_of(rules, store)) == 1


def test_dry_run_records_nothing(config_file: Callable[[str], Path], tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.csv").write_text("a\n")
    rules = make_rules(config_file, drop)
    with StateStore(tmp_path / "state") as store:
        assert len(reports_of(rules, store, dry_run=True)) == 1
        assert store.counts().pending == 0 and store.counts().tracked_files == 0
        assert len(reports_of(rules, store)) == 1


def test_ready_marker_and_unsettled_files_wait(
    config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.csv").write_text("a\n")
    rules = make_rules(config_file, drop, 'ready_marker = "{relpath}.done"\nignore = ["*.done"]')
    with StateStore(tmp_path / "state") as store:
        assert reports_of(rules, store) == []
        (drop / "a.csv.done").touch()
        (report,) = reports_of(rules, store)
        assert report.asset_key == ("drops", "a")

    settling = make_rules(config_file, drop, "settle_seconds = 3600")
    (drop / "b.csv").write_text("b\n")
    with StateStore(tmp_path / "state2") as store:
        assert reports_of(settling, store) == []


def test_zero_byte_and_odd_names_do_not_stop_the_scan(
    config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "empty.csv").touch()
    (drop / "new\nline.csv").write_text("x")
    (drop / ("l" * 251 + ".csv")).write_text("x")
    os.close(os.open(os.fsencode(drop) + b"/caf\xe9.csv", os.O_CREAT | os.O_WRONLY))
    rules = make_rules(config_file, drop)
    with StateStore(tmp_path / "state") as store:
        keys = sorted(r.asset_key[1] for r in reports_of(rules, store))
    assert keys == sorted(["empty", "new\nline", "l" * 251])


def test_second_agent_on_the_same_state_directory_is_refused(tmp_path: Path) -> None:
    from asset_watcher.errors import StateLockedError

    with StateStore(tmp_path / "state"), pytest.raises(StateLockedError) as caught:
        StateStore(tmp_path / "state")
    assert f"pid {os.getpid()}" in str(caught.value)
    with StateStore(tmp_path / "state"):  # released on close
        pass


def test_a_rename_within_a_rule_is_not_a_new_version(
    config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.csv").write_text("a\n")
    rules = make_rules(config_file, drop)  # key per stem: a rename changes the key
    with StateStore(tmp_path / "state") as store:
        assert len(reports_of(rules, store)) == 1
        (drop / "a.csv").rename(drop / "b.csv")
        (report,) = reports_of(rules, store)  # another asset key: an arrival
        assert report.asset_key == ("drops", "b")

    path = config_file(
        f"""
        [[watch]]
        path = "{drop}"
        asset_key = "drops/all"
        settle_seconds = 0
        """
    )
    same_key = compile_rules(load_config(path))
    with StateStore(tmp_path / "state2") as store:
        assert len(reports_of(same_key, store)) == 1
        (drop / "b.csv").rename(drop / "c.csv")
        assert reports_of(same_key, store) == []
        assert store.known(str(drop / "c.csv")) is not None
        assert store.counts().tracked_files == 1


def test_files_behind_a_linked_folder_are_not_read(tmp_path: Path) -> None:
    from asset_watcher.fingerprint import NotRegularFileError, fingerprint

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text("secret\n")
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(NotRegularFileError):
        fingerprint(
            str(drop / "sub" / "secret.csv"), expected_real_path=str(drop / "sub/secret.csv")
        )
    inside = drop / "in.csv"
    inside.write_text("ok\n")
    assert fingerprint(str(inside), expected_real_path=str(inside)).stat.size == 3
