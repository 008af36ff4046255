"""versions.py: every Decision, for `scan` and for `run`, on real files and a real store.

Each case builds a situation (files in a drop folder, a reported version in the state)
and names the Decision that `scan` (a walk: settle time by mtime, nothing parked or
retried) and `run` (a settled arrival) must reach for it.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from asset_watcher import versions as versions_module
from asset_watcher.config import Config
from asset_watcher.fingerprint import FileChangedError, stat_of
from asset_watcher.model import EventKind, FileMatch, FileStat
from asset_watcher.rules import Rule, compile_rules, owner
from asset_watcher.state import StateStore
from asset_watcher.versions import (
    GONE_SECONDS,
    STILL_OPEN_RETRY_SECONDS,
    CarryOver,
    Decision,
    Look,
    Park,
    RecentlyGone,
    Record,
    Retry,
    Skip,
    Touch,
    Unchanged,
    Versions,
)

SETTLE = 2.0
SCAN = "scan"
RUN = "run"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    """One drop folder, its rule, a state store and a decider with rename memory."""

    drop: Path
    rule: Rule
    store: StateStore
    clock: Clock
    versions: Versions

    def file(self, name: str, text: str = "a,b\n1,2\n", *, age_seconds: float = 60.0) -> Path:
        path = self.drop / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        then = time.time() - age_seconds
        os.utime(path, (then, then))
        return path

    def match(self, path: Path) -> FileMatch:
        found = owner([self.rule], str(path))
        assert found is not None, path
        return found

    def stat(self, path: Path) -> FileStat:
        return stat_of(os.stat(path))

    def report(self, path: Path) -> None:
        """Record `path` as reported, as it is now."""
        decision = self.versions.decide(self.rule, self.match(path), self.stat(path), None)
        assert isinstance(decision, Record), decision
        self.versions.record(self.match(path), decision)

    def decide(self, path: Path, mode: str, stat: FileStat | None = None) -> Decision:
        look = Look(settle_at=time.time()) if mode == SCAN else Look(arrival=True)
        known = self.store.known(str(path))
        return self.versions.decide(
            self.rule, self.match(path), stat or self.stat(path), known, look
        )


def make_world(tmp_path: Path, **rule: Any) -> Iterator[World]:
    drop = tmp_path / "drop"
    drop.mkdir()
    config = Config(
        defaults={"settle_seconds": SETTLE},
        watch=[{"path": str(drop), "asset_key": "drop/{stem}", **rule}],
    )
    rules = compile_rules(config, host="h")
    clock = Clock()
    with StateStore(tmp_path / "state") as store:
        versions = Versions(store, rules, recently_gone=RecentlyGone(clock))
        yield World(drop, rules[0], store, clock, versions)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from make_world(tmp_path)


@pytest.fixture
def marker_world(tmp_path: Path) -> Iterator[World]:
    yield from make_world(tmp_path, ready_marker="{reldir}/{name}.done")


# -- the table ----------------------------------------------------------------------------
# Each setup returns the path to decide on, and optionally the stat the caller last saw.

Setup = Callable[[World], "Path | tuple[Path, FileStat]"]


def new_file(w: World) -> Path:
    return w.file("orders.csv")


def reported_unchanged(w: World) -> Path:
    path = w.file("orders.csv")
    w.report(path)
    return path


def chmod_after_report(w: World) -> Path:
    path = w.file("orders.csv")
    w.report(path)
    os.chmod(path, 0o600)  # only the ctime moves; the content is the same
    return path


def same_stat_new_content(w: World) -> Path:
    """An upload that preserved size and mtime: only the ctime moved, the content differs."""
    path = w.file("orders.csv", "a,b\n1,2\n")
    w.report(path)
    before = path.stat()
    path.write_text("a,b\n3,4\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    return path


def renamed_while_unwatched(w: World) -> Path:
    """Moved to another folder of the rule: same asset key ({stem}), same inode."""
    old = w.file("old/orders.csv")
    w.report(old)
    new = w.drop / "new" / "orders.csv"
    new.parent.mkdir()
    old.rename(new)
    return new


def renamed_to_another_asset(w: World) -> Path:
    """Same inode, but its new name maps to another asset key: a new version."""
    old = w.file("orders.csv")
    w.report(old)
    new = w.drop / "invoices.csv"
    old.rename(new)
    return new


def hard_linked_copy(w: World) -> Path:
    """A second name for a reported file whose first name still exists: not a rename."""
    old = w.file("a.csv")
    w.report(old)
    new = w.drop / "sub" / "a.csv"
    new.parent.mkdir()
    os.link(old, new)
    return new


def gone_and_back(w: World) -> Path:
    """Deleted in run mode (a rename into an unwatched folder looks like that), found
    again under a new name within GONE_SECONDS."""
    old = w.file("sub1/orders.csv")
    w.report(old)
    known = w.store.known(str(old))
    assert known is not None
    w.store.forget(str(old))
    assert w.versions.recently_gone is not None
    w.versions.recently_gone.remember(known, w.match(old))
    new = w.drop / "sub2" / "orders.csv"
    new.parent.mkdir()
    old.rename(new)
    return new


def gone_too_long_ago(w: World) -> Path:
    new = gone_and_back(w)
    w.clock.now += GONE_SECONDS
    return new


def just_written(w: World) -> Path:
    return w.file("orders.csv", age_seconds=0.0)


def future_mtime(w: World) -> Path:
    return w.file("orders.csv", age_seconds=-3600.0)  # a sender's clock ahead of ours


def through_a_link(w: World) -> Path:
    real = w.drop / "real"
    real.mkdir()
    (w.drop / "link").symlink_to(real, target_is_directory=True)
    w.file("real/orders.csv")
    return w.drop / "link" / "orders.csv"


def not_a_regular_file(w: World) -> Path:
    path = w.drop / "orders.csv"
    os.mkfifo(path)
    return path


CASES: list[tuple[str, Setup, type, type]] = [
    # name, setup, what scan decides, what run decides
    ("a new file", new_file, Record, Record),
    ("a reported file, as it was", reported_unchanged, Unchanged, Unchanged),
    ("chmod after the report", chmod_after_report, Touch, Touch),
    ("same size and mtime, new content", same_stat_new_content, Record, Record),
    ("renamed while nobody watched", renamed_while_unwatched, CarryOver, CarryOver),
    ("renamed to another asset key", renamed_to_another_asset, Record, Record),
    ("a hard link next to its reported name", hard_linked_copy, Record, Record),
    ("deleted and back under a new name (run)", gone_and_back, Record, CarryOver),
    ("deleted too long ago", gone_too_long_ago, Record, Record),
    ("modified within the settle time", just_written, Skip, Record),
    ("an mtime in the future", future_mtime, Record, Record),
    ("a folder on its path is a symbolic link", through_a_link, Skip, Skip),
    ("not a regular file", not_a_regular_file, Skip, Skip),
]


@pytest.mark.parametrize("mode", [SCAN, RUN])
@pytest.mark.parametrize(
    ("setup", "scan_decides", "run_decides"),
    [pytest.param(setup, s, r, id=name) for name, setup, s, r in CASES],
)
def test_decisions(
    world: World, mode: str, setup: Setup, scan_decides: type, run_decides: type
) -> None:
    path = setup(world)
    if mode == SCAN:
        world.versions.recently_gone = None  # a one-shot scan has no memory of deletions
    decision = world.decide(path, mode)
    assert type(decision) is (scan_decides if mode == SCAN else run_decides), decision


def test_a_record_carries_the_rules_reports_and_the_files_digest(world: World) -> None:
    path = world.file("orders.csv")
    decision = world.decide(path, RUN)
    assert isinstance(decision, Record)
    assert decision.fingerprint.stat == world.stat(path)
    assert decision.fingerprint.digest is not None
    assert [r.kind for r in decision.reports] == [EventKind.MATERIALIZATION]
    assert decision.reports[0].asset_key == ("drop", "orders")


def test_carry_over_names_the_old_path_and_moves_the_version(world: World) -> None:
    new = renamed_while_unwatched(world)
    decision = world.decide(new, SCAN)
    assert isinstance(decision, CarryOver)
    assert decision.old_path == str(world.drop / "old" / "orders.csv")
    assert world.versions.carry_over(world.match(new), decision)
    assert world.store.known(str(world.drop / "old" / "orders.csv")) is None
    moved = world.store.known(str(new))
    assert moved is not None and moved.digest == decision.digest
    # The rename moved the ctime, so the content decides once more: the same, a Touch.
    assert isinstance(world.decide(new, SCAN), Touch)


def test_a_version_forgotten_lately_is_taken_once(world: World) -> None:
    new = gone_and_back(world)
    first = world.decide(new, RUN)
    assert isinstance(first, CarryOver) and first.old_path is None
    assert isinstance(world.decide(new, RUN), Record)  # the memory was used up


def test_force_makes_every_file_a_new_version(world: World) -> None:
    path = reported_unchanged(world)
    decision = world.versions.decide(
        world.rule, world.match(path), world.stat(path), world.store.known(str(path)),
        Look(force=True, settle_at=time.time()),
    )  # fmt: skip
    assert isinstance(decision, Record)
    moved = renamed_while_unwatched(world)
    forced = world.versions.decide(
        world.rule, world.match(moved), world.stat(moved), None, Look(force=True)
    )
    assert isinstance(forced, Record)  # no carry-over under --force


def test_a_missing_ready_marker_parks_the_file(marker_world: World) -> None:
    path = marker_world.file("orders.csv")
    decision = marker_world.decide(path, RUN)
    assert decision == Park(str(marker_world.drop / "orders.csv.done"))
    (marker_world.drop / "orders.csv.done").touch()
    assert isinstance(marker_world.decide(path, RUN), Record)


@pytest.fixture
def changing_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every read finds the file changing under it (as a writer still at work would)."""

    def changed(path: str, *args: Any, **kwargs: Any) -> Any:
        raise FileChangedError(0, "changed while read")

    monkeypatch.setattr(versions_module, "fingerprint", changed)


