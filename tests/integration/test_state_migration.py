"""State compatibility (SPEC 12): a database of the previous release is migrated in place,
keeping everything; one from a newer release is refused and left as it is."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

from asset_watcher.model import stat_key
from asset_watcher.schema import SCHEMA_VERSION
from asset_watcher.state import DB_NAME, StateStore
from tests.conftest import CliRun
from tests.support.sink import Sink

DATA = Path(__file__).resolve().parents[1] / "data"
FIXTURE = DATA / "state_d7c5f7b.sqlite3"  # made by d7c5f7b's code: see tests/data/README.md
# What tests/data/make_state_d7c5f7b.py wrote and recorded.
FILES = {"orders_a.csv": b"id\n1\n", "orders_b.csv": b"id\n1\n2\n", "orders_c.csv": b"id\n"}
MTIME_NS = 1_700_000_000_000_000_000


def old_state(tmp_path: Path) -> tuple[Path, Path]:
    """The fixture as the state of a host whose drop holds the files it recorded.

    Its rows name the folder, inodes and ctimes of the machine that made it; they are
    pointed at the same files written here (same content, size and mtime), as if the
    previous release had reported these very files."""
    drop, state = tmp_path / "drop", tmp_path / "state"
    drop.mkdir()
    state.mkdir()
    shutil.copyfile(FIXTURE, state / DB_NAME)
    db = sqlite3.connect(state / DB_NAME)
    for name, content in FILES.items():
        path = drop / name
        path.write_bytes(content)
        os.utime(path, ns=(MTIME_NS, MTIME_NS))
        st = os.stat(path)
        cursor = db.execute(
            "UPDATE files SET dir = ?, inode = ?, ctime_ns = ?, stat_key = ? WHERE name = ?",
            (
                os.fsencode(drop),
                st.st_ino,
                st.st_ctime_ns,
                stat_key(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns),
                name.encode(),
            ),
        )
        assert cursor.rowcount == 1
    db.commit()
    assert db.execute("PRAGMA user_version").fetchone() == (0,)  # the old release's
    db.close()
    return drop, state


def config_for(config_file: Callable[[str], Path], url: str, drop: Path, state: Path) -> Path:
    return config_file(
        f"""
        [dagster]
        url = "{url}"
        [state]
        directory = "{state}"
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


def test_previous_release_state_is_migrated_and_nothing_is_reported_again(
    sink: Sink, cli: CliRun, config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    drop, state = old_state(tmp_path)
    with contextlib.closing(sqlite3.connect(state / DB_NAME)) as db:
        pending_before = db.execute("SELECT id, body FROM outbox ORDER BY id").fetchall()
        dead_before = db.execute("SELECT id, body, error FROM dead").fetchall()
    assert len(pending_before) == 5 and len(dead_before) == 1
    config = config_for(config_file, sink.url, drop, state)

    result = cli("-c", str(config), "scan")

    assert result.returncode == 0, result.stderr
    assert "migrating it to version" in result.stderr
    assert "0 reported, 3 unchanged" in result.stderr  # nothing reported again
    # Every pending report went out (one was backed off until 2096), each partition's
    # in its order.
    sent = [json.dumps(r.json, ensure_ascii=False) for r in sink.requests]
    assert sorted(sent) == sorted(body for _, body in pending_before)
    for partition in "abc":
        of = [b for b in sent if f'"partition": "{partition}"' in b]
        assert of == [b for _, b in pending_before if f'"partition": "{partition}"' in b]
    backup = state / f"{DB_NAME}.v1.bak"
    with contextlib.closing(
        sqlite3.connect(backup)
    ) as copy:  # the copy is the old database, as it was
        assert copy.execute("PRAGMA user_version").fetchone() == (0,)
        assert copy.execute("SELECT id, body FROM outbox ORDER BY id").fetchall() == (
            pending_before
        )
    with StateStore(state, lock=False, read_only=True) as store:
        assert store.schema_version == SCHEMA_VERSION
        counts = store.counts()
        assert (counts.tracked_files, counts.pending, counts.dead) == (3, 0, 1)
        (letter,) = store.dead_letter_items()
        assert (letter.id, letter.body, letter.error) == dead_before[0]

    again = cli("-c", str(config), "scan")
    assert again.returncode == 0, again.stderr
    assert "migrating" not in again.stderr
    assert "0 reported, 3 unchanged" in again.stderr
    assert sink.count == len(pending_before)
    assert sorted(p.name for p in state.glob("*.bak")) == [backup.name]


def test_previous_release_state_is_read_by_status_unmigrated(
    cli: CliRun, config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    drop, state = old_state(tmp_path)
    config = config_for(config_file, "http://127.0.0.1:9", drop, state)
    before = (state / DB_NAME).read_bytes()
    status = cli("-c", str(config), "status", "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert (data["tracked_files"], data["pending"], data["dead"], data["set_aside"]) == (3, 5, 1, 0)
    assert (state / DB_NAME).read_bytes() == before  # a reader migrates nothing
    assert not list(state.glob("*.bak"))


def test_state_of_a_newer_release_is_refused_and_left_unchanged(
    cli: CliRun, config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    drop, state = old_state(tmp_path)
    newer = SCHEMA_VERSION + 7
    with contextlib.closing(sqlite3.connect(state / DB_NAME)) as db:
        db.execute(f"PRAGMA user_version = {newer}")  # checkpointed into the file on close
    path = state / DB_NAME
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    config = config_for(config_file, "http://127.0.0.1:9", drop, state)

    for command in (["scan"], ["status"], ["retry-dead"], ["scan", "--dry-run"]):
        result = cli("-c", str(config), *command)
        assert result.returncode == 2, (command, result.stderr)
        assert f"schema version {newer}" in result.stderr
        assert f"versions up to {SCHEMA_VERSION}" in result.stderr
        assert "Traceback" not in result.stderr
        assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    assert not list(state.glob("*.bak")) and not list(state.glob("*corrupt*"))


def test_a_new_state_directory_starts_at_the_current_version_without_a_copy(
    tmp_path: Path,
) -> None:
    with StateStore(tmp_path / "state") as store:
        assert store.db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert store.counts().set_aside == 0
    with StateStore(tmp_path / "state") as store:  # opened again: nothing to do
        assert store.schema_version == SCHEMA_VERSION
    assert sorted(p.name for p in (tmp_path / "state").iterdir() if "bak" in p.name) == []
