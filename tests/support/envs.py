"""The Dagster environment: where the tests' dagster-webserver and probe run from.

The agent is tested in an environment built from `requirements.lock`, the versions an
operator installs (watchdog 7 on Python 3.11+). Dagster pins `watchdog<7`, so it must
never share that environment: it gets one of its own, built from `requirements-dagster.lock`
into `.venv-dagster` at the repository root, and found again by the lock file's digest.
`ASSET_WATCHER_TEST_DAGSTER_PYTHON` names another interpreter to use instead.

`python tests/support/envs.py` builds it (if needed) and prints its Python; the dagster
extra's own tests (`build_definitions`, `demo`) run with that Python too. Standard library
only: it runs before any environment exists.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DAGSTER_LOCK = REPO_ROOT / "requirements-dagster.lock"
DAGSTER_ENV = REPO_ROOT / ".venv-dagster"
OVERRIDE = "ASSET_WATCHER_TEST_DAGSTER_PYTHON"
STAMP = "asset-watcher-lock.sha256"


class DagsterEnvironmentError(RuntimeError):
    """The Dagster environment could not be built."""


def _lock_digest() -> str:
    return hashlib.sha256(DAGSTER_LOCK.read_bytes()).hexdigest()


def _python_of(env: Path) -> Path:
    return env / "bin" / "python"


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """Two test processes (or a developer's shell and a test) never build at once."""
    with open(REPO_ROOT / ".venv-dagster.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_current(env: Path, digest: str) -> bool:
    stamp = env / STAMP
    return _python_of(env).exists() and stamp.exists() and stamp.read_text().strip() == digest


def _build(env: Path, digest: str) -> None:
    print(f"building the Dagster environment {env} from {DAGSTER_LOCK.name}", file=sys.stderr)
    shutil.rmtree(env, ignore_errors=True)
    python = os.environ.get("ASSET_WATCHER_TEST_BASE_PYTHON", sys.executable)
    steps = [
        [python, "-m", "venv", str(env)],
        # --no-deps: the lock lists every package; pip's hash mode trips over extras
        # (`gql[requests]`) of packages that are pinned anyway.
        [
            str(_python_of(env)),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--require-hashes",
            "-r",
            str(DAGSTER_LOCK),
        ],
        [str(_python_of(env)), "-m", "pip", "check"],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise DagsterEnvironmentError(
                f"`{' '.join(step)}` failed ({done.returncode}):\n{done.stdout[-3000:]}"
                f"{done.stderr[-3000:]}"
            )
    (env / STAMP).write_text(digest + "\n")


def dagster_python() -> Path:
    """The Python of the Dagster environment, built from its lock file if it is missing or
    was built from another version of it."""
    override = os.environ.get(OVERRIDE)
    if override:
        return Path(override)
    digest = _lock_digest()
    if _is_current(DAGSTER_ENV, digest):
        return _python_of(DAGSTER_ENV)
    with _build_lock():
        if not _is_current(DAGSTER_ENV, digest):
            _build(DAGSTER_ENV, digest)
    return _python_of(DAGSTER_ENV)


if __name__ == "__main__":
    try:
        print(dagster_python())
    except DagsterEnvironmentError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
