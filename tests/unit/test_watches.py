"""Watch supervision with a fake watch and a fake scanner (no inotify): which folders get
a watch, the fallback to polling, rescans standing in for a failed watch, retries on an
injected clock, a root deleted and re-created, the control changes and the router."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from asset_watcher import watches as watches_module
from asset_watcher.config import Config
from asset_watcher.model import Change, ChangeKind
from asset_watcher.observe import ObserverKind, WatchError
from asset_watcher.rules import Rule, compile_rules
from asset_watcher.watches import (
    OVERFLOW_FALLBACK_RESCAN_SECONDS,
    OVERFLOW_LOG_SECONDS,
    SUPERVISE_SECONDS,
    WATCH_RETRY_SECONDS,
    WatchCounts,
    Watches,
    plan_watches,
)

# -- fakes ---------------------------------------------------------------------------------


class FakeWatch:
    def __init__(
        self,
        root: str,
        kind: ObserverKind,
        put: Callable[[Change], None],
        *,
        recursive: bool,
        poll_interval_seconds: float,
        fail: WatchError | None,
        adds_folders: bool,
    ) -> None:
        self.root = root
        self.kind = kind
        self.put = put
        self.recursive = recursive
        self.poll_interval_seconds = poll_interval_seconds
        self.fail = fail
        self.adds_folders = adds_folders
        self.started = False
        self.stopped_with: list[float] = []
        self.root_replaced = False  # what the real Watch sees when its root's inode changed
        self.added: list[str] = []

    def start(self) -> None:
        if self.fail is not None:
            raise self.fail
        self.started = True

    def is_alive(self) -> bool:
        return self.started and not self.stopped_with and not self.root_replaced

    def add_folder_watches(self, folder: str) -> bool:
        self.added.append(folder)
        return self.adds_folders

    def stop(self, timeout: float = 5.0) -> None:
        self.stopped_with.append(timeout)


@dataclass
class FakeWatchFactory:
    failures: dict[str, WatchError] = field(default_factory=dict)  # kind -> raised by start
    adds_folders: bool = True
    made: list[FakeWatch] = field(default_factory=list)

    def __call__(
        self,
        root: str,
        kind: ObserverKind,
        put: Callable[[Change], None],
        *,
        recursive: bool,
        poll_interval_seconds: float,
    ) -> FakeWatch:
        watch = FakeWatch(
            root,
            kind,
            put,
            recursive=recursive,
            poll_interval_seconds=poll_interval_seconds,
            fail=self.failures.get(kind),
            adds_folders=self.adds_folders,
        )
        self.made.append(watch)
        return watch

    def running(self) -> list[FakeWatch]:
        return [w for w in self.made if w.is_alive()]


@dataclass
class FakeScanner:
    full: list[tuple[list[str] | None, str]] = field(default_factory=list)
    folders: list[tuple[str, bool]] = field(default_factory=list)
    intervals: list[dict[str, float]] = field(default_factory=list)

    def request_full(self, rule_names: Iterable[str] | None, reason: str) -> None:
        self.full.append((sorted(rule_names) if rule_names is not None else None, reason))

    def request_folder(self, folder: str, recursive: bool) -> None:
        self.folders.append((folder, recursive))

    def set_rules(self, rules: Sequence[Rule], intervals: dict[str, float]) -> None:
        self.intervals.append(dict(intervals))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    watches: Watches
    factory: FakeWatchFactory
    scanner: FakeScanner
    clock: Clock
    submitted: list[Change]


@pytest.fixture
def world() -> World:
    factory, scanner, clock = FakeWatchFactory(), FakeScanner(), Clock()
    submitted: list[Change] = []
    watches = Watches(
        submitted.append,
        scanner,
        clock=clock,
        watch_factory=factory,
        overflows_heard=lambda: True,
    )
    return World(watches, factory, scanner, clock, submitted)


@pytest.fixture
def local_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """`auto` chooses inotify, wherever the test's temporary folder lives."""
    real = watches_module.choose_observer

    def choose(setting: str, path: str) -> tuple[ObserverKind, str]:
        return ("inotify", "a local disk") if setting == "auto" else real(setting, path)

    monkeypatch.setattr(watches_module, "choose_observer", choose)


def rules_for(tmp_path: Path, *watch: dict[str, Any], **defaults: Any) -> list[Rule]:
    for rule in watch:
        Path(rule["path"]).mkdir(parents=True, exist_ok=True)
    return compile_rules(Config(defaults=defaults, watch=list(watch)), host="h")


