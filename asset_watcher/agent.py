"""`asset-watcher run`: the long-lived agent and everything about its life cycle.

Start: take the state lock, start delivery (the outbox left by the last run goes out
first), the pipeline and the scanner, put the watches in place (watches.py), tell
systemd READY=1, then run the catch-up scan. While running, the main thread only
supervises: it lets the watches act on what they reported and check themselves, pings
the systemd watchdog while the pipeline threads are alive, restarts delivery after a
reload changed [dagster], and reloads the configuration on SIGHUP. The signal handlers
(signals.py) only set flags; the main loop reads them every iteration and turns them
into the stop event or a reload. Shutdown is one ordered list of phases under one
timeout.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from asset_watcher import metrics, systemd
from asset_watcher.arrivals import WindowTimer
from asset_watcher.config import Config, SecretStr, load_config
from asset_watcher.delivery import Deliverer
from asset_watcher.errors import EXIT_FAILED, EXIT_OK, AssetWatcherError, ConfigError
from asset_watcher.heartbeat import HeartbeatSchedule, heartbeat_key, queue_heartbeat
from asset_watcher.logs import add_secret
from asset_watcher.pipeline import Pipeline
from asset_watcher.reporter import Reporter
from asset_watcher.rules import Rule, compile_rules, short_host_name
from asset_watcher.scanner import Scanner
from asset_watcher.settings import DagsterSettings
from asset_watcher.signals import HangupCounter, SignalFlags, handle_signals
from asset_watcher.state import StateStore
from asset_watcher.watches import SUPERVISE_SECONDS, Watches

log = logging.getLogger(__name__)

# One bound for the whole shutdown; below the unit's TimeoutStopSec=30s.
SHUTDOWN_TIMEOUT_SECONDS = 20.0
STATUS_SECONDS = 10.0
# The main thread's longest wait on the stop event: a signal (stop, reload) or a message
# from a watch (a folder moved in, a watch failure) is acted on within this.
MAIN_WAIT_SECONDS = 0.1
# How long the deliverer gets to end once its reporter closed (which frees its senders).
DELIVERER_AFTER_CLOSE_SECONDS = 2.0


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


class DeliveryThread:
    """The deliverer's thread over one reporter, and its restart when a reload changed
    [dagster]: the running deliverer stops claiming reports and lets its requests in
    flight finish (up to its own timeout + 1 s); the new one starts when it has ended.
    Starting it earlier would send those reports twice."""

    def __init__(self, store: StateStore, settings: DagsterSettings, token: SecretStr | None):
        self.store = store
        self._next: tuple[DagsterSettings, SecretStr | None] | None = None  # a restart waits
        self._start(settings, token)

    def _start(self, settings: DagsterSettings, token: SecretStr | None) -> None:
        self.reporter = Reporter(settings, token)
        self.deliverer = deliverer = Deliverer(self.store, self.reporter)
        self._stop = stop = threading.Event()
        self.thread = _thread("deliverer", lambda: deliverer.run(stop))

    def wake(self) -> None:
        self.deliverer.wake()

    def healthy(self) -> bool:
        return self._next is not None or self.thread.is_alive()  # restarting: meant to end

    def restart(self, settings: DagsterSettings, token: SecretStr | None) -> None:
        self._stop.set()
        self.deliverer.wake()
        if self._next is None:
            log.info(
                "delivery restarts with the new [dagster] settings once requests in flight end"
            )
        self._next = (settings, token)
        self.finish_restart()

    def finish_restart(self) -> None:
        """From the main loop: start the new deliverer once the old thread has ended."""
        if self._next is None or self.thread.is_alive():
            return
        self.reporter.close()
        settings, token = self._next
        self._next = None
        self._start(settings, token)
        log.info("delivery restarted with the new [dagster] settings")

    def stop(self, deadline: float) -> bool:
        """Stop claiming reports; the request in flight may finish until `deadline`."""
        self._stop.set()
        self.deliverer.wake()
        self.thread.join(max(0.0, deadline - time.monotonic()))
        # Closing cuts off any request still running, so a stuck sender is freed too (what
        # it carried stays in the outbox); the deliverer then ends within a moment.
        self.reporter.close()
        if self.thread.is_alive():
            self.thread.join(DELIVERER_AFTER_CLOSE_SECONDS)
        return not self.thread.is_alive()


class Agent:
    """The running service; `run()` returns the exit status."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: str | None,
        stop: threading.Event,
        signals: SignalFlags | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.config_path = config_path or config.source or None
        self.stop_event = stop
        # Set by the signal handlers (or by a test, as a handler would); read each loop.
        self.signals = signals if signals is not None else SignalFlags()
        # The time due times and arrivals are judged by (a test moves it to a minute's end).
        self.wall_clock = wall_clock
        self._hangups = HangupCounter(self.signals)
        self._threads: list[threading.Thread] = []  # the pipeline's and the scanner's
        self.delivery: DeliveryThread | None = None
        self.watches: Watches | None = None  # made with the scanner, in _start
        self.rules: list[Rule] = []
        self.exit_status = EXIT_OK
        self.host = short_host_name()  # what compile_rules renders {host} with
        self.heartbeat = HeartbeatSchedule(config.heartbeat.every_seconds)
        self._started = time.monotonic()

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
        self.delivery = DeliveryThread(self.store, self.config.dagster, self.config.token)
        # [watch.expect]: windows that closed while the agent was stopped are judged now,
        # before any file is recorded, so a file of this start cannot judge them first.
        self.windows = WindowTimer(self.store, self.rules, clock=self.wall_clock)
        self._judge_windows()
        self.pipeline = Pipeline(
            self.rules, self.store, on_queued=self._queued, wall_clock=self.wall_clock
        )
        self.scanner = Scanner(
            self.rules, self.store, self.pipeline.submit, backlog=self.pipeline.backlog
        )
        self.watches = Watches(self.pipeline.submit, self.scanner)
        self._threads = [
            _thread("pipeline", self.pipeline.run),
            _thread("scanner", self.scanner.run),
        ]
        self.watches.set_rules(self.rules, initial=True)
        systemd.ready()
        counts = self.watches.counts()
        log.info(
            "ready: watching %d of %d folder(s) for %d rule(s); catch-up scan follows",
            counts.started,
            counts.folders,
            len(self.rules),
        )
        self.scanner.request_full(None, "catch-up scan")
        self._send_status()
        self._log_heartbeat()  # the first one goes out from the main loop, at once

    # -- heartbeat ---------------------------------------------------------------------

    def _heartbeat(self) -> None:
        """Queue this moment's heartbeat in place of one still pending, and wake delivery."""
        self.heartbeat.sent()  # a failed attempt, too, waits an interval before the next
        try:
            _, replaced = queue_heartbeat(
                self.store,
                self.config.heartbeat,
                host=self.host,
                rules=[rule.name for rule in self.rules],
                uptime_seconds=time.monotonic() - self._started,
            )
        except AssetWatcherError as exc:  # a full disk: file reports matter more
            log.error("heartbeat not queued: %s", exc)
            return
        if replaced:
            log.debug("heartbeat queued in place of %d still undelivered", replaced)
        self._queued()

    def _log_heartbeat(self) -> None:
        settings = self.config.heartbeat
        if settings.enabled:
            log.info(
                "heartbeat: an %s of %s every %gs",
                settings.event,
                "/".join(heartbeat_key(settings, self.host)),
                settings.every_seconds,
            )

    def _judge_windows(self) -> None:
        if self.windows.tick() and self.delivery is not None:
            self.delivery.wake()

    def _queued(self) -> None:
        if self.delivery is not None:
            self.delivery.wake()

    def _main_loop(self) -> None:
        watches = self._running_watches()
        delivery = self._running_delivery()
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
            delivery.finish_restart()
            dead = [t.name for t in self._threads if not t.is_alive()]
            if not delivery.healthy():
                dead.append(delivery.thread.name)
            if dead:
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
            watches.handle_controls()
            if self._hangups.take():  # however many SIGHUPs came, one reload
                self._reload()
            if self.heartbeat.due():
                self._heartbeat()
            self._judge_windows()  # cheap until the next window's deadline
            if now >= next_supervise:
                watches.supervise()
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

        if self.watches is not None:
            self.watches.stop(left)
        if self._threads:  # the scanner first: nothing new reaches the pipeline after it
            pipeline, scanner = self._threads
            self.scanner.stop()
            scanner.join(left())
            self.pipeline.stop()
            pipeline.join(left())
        delivered = True
        threads = list(self._threads)
        if self.delivery is not None:
            delivered = self.delivery.stop(deadline)
            threads.append(self.delivery.thread)
        busy = [t.name for t in threads if t.is_alive()]
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
        self.windows.set_rules(rules)
        self._running_watches().set_rules(rules, initial=False)
        old_token = old.token.get_secret_value() if old.token else None
        new_token = new.token.get_secret_value() if new.token else None
        if new.dagster != old.dagster or new_token != old_token:
            self._running_delivery().restart(new.dagster, new.token)
        if new.heartbeat != old.heartbeat:
            self.heartbeat.set_interval(new.heartbeat.every_seconds)
            if not new.heartbeat.enabled:
                log.info("heartbeat: off")
            self._log_heartbeat()
        self.scanner.request_full(None, "rescan after reload")

    def status_line(self) -> str:
        watching = self._running_watches().counts()
        parts = [f"watching {watching.complete}/{watching.folders} folder(s)"]
        if watching.troubled:
            parts.append(f"{watching.troubled} rescanned or missing")
        if self.scanner.state.running:
            parts.append(f"{self.scanner.state.running} running")
        parts.append(f"{self.pipeline.counts.reported} reported since start")
        with contextlib.suppress(AssetWatcherError):
            counts = self.store.counts()
            parts.append(f"outbox {counts.pending} pending, {counts.dead} dead")
        return "; ".join(parts)

    def _send_status(self) -> None:
        systemd.status(self.status_line())

    def _running_delivery(self) -> DeliveryThread:
        if self.delivery is None:
            raise RuntimeError("the agent has not started")
        return self.delivery

    def _running_watches(self) -> Watches:
        if self.watches is None:
            raise RuntimeError("the agent has not started")
        return self.watches


def run_agent(
    config: Config,
    *,
    config_path: str | None = None,
    stop: threading.Event | None = None,
    install_signals: bool = True,
    signals: SignalFlags | None = None,
    wall_clock: Callable[[], float] = time.time,
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
            config,
            config_path=config_path,
            stop=stop or threading.Event(),
            signals=flags,
            wall_clock=wall_clock,
        )
        try:
            return agent.run()
        except AssetWatcherError as exc:
            log.error("%s", exc)
            return exc.exit_status
