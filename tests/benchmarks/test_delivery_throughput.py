"""Delivery throughput against a sink that answers after 100 ms (SPEC section 10).

Target: at least 80% of max_in_flight / 0.1 s. Run on purpose, outside the default run:

    python -m pytest tests/benchmarks/test_delivery_throughput.py -s

The sink runs in its own process by default, as Dagster would, so its request handling
does not compete with the agent for one GIL; `thread` runs it in-process for comparison.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from asset_watcher.delivery import Deliverer
from asset_watcher.model import EventKind
from asset_watcher.reporter import Reporter
from asset_watcher.reports import event_report
from asset_watcher.settings import DagsterSettings
from asset_watcher.state import StateStore
from tests.conftest import REPO_ROOT
from tests.support.queueing import queue_reports
from tests.support.sink import Sink

LATENCY_SECONDS = 0.1
WORK_SECONDS = 3.0  # reports per run: what the target rate delivers in this long
SINK_PROCESS = """
import sys
from tests.support.sink import Sink
with Sink() as sink:
    sink.set_delay(float(sys.argv[1]))
    print(sink.url, flush=True)
    sys.stdin.read()
"""


@contextmanager
def sink_url(mode: str) -> Iterator[str]:
    if mode == "thread":
        with Sink() as sink:
            sink.set_delay(LATENCY_SECONDS)
            yield sink.url
        return
    with subprocess.Popen(
        [sys.executable, "-c", SINK_PROCESS, str(LATENCY_SECONDS)],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdin is not None and child.stdout is not None
        try:
            yield child.stdout.readline().strip()
        finally:
            child.stdin.close()  # the sink's cue to stop
            child.wait(timeout=30)


def measure(url: str, max_in_flight: int, directory: Path) -> tuple[int, float]:
    count = int(max_in_flight / LATENCY_SECONDS * WORK_SECONDS)
    with StateStore(directory) as store:
        # Distinct asset keys: per-key ordering would otherwise serialise them.
        queue_reports(
            store,
            (
                event_report(EventKind.MATERIALIZATION, ("bench", f"k{n}"), metadata={"n": n})
                for n in range(count)
            ),
        )
        reporter = Reporter(DagsterSettings(url=url, max_in_flight=max_in_flight))
        try:
            started = time.perf_counter()
            summary = Deliverer(store, reporter).drain(patience_seconds=30)
            elapsed = time.perf_counter() - started
        finally:
            reporter.close()
        assert summary.delivered == count and store.counts().pending == 0
    return count, elapsed


@pytest.mark.benchmark
@pytest.mark.parametrize("mode", ["process", "thread"])
def test_throughput_against_a_100ms_sink(mode: str, tmp_path: Path) -> None:
    rows = []
    with sink_url(mode) as url:
        for max_in_flight in (1, 8, 32):
            count, elapsed = measure(url, max_in_flight, tmp_path / f"state-{max_in_flight}")
            rate = count / elapsed
            ideal = max_in_flight / LATENCY_SECONDS
            rows.append((max_in_flight, count, elapsed, rate, ideal, rate / ideal))
    print(f"\nsink in a {mode}, {LATENCY_SECONDS * 1000:.0f} ms per answer")
    print("max_in_flight  reports  seconds  reports/s  ideal/s  of ideal")
    for max_in_flight, count, elapsed, rate, ideal, ratio in rows:
        print(
            f"{max_in_flight:>13}  {count:>7}  {elapsed:>7.2f}  {rate:>9.1f}  {ideal:>7.0f}"
            f"  {ratio:>8.0%}"
        )
    for *_, ratio in rows:
        assert ratio >= 0.8
