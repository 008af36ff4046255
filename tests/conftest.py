"""Fixtures shared by every test: a CLI runner, config files, a drop folder, and a
thread-leak check."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Test files that drive the real watchdog observers. `nox -s extra` runs them again in the
# Dagster environment, which has the other supported watchdog major (6; the lock gives 7).
WATCH_MODE_TESTS = frozenset(
    {
        "tests/unit/test_observe.py",
        "tests/unit/test_watchdog_hooks.py",
        "tests/integration/test_agent.py",
        "tests/integration/test_agent_hazards.py",
        "tests/integration/test_agent_process.py",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.relative_to(REPO_ROOT).as_posix() in WATCH_MODE_TESTS:
            item.add_marker(pytest.mark.watch)


@pytest.fixture
def drop(tmp_path: Path) -> Path:
    """The watched folder of a test: `tmp_path/drop`, empty."""
    folder = tmp_path / "drop"
    folder.mkdir()
    return folder


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    """A test must stop every thread it started (observers, senders, servers)."""
    before = set(threading.enumerate())
    yield
    deadline = 5.0
    for thread in set(threading.enumerate()) - before:
        thread.join(timeout=deadline)
        deadline = 0.5
    leaked = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not leaked, f"threads left running: {leaked}"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's token, config or state locations."""
    for name in list(os.environ):
        if name.startswith("ASSET_WATCHER_") or name in (
            "DAGSTER_CLOUD_API_TOKEN",
            "CREDENTIALS_DIRECTORY",
            "STATE_DIRECTORY",
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
        ):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))


def write_config(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def config_file(tmp_path: Path) -> Callable[[str], Path]:
    """Write a TOML config (dedented) into the test's folder and return its path."""

    def make(text: str) -> Path:
        return write_config(tmp_path / "config.toml", text)

    return make


CliRun = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli() -> CliRun:
    """Run `python -m asset_watcher ARGS` in a subprocess, as an operator would."""

    def run(
        *args: str, env: dict[str, str] | None = None, timeout: float = 120, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "asset_watcher", *args],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,  # type: ignore[arg-type]
        )

    return run
