"""End to end: a file dropped into a watched folder becomes a materialization in a real
dagster-webserver, with its key parts, partition, size and hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

from asset_watcher.config import Config
from tests.support.agent_run import InProcessAgent, write
from tests.support.dagster_server import DagsterServer


def test_dropped_file_is_materialized_in_dagster(
    tmp_path: Path, dagster: DagsterServer, unique_name: str
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    config = Config(
        dagster={"url": dagster.url},
        state={"directory": str(tmp_path / "state")},
        defaults={"settle_seconds": 0.2},
        watch=[
            {
                "path": str(drop),
                "asset_key": f"{unique_name}/orders é",
                "regex": r"orders_(?P<date>\d{4}-\d{2}-\d{2})\.csv$",
                "partition": "{date}",
            }
        ],
    )
    agent = InProcessAgent(config).start()
    try:
        content = b"id,amount\n1,2\n"
        write(drop / "orders_2026-11-26.csv.filepart", content).rename(
            drop / "orders_2026-11-26.csv"
        )
        (record,) = dagster.wait_for_materializations(
            [unique_name, "orders é"], partition="2026-11-26", timeout=30
        )
    finally:
        assert agent.finish() == 0
    assert record.metadata["size_bytes"] == len(content)
    assert record.data_version == hashlib.sha256(content).hexdigest()
    assert record.metadata["path"] == str(drop / "orders_2026-11-26.csv")
