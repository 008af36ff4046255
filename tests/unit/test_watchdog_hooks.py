"""watchdog_hooks for the installed watchdog: every hooked private name is still there
(this fails the day watchdog changes them), the hooks attach, a missing one is an ERROR
with its fallback, and on real folders an overflow reaches the right Watch."""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from asset_watcher import watchdog_hooks as hooks
from asset_watcher.model import Change, ChangeKind
from asset_watcher.observe import Watch
from tests.support.agent_run import burst, small_inotify_queue
from tests.support.waiting import poll_until

MAJOR = hooks.watchdog_major()

linux_only = pytest.mark.skipif(not Path("/proc/sys/fs/inotify").is_dir(), reason="inotify")


def test_the_installed_major_is_a_hooked_one() -> None:
    assert MAJOR in hooks.HOOKED_NAMES, f"watchdog {MAJOR}: no hooks written for it"


@linux_only
@pytest.mark.parametrize("name", sorted(hooks.HOOKED_NAMES.get(MAJOR or 0, {})))
def test_every_hooked_name_exists_with_its_kind(name: str) -> None:
    assert hooks.kind_of(name) == hooks.HOOKED_NAMES[MAJOR or 0][name]


@linux_only
def test_attach_reports_every_hook_attached() -> None:
    status = hooks.attach()
    assert status.major == MAJOR
    assert status.missing == {}
    assert status.attached == {hooks.OVERFLOW, hooks.ADD_GUARD, hooks.MOVED_IN, hooks.FD_HYGIENE}
    assert hooks.attach() is status  # once


