"""Benchmarks: each prints a ratio against a reference tool timed in the same run."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable


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
