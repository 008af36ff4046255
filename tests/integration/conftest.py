"""Fixtures for integration tests: real Dagster webservers and a fault-injecting sink.

``dagster`` and ``dagster_prefixed`` are session-scoped (a webserver takes seconds to
start) and start only when a test asks for them. They are shared: give each test its own
asset keys (e.g. with ``unique_name``) instead of expecting an empty event log.
"""

from __future__ import annotations

import re
import textwrap
import uuid
from collections.abc import Iterator

import pytest

from tests.support.dagster_server import DagsterServer
from tests.support.sink import Sink

DAGSTER_PATH_PREFIX = "/dagster"

#: Definitions loaded by the session webservers: nearly empty, with just enough to tell
#: defined from undefined assets and checks. Every other key is unknown to Dagster.
SESSION_DEFS_SOURCE = textwrap.dedent(
    """\
    import dagster as dg

    defined = dg.AssetSpec(key=["smoke", "defined"])  # not partitioned
    daily = dg.AssetSpec(
        key=["smoke", "static"],
        partitions_def=dg.StaticPartitionsDefinition(["a", "b"]),
    )


    @dg.asset_check(asset=dg.AssetKey(["smoke", "defined"]), name="defined_check")
    def defined_check() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=True)


    defs = dg.Definitions(assets=[defined, daily], asset_checks=[defined_check])
    """
)


@pytest.fixture(scope="session")
def dagster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterServer]:
    """A real dagster-webserver (no path prefix), started on first use, shared by the session."""
    with DagsterServer(
        home=tmp_path_factory.mktemp("dagster-home"), defs_source=SESSION_DEFS_SOURCE
    ) as server:
        yield server


@pytest.fixture(scope="session")
def dagster_prefixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterServer]:
    """A real dagster-webserver started with ``--path-prefix /dagster``; ``.url`` ends in it."""
    with DagsterServer(
        home=tmp_path_factory.mktemp("dagster-prefixed-home"),
        defs_source=SESSION_DEFS_SOURCE,
        path_prefix=DAGSTER_PATH_PREFIX,
    ) as server:
        yield server


@pytest.fixture
def sink() -> Iterator[Sink]:
    """A fresh recording HTTP server on 127.0.0.1 answering ``200 {}`` by default."""
    with Sink() as server:
        yield server


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A short name unique to this test run, for asset keys on the shared webservers."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", request.node.name)[:40]
    return f"{base}-{uuid.uuid4().hex[:8]}"