def spec(tmp_path: Path, name: str, folder: str, **settings: Any) -> dict[str, Any]:
    """One [[watch]] rule on tmp_path/folder."""
    return {
        "name": name,
        "path": str(tmp_path / folder),
        "asset_key": f"{name}/{{stem}}",
        **settings,
    }


def one_rule(tmp_path: Path, **settings: Any) -> list[Rule]:
    return rules_for(tmp_path, spec(tmp_path, "r", "drop", **settings))


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


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


def test_a_covered_folder_lends_its_shortest_poll_interval_and_fallback_needs_every_rule(
    tmp_path: Path, local_disk: None
) -> None:
    rules = rules_for(
        tmp_path,
        spec(tmp_path, "top", "a", observer="auto"),
        spec(tmp_path, "sub", "a/b", observer="inotify", poll_interval_seconds=1),
    )
    [plan] = plan_watches(rules)
    assert (plan.root, plan.rule_names) == (str(tmp_path / "a"), ("top", "sub"))
    assert plan.poll_interval_seconds == 1
    assert not plan.may_fall_back  # `sub` asked for inotify and nothing else


# -- the router ----------------------------------------------------------------------------

CONTROL, SCANNER, PIPELINE = "control", "scanner", "pipeline"
DESTINATIONS = {
    ChangeKind.CREATED: PIPELINE,
    ChangeKind.WRITTEN: PIPELINE,
    ChangeKind.MODIFIED: PIPELINE,
    ChangeKind.MOVED: PIPELINE,
    ChangeKind.DELETED: PIPELINE,
    ChangeKind.FOLDER_DELETED: PIPELINE,
    ChangeKind.FOLDER_CREATED: SCANNER,
    ChangeKind.FOLDER_MOVED_IN: CONTROL,
    ChangeKind.ROOT_GONE: CONTROL,
    ChangeKind.OVERFLOW: CONTROL,
    ChangeKind.WATCH_FAILED: CONTROL,
}


def test_every_change_kind_has_a_destination() -> None:
    assert set(DESTINATIONS) == set(ChangeKind)


@pytest.mark.parametrize("kind", list(ChangeKind), ids=lambda k: k.value)
def test_the_router_sends_each_kind_to_its_place(
    world: World, tmp_path: Path, kind: ChangeKind
) -> None:
    world.watches.set_rules(one_rule(tmp_path, observer="inotify"), initial=True)
    [watch] = world.factory.made
    root = str(tmp_path / "drop")
    change = Change(kind, f"{root}/x", root=root)
    watch.put(change)  # what the Watch was given: called on the observer's thread
    controls = []
    while not world.watches.controls.empty():
        controls.append(world.watches.controls.get_nowait())
    where = {
        CONTROL: controls,
        SCANNER: world.scanner.folders,
        PIPELINE: world.submitted,
    }
    expected = {
        CONTROL: [change] if DESTINATIONS[kind] == CONTROL else [],
        SCANNER: [(change.path, False)] if DESTINATIONS[kind] == SCANNER else [],
        PIPELINE: [change] if DESTINATIONS[kind] == PIPELINE else [],
    }
    assert where == expected
    assert world.scanner.full == []  # nothing is acted on on the observer's thread


# -- starting, falling back, degrading -----------------------------------------------------


