"""The one place that touches watchdog's private inotify internals (SPEC 11).

watchdog drops what the agent must hear (FIELD-NOTES 6): it swallows the kernel's
IN_Q_OVERFLOW (6) or handles it without telling any event handler (7), it ignores a
failed watch on a subfolder, and it may add a watch through a folder that was swapped
for a symbolic link (`rmdir d; ln -s /etc d`) between its walk and the add. The
inside differs per major, so each has its own wrappers:

- watchdog 6: one `inotify_c.Inotify` per observed folder. We wrap
  `_parse_event_buffer` (sees the wd -1 overflow record), `_add_watch` (every add:
  the link guard, and failures such as ENOSPC), `read_events` (a KeyError there would
  end the emitter thread) and use `Inotify.add_watch` for folders moved in.
- watchdog 7: one `InotifyFD` per observer holds the fd; `InotifyWatchGroup` is one
  observed folder (`.path` its root). We wrap `InotifyFD.add_callback` (every add: its
  `callback` argument is the group, so the root is known) and
  `InotifyWatchGroup.on_queue_overflow` (called once per group on overflow).

Every wrapper passes everything through unchanged except what it refuses. `attach()`
installs them once; a hook that cannot attach is logged as an ERROR once, naming the
fallback, and reported in `HookStatus` so the caller keeps the promise another way.
"""

from __future__ import annotations

import contextlib
import dis
import errno
import functools
import importlib
import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from asset_watcher.paths import through_link

log = logging.getLogger(__name__)

IN_Q_OVERFLOW = 0x4000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000

# The hooks, by what they promise; `HookStatus` names them.
OVERFLOW = "overflow"  # an IN_Q_OVERFLOW reaches the Watch of that root
ADD_GUARD = "add-guard"  # no watch through a link below the root; failed adds are heard
MOVED_IN = "moved-in"  # a folder moved in from outside gets watches
FD_HYGIENE = "fd-hygiene"  # a failed start leaves no inotify fd behind

FALLBACKS = {
    OVERFLOW: (
        "lost events are found only by the periodic rescan "
        "(rescan_interval_seconds; hourly where it is 0)"
    ),
    ADD_GUARD: "folders are watched with the polling observer, which never lists through a link",
    MOVED_IN: "the watch is restarted to cover a folder moved in",
    FD_HYGIENE: "a failed start is stopped through watchdog's API only",
}

_C = "watchdog.observers.inotify_c"
_O = "watchdog.observers.inotify"

# Every private name relied on, per major: "module:Qualified.name" -> kind. `kind` is
# "class", "function", "staticmethod" or "attribute" (set by that class's __init__, or a
# dataclass field). tests/unit/test_watchdog_hooks.py checks them for the installed major.
HOOKED_NAMES: dict[int, dict[str, str]] = {
    6: {
        f"{_C}:Inotify": "class",
        f"{_C}:Inotify._parse_event_buffer": "staticmethod",
        f"{_C}:Inotify._add_watch": "function",
        f"{_C}:Inotify.read_events": "function",
        f"{_C}:Inotify.add_watch": "function",
        f"{_C}:Inotify._path": "attribute",
        f"{_O}:InotifyEmitter._inotify": "attribute",
        "watchdog.observers.inotify_buffer:InotifyBuffer._inotify": "attribute",
    },
    7: {
        f"{_C}:InotifyFD": "class",
        f"{_C}:InotifyFD.add_callback": "function",
        f"{_O}:InotifyWatchGroup": "class",
        f"{_O}:InotifyWatchGroup.path": "attribute",
        f"{_O}:InotifyWatchGroup.on_queue_overflow": "function",
        # Not wrapped, relied on: a folder moved in from outside is watched by watchdog
        # itself (on_event: is_moved_to, source not watched -> _add_all_callbacks).
        f"{_O}:InotifyWatchGroup.on_event": "function",
        f"{_O}:InotifyWatchGroup._add_all_callbacks": "function",
        # Not wrapped, looked at: the thread that reads the events for an emitter.
        f"{_O}:InotifyEmitter._inotify_fd": "attribute",
    },
}

