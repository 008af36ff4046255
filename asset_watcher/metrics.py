"""Optional Prometheus metrics: a few counters the pipeline bumps, served over HTTP.

prometheus-client lives here and nowhere else, imported only by `start` (the optional
`metrics` extra). Until `start` succeeds every function below is a cheap no-op, so the
stages call them unconditionally. Metrics live in a private registry: nothing of the
library's default process collectors, and a fresh set after each `start`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from asset_watcher.errors import ConfigError
from asset_watcher.settings import MetricsSettings, parse_listen

log = logging.getLogger(__name__)

OutboxSource = Callable[[], tuple[int, int]]  # () -> (pending, dead)

_live: _Live | None = None
_outbox_source: OutboxSource | None = None
_start_lock = threading.Lock()


def enabled() -> bool:
    return _live is not None


def file_detected(count: int = 1) -> None:
    """A completed new file version was found (watch or scan)."""
    live = _live
    if live is not None:
        live.files_detected.inc(count)


def bytes_hashed(count: int) -> None:
    """`count` bytes went through a content hash."""
    live = _live
    if live is not None:
        live.bytes_hashed.inc(count)


def report_outcome(kind: str, outcome: str) -> None:
    """One request's result: `outcome` is delivered, retried, dead or unauthorized."""
    live = _live
    if live is not None:
        live.reports.labels(event=kind, outcome=outcome).inc()
        if outcome == "delivered":
            live.last_success.set(time.time())


def retried(reason: str) -> None:
    """A report goes back to the outbox to be tried again (`reason`: network, http_429, ...)."""
    live = _live
    if live is not None:
        live.retries.labels(reason=reason).inc()


def set_paused(paused: bool) -> None:
    """Delivery waits for a working token (401/403)."""
    live = _live
    if live is not None:
        live.paused.set(1 if paused else 0)


def set_outbox_source(source: OutboxSource | None) -> None:
    """Where the pending/dead gauges come from, read at scrape time (None: not shown)."""
    global _outbox_source
    _outbox_source = source


def start(settings: MetricsSettings) -> Callable[[], None] | None:
    """Serve /metrics on `settings.listen`; returns a function that stops it, or None when
    metrics are off. Raises ConfigError when the library is missing or the address is
    unusable. Call the stop function before starting again."""
    global _live
    if not settings.listen:
        return None
    host, port = parse_listen(settings.listen)
    try:
        import prometheus_client
        import prometheus_client.core
    except ImportError:
        raise ConfigError(
            [
                "metrics.listen: is set, but the prometheus-client library is not installed "
                "(pip install 'asset-watcher[metrics]', or remove [metrics] listen)"
            ]
        ) from None
    with _start_lock:
        if _live is not None:
            raise RuntimeError("metrics already started; call the stop function first")
        live = _Live(prometheus_client)
        try:
            server, thread = prometheus_client.start_http_server(
                port, addr=host, registry=live.registry
            )
        except OSError as exc:
            raise ConfigError(
                [f"metrics.listen: cannot listen on {settings.listen}: {exc.strerror or exc}"]
            ) from None
        _live = live
    bound = server.server_address
    log.info("serving Prometheus metrics on http://%s:%s/metrics", bound[0], bound[1])

    def stop() -> None:
        global _live
        with _start_lock:
            if _live is live:
                _live = None
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    stop.address = bound  # type: ignore[attr-defined]  # (host, port) actually bound
    return stop


class _Live:
    """The metric objects of one `start`."""

    def __init__(self, prom: Any) -> None:
        self.registry = prom.CollectorRegistry()
        reg = self.registry
        self.files_detected = prom.Counter(
            "asset_watcher_files_detected",
            "Completed new file versions found (watch or scan).",
            registry=reg,
        )
        self.bytes_hashed = prom.Counter(
            "asset_watcher_bytes_hashed", "Bytes read through a content hash.", registry=reg
        )
        self.reports = prom.Counter(
            "asset_watcher_reports",
            "Report requests to Dagster by event type and outcome"
            " (delivered, retried, dead, unauthorized).",
            ["event", "outcome"],
            registry=reg,
        )
        self.retries = prom.Counter(
            "asset_watcher_retries",
            "Reports put back in the outbox to be tried again, by reason.",
            ["reason"],
            registry=reg,
        )
        self.last_success = prom.Gauge(
            "asset_watcher_last_success_timestamp_seconds",
            "Unix time of the last report Dagster accepted (0: none since start).",
            registry=reg,
        )
        self.paused = prom.Gauge(
            "asset_watcher_delivery_paused",
            "1 while delivery waits for a working API token (401/403).",
            registry=reg,
        )
        reg.register(_OutboxCollector(prom))


class _OutboxCollector:
    """Outbox gauges read from the state database when Prometheus scrapes."""

    def __init__(self, prom: Any) -> None:
        self.gauge_family = prom.core.GaugeMetricFamily

    def describe(self) -> list[Any]:
        return []  # names vary with the source; skip the registry's duplicate check

    def collect(self) -> Iterator[Any]:
        source = _outbox_source
        if source is None:
            return
        try:
            pending, dead = source()
        except Exception as exc:  # a closed or busy store must not break the scrape
            log.debug("outbox gauges unavailable: %s", exc)
            return
        yield self.gauge_family(
            "asset_watcher_outbox_pending", "Reports waiting to be delivered.", value=pending
        )
        yield self.gauge_family(
            "asset_watcher_outbox_dead", "Dead-lettered reports (see retry-dead).", value=dead
        )
