"""Benchmarks: outside the default run (pyproject's testpaths), run with
`python -m pytest tests/benchmarks -s`. Each prints its figures and a ratio against a
reference measured in the same run; none asserts a timing."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.benchmark)


def best_of(runs: int, action: Callable[[], object]) -> float:
    """The fastest of `runs` wall-clock timings, in seconds: the least disturbed one."""
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return min(timings)


def run_quietly(*argv: str) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def report(name: str, ours: float, reference_name: str, reference: float, target: str) -> None:
    print(
        f"\n[benchmark] {name}: asset-watcher {ours:.3f}s, {reference_name} {reference:.3f}s, "
        f"ratio {ours / reference:.2f} (target {target})"
    )