# The names attach() replaces (with a wrapper around the original), per major.
WRAPPED_NAMES: dict[int, list[str]] = {
    6: [
        f"{_C}:Inotify._parse_event_buffer",
        f"{_C}:Inotify.read_events",
        f"{_C}:Inotify._add_watch",
    ],
    7: [f"{_O}:InotifyWatchGroup.on_queue_overflow", f"{_C}:InotifyFD.add_callback"],
}

# Which hook needs which names (a hook attaches only when all of its names are there).
_NEEDS: dict[int, dict[str, list[str]]] = {
    6: {
        OVERFLOW: [
            f"{_C}:Inotify._parse_event_buffer",
            f"{_C}:Inotify.read_events",
            f"{_C}:Inotify._path",
        ],
        ADD_GUARD: [f"{_C}:Inotify._add_watch", f"{_C}:Inotify._path"],
        MOVED_IN: [
            f"{_C}:Inotify.add_watch",
            f"{_O}:InotifyEmitter._inotify",
            "watchdog.observers.inotify_buffer:InotifyBuffer._inotify",
        ],
        FD_HYGIENE: [],
    },
    7: {
        OVERFLOW: [f"{_O}:InotifyWatchGroup.on_queue_overflow", f"{_O}:InotifyWatchGroup.path"],
        ADD_GUARD: [f"{_C}:InotifyFD.add_callback", f"{_O}:InotifyWatchGroup.path"],
        MOVED_IN: [
            f"{_O}:InotifyWatchGroup.on_event",
            f"{_O}:InotifyWatchGroup._add_all_callbacks",
        ],
        FD_HYGIENE: [],
    },
}


@dataclass(frozen=True)
class HookStatus:
    major: int | None
    attached: frozenset[str] = frozenset()
    missing: dict[str, str] = field(default_factory=dict)  # hook -> why, with its fallback

    def has(self, hook: str) -> bool:
        return hook in self.attached


def watchdog_major() -> int | None:
    try:
        from watchdog.version import VERSION_MAJOR
    except ImportError:
        return None
    return int(VERSION_MAJOR)


def resolve(name: str) -> tuple[Any, Any]:
    """(owner, value) for "module:Class.attr"; value is the class's own __dict__ entry (a
    staticmethod stays one), None for an instance attribute, or the class itself for
    "module:Class". Raises LookupError when missing."""
    module_name, _, qualified = name.partition(":")
    try:
        owner: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise LookupError(f"{module_name} cannot be imported ({exc})") from None
    parts = qualified.split(".")
    for part in parts[:-1]:
        owner = getattr(owner, part, None)
        if owner is None:
            raise LookupError(f"{module_name}.{part} is missing")
    last = parts[-1]
    if isinstance(owner, type):
        # The class's own: an inherited one (e.g. a Protocol's stub) is not what we wrap.
        if last in owner.__dict__:
            return owner, owner.__dict__[last]
        if _sets_attribute(owner, last):
            return owner, None
        raise LookupError(f"{module_name}.{qualified} is missing")
    value = getattr(owner, last, None)
    if value is None:
        raise LookupError(f"{module_name}.{qualified} is missing")
    return owner, value


def _sets_attribute(klass: type, name: str) -> bool:
    """An instance attribute: a dataclass field, or stored by __init__ / on_thread_start."""
    if name in getattr(klass, "__dataclass_fields__", {}):
        return True
    for method in ("__init__", "on_thread_start"):
        code = getattr(klass.__dict__.get(method), "__code__", None)
        if code is not None and any(
            i.opname == "STORE_ATTR" and i.argval == name for i in dis.get_instructions(code)
        ):
            return True
    return False


