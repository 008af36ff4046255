"""The dagster extra's tests (`build_definitions`, `demo`): they import dagster, so they run
in the Dagster environment (`nox -s extra`), never in the agent's own, which is built from
the service lock and has no dagster in it."""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("dagster") is None:
    pytest.exit(
        "tests/dagster_extra needs the Dagster environment: run `nox -s extra`", returncode=4
    )
