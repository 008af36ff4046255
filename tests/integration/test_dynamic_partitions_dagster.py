"""Dynamic partitions (SPEC 16) against a real dagster-webserver whose code location
declares an asset with a DynamicPartitionsDefinition: a new partition key is added
through GraphQL before the file's materialization, once per key, also under a path
prefix; a GraphQL error answer is a dead letter with its text, and nothing behind it
reaches Dagster as if the key existed.

Requests are counted by a forwarding proxy in front of the webserver (Dagster answers a
repeated add "duplicate" and keeps nothing that would tell two adds from one); what
Dagster holds is read back through the probe and through GraphQL, as the UI reads it.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import CliRun
from tests.integration.conftest import DAGSTER_PATH_PREFIX
from tests.support.counting_proxy import CountingProxy
from tests.support.dagster_server import DagsterServer

DEF = "partner_files"
ASSET = ["dyn", "orders"]
DEFS_SOURCE = textwrap.dedent(
    f"""\
    import dagster as dg

    orders = dg.AssetSpec(
        key={ASSET!r}, partitions_def=dg.DynamicPartitionsDefinition(name={DEF!r})
    )
    defs = dg.Definitions(assets=[orders])
    """
)
PARTITION_KEYS = """
query ($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) { ... on AssetNode { partitionKeys } }
}
"""


@pytest.fixture(scope="module", params=["plain", "prefixed"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DagsterServer]:
    prefix = DAGSTER_PATH_PREFIX if request.param == "prefixed" else ""
    with DagsterServer(
        home=tmp_path_factory.mktemp("dagster-dynamic"), defs_source=DEFS_SOURCE, path_prefix=prefix
    ) as started:
        yield started


@pytest.fixture
def proxy(server: DagsterServer) -> Iterator[CountingProxy]:
    with CountingProxy(server.root_url) as forwarding:
        yield forwarding


def location_of(server: DagsterServer) -> str:
    (location,) = server.code_locations()
    return location.name


def write_config(
    config_file: Callable[[str], Path],
    url: str,
    drop: Path,
    state: Path,
    *,
    location: str,
    partitions_def: str = DEF,
) -> Path:
    return config_file(
        f"""
        [dagster]
        url = "{url}"
        timeout_seconds = 10
        location = "{location}"
        [state]
        directory = "{state}"
        [[watch]]
        name = "orders"
        path = "{drop}"
        regex = '^(?P<key>[^_]+)_.*\\.csv$'
        asset_key = "{"/".join(ASSET)}"
        partition = "{{key}}"
        dynamic_partitions = "{partitions_def}"
        settle_seconds = 0
        """
    )


def listed_keys(server: DagsterServer) -> list[str]:
    """The partition keys the UI lists for the asset."""
    answer = server.graphql(PARTITION_KEYS, {"key": {"path": ASSET}})
    return list(answer["data"]["assetNodeOrError"]["partitionKeys"])


def sent(proxy: CountingProxy) -> list[str]:
    """What the agent sent, in order: `add KEY` for a GraphQL add, else the REST path."""
    out = []
    for path, body in proxy.requests():
        if path.endswith("/graphql"):
            out.append(f"add {body['variables']['partitionKey']}")
        else:
            out.append(path.removeprefix(DAGSTER_PATH_PREFIX))
    return out


def test_a_new_key_is_added_once_before_its_materializations(
    server: DagsterServer,
    proxy: CountingProxy,
    cli: CliRun,
    config_file: Callable[[str], Path],
    drop: Path,
    tmp_path: Path,
    unique_name: str,
) -> None:
    key = unique_name.replace("_", "-")  # the regex ends the key at the first "_"
    config = write_config(
        config_file,
        proxy.url + server.path_prefix,
        drop,
        tmp_path / "state",
        location=location_of(server),
    )
    assert key not in server.dynamic_partitions(DEF)

    (drop / f"{key}_1.csv").write_text("id\n1\n")
    first = cli("-c", str(config), "scan")
    assert first.returncode == 0, first.stderr
    assert sent(proxy) == [f"add {key}", "/report_asset_materialization/"]
    (path, body), _ = proxy.requests()
    assert path == f"{server.path_prefix}/graphql"
    assert body["variables"]["repositorySelector"] == {
        "repositoryName": "__repository__",
        "repositoryLocationName": location_of(server),
    }
    assert key in server.dynamic_partitions(DEF)
    assert key in listed_keys(server)
    (event,) = server.wait_for_materializations(ASSET, partition=key)
    assert event.partition == key

    # A second file of the same key: its materialization, and no second add.
    (drop / f"{key}_2.csv").write_text("id\n2\n")
    second = cli("-c", str(config), "scan")
    assert second.returncode == 0, second.stderr
    assert sent(proxy)[2:] == ["/report_asset_materialization/"]
    server.wait_for_materializations(ASSET, count=2, partition=key)
    assert server.dynamic_partitions(DEF).count(key) == 1


@pytest.mark.parametrize("wrong", ["partitions_def", "location"])
def test_a_graphql_error_is_a_dead_letter_with_its_text_and_holds_the_reports_back(
    server: DagsterServer,
    proxy: CountingProxy,
    cli: CliRun,
    config_file: Callable[[str], Path],
    drop: Path,
    tmp_path: Path,
    unique_name: str,
    wrong: str,
) -> None:
    key = unique_name.replace("_", "-")
    state = tmp_path / "state"
    url = proxy.url + server.path_prefix
    right = location_of(server)
    if wrong == "partitions_def":
        broken = write_config(
            config_file, url, drop, state, location=right, partitions_def="no_such_def"
        )
    else:
        broken = write_config(config_file, url, drop, state, location="no_such_location")
    (drop / f"{key}_1.csv").write_text("id\n1\n")

    result = cli("-c", str(broken), "scan")
    assert result.returncode == 1  # this run dead-lettered reports
    assert sent(proxy) == [f"add {key}"]  # the materialization never went
    status = json.loads(cli("-c", str(broken), "status", "--json").stdout)
    assert (status["pending"], status["dead"]) == (0, 2)
    add, materialization = status["dead_letters"]
    assert add["event"] == "partition"
    assert "UnauthorizedError" in add["error"]
    assert "does not contain a dynamic partitions definition" in add["error"]
    assert materialization["event"] == "materialization"
    assert materialization["error"].startswith("not sent: the dynamic partition add of dyn/orders")
    assert server.materializations(ASSET, partition=key) == []
    assert key not in server.dynamic_partitions(DEF)

    if wrong == "partitions_def":
        return  # the stored add names its definition: fixing the rule helps new files only
    # Fixed, retry-dead sends the same add (with the location now configured) first.
    fixed = write_config(config_file, url, drop, state, location=right)
    assert cli("-c", str(fixed), "retry-dead").returncode == 0
    again = cli("-c", str(fixed), "scan")
    assert again.returncode == 0, again.stderr
    assert sent(proxy)[1:] == [f"add {key}", "/report_asset_materialization/"]
    assert key in server.dynamic_partitions(DEF)
    server.wait_for_materializations(ASSET, partition=key)
