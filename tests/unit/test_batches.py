"""Batches (SPEC 13): configuration, manifests, the batch decision in `scan` and in the
pipeline (a fake monotonic clock; file ages set with utime), on real files and state."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from asset_watcher.batch_versions import BatchReady, BatchWaits, decide_batches
from asset_watcher.batches import BatchFolders, parse_manifest
from asset_watcher.config import Config, load_config
from asset_watcher.errors import ConfigError
from asset_watcher.model import Change, ChangeKind, EventKind
from asset_watcher.pipeline import Pipeline
from asset_watcher.rules import Rule, compile_rules, owner
from asset_watcher.scan import scan
from asset_watcher.state import StateStore
from asset_watcher.versions import Versions


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    with StateStore(tmp_path / "state") as opened:
        yield opened  # type: ignore[misc]


def rules_for(drop: Path, batch: dict[str, Any], **rule: Any) -> list[Rule]:
    config = Config(
        defaults={"settle_seconds": 1.0},
        watch=[{"path": str(drop), "asset_key": "acme/{parent}", "batch": batch, **rule}],
    )
    return compile_rules(config, host="h")


def aged(path: Path, data: bytes = b"x", seconds: float = 60.0) -> Path:
    """A file written `seconds` ago (its mtime; ctime cannot be set back, so the batch
    decision's "quiet since" is ctime: tests pass a wall clock ahead instead)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def later(seconds: float = 60.0) -> float:
    return time.time() + seconds


def queued(store: StateStore) -> list[dict[str, Any]]:
    rows = store.db.execute("SELECT kind, body FROM outbox ORDER BY id").fetchall()
    return [{"kind": kind, **json.loads(body)} for kind, body in rows]


def events(store: StateStore) -> list[dict[str, Any]]:
    return [r for r in queued(store) if r["kind"] != EventKind.CHECK.value]


def checks(store: StateStore) -> dict[str, dict[str, Any]]:
    return {r["check_name"]: r for r in queued(store) if r["kind"] == EventKind.CHECK.value}


def expected_version(members: dict[str, bytes]) -> str:
    lines = sorted(
        f"{name}\t{hashlib.sha256(data).hexdigest()}\n" for name, data in members.items()
    )
    return hashlib.sha256("".join(lines).encode()).hexdigest()


# -- configuration ------------------------------------------------------------------------


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("rule", "batch", "problem"),
    [
        (
            'asset_key = "a/{name}"',
            'complete_when = "marker"\nmarker = "_SUCCESS"',
            "watch[1].asset_key: needs the per-file field(s) name",
        ),
        (
            'asset_key = "a"\npartition = "{stem}"',
            'complete_when = "marker"\nmarker = "_SUCCESS"',
            "watch[1].partition: needs the per-file field(s) stem",
        ),
        (
            'asset_key = "a"\nregex = \'(?P<day>\\d+)/part-(?P<n>\\d+)\'\ndescription = "{n}"',
            'complete_when = "marker"\nmarker = "_SUCCESS"',
            "watch[1].description: needs the per-file field(s) n",
        ),
        (
            'asset_key = "a"',
            'complete_when = "marker"',
            "watch[1].batch: marker is required when complete_when = 'marker'",
        ),
        ('asset_key = "a"', 'complete_when = "manifest"', "watch[1].batch: manifest is required"),
        ('asset_key = "a"', 'complete_when = "quiet"', "watch[1].batch: quiet_seconds is required"),
        (
            'asset_key = "a"',
            'complete_when = "quiet"\nquiet_seconds = 0',
            "watch[1].batch.quiet_seconds:",
        ),
        (
            'asset_key = "a"',
            'complete_when = "quiet"\nquiet_seconds = 5\ngroup = "{relpath}"',
            "watch[1].batch.group: uses the per-file field(s) relpath",
        ),
        (
            'asset_key = "a"',
            'complete_when = "marker"\nmarker = "done/_SUCCESS"',
            "watch[1].batch.marker: must be a file name",
        ),
        (
            'asset_key = "a"',
            'complete_when = "marker"\nmarker = "{nope}.done"',
            "watch[1].batch.marker: unknown template field(s) nope",
        ),
        ('asset_key = "a"', 'complete_when = "sometime"', "watch[1].batch.complete_when:"),
    ],
)
def test_batch_configuration_errors_name_the_key(
    tmp_path: Path, drop: Path, rule: str, batch: str, problem: str
) -> None:
    path = write_config(tmp_path, f'[[watch]]\npath = "{drop}"\n{rule}\n[watch.batch]\n{batch}\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    lines = str(caught.value).splitlines()
    assert any(line.startswith(problem) for line in lines), lines


def test_regex_groups_of_the_folder_part_may_name_the_batch(tmp_path: Path, drop: Path) -> None:
    path = write_config(
        tmp_path,
        f"[[watch]]\npath = \"{drop}\"\nregex = '(?P<day>\\d{{8}})/part-\\d+'\n"
        'asset_key = "a"\npartition = "{day}"\n'
        '[watch.batch]\ncomplete_when = "marker"\nmarker = "_SUCCESS"\n',
    )
    assert load_config(path).watch[0].batch is not None


# -- manifests ----------------------------------------------------------------------------


def test_manifest_formats() -> None:
    digest = "AB" * 32
    as_json = parse_manifest(
        json.dumps({"files": [{"name": "a.csv", "size": 3, "sha256": digest}, "b.csv"]}).encode(),
        "sha256",
    )
    assert [(e.name, e.size, e.digest) for e in as_json.entries] == [
        ("a.csv", 3, digest.lower()),
        ("b.csv", None, None),
    ]
    assert parse_manifest(b'["x", "./y"]', "sha256").names == {"x", "y"}
    text = parse_manifest(
        f"{digest}  a.csv\n{'0' * 32} *b.csv\n# note\n\nc.csv\n".encode(), "sha256"
    )
    assert [(e.name, e.algorithm) for e in text.entries] == [
        ("a.csv", "sha256"),
        ("b.csv", "md5"),
        ("c.csv", None),
    ]
    assert parse_manifest(b"{broken", "sha256").error is not None
    assert parse_manifest(b'{"files": [{"size": 1}]}', "sha256").error is not None


# -- the decision, through scan --------------------------------------------------------------


def test_marker_batch_is_one_report_with_its_members(drop: Path, store: StateStore) -> None:
    folder = drop / "2026-11-26"
    members = {"part-0001.csv": b"a,b\n1,2\n", "part-0000.csv": b"a,b\n"}
    for name, data in members.items():
        aged(folder / name, data)
    rules = rules_for(
        drop, {"complete_when": "marker", "marker": "_SUCCESS"}, metadata={"v": "acme"}
    )
    assert scan(rules, store, clock=later).reported == 0  # no marker yet
    assert [p.waiting_for for p in store.pending_batches()] == ["its marker _SUCCESS"]
    aged(folder / "_SUCCESS", b"")
    assert scan(rules, store, clock=later).reported == 1
    (event,) = events(store)
    meta = event["metadata"]
    assert event["asset_key"] == ["acme", "2026-11-26"]
    assert meta["file_count"] == 2 and meta["size_bytes"] == 12
    assert [f["name"] for f in meta["files"]] == ["part-0000.csv", "part-0001.csv"]
    assert meta["files"][0]["sha256"] == hashlib.sha256(b"a,b\n").hexdigest()
    assert meta["files_truncated"] is False
    assert meta["path"] == str(folder) and meta["dagster/uri"] == f"file://h{folder}"
    assert meta["rule"] == "acme/{parent}" and meta["host"] == "h" and meta["v"] == "acme"
    assert event["data_version"] == expected_version(members)
    assert store.pending_batches() == []
    # Reported once: scans again see the same completion.
    assert scan(rules, store, clock=later).reported == 0
    assert len(events(store)) == 1
    # A member changed after the report waits for the next marker.
    aged(folder / "part-0001.csv", b"changed")
    assert scan(rules, store, clock=later).reported == 0
    (pending,) = store.pending_batches()
    assert "1 member(s) changed" in pending.waiting_for
    # A re-created marker is a new version.
    (folder / "_SUCCESS").unlink()
    aged(folder / "_SUCCESS", b"", seconds=30)
    assert scan(rules, store, clock=later).reported == 1
    assert len(events(store)) == 2
    assert events(store)[1]["data_version"] == expected_version(
        {**members, "part-0001.csv": b"changed"}
    )


def test_the_marker_is_no_file_of_another_rule(drop: Path) -> None:
    config = Config(
        watch=[
            {
                "path": str(drop),
                "asset_key": "a",
                "batch": {"complete_when": "marker", "marker": "_SUCCESS"},
                "glob": "**/*.csv",
            },
            {"path": str(drop), "asset_key": "b/{name}"},
        ]
    )
    rules = compile_rules(config, host="h")
    assert owner(rules, str(drop / "x" / "_SUCCESS")) is None
    assert owner(rules, str(drop / "x" / "y.txt")) is not None


def test_manifest_batch_waits_for_listed_members_then_checks_them(
    drop: Path, store: StateStore
) -> None:
    folder = drop / "delivery"
    good = b"id\n1\n"
    aged(folder / "a.csv", good)
    manifest = {"files": [
        {"name": "a.csv", "size": len(good), "sha256": hashlib.sha256(good).hexdigest()},
        {"name": "b.csv", "size": 2, "sha256": "0" * 64},
    ]}  # fmt: skip
    aged(folder / "manifest.json", json.dumps(manifest).encode())
    rules = rules_for(drop, {"complete_when": "manifest", "manifest": "manifest.json"})
    assert scan(rules, store, clock=later).reported == 0
    (pending,) = store.pending_batches()
    assert pending.waiting_for == "1 of the 2 members its manifest lists: b.csv"
    aged(folder / "b.csv", b"wrong!")  # wrong size and digest
    aged(folder / "c.csv", b"extra")
    assert scan(rules, store, clock=later).reported == 1
    (event,) = events(store)
    assert event["metadata"]["file_count"] == 3  # the manifest is no member
    check = checks(store)["manifest"]
    assert check["passed"] is False
    assert check["metadata"]["extra"] == ["c.csv"]
    assert [w["name"] for w in check["metadata"]["wrong_size"]] == ["b.csv"]
    assert [w["name"] for w in check["metadata"]["wrong_digest"]] == ["b.csv"]


def test_manifest_gives_up_after_quiet_seconds_naming_the_missing(
    drop: Path, store: StateStore
) -> None:
    folder = drop / "d"
    aged(folder / "a.csv")
    aged(folder / "SHA256SUMS", f"{'0' * 64}  a.csv\n{'1' * 64}  gone.csv\n".encode(), seconds=600)
    rules = rules_for(
        drop, {"complete_when": "manifest", "manifest": "SHA256SUMS", "quiet_seconds": 300}
    )
    assert scan(rules, store, clock=later).reported == 1
    check = checks(store)["manifest"]
    assert check["passed"] is False and check["metadata"]["missing"] == ["gone.csv"]
    assert check["metadata"]["wrong_digest"][0]["name"] == "a.csv"


def test_quiet_batch_and_a_new_member_after_its_report(drop: Path, store: StateStore) -> None:
    folder = drop / "q"
    aged(folder / "a.csv")
    rules = rules_for(drop, {"complete_when": "quiet", "quiet_seconds": 120})
    now = time.time()
    assert scan(rules, store, clock=lambda: now + 30).reported == 0  # quiet for ~30 s only
    (pending,) = store.pending_batches()
    assert "without a new or changed member" in pending.waiting_for
    assert scan(rules, store, clock=lambda: now + 200).reported == 1
    assert scan(rules, store, clock=lambda: now + 300).reported == 0
    aged(folder / "b.csv")  # its ctime is now: quiet counts from it
    now = time.time()
    assert scan(rules, store, clock=lambda: now + 30).reported == 0  # not quiet yet
    assert scan(rules, store, clock=lambda: now + 200).reported == 1
    assert [e["metadata"]["file_count"] for e in events(store)] == [1, 2]


def test_checks_run_per_member_and_fold_into_one_evaluation(drop: Path, store: StateStore) -> None:
    folder = drop / "c"
    aged(folder / "ok.csv", b"12345")
    aged(folder / "tiny.csv", b"1")
    aged(folder / "_SUCCESS", b"")
    rules = rules_for(
        drop,
        {"complete_when": "marker", "marker": "_SUCCESS"},
        checks=[{"type": "size", "min_bytes": 2, "severity": "WARN"}],
    )
    assert scan(rules, store, clock=later).reported == 1
    check = checks(store)["size"]
    assert check["passed"] is False and check["severity"] == "WARN"
    assert check["metadata"]["failed_members"] == ["tiny.csv"]
    assert check["metadata"]["members_checked"] == 2


def test_a_member_still_settling_holds_the_batch(drop: Path, store: StateStore) -> None:
    folder = drop / "s"
    aged(folder / "a.csv")
    aged(folder / "_SUCCESS", b"")
    (folder / "b.csv").write_bytes(b"fresh")
    rules = rules_for(drop, {"complete_when": "marker", "marker": "_SUCCESS"})
    (decision,) = decide_batches(Versions(store, rules), rules[0], str(folder), read=False)
    assert isinstance(decision, BatchWaits) and "b.csv" in decision.waiting_for
    assert decision.again_in_seconds == 1.0


def test_files_list_is_capped(drop: Path, store: StateStore) -> None:
    folder = drop / "big"
    folder.mkdir()
    for n in range(1003):
        aged(folder / f"p{n:05}")
    aged(folder / "_SUCCESS", b"")
    rules = rules_for(drop, {"complete_when": "marker", "marker": "_SUCCESS"})
    assert scan(rules, store, clock=later).reported == 1
    meta = events(store)[0]["metadata"]
    assert meta["file_count"] == 1003 and len(meta["files"]) == 1000
    assert meta["files_truncated"] is True


# -- the pipeline, with a fake clock ---------------------------------------------------------


def test_pipeline_reports_a_batch_once_its_marker_settled(drop: Path, store: StateStore) -> None:
    clock = Clock()
    rules = rules_for(drop, {"complete_when": "marker", "marker": "_SUCCESS"})
    pipeline = Pipeline(rules, store, clock=clock, wall_clock=later)
    folder = drop / "run"
    for name in ("a", "b", "c"):
        path = aged(folder / name)
        pipeline.handle(Change(ChangeKind.WRITTEN, str(path), root=str(drop), at=clock.now))
    clock.now += 5
    pipeline.settle_due()
    pipeline.settle_batches()
    assert pipeline.counts.reported == 0 and store.counts().pending == 0
    assert [p.waiting_for for p in store.pending_batches()] == ["its marker _SUCCESS"]
    marker = aged(folder / "_SUCCESS", b"")
    pipeline.handle(Change(ChangeKind.WRITTEN, str(marker), root=str(drop), at=clock.now))
    clock.now += 0.5
    pipeline.settle_batches()
    assert pipeline.counts.reported == 0  # the folder has not settled yet
    clock.now += 0.6
    pipeline.settle_batches()
    assert pipeline.counts.reported == 1
    assert events(store)[0]["metadata"]["file_count"] == 3
    # A rescan's Found items for the members (never tracked as files) report nothing more.
    from asset_watcher.fingerprint import file_stat
    from asset_watcher.model import Found

    for name in ("a", "b", "c"):
        stat = file_stat(str(folder / name), False)
        assert stat is not None
        pipeline.handle(Found(str(folder / name), stat))
    clock.now += 2
    pipeline.settle_batches()
    assert pipeline.counts.reported == 1 and len(events(store)) == 1


def test_pipeline_looks_again_when_a_quiet_batch_is_due(drop: Path, store: StateStore) -> None:
    clock = Clock()
    wall = [time.time()]
    rules = rules_for(drop, {"complete_when": "quiet", "quiet_seconds": 30})
    pipeline = Pipeline(rules, store, clock=clock, wall_clock=lambda: wall[0])
    path = drop / "q" / "a"
    path.parent.mkdir()
    path.write_bytes(b"x")
    pipeline.handle(Change(ChangeKind.WRITTEN, str(path), root=str(drop), at=clock.now))
    clock.now += 1.0
    wall[0] += 1.0
    pipeline.settle_batches()
    assert pipeline.counts.reported == 0
    deadline = pipeline._batch_folders.next_deadline()
    assert deadline is not None and 28 < deadline - clock.now <= 30
    clock.now, wall[0] = clock.now + 30, wall[0] + 30
    pipeline.settle_batches()
    assert pipeline.counts.reported == 1


def test_batch_folders_push_back_on_change_and_pull_in_for_time() -> None:
    clock = Clock()
    folders = BatchFolders(clock)
    folders.touched("r", "/d", 2.0)
    clock.now += 1.5
    folders.touched("r", "/d", 2.0)  # pushed back
    clock.now += 1.0
    assert folders.due() == []
    clock.now += 1.0
    assert folders.due() == [("r", "/d")] and folders.due() == []
    folders.later("r", "/d", 10.0)
    folders.later("r", "/d", 3.0)  # the earlier one wins
    assert folders.next_deadline() == clock.now + 3.0
    folders.discard_under("/")
    assert len(folders) == 0 and folders.next_deadline() is None


def test_explain_view_does_not_read(drop: Path, store: StateStore) -> None:
    folder = drop / "e"
    aged(folder / "a")
    aged(folder / "_SUCCESS", b"")
    rules = rules_for(drop, {"complete_when": "marker", "marker": "_SUCCESS"})
    (decision,) = decide_batches(
        Versions(store, rules, clock=later), rules[0], str(folder), read=False
    )
    assert isinstance(decision, BatchReady) and decision.file_count == 1