@pytest.fixture
def fresh_attach(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """attach() as if for the first time; every wrapped name and the status are put
    back afterwards (each is wrapped once per process)."""
    hooks.attach()
    for name in hooks.WRAPPED_NAMES.get(MAJOR or 0, []):
        owner, value = hooks.resolve(name)
        monkeypatch.setattr(owner, name.rsplit(".", 1)[1], value)
    monkeypatch.setattr(hooks, "_status", None)
    yield monkeypatch


def _remove(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    owner, _ = hooks.resolve(name)
    monkeypatch.delattr(owner, name.rsplit(".", 1)[1])


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]


@linux_only
def test_a_missing_overflow_name_is_an_error_naming_it_and_the_fallback(
    fresh_attach: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    name = hooks._NEEDS[MAJOR or 0][hooks.OVERFLOW][0]
    _remove(fresh_attach, name)
    with caplog.at_level(logging.ERROR, logger=hooks.__name__):
        status = hooks.attach()
        hooks.attach()
    assert not status.has(hooks.OVERFLOW) and status.has(hooks.ADD_GUARD)
    (message,) = _errors(caplog)  # once, however often attach() is called
    assert name.rsplit(".", 1)[1] in message and "overflow" in message
    assert "rescan_interval_seconds" in message  # the fallback


@linux_only
def test_a_missing_add_guard_makes_the_watch_poll(
    fresh_attach: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Without the guard watchdog could watch through a planted link: the folder is
    polled instead, whose listing never goes through a link."""
    name = hooks._NEEDS[MAJOR or 0][hooks.ADD_GUARD][0]
    _remove(fresh_attach, name)
    changes: list[Change] = []
    drop = tmp_path / "drop"
    drop.mkdir()
    watch = Watch(str(drop), "inotify", changes.append, poll_interval_seconds=0.05)
    with caplog.at_level(logging.WARNING):
        watch.start()
    try:
        assert watch.kind == "polling"
        (message,) = _errors(caplog)
        assert "add-guard" in message and "polling" in message
        (drop / "a.csv").write_text("a")
        poll_until(lambda: any(c.path == str(drop / "a.csv") for c in changes), 10)
    finally:
        watch.stop()


def test_an_unknown_major_attaches_nothing_and_says_so(
    fresh_attach: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fresh_attach.setattr(hooks, "watchdog_major", lambda: 99)
    with caplog.at_level(logging.ERROR, logger=hooks.__name__):
        status = hooks.attach()
    assert status.attached == frozenset()
    assert set(status.missing) == set(hooks.FALLBACKS)
    assert len(_errors(caplog)) == len(hooks.FALLBACKS)
    assert all("not a tested major" in m for m in _errors(caplog))


def test_the_add_guard_mask(tmp_path: Path) -> None:
    (tmp_path / "real" / "deeper").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    root = os.fsencode(tmp_path)
    both = hooks.IN_ONLYDIR | hooks.IN_DONT_FOLLOW
    # The root may be a link and is followed; below it nothing is.
    assert hooks._guarded_mask(root, root, 0x8 | hooks.IN_DONT_FOLLOW) == 0x8 | hooks.IN_ONLYDIR
    assert hooks._guarded_mask(root, root + b"/real/deeper", 0x8) == 0x8 | both
    with pytest.raises(OSError) as caught:
        hooks._guarded_mask(root, root + b"/link/deeper", 0x8)
    assert caught.value.errno == errno.ENOTDIR


# -- on real folders ----------------------------------------------------------------------


class Changes:
    def __init__(self) -> None:
        self.items: list[Change] = []
        self.lock = threading.Lock()

    def put(self, change: Change) -> None:
        with self.lock:
            self.items.append(change)

    def has(self, kind: ChangeKind, path: Path) -> bool:
        with self.lock:
            return any(c.kind is kind and c.path == str(path) for c in self.items)


@linux_only
def test_an_overflow_reaches_the_watch_of_its_root_only(tmp_path: Path) -> None:
    full, calm = tmp_path / "full", tmp_path / "calm"
    full.mkdir()
    calm.mkdir()
    changes = Changes()
    watches = [Watch(str(calm), "inotify", changes.put)]
    watches[0].start()  # the usual queue
    try:
        with small_inotify_queue(16):
            watches.append(Watch(str(full), "inotify", changes.put))
            watches[1].start()
        rounds = iter(range(100))

        def overflowed() -> bool:  # another burst while the reader kept up (a busy host)
            return changes.has(ChangeKind.OVERFLOW, full) or not burst(
                full, 500, f"r{next(rounds)}-"
            )

        poll_until(overflowed, 60, what="overflow")
        (calm / "after.csv").write_text("x")
        poll_until(lambda: changes.has(ChangeKind.WRITTEN, calm / "after.csv"), 10)
        assert not changes.has(ChangeKind.OVERFLOW, calm)
        assert all(w.is_alive() for w in watches)
    finally:
        for watch in watches:
            watch.stop()


@linux_only
def test_a_root_that_is_a_link_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "drop").symlink_to(tmp_path / "real", target_is_directory=True)
    changes = Changes()
    watch = Watch(str(tmp_path / "drop"), "inotify", changes.put)
    watch.start()
    try:
        (tmp_path / "real" / "sub" / "a.csv").write_text("a")
        poll_until(lambda: changes.has(ChangeKind.WRITTEN, tmp_path / "drop" / "sub" / "a.csv"))
    finally:
        watch.stop()


@linux_only
@pytest.mark.skipif(MAJOR != 7, reason="watchdog 7's InotifyFD owns its descriptor")
def test_fd_hygiene_never_closes_a_descriptor_watchdog_7_holds(tmp_path: Path) -> None:
    changes = Changes()
    watch = Watch(str(tmp_path), "inotify", changes.put)
    watch.start()
    try:
        held = hooks.inotify_fds()
        hooks.close_leaked_fds(set())  # as if every inotify fd had appeared during a start
        assert hooks.inotify_fds() == held
        (tmp_path / "a.csv").write_text("a")
        poll_until(lambda: changes.has(ChangeKind.WRITTEN, tmp_path / "a.csv"))
    finally:
        watch.stop()


@linux_only
@pytest.mark.skipif(MAJOR != 7, reason="on watchdog 6 each emitter reads its own events")
def test_a_dead_event_reader_makes_the_watch_unhealthy(tmp_path: Path) -> None:
    """On 7 an InotifyFD thread reads for the emitters; if it ends, every watch goes quiet
    while the emitters still run. The supervisor (watches.py) restarts a Watch that is not
    alive, so is_alive() must see it."""
    watch = Watch(str(tmp_path), "inotify", Changes().put)
    watch.start()
    try:
        assert watch.is_alive()
        observer = watch._observer
        assert observer is not None
        (emitter,) = observer.emitters
        reader = emitter._inotify_fd  # type: ignore[attr-defined]
        reader.stop()
        reader.join(5)
        assert not hooks.readers_alive(observer)
        assert not watch.is_alive()
    finally:
        watch.stop()


def test_only_watchdogs_harmless_double_add_warning_is_silenced() -> None:
    """Under `filterwarnings = error` the double-add warning ended watchdog 7's reader
    thread after a `mkdir -p` with files in it (the watch went quiet); others still count."""
    import warnings

    hooks.quiet_harmless_warnings()
    warnings.warn(
        "Callback with id '140349235161040' already exists for watch <Watch wd=5>. "
        "It will be Overwritten.",
        RuntimeWarning,
        stacklevel=1,
    )
    with pytest.raises(RuntimeWarning):
        warnings.warn("something else", RuntimeWarning, stacklevel=1)
