"""Idle cost (SPEC 10: < 1% of one core with 10,000 watched folders; RSS <= 80 MB with
100,000 tracked files).

10,000 folders with 10 files each = 100,000 files, all already reported (the state is
filled directly through StateStore, without reports, so no delivery is involved). Then
`asset-watcher run` starts on it (own process, inotify), its catch-up scan finds nothing
to do, and its CPU time (utime + stime from /proc) is measured over the 60 s SPEC names.
The reference for memory is a bare interpreter that imported the same modules
(`import asset_watcher.agent`), measured in the same run.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from asset_watcher.fingerprint import stat_of
from asset_watcher.state import StateStore
from tests.support.agent_run import REPO_ROOT, AgentProcess
from tests.support.bench import cpu_seconds, memory_kib, report
from tests.support.sink import Sink

FOLDERS = 10_000
FILES_PER_FOLDER = 10
IDLE_SECONDS = 60.0
RULE = "idle"


def build_tree(drop: Path, state: Path) -> float:
    started = time.monotonic()
    with StateStore(state) as store:
        for i in range(FOLDERS):
            folder = drop / f"{i // 100:03d}" / f"{i % 100:02d}"
            folder.mkdir(parents=True)
            for j in range(FILES_PER_FOLDER):
                path = folder / f"f{j}.csv"
                path.write_bytes(b"1,2\n")
                store.record_version(str(path), RULE, stat_of(path.stat()), None, [])
    return time.monotonic() - started


def baseline_rss_kib() -> int:
    code = (
        "import asset_watcher.agent, sys; "
        "sys.stdout.write('ok\\n'); sys.stdout.flush(); sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ok\n"
        return memory_kib(proc.pid)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)
        proc.stdout.close()  # type: ignore[union-attr]


def test_idle_with_10000_folders_and_100000_tracked_files(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    build_seconds = build_tree(drop, tmp_path / "state")
    config = tmp_path / "config.toml"
    with Sink() as sink:
        config.write_text(
            f'[dagster]\nurl = "{sink.url}"\n[state]\ndirectory = "{tmp_path / "state"}"\n'
            f'[defaults]\nobserver = "inotify"\n'
            f'[[watch]]\nname = "{RULE}"\npath = "{drop}"\nasset_key = "idle/{{stem}}"\n'
        )
        started = time.monotonic()
        agent = AgentProcess(config, tmp_path / "agent.log", log_level="info").start()
        try:
            agent.wait_ready(timeout=120)
            ready = time.monotonic() - started
            agent.wait_log("catch-up scan done", timeout=300)
            caught_up = time.monotonic() - started
            cpu_before = cpu_seconds(agent.pid)
            threading.Event().wait(IDLE_SECONDS)  # the measurement window itself
            cpu_idle = cpu_seconds(agent.pid) - cpu_before
            rss = memory_kib(agent.pid)
            peak = memory_kib(agent.pid, "VmHWM")
            agent.signal(signal.SIGTERM)
            assert agent.wait(60) == 0
        finally:
            agent.kill()
        assert sink.count == 0
    baseline = baseline_rss_kib()
    log = agent.log()
    catch_up = next(line for line in log.splitlines() if "catch-up scan done" in line)
    report(
        "idle with 10,000 watched folders, 100,000 tracked files",
        [
            ("tree + state built in", f"{build_seconds:.1f} s"),
            ("start -> READY (watches in place)", f"{ready:.2f} s"),
            ("start -> catch-up scan done", f"{caught_up:.2f} s ({catch_up.split(': ', 1)[1]})"),
            ("idle window", f"{IDLE_SECONDS:.0f} s"),
            (
                "idle CPU",
                f"{cpu_idle:.3f} s = {100 * cpu_idle / IDLE_SECONDS:.3f}% of one core "
                "(target < 1%)",
            ),
            ("RSS now / peak", f"{rss / 1024:.1f} / {peak / 1024:.1f} MiB (target <= 80 MB)"),
            ("reference: bare interpreter + imports", f"{baseline / 1024:.1f} MiB"),
            ("ratio RSS / reference", f"{rss / baseline:.2f}"),
            ("ratio RSS / 80 MB target", f"{rss * 1024 / 80e6:.2f}"),
        ],
    )