def kind_of(name: str) -> str:
    """The kind `name` has in the installed watchdog (see HOOKED_NAMES); LookupError."""
    owner, value = resolve(name)
    if value is None:
        return "attribute"
    if isinstance(value, staticmethod):
        return "staticmethod"
    if isinstance(value, type):
        return "class"
    if callable(value):
        return "function"
    return "attribute" if isinstance(owner, type) else type(value).__name__


def _guarded_mask(root: bytes, path: bytes, mask: int) -> int:
    """The mask for one add below (or at) `root`; raises ENOTDIR for a path that is not
    a folder of the tree. Only the configured root may be a link (and is followed)."""
    mask |= IN_ONLYDIR
    if path == root:
        return mask & ~IN_DONT_FOLLOW
    if through_link(root, path):
        raise OSError(errno.ENOTDIR, "a folder above it is a symbolic link")
    return mask | IN_DONT_FOLLOW


# -- listeners ----------------------------------------------------------------------------

_lock = threading.Lock()
_status: HookStatus | None = None
_overflow_listeners: dict[bytes, set[Callable[[], None]]] = {}
_failure_listeners: dict[bytes, set[Callable[[str, int], None]]] = {}


def _key(root: str | bytes) -> bytes:
    return os.path.normpath(os.fsencode(root))


def listen(
    root: str, on_overflow: Callable[[], None], on_failure: Callable[[str, int], None]
) -> Callable[[], None]:
    """Hear overflows of, and failed watches below, the observer watching `root`. Both
    are called on watchdog's threads: they must only enqueue. Returns the unlisten."""
    key = _key(root)
    with _lock:
        _overflow_listeners.setdefault(key, set()).add(on_overflow)
        _failure_listeners.setdefault(key, set()).add(on_failure)

    def unlisten() -> None:
        with _lock:
            _overflow_listeners.get(key, set()).discard(on_overflow)
            _failure_listeners.get(key, set()).discard(on_failure)

    return unlisten


def _notify_overflow(root: bytes | None) -> None:
    with _lock:
        if root is None:  # not known which observer: every one rescans
            listeners = [f for group in _overflow_listeners.values() for f in group]
        else:
            listeners = list(_overflow_listeners.get(_key(root), ()))
    for listener in listeners:
        listener()


def _notify_failure(root: bytes, path: bytes, errno_: int) -> None:
    with _lock:
        listeners = list(_failure_listeners.get(_key(root), ()))
    for listener in listeners:
        listener(os.fsdecode(path), errno_)


def _refused(path: bytes) -> None:
    log.info("not watching %s: not a folder (links are not followed)", os.fsdecode(path))


# -- watchdog 6 ---------------------------------------------------------------------------

_reading = threading.local()  # the root whose Inotify this thread is reading (6)


