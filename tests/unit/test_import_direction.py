"""Imports flow one way: a stage never imports a later one (ARCHITECTURE.md, habit 1)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "asset_watcher"

# Earliest first. A module may import only modules listed before it.
ORDER = [
    "errors", "model", "paths", "globs", "logs", "systemd", "signals", "retry", "expect",
    "sidecars", "settings", "config", "metrics", "rules", "fingerprint", "checks",
    "reports", "batches",
    "schema", "state_base", "state_batches", "state_sidecars", "state_windows", "state",
    "heartbeat",
    "arrivals", "versions", "batch_versions", "scan", "scanner", "settle", "watchdog_hooks",
    "observe",
    "deadlines", "reporter", "delivery",
    "pipeline", "dagster", "watches", "agent", "demo", "status", "explain", "cli",
    "__main__",
]  # fmt: skip

THIRD_PARTY_HOMES = {
    "watchdog": ("observe", "watchdog_hooks"),  # its private internals: watchdog_hooks only
    "requests": ("reporter",),
    "urllib3": ("reporter",),
    "sqlite3": (
        "schema",
        "state_base",
        "state_batches",
        "state_sidecars",
        "state_windows",
        "state",
    ),
    "pydantic": ("settings", "config"),
    "pydantic_settings": ("config",),
    "dagster": ("dagster",),
    "prometheus_client": ("metrics",),
    "croniter": ("expect",),
}


def imports_of(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "asset_watcher":
                found.update(f"asset_watcher.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_every_module_has_a_place_in_the_order() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(ORDER)


def test_stages_import_only_earlier_stages() -> None:
    for index, module in enumerate(ORDER):
        internal = {
            name.split(".")[1]
            for name in imports_of(module)
            if name.startswith("asset_watcher.") and name.split(".")[1] in ORDER
        }
        later = internal - set(ORDER[:index])
        assert not later, f"{module} imports later stages {sorted(later)}"


def test_each_third_party_library_lives_in_one_module() -> None:
    for module in ORDER:
        for name in imports_of(module):
            homes = THIRD_PARTY_HOMES.get(name.split(".")[0])
            assert homes is None or module in homes, f"{module} imports {name}; only {homes} may"
