"""Watching folders with watchdog: the only module that imports it.

A watchdog observer dispatches every event on its own thread under a lock, so the
handler here only translates the event into a small frozen `Change` and puts it on a
queue; settling, hashing and HTTP happen elsewhere.

With inotify only the events that matter are asked for: creations, renames, deletions
and close-after-write (no IN_MODIFY/IN_ATTRIB/IN_OPEN): a slow upload costs no events
until it closes, and our own reads of a file do not echo back.

watchdog drops the kernel's IN_Q_OVERFLOW, swallows a failed watch on a new subfolder
and may add a watch through a folder swapped for a link (FIELD-NOTES 6). What we do
about it inside watchdog lives in `watchdog_hooks`; this module only asks it (listeners
per root, the hook status) and never touches a private name itself.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import Literal

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver

from asset_watcher import watchdog_hooks
from asset_watcher.model import Change, ChangeKind
from asset_watcher.paths import is_under, through_link

log = logging.getLogger(__name__)

ObserverKind = Literal["inotify", "polling"]

# Where inotify sees only this host's own writes: a partner writing through the file
# server would never produce an event here.
NETWORK_FILESYSTEMS = frozenset(
    {
        "9p",
        "afs",
        "beegfs",
        "ceph",
        "cifs",
        "coda",
        "davfs",
        "fuse.glusterfs",
        "fuse.rclone",
        "fuse.s3fs",
        "fuse.sshfs",
        "glusterfs",
        "gpfs",
        "lustre",
        "ncpfs",
        "nfs",
        "nfs4",
        "smb3",
        "smbfs",
        "virtiofs",
    }
)

STOP_TIMEOUT_SECONDS = 5.0


class WatchError(Exception):
    """A folder could not be watched; `errno` tells a limit from anything else."""

    def __init__(self, path: str, errno_: int | None, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno_

    @property
    def is_limit(self) -> bool:
        return self.errno in (errno.ENOSPC, errno.EMFILE)


# -- choosing an observer -----------------------------------------------------------------


_MOUNT_ESCAPE = re.compile(rb"\\([0-7]{3})")


def _unescape_mount(field: bytes) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo and writes every other
    byte as it is: unescape on bytes, then decode as the file system would."""
    return os.fsdecode(_MOUNT_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), field))


def filesystem_type(path: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The type of the file system holding `path` (longest mount point prefix)."""
    try:
        with open(mountinfo, "rb") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    real = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for line in lines:
        left, sep, right = line.partition(b" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right:
            continue
        mount_point = _unescape_mount(fields[4])
        inside = is_under(real, mount_point)
        if inside and (best is None or len(mount_point) >= best[0]):
            best = (len(mount_point), os.fsdecode(right.split()[0]))
    return best[1] if best else None


def choose_observer(setting: str, path: str) -> tuple[ObserverKind, str]:
    """`auto` means inotify, except where it cannot see others' writes; with a reason."""
    if setting == "polling":
        return "polling", "observer = polling"
    if setting == "inotify":
        return "inotify", "observer = inotify"
    if not sys.platform.startswith("linux"):
        return "polling", f"no inotify on {sys.platform}"
    fstype = filesystem_type(path)
    if fstype in NETWORK_FILESYSTEMS or (fstype or "").startswith("fuse."):
        return "polling", f"{path} is on {fstype}, where inotify misses remote writes"
    return "inotify", f"{path} is on {fstype or 'a local file system'}"


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def limit_advice(errno_: int | None) -> str:
    """What an operator should change when inotify runs out (which sysctl to raise)."""
    if errno_ == errno.ENOSPC:
        now = _read_int("/proc/sys/fs/inotify/max_user_watches")
        namespaced = _read_int("/proc/sys/user/max_inotify_watches")
        extra = ""
        if namespaced is not None and now is not None and namespaced < now:
            extra = f"; in this user namespace user.max_inotify_watches = {namespaced}"
        return (
            f"the inotify watch limit is reached (fs.inotify.max_user_watches = {now}{extra}; "
            "one watch per folder): raise it, e.g. "
            "`sysctl -w fs.inotify.max_user_watches=524288` and persist it in /etc/sysctl.d/"
        )
    if errno_ == errno.EMFILE:
        now = _read_int("/proc/sys/fs/inotify/max_user_instances")
        return (
            f"the inotify instance limit is reached (fs.inotify.max_user_instances = {now}): "
            "raise it, e.g. `sysctl -w fs.inotify.max_user_instances=512` and persist it in "
            "/etc/sysctl.d/"
        )
    return os.strerror(errno_) if errno_ else "unknown error"


# -- the handler and one watched folder ---------------------------------------------------

_INOTIFY_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileMovedEvent,
    DirMovedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    FileClosedEvent,
]
_POLLING_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    DirMovedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
]


