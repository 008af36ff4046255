"""`scan` of 100,000 unchanged, already-reported files against `find -printf` (stat only)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from asset_watcher.config import load_config
from asset_watcher.rules import compile_rules
from asset_watcher.scan import scan
from asset_watcher.state import StateStore
from tests.benchmarks.conftest import best_of, report, run_quietly
from tests.conftest import REPO_ROOT

FOLDERS = 1000
FILES_PER_FOLDER = 100


def test_scan_of_100k_unchanged_files_against_find(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    for folder in range(FOLDERS):
        sub = drop / f"d{folder:04d}"
        sub.mkdir(parents=True)
        for index in range(FILES_PER_FOLDER):
            (sub / f"file_{index:03d}.csv").write_bytes(b"x")
    state = tmp_path / "state"
    config_path = tmp_path / "config.toml"
    config_path.write_text(
        f"""
[dagster]
url = "http://127.0.0.1:9"
[state]
directory = "{state}"
[[watch]]
path = "{drop}"
asset_key = "bench/{{reldir}}"
settle_seconds = 0
"""
    )
    # Record every version once, then empty the outbox: "already reported".
    with StateStore(state) as store:
        first = scan(compile_rules(load_config(config_path)), store)
        store.db.execute("DELETE FROM outbox")
    assert first.reported == FOLDERS * FILES_PER_FOLDER

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "asset_watcher", "-c", str(config_path), "scan"]
    outputs: list[str] = []

    def ours() -> None:
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        outputs.append(done.stderr)
        assert done.returncode == 0, done.stderr

    find = best_of(3, lambda: run_quietly("find", str(drop), "-type", "f", "-printf",
                                          r"%s %T@ %i %p\n"))  # fmt: skip
    mine = best_of(3, ours)
    report("scan 100k unchanged", mine, "find -printf", find, "<= 3.0")
    assert "0 reported, 100000 unchanged" in outputs[-1]
