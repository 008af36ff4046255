"""A batch of 2,000 small members completed by a `_SUCCESS` marker (issue 11): the time
from the marker's write to the batch's report at a sink that answers at once (target
<= 1 s plus settle_seconds), and the agent's CPU per member (from just before the burst
to the report: events, the folder's settling, one read of each member, the report). The
agent runs as `asset-watcher run` in its own process; the members are written by another.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.agent_run import AgentProcess, write
from tests.support.bench import cpu_seconds, report
from tests.support.fast_sink import FastSink

MEMBERS = 2000
SETTLE_SECONDS = 0.5

WRITER = r"""
import os, sys, time
folder, count = sys.argv[1], int(sys.argv[2])
payload = b"id,value\n" + b"1,2\n" * 20
for i in range(count):
    with open(f"{folder}/part-{i:05d}.csv", "wb") as handle:
        handle.write(payload)
"""


def test_marker_batch_of_2000_members(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    config = tmp_path / "config.toml"
    with FastSink() as sink:
        config.write_text(
            f'[dagster]\nurl = "{sink.url}"\n[state]\ndirectory = "{tmp_path / "state"}"\n'
            f'[defaults]\nsettle_seconds = {SETTLE_SECONDS}\nobserver = "inotify"\n'
            f"rescan_interval_seconds = 0\n"
            f'[[watch]]\npath = "{drop}"\nasset_key = "bench/{{parent}}"\n'
            '[watch.batch]\ncomplete_when = "marker"\nmarker = "_SUCCESS"\n'
        )
        agent = AgentProcess(config, tmp_path / "agent.log", log_level="warning").start()
        try:
            barrier = drop / "barrier"
            barrier.mkdir()
            write(barrier / "p", "x\n")
            write(barrier / "_SUCCESS", "")
            assert sink.wait_for(1, timeout=30)["keys"] == ["bench/barrier"]
            folder = drop / "batch"
            folder.mkdir()
            cpu_before = cpu_seconds(agent.pid)
            subprocess.run([sys.executable, "-c", WRITER, str(folder), str(MEMBERS)], check=True)
            marker_at = time.time()
            write(folder / "_SUCCESS", "")
            received = sink.wait_for(1, timeout=120)
            assert received["keys"] == ["bench/batch"]
            cpu = cpu_seconds(agent.pid) - cpu_before
            agent.signal(signal.SIGTERM)
            assert agent.wait(60) == 0
        finally:
            agent.kill()
    latency = received["last"] - marker_at
    report(
        f"marker batch of {MEMBERS} members (settle_seconds {SETTLE_SECONDS})",
        [
            ("marker -> report", f"{latency:.3f} s"),
            ("less settle_seconds", f"{latency - SETTLE_SECONDS:.3f} s (target <= 1 s)"),
            ("agent CPU", f"{cpu:.3f} s"),
            ("agent CPU per member", f"{cpu / MEMBERS * 1000:.3f} ms"),
        ],
    )