def _text(path: bytes | str) -> str:
    return os.fsdecode(path)


class _Handler(FileSystemEventHandler):
    """Translate and enqueue; nothing slow may happen on the observer's thread."""

    def __init__(self, root: str, polling: bool, put: Callable[[Change], None]) -> None:
        super().__init__()
        self.root = root
        self.polling = polling
        self.put = put

    def change(self, kind: ChangeKind, path: str, dest: str | None = None) -> None:
        self.put(Change(kind, path, dest, self.root, time.monotonic()))

    def dispatch(self, event: FileSystemEvent) -> None:
        src = _text(event.src_path)
        dest = _text(event.dest_path) if event.dest_path else ""
        kind = type(event)
        if kind is FileClosedEvent:
            self.change(ChangeKind.WRITTEN, src)
        elif kind is FileModifiedEvent:
            self.change(ChangeKind.MODIFIED, src)
        elif kind is FileCreatedEvent:
            self.change(ChangeKind.MODIFIED if self.polling else ChangeKind.CREATED, src)
        elif kind is FileMovedEvent:
            if not src:
                self.change(ChangeKind.WRITTEN, dest)
            elif not dest:
                self.change(ChangeKind.DELETED, src)
            else:
                self.change(ChangeKind.MOVED, src, dest)
        elif kind is FileDeletedEvent:
            self.change(ChangeKind.DELETED, src)
        elif kind is DirCreatedEvent:
            if not self.polling:  # polling lists the new folder's files itself
                self.change(ChangeKind.FOLDER_CREATED, src)
        elif kind is DirMovedEvent:
            if not src:
                self.change(ChangeKind.FOLDER_MOVED_IN, dest)
            elif not dest:
                self.change(ChangeKind.FOLDER_DELETED, src)
            # A move within the tree arrives as one FileMovedEvent per file as well.
        elif kind is DirDeletedEvent:
            if os.path.normpath(src) == self.root:
                self.change(ChangeKind.ROOT_GONE, src)
            else:
                self.change(ChangeKind.FOLDER_DELETED, src)


def _root_identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if os.path.isdir(path) else None


def _list_folder(root: str, path: str | None) -> Iterator[os.DirEntry[str]]:
    """The polling observer's listing: never through a symbolic link below `root`."""
    path = path or root
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    if path != root:
        flags |= os.O_NOFOLLOW
        if through_link(root, path):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last step is a link: treat it as no folder
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path) from None
        raise
    try:
        with os.scandir(fd) as entries:
            return iter(list(entries))
    finally:
        os.close(fd)