def _attach_6(ready: set[str]) -> set[str]:
    from watchdog.observers import inotify_c

    inotify: Any = vars(inotify_c)["Inotify"]  # gone in 7: not in its type stubs
    attached = set()
    if OVERFLOW in ready:
        original_parse = inotify.__dict__["_parse_event_buffer"].__func__
        read = inotify.__dict__["read_events"]

        def parse_event_buffer(event_buffer: bytes) -> Iterator[tuple[int, int, int, bytes]]:
            for wd, mask, cookie, name in original_parse(event_buffer):
                if wd == -1 and mask & IN_Q_OVERFLOW:
                    _notify_overflow(getattr(_reading, "root", None))
                yield wd, mask, cookie, name

        @functools.wraps(read)
        def read_events(self: Any, *args: Any, **kwargs: Any) -> Any:
            # _parse_event_buffer is static: tell it, through this thread, whose buffer.
            _reading.root = getattr(self, "_path", None)
            try:
                return read(self, *args, **kwargs)
            except KeyError as exc:
                # watchdog walks a new folder and then looks up each subfolder's watch;
                # one that vanished or was refused (a link) is missing and its KeyError
                # would end the emitter thread. The batch is lost: answer as for an
                # overflow, with a rescan.
                log.info("events lost while a new folder changed under watchdog: %r", exc)
                _notify_overflow(_reading.root)
                return []
            finally:
                _reading.root = None

        inotify._parse_event_buffer = staticmethod(parse_event_buffer)
        inotify.read_events = read_events
        attached.add(OVERFLOW)
    if ADD_GUARD in ready:
        add = inotify.__dict__["_add_watch"]

        @functools.wraps(add)
        def add_watch(self: Any, path: bytes, mask: int) -> int:
            # watchdog 6 drops IN_DONT_FOLLOW once an event filter is given, and walks
            # before it adds: a subfolder swapped for a link would be followed.
            root = self._path
            try:
                return add(self, path, _guarded_mask(root, path, mask))  # type: ignore[no-any-return]
            except OSError as exc:
                if exc.errno == errno.ENOTDIR:  # a link or a file now: nothing to watch
                    _refused(path)
                else:
                    _notify_failure(root, path, exc.errno or 0)
                raise

        inotify._add_watch = add_watch
        attached.add(ADD_GUARD)
    attached |= ready & {MOVED_IN, FD_HYGIENE}  # used from observe's calls, nothing to wrap
    return attached


# -- watchdog 7 ---------------------------------------------------------------------------


def _attach_7(ready: set[str]) -> set[str]:
    from watchdog.observers import inotify, inotify_c

    attached = set()
    if OVERFLOW in ready:
        group: Any = inotify.InotifyWatchGroup
        on_queue_overflow = group.__dict__["on_queue_overflow"]

        @functools.wraps(on_queue_overflow)
        def queue_overflowed(self: Any) -> None:
            # watchdog re-adds its watches here but tells no handler events were lost.
            try:
                on_queue_overflow(self)
            finally:
                _notify_overflow(self.path)

        group.on_queue_overflow = queue_overflowed
        attached.add(OVERFLOW)
    if ADD_GUARD in ready:
        fd_class: Any = inotify_c.InotifyFD
        add_callback = fd_class.__dict__["add_callback"]

        @functools.wraps(add_callback)
        def guarded_add_callback(self: Any, path: bytes, mask: int, callback: Any, id_: Any) -> Any:
            # watchdog 7 sets IN_DONT_FOLLOW but walks before it adds; IN_ONLYDIR and the
            # check of the folders above close the window. Its group swallows OSError
            # for subfolders: this is where a failed add is heard.
            root = getattr(callback, "path", None)
            if not isinstance(root, bytes):
                return add_callback(self, path, mask, callback, id_)
            try:
                return add_callback(self, path, _guarded_mask(root, path, mask), callback, id_)
            except OSError as exc:
                if exc.errno == errno.ENOTDIR:
                    _refused(path)
                elif exc.errno != errno.ENOENT and path != root:  # gone: nothing lost
                    _notify_failure(root, path, exc.errno or 0)
                raise

        fd_class.add_callback = guarded_add_callback
        attached.add(ADD_GUARD)
    attached |= ready & {MOVED_IN, FD_HYGIENE}  # watchdog does these itself
    return attached


# -- attaching ----------------------------------------------------------------------------