@pytest.mark.usefixtures("changing_reads")
def test_a_file_written_again_while_read_is_retried_with_its_new_stat(world: World) -> None:
    path = world.file("orders.csv")
    seen = world.stat(path)
    path.write_text("a,b\n1,2\n3,4\n")  # written again after it was last looked at
    decision = world.decide(path, RUN, stat=seen)
    assert decision == Retry(world.stat(path), SETTLE, "still being written")


@pytest.mark.usefixtures("changing_reads")
def test_a_closed_file_still_open_for_writing_is_looked_at_again_soon(
    tmp_path: Path,
) -> None:
    for world in make_world(tmp_path, settle_seconds=0.0):
        path = world.file("orders.csv")
        decision = world.decide(path, RUN)
        assert decision == Retry(world.stat(path), STILL_OPEN_RETRY_SECONDS, "still being written")
        # A walk has nobody to wait for it: it is skipped, with the same reason.
        assert world.decide(path, SCAN) == Skip("still being written")


# -- checksum sidecars (SPEC 14) ----------------------------------------------------------

WAIT = 300.0


@pytest.fixture
def sidecar_world(tmp_path: Path) -> Iterator[World]:
    checks = [{"type": "checksum", "sidecar": "{relpath}.sha256", "wait_seconds": WAIT}]
    yield from make_world(tmp_path, glob="*.csv", checks=checks)