class Watch:
    """One watched folder: its own watchdog observer, so one failing folder (a watch
    limit, a deleted root) can be restarted without touching the others."""

    def __init__(
        self,
        root: str,
        kind: ObserverKind,
        put: Callable[[Change], None],
        *,
        recursive: bool = True,
        poll_interval_seconds: float = 5.0,
    ) -> None:
        self.root = os.path.normpath(root)
        self.kind = kind
        self.recursive = recursive
        self.poll_interval_seconds = poll_interval_seconds
        self.put = put  # called on watchdog's thread: must only enqueue
        self.identity: tuple[int, int] | None = None
        self._observer: BaseObserver | None = None
        self._unlisten: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"Watch({self.root!r}, {self.kind})"

    def _overflowed(self) -> None:
        self.put(Change(ChangeKind.OVERFLOW, self.root, root=self.root, at=time.monotonic()))

    def _failed(self, path: str, errno_: int) -> None:
        if is_under(path, self.root):
            self.put(
                Change(
                    ChangeKind.WATCH_FAILED,
                    path,
                    root=self.root,
                    at=time.monotonic(),
                    errno=errno_,
                )
            )

    def start(self) -> None:
        """Put the watches in place; raises WatchError (a failed attempt keeps holding no
        inotify watches or descriptors)."""
        self.identity = _root_identity(self.root)
        if self.identity is None:
            raise WatchError(self.root, errno.ENOENT, f"{self.root} is not a folder (now)")
        if self.kind == "inotify" and not watchdog_hooks.attach().has(watchdog_hooks.ADD_GUARD):
            # Without the add guard watchdog could put a watch through a link planted
            # below the root; polling lists each folder itself and never through a link.
            # (attach() logged the ERROR once; this says which folder it costs.)
            log.warning("watching %s by polling: the inotify add guard is missing", self.root)
            self.kind = "polling"
        observer: BaseObserver
        if self.kind == "inotify":
            from watchdog.observers.inotify import InotifyObserver

            watchdog_hooks.quiet_harmless_warnings()
            observer = InotifyObserver(generate_full_events=True)
            events = _INOTIFY_EVENTS
        else:
            from watchdog.observers.polling import PollingObserverVFS

            # lstat: a symbolic link to a folder is not descended into; and a folder
            # swapped for a link between that lstat and its listing is not listed.
            observer = PollingObserverVFS(
                os.lstat,
                functools.partial(_list_folder, self.root),
                polling_interval=self.poll_interval_seconds,  # type: ignore[arg-type, unused-ignore]
            )
            events = _POLLING_EVENTS
        handler = _Handler(self.root, self.kind == "polling", self.put)
        observer.schedule(handler, self.root, recursive=self.recursive, event_filter=events)
        if self.kind == "inotify":
            self._unlisten = watchdog_hooks.listen(self.root, self._overflowed, self._failed)
        before = watchdog_hooks.inotify_fds() if self.kind == "inotify" else set()
        try:
            observer.start()
        except OSError as exc:
            self._stop_listening()
            with contextlib.suppress(Exception):
                observer.stop()  # watchdog 7: closes the observer's own InotifyFD
            if self.kind == "inotify":
                watchdog_hooks.close_leaked_fds(before)
            raise WatchError(self.root, exc.errno, str(exc.strerror or exc)) from None
        self._observer = observer

    def _stop_listening(self) -> None:
        unlisten, self._unlisten = self._unlisten, None
        if unlisten is not None:
            unlisten()

    def is_alive(self) -> bool:
        """Watching, with every emitter running, and the root still the same folder."""
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        if not observer.emitters or not all(e.is_alive() for e in observer.emitters):
            return False
        if not watchdog_hooks.readers_alive(observer):
            return False
        return _root_identity(self.root) == self.identity

    def add_folder_watches(self, folder: str) -> bool:
        """Watch a folder tree that was moved in from outside (watchdog 6 only watches
        folders created in place). False when this watchdog gives no way to do it."""
        observer = self._observer
        if observer is None or self.kind != "inotify" or not self.recursive:
            return observer is not None
        return watchdog_hooks.watch_moved_in(observer, folder)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        self._stop_listening()
        observer, self._observer = self._observer, None
        if observer is None:
            return
        with contextlib.suppress(Exception):  # a dead emitter must not stop the shutdown
            observer.stop()
        observer.join(timeout)
