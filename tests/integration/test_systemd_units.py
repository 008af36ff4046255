"""The shipped systemd units: required directives, `systemd-analyze verify`, sandbox score."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

UNIT_DIR = Path(__file__).resolve().parents[2] / "systemd"
SERVICE = UNIT_DIR / "asset-watcher.service"
SCAN_SERVICE = UNIT_DIR / "asset-watcher-scan.service"
SCAN_TIMER = UNIT_DIR / "asset-watcher-scan.timer"
UNITS = (SERVICE, SCAN_SERVICE, SCAN_TIMER)

INSTALLED_BINARY = "/opt/asset-watcher/bin/asset-watcher"
MAX_EXPOSURE = 1.5  # SPEC section 8; systemd-timesyncd scores 2.3
ANALYZE_TIMEOUT_SECONDS = 60

Unit = dict[str, dict[str, list[str]]]


def parse_unit(path: Path) -> Unit:
    """Sections -> key -> every value in file order (keys such as SystemCallFilter repeat)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"{path.name}: directive outside a section: {line}"
        assert not line.endswith("\\"), f"{path.name}: keep directives on one line: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a KEY=VALUE line: {line}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def one(unit: Unit, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key)
    assert values, f"[{section}] {key}= missing"
    assert len(values) == 1, f"[{section}] {key}= set {len(values)} times: {values}"
    return values[0]


# --- required directives (no systemd needed) ------------------------------------


def test_service_has_the_required_directives() -> None:
    unit = parse_unit(SERVICE)
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    assert re.fullmatch(r"[1-9]\d*(s|min)?", one(unit, "Service", "WatchdogSec"))
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "StateDirectory") == "asset-watcher"
    assert one(unit, "Service", "ConfigurationDirectory") == "asset-watcher"
    assert one(unit, "Service", "LoadCredential") == "dagster-token:/etc/asset-watcher/token"
    reload = one(unit, "Service", "ExecReload")
    assert "-HUP" in reload and "$MAINPID" in reload
    assert one(unit, "Service", "ExecStart") == f"{INSTALLED_BINARY} run"
    assert one(unit, "Service", "TimeoutStopSec")
    assert one(unit, "Service", "User") == "asset-watcher"
    # Group= would replace the user's supplementary groups (the drop-folder group).
    assert "Group" not in unit["Service"]
    assert "DynamicUser" not in unit["Service"]
    assert one(unit, "Install", "WantedBy") == "multi-user.target"
    assert "asset-watcher-scan.timer" in one(unit, "Unit", "Conflicts").split()


def test_scan_service_and_timer_have_the_required_directives() -> None:
    scan = parse_unit(SCAN_SERVICE)
    assert one(scan, "Service", "Type") == "oneshot"
    assert one(scan, "Service", "ExecStart") == f"{INSTALLED_BINARY} scan"
    assert one(scan, "Service", "StateDirectory") == "asset-watcher"
    assert one(scan, "Service", "ConfigurationDirectory") == "asset-watcher"
    assert one(scan, "Service", "LoadCredential") == "dagster-token:/etc/asset-watcher/token"
    assert one(scan, "Service", "User") == "asset-watcher"
    assert "Install" not in scan, "the scan service is started by its timer only"

    timer = parse_unit(SCAN_TIMER)
    assert one(timer, "Timer", "OnCalendar")
    assert one(timer, "Timer", "Persistent") == "true"
    assert one(timer, "Timer", "RandomizedDelaySec")
    assert one(timer, "Timer", "Unit") == SCAN_SERVICE.name
    assert one(timer, "Install", "WantedBy") == "timers.target"


def test_scan_service_is_sandboxed_like_the_service() -> None:
    """One sandbox for both modes: a change to one unit must be made to the other."""
    run_only = {"Type", "NotifyAccess", "ExecStart", "ExecReload", "WatchdogSec"}
    run_only |= {"TimeoutStartSec", "TimeoutStopSec", "SyslogIdentifier"}
    run_only |= {"Restart", "RestartSec", "RestartPreventExitStatus"}
    service = {k: v for k, v in parse_unit(SERVICE)["Service"].items() if k not in run_only}
    scan = {k: v for k, v in parse_unit(SCAN_SERVICE)["Service"].items() if k not in run_only}
    assert scan == service


# --- systemd-analyze --------------------------------------------------------------


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (package 'systemd'); unit checks skipped")
    return path


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=cwd,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=ANALYZE_TIMEOUT_SECONDS,
        check=False,
    )


@pytest.fixture
def installed_copy(tmp_path: Path) -> Iterator[Path]:
    """The units with ExecStart= pointing at a stand-in executable.

    `verify` insists that ExecStart='s binary exists, and the real one lives in
    /opt/asset-watcher only on an installed host. Everything else is untouched.
    """
    stand_in = tmp_path / "bin" / "asset-watcher"
    stand_in.parent.mkdir()
    stand_in.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    units = tmp_path / "units"
    units.mkdir()
    for unit in UNITS:
        text = unit.read_text(encoding="utf-8")
        assert INSTALLED_BINARY in text or unit.suffix == ".timer"
        (units / unit.name).write_text(text.replace(INSTALLED_BINARY, str(stand_in)))
    yield units


def test_systemd_analyze_verify_is_clean(systemd_analyze: str, installed_copy: Path) -> None:
    result = _run(
        [
            systemd_analyze,
            "verify",
            "--man=no",
            *(f"./{unit.name}" for unit in UNITS),
        ],
        cwd=installed_copy,
    )
    output = result.stdout + result.stderr
    # verify exits 0 even for unknown keys or unparsable values; it only warns.
    # Warnings about other units on this host (pulled in via After=) are not ours.
    ours = [line for line in output.splitlines() if "asset-watcher" in line]
    assert result.returncode == 0, output
    assert ours == [], "\n".join(ours)


_EXPOSURE = re.compile(r"Overall exposure level for (\S+): (\d+(?:\.\d+)?)")


def exposure(systemd_analyze: str, unit: Path) -> tuple[float, str]:
    result = _run(
        [systemd_analyze, "security", "--offline=true", "--no-pager", f"./{unit.name}"],
        cwd=unit.parent,
    )
    output = result.stdout + result.stderr
    if result.returncode != 0 and "offline" in output and "unrecognized" in output:
        pytest.skip("systemd-analyze too old for --offline (needs systemd >= 250)")
    match = _EXPOSURE.search(output)
    assert match, f"no overall exposure in output (rc={result.returncode}):\n{output}"
    assert match.group(1) == unit.name
    return float(match.group(2)), output


@pytest.mark.parametrize("unit", [SERVICE, SCAN_SERVICE], ids=lambda p: p.name)
def test_security_exposure_is_at_most_1_5(systemd_analyze: str, unit: Path) -> None:
    score, output = exposure(systemd_analyze, unit)
    still_scoring = "\n".join(line for line in output.splitlines() if line.startswith("✗"))
    assert score <= MAX_EXPOSURE, f"{unit.name} scores {score}:\n{still_scoring}"