def test_inotify_failing_under_auto_falls_back_to_polling(
    world: World, tmp_path: Path, local_disk: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    root = str(tmp_path / "drop")
    world.factory.failures["inotify"] = WatchError(root, errno.EINVAL, "inotify_init failed")
    world.watches.set_rules(one_rule(tmp_path, poll_interval_seconds=2), initial=True)
    assert [w.kind for w in world.factory.made] == ["inotify", "polling"]
    assert world.factory.running() == [world.factory.made[1]]
    assert world.factory.made[1].poll_interval_seconds == 2
    assert world.watches.counts() == WatchCounts(folders=1, started=1, complete=1, troubled=0)
    assert (
        f"cannot watch {root} with inotify (inotify_init failed); polling it every 2s instead"
        in messages(caplog, logging.WARNING)
    )
    assert world.scanner.full == []  # the catch-up scan follows


def test_an_explicit_inotify_rule_degrades_instead_of_polling(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = str(tmp_path / "drop")
    world.factory.failures["inotify"] = WatchError(root, errno.EINVAL, "inotify_init failed")
    world.watches.set_rules(one_rule(tmp_path, observer="inotify"), initial=True)
    assert [w.kind for w in world.factory.made] == ["inotify"]
    assert world.watches.counts() == WatchCounts(folders=1, started=0, complete=0, troubled=1)
    [error] = messages(caplog, logging.ERROR)
    assert error.startswith(f"cannot watch {root}: inotify_init failed; until then")


def test_a_reached_limit_degrades_to_rescans_every_poll_interval(
    world: World, tmp_path: Path, local_disk: None, caplog: pytest.LogCaptureFixture
) -> None:
    rules = rules_for(
        tmp_path,
        spec(tmp_path, "r", "drop"),
        spec(tmp_path, "other", "other"),
        poll_interval_seconds=2,
        rescan_interval_seconds=300,
    )
    world.factory.failures["inotify"] = WatchError(
        str(tmp_path / "drop"), errno.ENOSPC, "No space left on device"
    )
    # Both folders hit the limit; a limit is no reason to poll (polling cannot help it).
    world.watches.set_rules(rules, initial=True)
    assert [w.kind for w in world.factory.made] == ["inotify", "inotify"]
    assert world.watches.counts() == WatchCounts(folders=2, started=0, complete=0, troubled=2)
    assert world.scanner.intervals[-1] == {"r": 2.0, "other": 2.0}
    errors = messages(caplog, logging.ERROR)
    assert len(errors) == 2
    assert "fs.inotify.max_user_watches" in errors[0]
    assert errors[0].endswith(
        f"until then it is rescanned every 2s and watching is retried every "
        f"{WATCH_RETRY_SECONDS:g}s"
    )
    assert world.scanner.full == []


def test_only_the_degraded_folders_rules_rescan_at_the_poll_interval(
    world: World, tmp_path: Path
) -> None:
    rules = rules_for(
        tmp_path,
        spec(tmp_path, "r", "drop"),
        spec(tmp_path, "never", "drop", rescan_interval_seconds=0),
        spec(tmp_path, "other", "other"),
        observer="inotify",
        poll_interval_seconds=7,
        rescan_interval_seconds=300,
    )
    world.watches.set_rules(rules, initial=True)
    [drop, _] = world.factory.made
    drop.put(
        Change(ChangeKind.WATCH_FAILED, drop.root + "/sub", root=drop.root, errno=errno.ENOSPC)
    )
    world.watches.handle_controls()
    # 0 (never) becomes the poll interval too: the folder has no complete watch.
    assert world.scanner.intervals[-1] == {"r": 7.0, "never": 7.0, "other": 300.0}


def test_a_degraded_watch_is_retried_after_watch_retry_seconds(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    root = str(tmp_path / "drop")
    world.factory.failures["inotify"] = WatchError(root, errno.ENOSPC, "No space left on device")
    world.watches.set_rules(
        one_rule(tmp_path, observer="inotify", poll_interval_seconds=2, rescan_interval_seconds=0),
        initial=True,
    )
    assert world.scanner.intervals[-1] == {"r": 2.0}
    del world.factory.failures["inotify"]  # the operator raised the limit

    world.clock.now += WATCH_RETRY_SECONDS - 0.5
    world.watches.supervise()
    assert len(world.factory.made) == 1  # not yet

    world.clock.now += 0.5
    world.watches.supervise()
    assert len(world.factory.made) == 2
    assert world.factory.running() == [world.factory.made[1]]
    assert world.watches.counts() == WatchCounts(folders=1, started=1, complete=1, troubled=0)
    assert world.scanner.intervals[-1] == {"r": 0.0}  # no periodic rescans again
    assert world.scanner.full == [(["r"], "rescan after (re)starting a watch")]


def test_a_watch_that_fails_again_on_retry_is_rescanned_and_retried_later(
    world: World, tmp_path: Path
) -> None:
    root = str(tmp_path / "drop")
    world.factory.failures["inotify"] = WatchError(root, errno.EMFILE, "Too many open files")
    world.watches.set_rules(one_rule(tmp_path, observer="inotify"), initial=True)
    world.clock.now += WATCH_RETRY_SECONDS
    world.watches.supervise()
    assert len(world.factory.made) == 2
    assert world.scanner.full == [(["r"], "rescan after a failed watch")]
    world.clock.now += WATCH_RETRY_SECONDS - 0.5
    world.watches.supervise()
    assert len(world.factory.made) == 2  # the next attempt counts from the last failure


def test_a_watch_started_by_a_reload_asks_for_a_rescan(world: World, tmp_path: Path) -> None:
    world.watches.set_rules(one_rule(tmp_path, observer="inotify"), initial=False)
    assert len(world.factory.running()) == 1
    assert world.scanner.full == [(["r"], "rescan after (re)starting a watch")]


@pytest.mark.parametrize(
    ("heard", "expected"), [(True, 0.0), (False, OVERFLOW_FALLBACK_RESCAN_SECONDS)]
)
def test_rules_that_never_rescan_do_so_hourly_when_overflows_go_unheard(
    tmp_path: Path, heard: bool, expected: float
) -> None:
    scanner = FakeScanner()
    watches = Watches(
        lambda change: None,
        scanner,
        watch_factory=FakeWatchFactory(),
        overflows_heard=lambda: heard,
    )
    rules = rules_for(
        tmp_path,
        spec(tmp_path, "never", "a", rescan_interval_seconds=0),
        spec(tmp_path, "daily", "b", rescan_interval_seconds=86400),
        observer="inotify",
    )
    watches.set_rules(rules, initial=True)
    assert scanner.intervals[-1] == {"never": expected, "daily": 86400.0}


# -- a root deleted and re-created ---------------------------------------------------------


def test_a_root_gone_and_back_is_watched_again_and_rescanned(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    world.watches.set_rules(one_rule(tmp_path, observer="inotify"), initial=True)
    [first] = world.factory.made
    root = tmp_path / "drop"
    root.rmdir()
    first.root_replaced = True
    first.put(Change(ChangeKind.ROOT_GONE, str(root), root=str(root)))
    world.watches.handle_controls()
    assert first.stopped_with
    assert world.watches.counts() == WatchCounts(folders=1, started=0, complete=0, troubled=1)
    assert f"watched folder {root} was deleted" in messages(caplog, logging.INFO)
    assert f"watched folder {root} is gone; watching resumes when it is back" in messages(
        caplog, logging.WARNING
    )

    world.clock.now += SUPERVISE_SECONDS
    world.watches.supervise()  # still gone: no watch, no second warning
    assert world.factory.made == [first]
    assert len(messages(caplog, logging.WARNING)) == 1

    root.mkdir()
    world.watches.supervise()  # not due yet: the last attempt was just now
    assert world.factory.made == [first]
    world.clock.now += SUPERVISE_SECONDS
    world.watches.supervise()
    assert len(world.factory.running()) == 1
    assert world.factory.running()[0] is not first
    assert f"{root} is back" in messages(caplog, logging.INFO)
    assert world.watches.counts() == WatchCounts(folders=1, started=1, complete=1, troubled=0)
    assert world.scanner.full == [(["r"], "rescan after (re)starting a watch")]


def test_a_root_that_vanishes_while_its_watch_starts_is_tried_again(
    world: World, tmp_path: Path
) -> None:
    root = str(tmp_path / "drop")
    world.factory.failures["inotify"] = WatchError(root, errno.ENOENT, f"{root} is not a folder")
    world.watches.set_rules(one_rule(tmp_path, observer="inotify"), initial=True)
    assert world.watches.counts().troubled == 1
    del world.factory.failures["inotify"]
    world.clock.now += SUPERVISE_SECONDS
    world.watches.supervise()
    assert len(world.factory.running()) == 1


# -- control changes -----------------------------------------------------------------------


def test_an_overflow_rescans_the_rules_of_that_watch(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rules = rules_for(
        tmp_path,
        spec(tmp_path, "a1", "a"),
        spec(tmp_path, "a2", "a"),
        spec(tmp_path, "b", "b"),
        observer="inotify",
    )
    world.watches.set_rules(rules, initial=True)
    watch_a = next(w for w in world.factory.made if w.root == str(tmp_path / "a"))
    overflow = Change(ChangeKind.OVERFLOW, watch_a.root, root=watch_a.root)
    watch_a.put(overflow)
    watch_a.put(overflow)  # a flood overflows repeatedly: one warning
    world.watches.handle_controls()
    assert world.scanner.full == [(["a1", "a2"], "rescan after an inotify queue overflow")] * 2
    assert len(messages(caplog, logging.WARNING)) == 1
    assert "fs.inotify.max_queued_events" in messages(caplog, logging.WARNING)[0]

    world.clock.now += OVERFLOW_LOG_SECONDS
    watch_a.put(overflow)
    world.watches.handle_controls()
    assert len(messages(caplog, logging.WARNING)) == 2


def test_a_failed_subfolder_watch_degrades_and_rescans(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world.watches.set_rules(
        one_rule(tmp_path, observer="inotify", poll_interval_seconds=3), initial=True
    )
    [watch] = world.factory.made
    failed = Change(
        ChangeKind.WATCH_FAILED, watch.root + "/deep", root=watch.root, errno=errno.ENOSPC
    )
    watch.put(failed)
    world.watches.handle_controls()
    assert world.scanner.full == [(["r"], "rescan after a failed watch")]
    assert world.watches.counts() == WatchCounts(folders=1, started=1, complete=0, troubled=1)
    assert world.scanner.intervals[-1] == {"r": 3.0}
    [error] = messages(caplog, logging.ERROR)
    assert error.startswith(f"cannot watch {watch.root}/deep: the inotify watch limit is reached")

    watch.put(failed)
    world.watches.handle_controls()
    assert len(world.scanner.full) == 2
    assert len(messages(caplog, logging.ERROR)) == 1  # already degraded: said once

    world.clock.now += WATCH_RETRY_SECONDS
    world.watches.supervise()  # the watch runs, but misses a folder: start it afresh
    assert watch.stopped_with
    assert len(world.factory.running()) == 1
    assert world.watches.counts().complete == 1
    assert world.scanner.intervals[-1] == {"r": 3600.0}


def test_a_folder_moved_in_gets_watches_and_a_scan(world: World, tmp_path: Path) -> None:
    world.watches.set_rules(one_rule(tmp_path, observer="inotify"), initial=True)
    [watch] = world.factory.made
    moved = watch.root + "/batch"
    watch.put(Change(ChangeKind.FOLDER_MOVED_IN, moved, root=watch.root))
    assert world.scanner.folders == []  # not before the main thread acts on it
    world.watches.handle_controls()
    assert watch.added == [moved]
    assert watch.is_alive()
    assert world.scanner.folders == [(moved, True)]


def test_a_folder_moved_in_that_cannot_get_watches_restarts_the_watch(
    world: World, tmp_path: Path
) -> None:
    world.factory.adds_folders = False
    world.watches.set_rules(one_rule(tmp_path, observer="inotify"), initial=True)
    [watch] = world.factory.made
    moved = watch.root + "/batch"
    watch.put(Change(ChangeKind.FOLDER_MOVED_IN, moved, root=watch.root))
    world.watches.handle_controls()
    assert watch.stopped_with
    assert world.watches.counts().started == 0
    assert world.scanner.folders == [(moved, True)]
    world.watches.supervise()
    assert len(world.factory.running()) == 1
    assert world.scanner.full == [(["r"], "rescan after (re)starting a watch")]


def test_controls_from_a_folder_no_longer_watched_are_dropped(world: World, tmp_path: Path) -> None:
    world.watches.set_rules(one_rule(tmp_path, observer="inotify"), initial=True)
    [watch] = world.factory.made
    watch.put(Change(ChangeKind.OVERFLOW, watch.root, root=watch.root))
    world.watches.set_rules([], initial=False)  # a reload removed the rule meanwhile
    world.watches.handle_controls()
    assert world.scanner.full == []
    assert world.watches.controls.empty()


# -- reload and shutdown -------------------------------------------------------------------


def test_a_reload_stops_watches_no_longer_planned_and_keeps_the_others(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    a = spec(tmp_path, "a", "a")
    b = spec(tmp_path, "b", "b")
    a2 = spec(tmp_path, "a2", "a")
    world.watches.set_rules(rules_for(tmp_path, a, b, observer="inotify"), initial=True)
    watch_a, watch_b = world.factory.made
    world.watches.set_rules(rules_for(tmp_path, a, a2, observer="inotify"), initial=False)
    assert world.factory.made == [watch_a, watch_b]  # a's watch carries on
    assert watch_a.is_alive() and not watch_b.is_alive()
    assert f"no longer watching {tmp_path / 'b'}" in messages(caplog, logging.INFO)
    assert world.scanner.full == []
    watch_a.put(Change(ChangeKind.OVERFLOW, watch_a.root, root=watch_a.root))
    world.watches.handle_controls()
    assert world.scanner.full == [(["a", "a2"], "rescan after an inotify queue overflow")]


def test_stop_stops_every_watch_within_what_is_left(world: World, tmp_path: Path) -> None:
    rules = rules_for(
        tmp_path,
        spec(tmp_path, "a", "a"),
        spec(tmp_path, "b", "b"),
        observer="inotify",
    )
    world.watches.set_rules(rules, initial=True)
    left = iter([1.5, 0.25])
    world.watches.stop(lambda: next(left))
    assert [w.stopped_with for w in world.factory.made] == [[1.5], [0.25]]
    assert world.watches.counts() == WatchCounts(folders=2, started=0, complete=0, troubled=0)
