"""Watch supervision: which folders are watched, and what stands in when one cannot be.

`plan_watches` turns the rules into one `WatchPlan` per folder. `Watches` keeps one
`observe.Watch` per plan running: it falls back from inotify to polling (where every rule
says `auto`), answers a failed watch or a reached limit with rescans every poll interval
and tries again later, re-watches a root that was deleted and re-created, and sets the
periodic rescan intervals.

Each Watch delivers to `Watches.route`, on the observer's thread: file changes go to the
pipeline, a new subfolder straight to the scanner, and the control kinds (a folder moved
in, a root gone, an overflow, a failed watch) onto `controls`, which the agent's main
thread empties through `handle_controls`. Nothing here calls back into the agent.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from asset_watcher import watchdog_hooks
from asset_watcher.model import Change, ChangeKind
from asset_watcher.observe import ObserverKind, Watch, WatchError, choose_observer, limit_advice
from asset_watcher.paths import display_path, is_under
from asset_watcher.rules import Rule

log = logging.getLogger(__name__)

# How often watches are checked (a deleted and re-created root is back within this).
SUPERVISE_SECONDS = 1.0
# How often a folder that could not be watched (limit reached) is tried again.
WATCH_RETRY_SECONDS = 60.0
# At most one overflow warning per this many seconds (a flood overflows repeatedly).
OVERFLOW_LOG_SECONDS = 10.0
# Rescans of rules with rescan_interval_seconds = 0 where inotify overflows go unheard.
OVERFLOW_FALLBACK_RESCAN_SECONDS = 3600.0

# What the watches act on themselves, on the main thread (never on the observer's).
CONTROL_KINDS = frozenset(
    {ChangeKind.FOLDER_MOVED_IN, ChangeKind.ROOT_GONE, ChangeKind.OVERFLOW, ChangeKind.WATCH_FAILED}
)


@dataclass(frozen=True)
class WatchPlan:
    """One folder to watch, and the rules it serves."""

    root: str
    kind: ObserverKind
    recursive: bool
    poll_interval_seconds: float
    rule_names: tuple[str, ...]
    reason: str
    may_fall_back: bool  # every rule says `auto`: polling may stand in for inotify

    @property
    def key(self) -> tuple[str, str, bool, float]:
        interval = self.poll_interval_seconds if self.kind == "polling" else 0.0
        return (self.root, self.kind, self.recursive, interval)


def plan_watches(rules: Sequence[Rule]) -> list[WatchPlan]:
    """One watch per folder; a folder already inside another recursive watch of the same
    kind gets none of its own (two watches would report every move twice)."""
    plans: dict[tuple[str, str, bool], WatchPlan] = {}
    for rule in rules:
        setting = rule.settings.observer
        kind, reason = choose_observer(setting, rule.root)
        recursive = rule.settings.recursive
        key = (rule.root, kind, recursive)
        interval = rule.settings.poll_interval_seconds
        if key in plans:
            old = plans[key]
            plans[key] = replace(
                old,
                poll_interval_seconds=min(old.poll_interval_seconds, interval),
                rule_names=(*old.rule_names, rule.name),
                may_fall_back=old.may_fall_back and setting == "auto",
            )
        else:
            plans[key] = WatchPlan(
                rule.root, kind, recursive, interval, (rule.name,), reason, setting == "auto"
            )
    kept: list[WatchPlan] = []
    ordered = sorted(plans.values(), key=lambda p: (len(p.root), not p.recursive))
    for plan in ordered:
        cover = next(
            (
                i
                for i, other in enumerate(kept)
                if other.kind == plan.kind and other.recursive and is_under(plan.root, other.root)
            ),
            None,
        )
        if cover is None:
            kept.append(plan)
        else:
            other = kept[cover]
            kept[cover] = replace(
                other,
                rule_names=(*other.rule_names, *plan.rule_names),
                poll_interval_seconds=min(other.poll_interval_seconds, plan.poll_interval_seconds),
                may_fall_back=other.may_fall_back and plan.may_fall_back,
            )
    return kept


class Rescans(Protocol):
    """What the watches ask of the scanner."""

    def request_full(self, rule_names: Iterable[str] | None, reason: str) -> None: ...

    def request_folder(self, folder: str, recursive: bool) -> None: ...

    def set_rules(self, rules: Sequence[Rule], intervals: dict[str, float]) -> None: ...


class WatchLike(Protocol):
    """One running watch of a folder: `observe.Watch`, or a fake in tests."""

    @property
    def kind(self) -> ObserverKind: ...

    def start(self) -> None: ...

    def is_alive(self) -> bool: ...

    def add_folder_watches(self, folder: str) -> bool: ...

    def stop(self, timeout: float = ...) -> None: ...


class WatchFactory(Protocol):
    def __call__(
        self,
        root: str,
        kind: ObserverKind,
        put: Callable[[Change], None],
        *,
        recursive: bool,
        poll_interval_seconds: float,
    ) -> WatchLike: ...


def _overflows_heard() -> bool:
    return watchdog_hooks.attach().has(watchdog_hooks.OVERFLOW)


@dataclass
class _WatchState:
    plan: WatchPlan
    kind: ObserverKind
    watch: WatchLike | None = None
    degraded: bool = False  # no complete watch: rescans every poll interval stand in
    gone: bool = False  # the folder does not exist (now)
    next_attempt_at: float = 0.0


@dataclass(frozen=True)
class WatchCounts:
    folders: int  # planned
    started: int  # with a watch running
    complete: int  # with a watch running and nothing missing from it
    troubled: int  # rescanned instead, or the folder is missing


class Watches:
    """The planned folders and their watches. Every method but `route` runs on the
    main thread."""

    def __init__(
        self,
        submit: Callable[[Change], None],
        scanner: Rescans,
        *,
        clock: Callable[[], float] = time.monotonic,
        watch_factory: WatchFactory = Watch,
        overflows_heard: Callable[[], bool] = _overflows_heard,
    ) -> None:
        self.submit = submit  # file changes: the pipeline's
        self.scanner = scanner
        self.clock = clock
        self._new_watch = watch_factory
        self._overflows_heard = overflows_heard
        self.controls: queue.SimpleQueue[Change] = queue.SimpleQueue()
        self.rules: list[Rule] = []
        self._states: dict[tuple[str, str, bool, float], _WatchState] = {}
        self._last_overflow_log = -OVERFLOW_LOG_SECONDS

    # -- called on the observers' threads ----------------------------------------------

    def route(self, change: Change) -> None:
        """Every Watch's `put`: only enqueues (it runs under the observer's lock)."""
        if change.kind in CONTROL_KINDS:
            self.controls.put(change)
        elif change.kind is ChangeKind.FOLDER_CREATED:
            # The watch is in place; files written before it existed are found by a scan.
            self.scanner.request_folder(change.path, False)
        else:
            self.submit(change)

    # -- the main thread ---------------------------------------------------------------

    def set_rules(self, rules: Sequence[Rule], *, initial: bool) -> None:
        """Watch the folders these rules need and set the periodic rescans. `initial`: the
        catch-up scan follows, so (re)starting a watch asks for no rescan of its own."""
        self.rules = list(rules)
        self._apply_plans(plan_watches(self.rules), initial=initial)
        self._update_intervals()

    def counts(self) -> WatchCounts:
        states = list(self._states.values())
        return WatchCounts(
            folders=len(states),
            started=sum(1 for s in states if s.watch is not None),
            complete=sum(1 for s in states if s.watch is not None and not s.degraded),
            troubled=sum(1 for s in states if s.degraded or s.gone),
        )

    def stop(self, timeout: Callable[[], float]) -> None:
        """Stop every watch; `timeout()` is what each may take (what is left of a bound)."""
        for state in self._states.values():
            if state.watch is not None:
                state.watch.stop(timeout=timeout())
                state.watch = None

    def supervise(self) -> None:
        """Restart watches that ended (a root deleted and re-created) and retry degraded
        ones, each once its next attempt is due."""
        now = self.clock()
        for state in self._states.values():
            healthy = state.watch is not None and state.watch.is_alive()
            if healthy and not state.degraded:
                continue
            if now < state.next_attempt_at:
                continue
            if state.watch is not None and healthy and state.degraded:
                log.info("trying again to watch all of %s", display_path(state.plan.root))
            self._start_watch(state, initial=False)

    def handle_controls(self) -> None:
        """Act on what the watches reported since the last call."""
        while True:
            try:
                change = self.controls.get_nowait()
            except queue.Empty:
                return
            state = self._state_for(change.root)
            if state is None:
                continue
            rules = list(state.plan.rule_names)
            if change.kind is ChangeKind.OVERFLOW:
                now = self.clock()
                if now - self._last_overflow_log >= OVERFLOW_LOG_SECONDS:
                    self._last_overflow_log = now
                    log.warning(
                        "the kernel's inotify event queue overflowed and dropped events "
                        "(fs.inotify.max_queued_events); rescanning %s",
                        display_path(state.plan.root),
                    )
                self.scanner.request_full(rules, "rescan after an inotify queue overflow")
            elif change.kind is ChangeKind.WATCH_FAILED:
                if not state.degraded:
                    self._degrade(
                        state,
                        f"cannot watch {display_path(change.path)}: {limit_advice(change.errno)}",
                    )
                self.scanner.request_full(rules, "rescan after a failed watch")
            elif change.kind is ChangeKind.FOLDER_MOVED_IN:
                watch = state.watch
                if watch is not None and not watch.add_folder_watches(change.path):
                    watch.stop()  # the supervisor starts it again, with the new folder
                    state.watch = None
                self.scanner.request_folder(change.path, True)
            elif change.kind is ChangeKind.ROOT_GONE:
                log.info("watched folder %s was deleted", display_path(change.path))
                self.supervise()

    # -- inside ------------------------------------------------------------------------

    def _state_for(self, root: str) -> _WatchState | None:
        return next((s for s in self._states.values() if s.plan.root == root), None)

    def _apply_plans(self, plans: Iterable[WatchPlan], *, initial: bool) -> None:
        wanted = {plan.key: plan for plan in plans}
        for key in list(self._states):
            if key not in wanted:
                state = self._states.pop(key)
                if state.watch is not None:
                    state.watch.stop()
                log.info("no longer watching %s", display_path(state.plan.root))
        for key, plan in wanted.items():
            existing = self._states.get(key)
            if existing is not None:
                existing.plan = plan  # same folder and observer: only the rules changed
                continue
            state = _WatchState(plan, plan.kind)
            self._states[key] = state
            self._start_watch(state, initial=initial)

    def _start_watch(self, state: _WatchState, *, initial: bool) -> None:
        """(Re)start one watch. A failure falls back to polling (auto) or to rescans
        every poll interval, and is tried again later."""
        plan = state.plan
        now = self.clock()
        if state.watch is not None:
            state.watch.stop()
            state.watch = None
        if not os.path.isdir(plan.root):
            if not state.gone:
                log.warning(
                    "watched folder %s is gone; watching resumes when it is back",
                    display_path(plan.root),
                )
            state.gone = True
            state.next_attempt_at = now + SUPERVISE_SECONDS
            return
        watch = self._new_watch(
            plan.root,
            state.kind,
            self.route,
            recursive=plan.recursive,
            poll_interval_seconds=plan.poll_interval_seconds,
        )
        try:
            watch.start()
        except WatchError as exc:
            self._watch_failed(state, exc, initial=initial)
            return
        state.watch = watch
        log.info(
            "watching %s with %s (%s)%s",
            display_path(plan.root),
            watch.kind,  # polling when the inotify add guard could not attach
            plan.reason,
            "" if plan.recursive else ", not recursive",
        )
        if state.gone:
            log.info("%s is back", display_path(plan.root))
        state.gone = False
        if state.degraded:
            state.degraded = False
            self._update_intervals()
        if not initial:
            # Whatever happened while the folder was not watched is found by a scan.
            self.scanner.request_full(list(plan.rule_names), "rescan after (re)starting a watch")

    def _watch_failed(self, state: _WatchState, exc: WatchError, *, initial: bool) -> None:
        plan = state.plan
        if exc.errno == errno.ENOENT:
            state.gone = True
            state.next_attempt_at = self.clock() + SUPERVISE_SECONDS
            return
        if state.kind == "inotify" and plan.may_fall_back and not exc.is_limit:
            log.warning(
                "cannot watch %s with inotify (%s); polling it every %gs instead",
                display_path(plan.root),
                exc,
                plan.poll_interval_seconds,
            )
            state.kind = "polling"
            self._start_watch(state, initial=initial)
            return
        reason = limit_advice(exc.errno) if exc.is_limit else str(exc)
        self._degrade(state, f"cannot watch {display_path(plan.root)}: {reason}")
        if not initial:
            self.scanner.request_full(list(plan.rule_names), "rescan after a failed watch")

    def _degrade(self, state: _WatchState, message: str) -> None:
        plan = state.plan
        log.error(
            "%s; until then it is rescanned every %gs and watching is retried every %gs",
            message,
            plan.poll_interval_seconds,
            WATCH_RETRY_SECONDS,
        )
        state.next_attempt_at = self.clock() + WATCH_RETRY_SECONDS
        if not state.degraded:
            state.degraded = True
            self._update_intervals()

    def _update_intervals(self) -> None:
        """Periodic rescans: rescan_interval_seconds, or the poll interval for folders
        without a working watch."""
        intervals = {r.name: r.settings.rescan_interval_seconds for r in self.rules}
        if not self._overflows_heard():
            # Overflows go unheard: a rule that never rescans would never find lost events.
            for name, interval in intervals.items():
                if not interval:
                    intervals[name] = OVERFLOW_FALLBACK_RESCAN_SECONDS
        for state in self._states.values():
            if state.degraded:
                for name in state.plan.rule_names:
                    poll = state.plan.poll_interval_seconds
                    intervals[name] = min(intervals[name], poll) if intervals[name] else poll
        self.scanner.set_rules(self.rules, intervals)
