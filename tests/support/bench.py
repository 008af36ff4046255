"""Small helpers for tests/benchmarks: a figures table and process accounting."""

from __future__ import annotations

import os
from pathlib import Path


def report(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    print(f"\n== {title}", flush=True)
    for name, value in rows:
        print(f"   {name.ljust(width)}  {value}", flush=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (proc(5) stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int, key: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)