def sidecar_versions(w: World, now: float) -> Versions:
    clock = Clock()
    clock.now = now
    return Versions(w.store, [w.rule], clock=clock)


@pytest.mark.parametrize("mode", [SCAN, RUN])
def test_a_missing_sidecar_parks_the_file_until_wait_seconds_after_its_ctime(
    sidecar_world: World, mode: str
) -> None:
    w = sidecar_world
    path = w.file("orders.csv")
    changed = w.stat(path).ctime_ns / 1e9
    sidecar = str(w.drop / "orders.csv.sha256")
    look = Look(settle_at=time.time()) if mode == SCAN else Look(arrival=True)

    def decide(now: float) -> Decision:
        versions = sidecar_versions(w, now)
        return versions.decide(w.rule, w.match(path), w.stat(path), None, look)

    assert decide(changed + 1) == Park(sidecar, "checksum sidecar", changed + WAIT)
    assert decide(changed + WAIT - 0.001) == Park(sidecar, "checksum sidecar", changed + WAIT)
    late = decide(changed + WAIT)  # the wait is over: reported, its check failed
    assert isinstance(late, Record)
    (check,) = [r for r in late.reports if r.kind is EventKind.CHECK]
    assert check.body["passed"] is False
    assert check.body["metadata"]["sidecar_missing"] is True


def test_an_empty_sidecar_is_waited_for_and_a_written_one_ends_the_wait(
    sidecar_world: World,
) -> None:
    w = sidecar_world
    path = w.file("orders.csv")
    changed = w.stat(path).ctime_ns / 1e9
    sidecar = w.drop / "orders.csv.sha256"
    sidecar.touch()  # created, not written yet
    versions = sidecar_versions(w, changed + 1)
    decision = versions.decide(w.rule, w.match(path), w.stat(path), None, Look(arrival=True))
    assert isinstance(decision, Park)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    sidecar.write_text(f"{digest}  orders.csv\n")
    decision = versions.decide(w.rule, w.match(path), w.stat(path), None, Look(arrival=True))
    assert isinstance(decision, Record)
    (check,) = [r for r in decision.reports if r.kind is EventKind.CHECK]
    assert check.body["passed"] is True
    assert check.body["metadata"]["expected"] == digest


def test_no_wait_with_wait_seconds_zero(tmp_path: Path) -> None:
    checks = [{"type": "checksum", "sidecar": "{relpath}.md5", "wait_seconds": 0}]
    for w in make_world(tmp_path, checks=checks):
        path = w.file("orders.csv")
        decision = sidecar_versions(w, time.time()).decide(
            w.rule, w.match(path), w.stat(path), None, Look(arrival=True)
        )
        assert isinstance(decision, Record)


def test_sidecars_are_not_owned_even_by_a_rule_taking_every_name(tmp_path: Path) -> None:
    checks = [
        {"type": "checksum", "sidecar": "{relpath}.sha256"},
        {"type": "checksum", "name": "list", "sidecar": "{reldir}/MD5SUMS"},
    ]
    for w in make_world(tmp_path, checks=checks):  # glob "**/*"
        data = w.file("sub/orders.csv")
        assert owner([w.rule], str(data)) is not None
        for name in ("sub/orders.csv.sha256", "sub/MD5SUMS", "MD5SUMS"):
            assert owner([w.rule], str(w.file(name))) is None, name
