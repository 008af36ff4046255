"""The optional Prometheus endpoint, scraped over loopback like Prometheus would."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from asset_watcher import metrics
from asset_watcher.config import load_config
from asset_watcher.delivery import Deliverer
from asset_watcher.errors import ConfigError
from asset_watcher.reporter import Reporter
from asset_watcher.rules import compile_rules
from asset_watcher.scan import scan
from asset_watcher.settings import MetricsSettings
from asset_watcher.state import StateStore
from tests.support.sink import Sink


@pytest.fixture
def served() -> Iterator[str]:
    """Metrics on a free loopback port; yields the /metrics URL."""
    stop = metrics.start(MetricsSettings(listen="127.0.0.1:0"))
    assert stop is not None
    host, port = stop.address  # type: ignore[attr-defined]
    try:
        yield f"http://{host}:{port}/metrics"
    finally:
        stop()
    assert not metrics.enabled()


def scrape(url: str) -> dict[str, float]:
    """`name{labels}` -> value for every sample line."""
    text = requests.get(url, timeout=5).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_scan_and_delivery_are_counted(
    served: str, sink: Sink, tmp_path: Path, config_file: Callable[[str], Path]
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    sizes = {"ok1": 10, "ok2": 2000, "flaky": 5, "bad": 0}
    for name, size in sizes.items():
        (drop / f"{name}.bin").write_bytes(b"x" * size)
    config = load_config(
        config_file(
            f"""
            [dagster]
            url = "{sink.url}"
            backoff_max_seconds = 0.2
            [defaults]
            settle_seconds = 0
            [[watch]]
            path = "{drop}"
            asset_key = "m/{{stem}}"
            """
        )
    )
    sink.fail_next(1, 500, match=lambda r: r.json["asset_key"] == ["m", "flaky"])
    sink.fail_next(None, 400, match=lambda r: r.json["asset_key"] == ["m", "bad"])

    with StateStore(tmp_path / "state") as store:
        result = scan(compile_rules(config), store)
        assert result.reported == 4
        reporter = Reporter(config.dagster)
        deliverer = Deliverer(store, reporter)
        try:
            summary = deliverer.drain(patience_seconds=10)
        finally:
            reporter.close()
        assert (summary.delivered, summary.dead) == (3, 1)
        seen = scrape(served)  # the outbox gauges read the open store

    assert seen["asset_watcher_files_detected_total"] == 4
    assert seen["asset_watcher_bytes_hashed_total"] == sum(sizes.values())
    mat = 'event="materialization"'
    assert seen[f'asset_watcher_reports_total{{{mat},outcome="delivered"}}'] == 3
    assert seen[f'asset_watcher_reports_total{{{mat},outcome="dead"}}'] == 1
    assert seen[f'asset_watcher_reports_total{{{mat},outcome="retried"}}'] == 1
    assert seen['asset_watcher_retries_total{reason="http_500"}'] == 1
    assert seen["asset_watcher_last_success_timestamp_seconds"] > 0
    assert seen["asset_watcher_delivery_paused"] == 0
    assert seen["asset_watcher_outbox_pending"] == 0
    assert seen["asset_watcher_outbox_dead"] == 1


def test_off_by_default_and_calls_are_no_ops() -> None:
    assert metrics.start(MetricsSettings()) is None
    assert not metrics.enabled()
    metrics.file_detected()
    metrics.bytes_hashed(10)
    metrics.report_outcome("materialization", "delivered")
    metrics.retried("network")
    metrics.set_paused(True)


def test_missing_library_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    with pytest.raises(ConfigError) as caught:
        metrics.start(MetricsSettings(listen="127.0.0.1:0"))
    (problem,) = caught.value.problems
    assert problem.startswith("metrics.listen: ")
    assert "pip install 'asset-watcher[metrics]'" in problem
    assert not metrics.enabled()


def test_address_in_use_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"metrics.listen: cannot listen on 127.0.0.1:{port}"):
            metrics.start(MetricsSettings(listen=f"127.0.0.1:{port}"))
    assert not metrics.enabled()


@pytest.mark.parametrize("listen", ["9464", "localhost", "127.0.0.1:http", ":9464", "h:70000"])
def test_malformed_listen_is_rejected_at_load(
    listen: str, config_file: Callable[[str], Path]
) -> None:
    path = config_file(f'[metrics]\nlisten = "{listen}"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [
        f"metrics.listen: expected HOST:PORT such as 127.0.0.1:9464, got {listen!r}"
    ]


def test_ipv6_listen_parses(config_file: Callable[[str], Path]) -> None:
    config = load_config(config_file('[metrics]\nlisten = "[::1]:9464"\n'))
    assert config.metrics.listen == "[::1]:9464"