def attach() -> HookStatus:
    """Install the hooks for the installed watchdog, once; later calls return the same
    status. Each hook that cannot attach is logged once as an ERROR with its fallback."""
    global _status
    with _lock:
        if _status is not None:
            return _status
        major = watchdog_major()
        missing: dict[str, str] = {}
        ready: set[str] = set()
        needs = _NEEDS.get(major or 0)
        if needs is None:
            for hook, fallback in FALLBACKS.items():
                missing[hook] = f"watchdog {major} is not a tested major (6, 7); {fallback}"
        else:
            for hook, names in needs.items():
                absent = []
                for name in names:
                    try:
                        resolve(name)
                    except LookupError as exc:
                        absent.append(str(exc))
                if absent:
                    missing[hook] = f"{'; '.join(absent)}; {FALLBACKS[hook]}"
                else:
                    ready.add(hook)
        attached: set[str] = set()
        if major == 6:
            attached = _attach_6(ready)
        elif major == 7:
            attached = _attach_7(ready)
        for hook, why in sorted(missing.items()):
            log.error("watchdog hook %r cannot attach: %s", hook, why)
        _status = HookStatus(major, frozenset(attached), missing)
        return _status


# -- what observe.py asks of watchdog's insides -------------------------------------------


def watch_moved_in(observer: Any, folder: str) -> bool:
    """Watch a folder tree moved in from outside; False when this watchdog gives no way
    to do it. On 7 watchdog does it itself while it handles the IN_MOVED_TO (its adds
    pass the add guard), before our handler hears of the folder: nothing to do. On 6
    each folder is added through `Inotify.add_watch`, so through the add guard too (a
    failed add is told to the failure listener there)."""
    hooks = attach()
    if not hooks.has(MOVED_IN):
        return False
    if hooks.major != 6:
        return True
    for emitter in list(observer.emitters):
        buffer = getattr(emitter, "_inotify", None)
        add_watch = getattr(getattr(buffer, "_inotify", None), "add_watch", None)
        if add_watch is None:  # the emitter stopped meanwhile
            return False
        for current, dirnames, _ in os.walk(folder):
            try:
                add_watch(os.fsencode(current))
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR):  # gone, or now a link
                    dirnames[:] = []
                    continue
                return True  # heard by the failure listener: the agent degrades and rescans
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(current, d))]
    return True


def quiet_harmless_warnings() -> None:
    """Silence the one warning watchdog 7 gives for what it handles well: a new folder's
    watch added twice (its own walk of a `mkdir -p` tree, then that folder's IN_CREATE),
    which overwrites a callback with itself. It is raised on watchdog's event-reading
    thread: turned into an error (`python -W error`, pytest's `filterwarnings = error`)
    it ends that thread and every watch goes quiet; left alone it is noise in the journal.
    Called before each inotify observer starts: a filter added once would not outlive
    a `warnings.catch_warnings()` block around it (pytest has one per test)."""
    warnings.filterwarnings(
        "ignore",
        message=r"Callback with id '\d+' already exists for watch",
        category=RuntimeWarning,
    )


def readers_alive(observer: Any) -> bool:
    """Whether the threads that read inotify events for `observer`'s emitters run. On 7
    an `InotifyFD` thread of its own reads them, and its death stops no emitter: every
    watch would go quiet while the emitters look alive. On 6 each emitter reads itself."""
    for emitter in list(getattr(observer, "emitters", ())):
        reader = getattr(emitter, "_inotify_fd", None)
        is_alive = getattr(reader, "is_alive", None)
        if callable(is_alive) and not is_alive():
            return False
    return True


def inotify_fds() -> set[int]:
    fds = set()
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:inotify":
                    fds.add(int(name))
    return fds


def close_leaked_fds(before: set[int]) -> None:
    """After a failed observer start (already stopped through watchdog's API).

    watchdog 6 leaves the fd of a half-built `Inotify()` open (its __init__ raised, so
    nothing holds it), with every watch it added still counted against the limit: we
    close the inotify fds that appeared during the start. watchdog 7 never: its fds
    belong to an `InotifyFD` (the observer's own, or the process-wide shared
    `get_instance()`) that stop() closes, and another observer may open one meanwhile;
    closing by hand could close a descriptor that is still in use."""
    hooks = attach()
    if hooks.major != 6 or not hooks.has(FD_HYGIENE):
        return
    for fd in inotify_fds() - before:
        with contextlib.suppress(OSError):
            os.close(fd)
