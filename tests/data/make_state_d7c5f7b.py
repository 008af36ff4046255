"""Write `state_d7c5f7b.sqlite3`: a state database made by the previous release's code.

Run it with the package of commit d7c5f7b on the path, never the current one (see
README.md here). It scans three files with one rule that has a check and a partition
(recording their versions and queueing their reports, nothing delivered), sends one
report nowhere so it carries a retry time in the future and an error, and dead-letters
another one, as that release's Deliverer would on a 422.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from asset_watcher.config import load_config
from asset_watcher.rules import compile_rules
from asset_watcher.scan import scan
from asset_watcher.state import StateStore

# Contents and mtimes the test writes again (a scan compares size and mtime).
FILES = {"orders_a.csv": b"id\n1\n", "orders_b.csv": b"id\n1\n2\n", "orders_c.csv": b"id\n"}
MTIME_NS = 1_700_000_000_000_000_000


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        drop = Path(tmp) / "drop"
        drop.mkdir()
        for name, content in FILES.items():
            (drop / name).write_bytes(content)
            os.utime(drop / name, ns=(MTIME_NS, MTIME_NS))
        config_path = Path(tmp) / "config.toml"
        config_path.write_text(
            f"""
[dagster]
url = "http://127.0.0.1:9"
[state]
directory = "{tmp}/state"
[[watch]]
name = "orders"
path = "{drop}"
regex = 'orders_(?P<p>[a-z])\\.csv$'
asset_key = "fixture/orders"
partition = "{{p}}"
settle_seconds = 0
[[watch.checks]]
type = "row_count"
min_rows = 1
"""
        )
        config = load_config(str(config_path))
        with StateStore(Path(tmp) / "state") as store:
            result = scan(compile_rules(config), store)
            assert result.reported == 3, result
            heads = store.due(now=0, limit=10)
            store.dead_letter(heads[0].id, "HTTP 422: fixture rejection")
            store.retry_later(heads[1].id, 4_000_000_000.0, "cannot reach: fixture outage")
            store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        os.replace(Path(tmp) / "state" / "state.sqlite3", out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
