"""N small new files `scan`ned into a real dagster-webserver (SQLite storage) with
`max_in_flight = 8`, against a bare 8-thread keep-alive client POSTing the same N reports
(SPEC 10: ours <= 1.15x the bare client; the agent is never the bottleneck).

Each side gets a fresh webserver (its own DAGSTER_HOME and event log: the second side would
otherwise write into a bigger SQLite database), started before and stopped after its turn.

* reference: 8 threads, each with its own keep-alive `http.client.HTTPConnection` (the
  leanest client the standard library has; `ASSET_WATCHER_BENCH_CLIENT=requests` uses a
  `requests.Session` per thread instead), sharing one queue of the N bodies. The bodies
  are the agent's own: `scan --dry-run --json` over the same folder. Timed from the first
  POST to the last answer.
* ours: `python -m asset_watcher scan` in a subprocess, hash sha256, timed as the wall time
  of the process: start-up, walk, hashing, outbox, delivery. Its CPU time (user + system,
  from wait4) is printed per file, and its phases: start-up, the walk (which records
  every version in the outbox before delivery begins) and delivery.

Both sides are checked: every asset key is in Dagster, and a sample of the recorded
materializations carries the body's data version and metadata. The webserver's own CPU per
report is printed for both sides. `ASSET_WATCHER_BENCH_FILES` sets N (default 500: this
webserver takes 20-60 reports/s on 2 shared cores), `ASSET_WATCHER_BENCH_ROUNDS` the
number of rounds (default 2, run reference, ours, ours, reference).
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import REPO_ROOT
from tests.support import envs
from tests.support.bench import cpu_seconds, report
from tests.support.dagster_server import DagsterServer

# Read at import: the autouse `clean_environment` fixture removes ASSET_WATCHER_* names.
FILES = int(os.environ.get("ASSET_WATCHER_BENCH_FILES", "500"))
ROUNDS = int(os.environ.get("ASSET_WATCHER_BENCH_ROUNDS", "2"))
CLIENT = os.environ.get("ASSET_WATCHER_BENCH_CLIENT", "http.client")
THREADS = 8
ENDPOINT = "report_asset_materialization/"
SAMPLE = 25  # materializations read back one by one (each question opens an instance)


@pytest.fixture(scope="module")
def dagster_python() -> str:
    """The Dagster environment's Python, found (or built) before `clean_environment` hides
    ASSET_WATCHER_TEST_DAGSTER_PYTHON from the test."""
    return str(envs.dagster_python())


def make_files(drop: Path, count: int) -> None:
    drop.mkdir()
    for index in range(count):
        (drop / f"f{index:05d}.csv").write_bytes(b"id,value\n%d,%d\n" % (index, index * index))


def write_config(path: Path, url: str, drop: Path, state: Path) -> Path:
    path.write_text(
        f'[dagster]\nurl = "{url}"\nmax_in_flight = {THREADS}\ntimeout_seconds = 30\n'
        f'[state]\ndirectory = "{state}"\n'
        f'[[watch]]\npath = "{drop}"\nasset_key = "bench/{{stem}}"\n'
        'settle_seconds = 0\nhash = "sha256"\n'
    )
    return path


def agent_command(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "asset_watcher", "-c", str(config), "scan", *args]


AGENT_ENV = {"PYTHONPATH": str(REPO_ROOT)}


def agent_bodies(config: Path) -> list[dict[str, Any]]:
    """The bodies the agent would POST for the folder, from `scan --dry-run --json`."""
    done = subprocess.run(
        agent_command(config, "--dry-run", "--json"),
        env={**os.environ, **AGENT_ENV},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    entries = [json.loads(line) for line in done.stdout.splitlines()]
    assert all(entry["event"] == "materialization" for entry in entries)
    return [entry["body"] for entry in entries]


class _Poster:
    """One thread's keep-alive connection."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/") + "/" + ENDPOINT
        if CLIENT == "requests":
            import requests

            self.session: Any = requests.Session()
            self.session.headers["Content-Type"] = "application/json"
        else:
            parts = urlsplit(self.url)
            self.path = parts.path
            self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)

    def post(self, body: bytes) -> tuple[int, bytes]:
        if CLIENT == "requests":
            response = self.session.post(self.url, data=body, timeout=60)
            return response.status_code, response.content
        self.connection.request(
            "POST", self.path, body, headers={"Content-Type": "application/json"}
        )
        answer = self.connection.getresponse()
        return answer.status, answer.read()

    def close(self) -> None:
        if CLIENT == "requests":
            self.session.close()
        else:
            self.connection.close()


def bare_client(url: str, bodies: list[bytes]) -> float:
    """POST every body with THREADS threads; seconds from the first POST to the last
    answer. Raises if any answer is not 200 without an error."""
    work: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    for body in bodies:
        work.put(body)
    failures: list[str] = []
    go = threading.Barrier(THREADS + 1)

    def sender() -> None:
        poster = _Poster(url)
        try:
            go.wait()
            while True:
                try:
                    body = work.get_nowait()
                except queue.Empty:
                    return
                status, content = poster.post(body)
                if status != 200 or b'"error"' in content:
                    failures.append(f"HTTP {status}: {content[:300]!r}")
        except Exception as exc:  # reported below, never a silent short count
            failures.append(repr(exc))
        finally:
            poster.close()

    threads = [threading.Thread(target=sender, name=f"bare-{n}") for n in range(THREADS)]
    for thread in threads:
        thread.start()
    go.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    assert not failures, failures[:5]
    return elapsed


