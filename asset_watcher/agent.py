"""`asset-watcher run`: the long-lived agent and everything about its life cycle.

Start: take the state lock, start delivery (the outbox left by the last run goes out
first), the pipeline and the scanner, put the watches in place, tell systemd READY=1,
then run the catch-up scan. While running, the main thread only supervises: it restarts
watches whose folder was deleted and re-created, answers a watch limit or a kernel
queue overflow with rescans, pings the systemd watchdog while the pipeline threads are
alive, and reloads the configuration on SIGHUP. The signal handlers (signals.py) only
set flags; the main loop reads them every iteration and turns them into the stop event
or a reload. Shutdown is one ordered list of phases under one timeout.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from asset_watcher import metrics, systemd, watchdog_hooks
from asset_watcher.config import Config, load_config
from asset_watcher.delivery import Deliverer
from asset_watcher.errors import EXIT_FAILED, EXIT_OK, AssetWatcherError, ConfigError
from asset_watcher.logs import add_secret
from asset_watcher.model import Change, ChangeKind
from asset_watcher.observe import (
    ObserverKind,
    Watch,
    WatchError,
    choose_observer,
    limit_advice,
)
from asset_watcher.paths import display_path, is_under
from asset_watcher.pipeline import Pipeline
from asset_watcher.reporter import Reporter
from asset_watcher.rules import Rule, compile_rules
from asset_watcher.scanner import Scanner
from asset_watcher.signals import HangupCounter, SignalFlags, handle_signals
from asset_watcher.state import StateStore

log = logging.getLogger(__name__)

# One bound for the whole shutdown; below the unit's TimeoutStopSec=30s.
SHUTDOWN_TIMEOUT_SECONDS = 20.0
# How often watches are checked (a deleted and re-created root is back within this).
SUPERVISE_SECONDS = 1.0
# How often a folder that could not be watched (limit reached) is tried again.
WATCH_RETRY_SECONDS = 60.0
STATUS_SECONDS = 10.0
# The main thread's longest wait on the stop event: a signal (stop, reload) or a message
# from the pipeline (a folder moved in, a watch failure) is acted on within this.
MAIN_WAIT_SECONDS = 0.1
# At most one overflow warning per this many seconds (a flood overflows repeatedly).
OVERFLOW_LOG_SECONDS = 10.0
# How long the deliverer gets to end once its reporter closed (which frees its senders).
DELIVERER_AFTER_CLOSE_SECONDS = 2.0
# Rescans of rules with rescan_interval_seconds = 0 where inotify overflows go unheard.
OVERFLOW_FALLBACK_RESCAN_SECONDS = 3600.0


_CONTROL_KINDS = frozenset(
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


@dataclass
class _WatchState:
    plan: WatchPlan
    kind: ObserverKind
    watch: Watch | None = None
    degraded: bool = False  # no complete watch: rescans every poll interval stand in
    gone: bool = False  # the folder does not exist (now)
    next_attempt_at: float = 0.0


@dataclass
class _Threads:
    pipeline: threading.Thread | None = None
    scanner: threading.Thread | None = None
    deliverer: threading.Thread | None = None

    def all(self) -> list[threading.Thread]:
        return [t for t in (self.pipeline, self.scanner, self.deliverer) if t is not None]


@dataclass
class _Delivery:
    reporter: Reporter
    deliverer: Deliverer
    stop: threading.Event = field(default_factory=threading.Event)


def _thread(name: str, target: Callable[[], None]) -> threading.Thread:
    """A daemon thread that logs how it died: past the shutdown bound, a request still in
    flight must not keep the process alive (its report stays in the outbox)."""

    def body() -> None:
        try:
            target()
        except AssetWatcherError as exc:  # expected (a full disk): one clear line
            log.error("the %s thread stopped: %s", name, exc)
        except Exception:
            log.exception("the %s thread failed", name)

    thread = threading.Thread(target=body, name=f"asset-watcher-{name}", daemon=True)
    thread.start()
    return thread


class Agent:
    """The running service; `run()` returns the exit status."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: str | None,
        stop: threading.Event,
        signals: SignalFlags | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path or config.source or None
        self.stop_event = stop
        # Set by the signal handlers (or by a test, as a handler would); read each loop.
        self.signals = signals if signals is not None else SignalFlags()
        self._hangups = HangupCounter(self.signals)
        self._controls: queue.SimpleQueue[Change] = queue.SimpleQueue()
        self._watches: dict[tuple[str, str, bool, float], _WatchState] = {}
        self._threads = _Threads()
        self._last_overflow_log = -OVERFLOW_LOG_SECONDS
        # A reload changed [dagster]: the old deliverer is finishing its requests in
        # flight; the new one starts once it has ended (never two at once).
        self._delivery_restart = False
        self.rules: list[Rule] = []
        self.exit_status = EXIT_OK

    # -- life cycle --------------------------------------------------------------------

    def run(self) -> int:
        systemd.status("starting")
        self.store = StateStore(self.config.state.resolved_directory())
        self._stop_metrics: Callable[[], None] | None = None
        try:
            # A listen address changed by a reload takes effect at the next start.
            self._stop_metrics = metrics.start(self.config.metrics)
            self._start()
            self._main_loop()
        finally:
            self._shutdown()
        return self.exit_status

    def _start(self) -> None:
        self.rules = compile_rules(self.config)
        if not self.rules:
            log.warning(
                "no [[watch]] rules in %s: nothing to watch until a reload adds some",
                self.config.source,
            )
        self._delivery = self._start_delivery()
        self.pipeline = Pipeline(
            self.rules,
            self.store,
            on_queued=self._queued,
        )
        self.scanner = Scanner(
            self.rules, self.store, self.pipeline.submit, backlog=self.pipeline.backlog
        )
        self._threads.pipeline = _thread("pipeline", self.pipeline.run)
        self._threads.scanner = _thread("scanner", self.scanner.run)
        self._apply_plans(plan_watches(self.rules), initial=True)
        self._update_intervals()
        systemd.ready()
        watching = [s for s in self._watches.values() if s.watch is not None]
        log.info(
            "ready: watching %d of %d folder(s) for %d rule(s); catch-up scan follows",
            len(watching),
            len(self._watches),
            len(self.rules),
        )
        self.scanner.request_full(None, "catch-up scan")
        self._send_status()

    def _start_delivery(self) -> _Delivery:
        reporter = Reporter(self.config.dagster, self.config.token)
        delivery = _Delivery(reporter, Deliverer(self.store, reporter))
        self._threads.deliverer = _thread(
            "deliverer", lambda: delivery.deliverer.run(delivery.stop)
        )
        return delivery

    def _stop_delivery(self, delivery: _Delivery, deadline: float) -> bool:
        """Stop claiming reports; the request in flight may finish until `deadline`."""
        delivery.stop.set()
        delivery.deliverer.wake()
        thread = self._threads.deliverer
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
        # Closing cuts off any request still running, so a stuck sender is freed too (what
        # it carried stays in the outbox); the deliverer then ends within a moment.
        delivery.reporter.close()
        if thread is not None and thread.is_alive():
            thread.join(DELIVERER_AFTER_CLOSE_SECONDS)
        return thread is None or not thread.is_alive()

    def _queued(self) -> None:
        self._delivery.deliverer.wake()

    def _route(self, change: Change) -> None:
        """From an observer thread: file changes go to the pipeline, folder arrivals to
        the scanner, watch trouble to the main thread."""
        if change.kind is ChangeKind.FOLDER_CREATED:
            self.scanner.request_folder(change.path, False)
        elif change.kind in _CONTROL_KINDS:
            self._controls.put(change)
        else:
            self.pipeline.submit(change)

    def _healthy(self) -> bool:
        threads = self._threads.all()
        if self._delivery_restart:  # the old deliverer is meant to end
            threads = [t for t in threads if t is not self._threads.deliverer]
        return all(thread.is_alive() for thread in threads)

    def _restart_delivery(self) -> None:
        """Apply new [dagster] settings: the running deliverer stops claiming reports and
        lets its requests in flight finish (up to its own timeout + 1 s); the new one
        starts when it has ended. Starting it earlier would send those reports twice."""
        delivery = self._delivery
        delivery.stop.set()
        delivery.deliverer.wake()
        if not self._delivery_restart:
            self._delivery_restart = True
            log.info(
                "delivery restarts with the new [dagster] settings once requests in flight end"
            )
        self._finish_delivery_restart()

    def _finish_delivery_restart(self) -> None:
        """From the main loop: start the new deliverer once the old thread has ended."""
        if not self._delivery_restart:
            return
        thread = self._threads.deliverer
        if thread is not None and thread.is_alive():
            return
        self._delivery.reporter.close()
        self._delivery_restart = False
        self._delivery = self._start_delivery()
        log.info("delivery restarted with the new [dagster] settings")

    def _main_loop(self) -> None:
        interval = systemd.watchdog_interval_seconds()
        now = time.monotonic()
        next_ping = now
        next_supervise = now + SUPERVISE_SECONDS
        next_status = now + STATUS_SECONDS
        while True:
            if self.signals.stop_requested:
                self.stop_event.set()  # here, outside the handler: taking its lock is safe
            if self.stop_event.is_set():
                break
            now = time.monotonic()
            self._finish_delivery_restart()
            if not self._healthy():
                dead = [t.name for t in self._threads.all() if not t.is_alive()]
                log.critical(
                    "%s stopped unexpectedly; exiting so the service manager restarts the "
                    "agent (nothing is lost: the outbox and the catch-up scan cover it)",
                    ", ".join(dead),
                )
                self.exit_status = EXIT_FAILED
                return
            if interval is not None and now >= next_ping:
                systemd.watchdog_ping()
                next_ping = now + interval
            self._handle_controls()
            if self._hangups.take():  # however many SIGHUPs came, one reload
                self._reload()
            if now >= next_supervise:
                self._supervise(now)
                next_supervise = now + SUPERVISE_SECONDS
            if now >= next_status:
                self._send_status()
                next_status = now + STATUS_SECONDS
            wait = MAIN_WAIT_SECONDS
            if interval is not None:
                wait = min(wait, max(0.0, next_ping - time.monotonic()))
            self.stop_event.wait(wait)
        if self.signals.stop_signal:
            log.info("received %s, stopping", self.signals.stop_signal)

    def _shutdown(self) -> None:
        """Stop watching, record files already settled, stop claiming reports, let the
        request in flight finish, close the state: all within one timeout."""
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT_SECONDS
        systemd.stopping()
        systemd.status("stopping")

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        for state in self._watches.values():
            if state.watch is not None:
                state.watch.stop(timeout=left())
                state.watch = None
        if self._threads.scanner is not None:
            self.scanner.stop()
            self._threads.scanner.join(left())
        if self._threads.pipeline is not None:
            self.pipeline.stop()
            self._threads.pipeline.join(left())
        delivered = True
        if self._threads.deliverer is not None:
            delivered = self._stop_delivery(self._delivery, deadline)
        busy = [t.name for t in self._threads.all() if t.is_alive()]
        pending = None
        with contextlib.suppress(AssetWatcherError):
            pending = self.store.counts().pending
        if busy or not delivered:
            log.warning(
                "still busy after %gs: %s; exiting anyway (their reports stay in the outbox)",
                SHUTDOWN_TIMEOUT_SECONDS,
                ", ".join(busy),
            )
        else:
            self.store.close()
        if self._stop_metrics is not None:
            self._stop_metrics()
        log.info(
            "stopped; %s report(s) left in the outbox for the next start",
            pending if pending is not None else "unknown",
        )

    # -- watches -----------------------------------------------------------------------

    def _rules_of(self, plan: WatchPlan) -> list[str]:
        return list(plan.rule_names)

    def _apply_plans(self, plans: Iterable[WatchPlan], *, initial: bool) -> None:
        wanted = {plan.key: plan for plan in plans}
        for key in list(self._watches):
            if key not in wanted:
                state = self._watches.pop(key)
                if state.watch is not None:
                    state.watch.stop()
                log.info("no longer watching %s", display_path(state.plan.root))
        for key, plan in wanted.items():
            existing = self._watches.get(key)
            if existing is not None:
                existing.plan = plan  # same folder and observer: only the rules changed
                continue
            state = _WatchState(plan, plan.kind)
            self._watches[key] = state
            self._start_watch(state, initial=initial)

    def _start_watch(self, state: _WatchState, *, initial: bool) -> None:
        """(Re)start one watch. A failure falls back to polling (auto) or to rescans
        every poll interval, and is tried again later."""
        plan = state.plan
        now = time.monotonic()
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
        watch = Watch(
            plan.root,
            state.kind,
            self._route,
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
            self.scanner.request_full(self._rules_of(plan), "rescan after (re)starting a watch")

    def _watch_failed(self, state: _WatchState, exc: WatchError, *, initial: bool) -> None:
        plan = state.plan
        if exc.errno == errno.ENOENT:
            state.gone = True
            state.next_attempt_at = time.monotonic() + SUPERVISE_SECONDS
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
            self.scanner.request_full(self._rules_of(plan), "rescan after a failed watch")

    def _degrade(self, state: _WatchState, message: str) -> None:
        plan = state.plan
        log.error(
            "%s; until then it is rescanned every %gs and watching is retried every %gs",
            message,
            plan.poll_interval_seconds,
            WATCH_RETRY_SECONDS,
        )
        state.next_attempt_at = time.monotonic() + WATCH_RETRY_SECONDS
        if not state.degraded:
            state.degraded = True
            self._update_intervals()

    def _update_intervals(self) -> None:
        """Periodic rescans: rescan_interval_seconds, or the poll interval for folders
        without a working watch."""
        intervals = {r.name: r.settings.rescan_interval_seconds for r in self.rules}
        if not watchdog_hooks.attach().has(watchdog_hooks.OVERFLOW):
            # Overflows go unheard: a rule that never rescans would never find lost events.
            for name, interval in intervals.items():
                if not interval:
                    intervals[name] = OVERFLOW_FALLBACK_RESCAN_SECONDS
        for state in self._watches.values():
            if state.degraded:
                for name in state.plan.rule_names:
                    poll = state.plan.poll_interval_seconds
                    intervals[name] = min(intervals[name], poll) if intervals[name] else poll
        self.scanner.set_rules(self.rules, intervals)

    def _supervise(self, now: float) -> None:
        for state in self._watches.values():
            healthy = state.watch is not None and state.watch.is_alive()
            if healthy and not state.degraded:
                continue
            if now < state.next_attempt_at:
                continue
            if state.watch is not None and healthy and state.degraded:
                log.info("trying again to watch all of %s", display_path(state.plan.root))
            self._start_watch(state, initial=False)

    def _state_for(self, root: str) -> _WatchState | None:
        return next((s for s in self._watches.values() if s.plan.root == root), None)

    def _handle_controls(self) -> None:
        while True:
            try:
                change = self._controls.get_nowait()
            except queue.Empty:
                return
            state = self._state_for(change.root)
            if state is None:
                continue
            rules = self._rules_of(state.plan)
            if change.kind is ChangeKind.OVERFLOW:
                now = time.monotonic()
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
                self._supervise(time.monotonic())

    # -- reload and status -------------------------------------------------------------

    def _reload(self) -> None:
        path = self.config_path
        systemd.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            try:
                new = load_config(path)
            except ConfigError as exc:
                for problem in exc.problems:
                    log.error("reload: %s", problem)
                log.error("configuration %s not reloaded; keeping the running one", path)
                return
            self._apply(new)
            log.info("configuration reloaded from %s: %d rule(s)", path, len(self.rules))
        except Exception:
            log.exception("reload failed; keeping the running configuration")
        finally:
            systemd.ready()
            self._send_status()

    def _apply(self, new: Config) -> None:
        old = self.config
        if new.state.resolved_directory() != old.state.resolved_directory():
            log.warning(
                "state.directory changed to %s: that takes effect at the next start",
                new.state.resolved_directory(),
            )
        if new.token is not None:
            add_secret(new.token.get_secret_value())
        rules = compile_rules(new)
        self.config = new
        self.rules = rules
        self.pipeline.set_rules(rules)
        self.scanner.set_rules(rules)
        self._apply_plans(plan_watches(rules), initial=False)
        self._update_intervals()
        old_token = old.token.get_secret_value() if old.token else None
        new_token = new.token.get_secret_value() if new.token else None
        if new.dagster != old.dagster or new_token != old_token:
            self._restart_delivery()
        self.scanner.request_full(None, "rescan after reload")

    def status_line(self) -> str:
        states = list(self._watches.values())
        watching = sum(1 for s in states if s.watch is not None and not s.degraded)
        parts = [f"watching {watching}/{len(states)} folder(s)"]
        troubled = [s for s in states if s.degraded or s.gone]
        if troubled:
            parts.append(f"{len(troubled)} rescanned or missing")
        if self.scanner.state.running:
            parts.append(f"{self.scanner.state.running} running")
        parts.append(f"{self.pipeline.counts.reported} reported since start")
        with contextlib.suppress(AssetWatcherError):
            counts = self.store.counts()
            parts.append(f"outbox {counts.pending} pending, {counts.dead} dead")
        return "; ".join(parts)

    def _send_status(self) -> None:
        systemd.status(self.status_line())


def run_agent(
    config: Config,
    *,
    config_path: str | None = None,
    stop: threading.Event | None = None,
    install_signals: bool = True,
    signals: SignalFlags | None = None,
) -> int:
    """Run the service until `stop` is set or SIGTERM/SIGINT; SIGHUP reloads from
    `config_path` (default: the file `config` came from). Returns the exit status.

    The handlers are installed for the run (on the main thread) unless
    `install_signals` is false or the caller installed them and passes its `signals`.
    """
    handlers: contextlib.AbstractContextManager[SignalFlags]
    if signals is None and install_signals:
        handlers = handle_signals()
    else:
        handlers = contextlib.nullcontext(signals if signals is not None else SignalFlags())
    with handlers as flags:
        agent = Agent(
            config, config_path=config_path, stop=stop or threading.Event(), signals=flags
        )
        try:
            return agent.run()
        except AssetWatcherError as exc:
            log.error("%s", exc)
            return exc.exit_status
