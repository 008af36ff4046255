"""The observer layer on real folders: event vocabulary, observer choice, overflow hook."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from asset_watcher import observe
from asset_watcher.model import Change, ChangeKind
from asset_watcher.observe import Watch, WatchError
from tests.support.agent_run import poll_until

linux_only = pytest.mark.skipif(not Path("/proc/sys/fs/inotify").is_dir(), reason="inotify")


class Changes:
    def __init__(self) -> None:
        self.items: list[Change] = []
        self.lock = threading.Lock()

    def put(self, change: Change) -> None:
        with self.lock:
            self.items.append(change)

    def kinds(self, path: Path | str) -> list[ChangeKind]:
        with self.lock:
            return [c.kind for c in self.items if c.path == str(path)]

    def wait(self, kind: ChangeKind, path: Path | str, dest: Path | None = None) -> Change:
        def find() -> Change | None:
            with self.lock:
                for change in self.items:
                    same = change.kind is kind and change.path == str(path)
                    if same and (dest is None or change.dest == str(dest)):
                        return change
            return None

        found: Change = poll_until(find, 10, what=f"{kind} {path}")
        return found


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[Callable[..., tuple[Watch, Changes]]]:
    watches: list[Watch] = []

    def make(kind: observe.ObserverKind, folder: Path | None = None) -> tuple[Watch, Changes]:
        root = folder or tmp_path / "drop"
        root.mkdir(exist_ok=True)
        changes = Changes()
        watch = Watch(str(root), kind, changes.put, poll_interval_seconds=0.05)
        watch.start()
        watches.append(watch)
        return watch, changes

    yield make
    for watch in watches:
        watch.stop()


@linux_only
def test_inotify_vocabulary(watched: Callable[..., tuple[Watch, Changes]], tmp_path: Path) -> None:
    watch, changes = watched("inotify")
    drop = tmp_path / "drop"
    (drop / "a.csv.filepart").write_text("x")
    os.rename(drop / "a.csv.filepart", drop / "a.csv")
    changes.wait(ChangeKind.MOVED, drop / "a.csv.filepart", dest=drop / "a.csv")
    assert ChangeKind.WRITTEN in changes.kinds(drop / "a.csv.filepart")
    assert ChangeKind.CREATED in changes.kinds(drop / "a.csv.filepart")
    (drop / "sub").mkdir()
    changes.wait(ChangeKind.FOLDER_CREATED, drop / "sub")
    (tmp_path / "outside.csv").write_text("y")
    os.rename(tmp_path / "outside.csv", drop / "sub" / "in.csv")
    changes.wait(ChangeKind.WRITTEN, drop / "sub" / "in.csv")  # moved in = arrived
    os.rename(drop / "sub" / "in.csv", tmp_path / "out.csv")
    changes.wait(ChangeKind.DELETED, drop / "sub" / "in.csv")  # moved out = gone
    (drop / "a.csv").unlink()
    changes.wait(ChangeKind.DELETED, drop / "a.csv")
    batch = tmp_path / "batch"
    batch.mkdir()
    os.rename(batch, drop / "batch")
    changes.wait(ChangeKind.FOLDER_MOVED_IN, drop / "batch")
    assert watch.add_folder_watches(str(drop / "batch"))
    (drop / "batch" / "x").write_text("z")
    changes.wait(ChangeKind.WRITTEN, drop / "batch" / "x")  # watched now
    with open(drop / "sub" / "r", "w") as handle:  # our own reads echo nothing back
        handle.write("r")
    changes.wait(ChangeKind.WRITTEN, drop / "sub" / "r")
    (drop / "sub" / "r").read_text()
    (drop / "sub" / "r").chmod(0o600)
    assert watch.is_alive()
    shutil.rmtree(drop)
    changes.wait(ChangeKind.ROOT_GONE, drop)
    poll_until(lambda: not watch.is_alive(), 5, what="watch ends with its folder")
    expected = [ChangeKind.CREATED, ChangeKind.WRITTEN, ChangeKind.DELETED]
    assert changes.kinds(drop / "sub" / "r") == expected


def test_polling_vocabulary(watched: Callable[..., tuple[Watch, Changes]], tmp_path: Path) -> None:
    watch, changes = watched("polling")
    drop = tmp_path / "drop"
    (drop / "a.part").write_text("x")
    changes.wait(ChangeKind.MODIFIED, drop / "a.part")
    os.rename(drop / "a.part", drop / "a.csv")
    changes.wait(ChangeKind.MOVED, drop / "a.part", dest=drop / "a.csv")
    (drop / "a.csv").unlink()
    changes.wait(ChangeKind.DELETED, drop / "a.csv")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    (drop / "link").symlink_to(outside, target_is_directory=True)
    (drop / "after").write_text("a")
    changes.wait(ChangeKind.MODIFIED, drop / "after")
    assert changes.kinds(drop / "link" / "secret") == []  # symbolic links are not followed
    shutil.rmtree(drop)
    changes.wait(ChangeKind.ROOT_GONE, drop)
    poll_until(lambda: not watch.is_alive(), 5, what="watch ends with its folder")


def test_start_on_a_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(WatchError) as caught:
        Watch(str(tmp_path / "missing"), "polling", lambda change: None).start()
    assert caught.value.errno == errno.ENOENT and not caught.value.is_limit


def test_choose_observer(tmp_path: Path) -> None:
    assert observe.choose_observer("polling", str(tmp_path))[0] == "polling"
    assert observe.choose_observer("inotify", str(tmp_path))[0] == "inotify"
    kind, reason = observe.choose_observer("auto", str(tmp_path))
    assert kind == ("inotify" if observe.sys.platform.startswith("linux") else "polling")
    assert reason


def test_filesystem_type_picks_the_longest_mount_point(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 0:21 / / rw - ext4 /dev/vda rw\n"
        "30 22 0:40 / /srv/sftp rw,relatime shared:1 - nfs4 host:/export rw\n"
        "31 22 0:41 / /srv/with\\040space rw - cifs //h/s rw\n"
    )
    assert observe.filesystem_type("/srv/sftp/acme", str(mountinfo)) == "nfs4"
    assert observe.filesystem_type("/srv/sftpx", str(mountinfo)) == "ext4"
    assert observe.filesystem_type("/srv/with space/in", str(mountinfo)) == "cifs"
    assert observe.filesystem_type("/x", str(tmp_path / "none")) is None


def test_limit_advice_names_the_sysctl() -> None:
    assert "fs.inotify.max_user_watches" in observe.limit_advice(errno.ENOSPC)
    assert "fs.inotify.max_user_instances" in observe.limit_advice(errno.EMFILE)
    assert WatchError("/x", errno.ENOSPC, "full").is_limit


def _swap_folders_for_links(drop: Path, target: str, count: int) -> None:
    """What an SFTP user can do: create a folder and replace it by a link at once, so the
    link is in place when the watch on the new folder is added. In another process, so
    the swaps do not wait for our observer thread to release the GIL."""
    script = (
        "import os, sys\n"
        "for i in range(int(sys.argv[3])):\n"
        "    path = os.path.join(sys.argv[1], f'd{i}')\n"
        "    os.mkdir(path); os.rmdir(path); os.symlink(sys.argv[2], path)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(drop), target, str(count)], check=True)


@linux_only
@pytest.mark.parametrize("kind", ["inotify", "polling"])
def test_folder_swapped_for_a_link_is_never_followed(
    watched: Callable[..., tuple[Watch, Changes]], tmp_path: Path, kind: observe.ObserverKind
) -> None:
    """Followed, the link would put a watch on the outside folder for good."""
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "old.csv").write_text("secret")
    watch, changes = watched(kind)
    drop = tmp_path / "drop"
    _swap_folders_for_links(drop, "../outside", 300)
    if kind == "inotify":  # every watch on the new folders is added (or refused) by now
        changes.wait(ChangeKind.FOLDER_CREATED, drop / "d299")
    (outside / "new.csv").write_text("written outside later")
    (outside / "sub" / "new.csv").write_text("written outside later")
    (drop / "after.csv").write_text("inside")
    changes.wait(
        ChangeKind.MODIFIED if kind == "polling" else ChangeKind.WRITTEN, drop / "after.csv"
    )
    # No watch may stay on the outside folder: nothing written there later is seen. (While
    # the swaps race watchdog's walk of a new folder, it may name a file through a link
    # once; the pipeline refuses to read such paths, which the agent tests cover.)
    with changes.lock:
        through = [
            c
            for c in changes.items
            if re.match(r"/d\d+/", c.path[len(str(drop)) :]) and c.path.endswith("new.csv")
        ]
    assert through == []
    assert watch.is_alive()


def test_filesystem_type_reads_mount_points_as_bytes(tmp_path: Path) -> None:
    """The kernel escapes only space, tab, newline and backslash; any other byte of a mount
    point (UTF-8 or not) is written as it is, and must neither crash nor be misread."""
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_bytes(
        b"22 1 0:21 / / rw - ext4 /dev/vda rw\n"
        b"30 22 0:40 / /aw-mnt/donn\xc3\xa9es rw - nfs4 host:/export rw\n"
        b"31 22 0:41 / /aw-mnt/caf\xe9 rw - cifs //h/s rw\n"
        b"32 22 0:42 / /aw-mnt/with\\040space\\134back rw - 9p share rw\n"
    )
    assert observe.filesystem_type("/aw-mnt/données/acme", str(mountinfo)) == "nfs4"
    assert observe.filesystem_type(os.fsdecode(b"/aw-mnt/caf\xe9/in"), str(mountinfo)) == "cifs"
    assert observe.filesystem_type("/aw-mnt/with space\\back/x", str(mountinfo)) == "9p"
    assert observe.filesystem_type("/aw-mnt/cafe", str(mountinfo)) == "ext4"
