"""One file closed -> its report received (SPEC 10: median <= settle_seconds + 100 ms).

50 files, one at a time, into a folder watched by `asset-watcher run` (own process, the
inotify observer), against a local sink that answers at once. The reference is the
target itself, settle_seconds + 100 ms, measured on the same clock.
"""

from __future__ import annotations

import signal
import statistics
import time
from pathlib import Path

from tests.support.agent_run import AgentProcess, barrier, wait_reported
from tests.support.bench import report
from tests.support.sink import Sink

FILES = 50
SETTLE_SECONDS = 0.5


def test_close_to_report_latency(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    config = tmp_path / "config.toml"
    latencies = []
    with Sink() as sink:
        config.write_text(
            f'[dagster]\nurl = "{sink.url}"\n[state]\ndirectory = "{tmp_path / "state"}"\n'
            f'[defaults]\nsettle_seconds = {SETTLE_SECONDS}\nobserver = "inotify"\n'
            f'[[watch]]\npath = "{drop}"\nasset_key = "latency/{{stem}}"\n'
        )
        agent = AgentProcess(config, tmp_path / "agent.log", log_level="warning").start()
        try:
            barrier(sink, drop, timeout=30)
            for i in range(FILES):
                path = drop / f"file{i:02d}.csv"
                with open(path, "wb") as handle:
                    handle.write(b"id,value\n1,2\n")
                closed = time.time()
                requests = wait_reported(sink, path, timeout=30)
                arrived = next(
                    r.wall_time for r in requests if r.json["metadata"]["path"] == str(path)
                )
                latencies.append(arrived - closed)
            agent.signal(signal.SIGTERM)
            assert agent.wait(60) == 0
        finally:
            agent.kill()
    target = SETTLE_SECONDS + 0.1
    median = statistics.median(latencies)
    report(
        "one file closed -> report received",
        [
            ("files", f"{FILES}, one at a time, settle_seconds = {SETTLE_SECONDS}"),
            ("median", f"{median * 1000:.0f} ms"),
            ("p90", f"{statistics.quantiles(latencies, n=10)[-1] * 1000:.0f} ms"),
            ("min / max", f"{min(latencies) * 1000:.0f} / {max(latencies) * 1000:.0f} ms"),
            ("reference", f"settle_seconds + 100 ms = {target * 1000:.0f} ms"),
            ("ratio median / reference", f"{median / target:.2f} (target <= 1.00)"),
            ("overhead beyond settle", f"{(median - SETTLE_SECONDS) * 1000:.0f} ms"),
        ],
    )