def run_agent(config: Path) -> dict[str, Any]:
    """Wall seconds and CPU seconds (user + system) of `scan`, the moment it started (epoch
    seconds, to compare with the state's timestamps), and its stderr."""
    log = config.with_name(config.stem + ".log")
    with open(log, "wb") as stderr:
        began = time.time()
        started = time.perf_counter()
        child = subprocess.Popen(
            agent_command(config),
            env={**os.environ, **AGENT_ENV},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        _, status, usage = os.wait4(child.pid, 0)
        elapsed = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    assert child.returncode == 0, text
    return {
        "wall": elapsed,
        "cpu": usage.ru_utime + usage.ru_stime,
        "began": began,
        "stderr": text,
    }


def scan_phases(state: Path, began: float, wall: float) -> tuple[float, float, float]:
    """Seconds of start-up (to the first version recorded), of the walk (hash and outbox
    included, to the last version recorded: `scan` delivers after it), and of delivery."""
    with sqlite3.connect(state / "state.sqlite3") as db:
        first, last = db.execute("SELECT MIN(reported_at), MAX(reported_at) FROM files").fetchone()
    return first - began, last - first, began + wall - last


def check_recorded(server: DagsterServer, bodies: list[dict[str, Any]]) -> None:
    """Every report is in Dagster: each body's asset key exists (one report per key, and
    only materializations make a key here), and a sample matches its body."""
    assert server.all_asset_keys() == sorted(body["asset_key"] for body in bodies)
    step = max(1, len(bodies) // SAMPLE)
    for body in [*bodies[::step], bodies[-1]]:
        (event,) = server.materializations(body["asset_key"])
        assert event.data_version == body["data_version"]
        for name in ("path", "size_bytes", "sha256"):
            assert event.metadata[name] == body["metadata"][name]


def reference_side(bodies: list[dict[str, Any]], encoded: list[bytes]) -> dict[str, float]:
    with DagsterServer() as server:  # a fresh DAGSTER_HOME, removed at stop
        assert server.pid is not None
        before = cpu_seconds(server.pid)
        wall = bare_client(server.url, encoded)
        served = cpu_seconds(server.pid) - before
        check_recorded(server, bodies)
    return {"wall": wall, "server_cpu": served}


def agent_side(bodies: list[dict[str, Any]], drop: Path, state: Path) -> dict[str, Any]:
    with DagsterServer() as server:
        assert server.pid is not None
        config = write_config(state.with_suffix(".toml"), server.url, drop, state)
        before = cpu_seconds(server.pid)
        run = run_agent(config)
        served = cpu_seconds(server.pid) - before
        assert f"{FILES} reported" in run["stderr"], run["stderr"]
        assert f"{FILES} delivered, 0 pending, 0 dead" in run["stderr"], run["stderr"]
        check_recorded(server, bodies)
    phases = scan_phases(state, run["began"], run["wall"])
    return {"wall": run["wall"], "cpu": run["cpu"], "server_cpu": served, "phases": phases}


def test_scan_into_dagster_against_a_bare_client(
    tmp_path: Path, dagster_python: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(envs.OVERRIDE, dagster_python)
    drop = tmp_path / "drop"
    make_files(drop, FILES)
    dry_config = write_config(tmp_path / "dry.toml", "http://127.0.0.1:9", drop, tmp_path / "dry")
    bodies = agent_bodies(dry_config)
    assert len(bodies) == FILES
    encoded = [json.dumps(body, ensure_ascii=False).encode() for body in bodies]

    # Rounds in the order reference, ours, ours, reference, ...: a load that drifts during
    # the run weighs on both sides alike.
    references: list[dict[str, float]] = []
    ours: list[dict[str, Any]] = []
    for turn in range(2 * ROUNDS):
        if turn % 4 in (0, 3):
            references.append(reference_side(bodies, encoded))
        else:
            ours.append(agent_side(bodies, drop, tmp_path / f"state-{turn}"))

    rows = [
        ("files", f"{FILES} x ~20 bytes, sha256, one asset key each; {ROUNDS} round(s)"),
        ("load average at the end", " ".join(f"{value:.2f}" for value in os.getloadavg())),
    ]
    for n, (theirs, mine) in enumerate(zip(references, ours, strict=True), 1):
        rows += [
            (
                f"round {n}: bare client ({THREADS} threads, {CLIENT})",
                f"{theirs['wall']:.2f} s ({FILES / theirs['wall']:.0f} reports/s), "
                f"webserver CPU {theirs['server_cpu'] / FILES * 1000:.1f} ms/report",
            ),
            (
                f"round {n}: asset-watcher scan (process wall time)",
                f"{mine['wall']:.2f} s ({FILES / mine['wall']:.0f} reports/s), "
                f"webserver CPU {mine['server_cpu'] / FILES * 1000:.1f} ms/report",
            ),
            (
                f"round {n}: asset-watcher CPU",
                f"{mine['cpu']:.2f} s ({mine['cpu'] / FILES * 1000:.2f} ms per file)",
            ),
            (
                f"round {n}: asset-watcher phases",
                "start-up {:.2f} s, walk + hash + outbox {:.2f} s, delivery {:.2f} s".format(
                    *mine["phases"]
                ),
            ),
            (f"round {n}: ratio ours / bare client", f"{mine['wall'] / theirs['wall']:.2f}"),
        ]
    best_theirs = min(side["wall"] for side in references)
    best_mine = min(side["wall"] for side in ours)
    rows.append(
        (
            "ratio, best of each side",
            f"{best_mine:.2f} s / {best_theirs:.2f} s = {best_mine / best_theirs:.2f} "
            "(target <= 1.15)",
        )
    )
    report(f"scan of {FILES} new small files into dagster-webserver, max_in_flight 8", rows)
