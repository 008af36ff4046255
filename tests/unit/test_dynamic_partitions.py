"""Dynamic partitions (SPEC 16): the configuration, the add queued ahead of a version's
reports, the state's memory of added keys, and what the Deliverer does with each answer
to an add (over the fake transport of test_delivery.py, on a fake clock).

What Reporter makes of Dagster's GraphQL answers is tested against a real local HTTP
server in tests/integration/test_dynamic_partitions_sink.py, and the whole way against
a real dagster-webserver in tests/integration/test_dynamic_partitions_dagster.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from asset_watcher.config import load_config
from asset_watcher.delivery import Deliverer, added_partition
from asset_watcher.errors import ConfigError
from asset_watcher.model import EventKind, FileStat, Fingerprint, Report
from asset_watcher.reporter import Answer
from asset_watcher.reports import event_report, partition_add_report, reports_for_version
from asset_watcher.retry import Verdict, classify_partition_add
from asset_watcher.rules import compile_rules, owner
from asset_watcher.state import StateStore
from tests.conftest import CliRun
from tests.support.queueing import queue_reports
from tests.unit.test_delivery import (
    OK,
    TIMED_OUT,
    FakeClock,
    FakeTransport,
    http,
    pending,
    settings,
)

DEF = "partner_files"
DAY = "2026-11-26"


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


# -- configuration ------------------------------------------------------------------------


def test_dynamic_partitions_need_a_partition_template_and_a_location(
    config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    path = config_file(
        f"""
        [[watch]]
        path = "{tmp_path}"
        asset_key = "a"
        partition = "{{stem}}"
        dynamic_partitions = "{DEF}"
        [[watch]]
        path = "{tmp_path}"
        asset_key = "b"
        dynamic_partitions = "{DEF}"
        """
    )
    problems = problems_of(path)
    assert "watch[2].dynamic_partitions: needs a `partition` template on the rule: " \
        "the key it adds" in problems  # fmt: skip
    # Reported with the other problem, in the same pass, naming the rules that need it.
    (location,) = [p for p in problems if p.startswith("dagster.location:")]
    assert "watch[1], watch[2]" in location


def test_a_missing_location_alone_is_reported_naming_the_key(
    config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    path = config_file(
        f"""
        [[watch]]
        path = "{tmp_path}"
        asset_key = "a"
        partition = "{{stem}}"
        dynamic_partitions = "{DEF}"
        """
    )
    (problem,) = problems_of(path)
    assert problem.startswith("dagster.location: required by dynamic_partitions (watch[1])")


def test_location_and_repository_are_read_and_repository_has_a_default(
    config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    path = config_file(
        f"""
        [dagster]
        location = "data_host"
        [[watch]]
        path = "{tmp_path}"
        asset_key = "a"
        partition = "{{stem}}"
        dynamic_partitions = "{DEF}"
        """
    )
    config = load_config(path)
    assert (config.dagster.location, config.dagster.repository) == ("data_host", "__repository__")
    assert config.watch[0].dynamic_partitions == DEF
    # Without dynamic partitions nothing asks for a location.
    assert load_config(config_file(f'[[watch]]\npath = "{tmp_path}"\nasset_key = "a"\n'))


# -- the add, queued ahead of the version's reports ------------------------------------------


def test_a_version_of_a_dynamic_rule_starts_with_the_add_of_its_key(
    config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    config = load_config(
        config_file(
            f"""
            [dagster]
            location = "data_host"
            [[watch]]
            path = "{tmp_path}"
            regex = 'orders_(?P<day>[0-9-]+)\\.csv$'
            asset_key = "acme/orders"
            partition = "{{day}}"
            dynamic_partitions = "{DEF}"
            [[watch.checks]]
            type = "size"
            min_bytes = 1
            """
        )
    )
    (rule,) = compile_rules(config, host="data01")
    match = owner([rule], str(tmp_path / f"orders_{DAY}.csv"))
    assert match is not None
    print_ = Fingerprint(FileStat(3, 1, 1, 1), "sha256", "ab" * 32)
    add, materialization, size = reports_for_version(rule, match, print_)
    assert add.kind is EventKind.PARTITION
    assert add.body == {"partitionsDefName": DEF, "partitionKey": DAY}
    assert add.dynamic_partition == (DEF, DAY)
    assert (materialization.kind, size.kind) == (EventKind.MATERIALIZATION, EventKind.CHECK)
    # One order key: the outbox delivers the add before the reports of its key.
    assert add.order_key == materialization.order_key == size.order_key


# -- the state's memory --------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    with StateStore(tmp_path / "state") as opened:
        yield opened


def mat(key: str = "orders", seq: int = 0, partition: str = DAY) -> Report:
    return event_report(
        EventKind.MATERIALIZATION, ("t", key), metadata={"seq": seq}, partition=partition
    )


def add(key: str = "orders", partition: str = DAY, name: str = DEF) -> Report:
    return partition_add_report(("t", key), name, partition)


def version(key: str = "orders", seq: int = 0, partition: str = DAY) -> list[Report]:
    """What reports_for_version gives a dynamic rule: the add, then the materialization."""
    return [add(key, partition), mat(key, seq, partition)]


def queued(store: StateStore) -> list[tuple[str, str]]:
    """(kind, label) of everything in the outbox, in id order."""
    rows = store.db.execute("SELECT kind, body FROM outbox ORDER BY id").fetchall()
    return [(kind, _label(json.loads(body))) for kind, body in rows]


def _label(body: Mapping[str, Any]) -> str:
    if "partitionKey" in body:
        return f"add {body['partitionsDefName']}:{body['partitionKey']}"
    return f"{body['asset_key'][1]}/{body['metadata']['seq']}"


def test_an_add_is_queued_once_while_it_waits_and_never_once_acknowledged(
    store: StateStore,
) -> None:
    queue_reports(store, version(seq=0))
    queue_reports(store, version(seq=1))  # the add queued for the first goes ahead of both
    assert queued(store) == [
        ("partition", f"add {DEF}:{DAY}"),
        ("materialization", "orders/0"),
        ("materialization", "orders/1"),
    ]
    assert not store.has_dynamic_partition(DEF, DAY)

    (head,) = pending(store)
    assert added_partition(head) == (DEF, DAY)
    store.ack_many([head.id], partitions=[(DEF, DAY)])
    assert store.has_dynamic_partition(DEF, DAY)
    assert not store.has_dynamic_partition(DEF, "2026-11-27")
    assert not store.has_dynamic_partition("other_def", DAY)

    queue_reports(store, version(seq=2))
    assert [label for _, label in queued(store)] == ["orders/0", "orders/1", "orders/2"]


def test_another_asset_or_key_queues_its_own_add(store: StateStore) -> None:
    queue_reports(store, version("orders"))
    # Same key, another asset: an add queued under another order key is not ordered
    # before this asset's reports, so it gets its own (Dagster answers the second one
    # "duplicate", which counts as added).
    queue_reports(store, version("returns"))
    queue_reports(store, version("orders", seq=1, partition="2026-11-27"))
    assert [label for kind, label in queued(store) if kind == "partition"] == [
        f"add {DEF}:{DAY}",
        f"add {DEF}:{DAY}",
        f"add {DEF}:2026-11-27",
    ]


def test_a_failed_add_takes_the_reports_behind_it_and_a_later_version_adds_again(
    store: StateStore,
) -> None:
    queue_reports(store, version(seq=0))
    queue_reports(store, [mat("other", 0)])
    queue_reports(store, version(seq=1))
    head = next(item for item in pending(store) if item.kind is EventKind.PARTITION)
    followers = store.dead_letter_with_followers(head.id, "HTTP 200: nope", "not sent: nope")
    assert followers == 2
    letters = store.dead_letter_items()
    assert [(letter.kind.value, letter.error) for letter in letters] == [
        ("partition", "HTTP 200: nope"),
        ("materialization", "not sent: nope"),
        ("materialization", "not sent: nope"),
    ]
    assert [label for _, label in queued(store)] == ["other/0"]  # another key goes on

    # The add is not queued any more: the next version of the key queues one again.
    queue_reports(store, version(seq=2))
    assert [label for _, label in queued(store)] == ["other/0", f"add {DEF}:{DAY}", "orders/2"]
    # retry-dead brings the failed add back ahead of its reports, in their first order.
    assert store.retry_dead() == 3
    assert [label for _, label in queued(store)] == [
        f"add {DEF}:{DAY}", "orders/0", "other/0", "orders/1", f"add {DEF}:{DAY}", "orders/2",
    ]  # fmt: skip


# -- what the Deliverer does with each answer to an add --------------------------------------


class AddTransport(FakeTransport):
    """FakeTransport that also takes adds, labelled `add KEY` in `sent` and the script."""

    def post(self, kind: EventKind, body: str) -> Answer:
        if kind is not EventKind.PARTITION:
            return super().post(kind, body)
        name = f"add {json.loads(body)['partitionKey']}"
        with self._lock:
            self.sent.append(name)
        return self._answer(name)


def deliverer(store: StateStore, transport: FakeTransport, clock: FakeClock) -> Deliverer:
    delivering = Deliverer(store, transport, clock=clock)
    delivering.gate.rand = lambda: 1.0
    return delivering


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_an_added_key_is_remembered_and_its_reports_follow(
    store: StateStore, clock: FakeClock
) -> None:
    transport = AddTransport(settings())
    queue_reports(store, version(seq=0))
    queue_reports(store, version(seq=1))
    summary = deliverer(store, transport, clock).drain(patience_seconds=0)
    assert transport.sent == [f"add {DAY}", "orders/0", "orders/1"]
    assert (summary.delivered, summary.dead) == (3, 0)
    assert store.has_dynamic_partition(DEF, DAY)

    queue_reports(store, version(seq=2))
    deliverer(store, transport, clock).drain(patience_seconds=0)
    assert transport.sent[3:] == ["orders/2"]  # no second add


def test_a_dead_lettered_add_dead_letters_the_reports_behind_it_and_nothing_is_sent(
    store: StateStore, clock: FakeClock
) -> None:
    refused = Answer(Verdict.DEAD, 200, "HTTP 200: addDynamicPartition answered UnauthorizedError")
    transport = AddTransport(settings(), {f"add {DAY}": [refused]})
    queue_reports(store, version(seq=0))
    queue_reports(store, [mat("other", 0)])
    summary = deliverer(store, transport, clock).drain(patience_seconds=0)
    assert sorted(transport.sent) == [f"add {DAY}", "other/0"]  # orders/0 never went
    assert (summary.delivered, summary.dead) == (1, 2)
    assert summary.last_error == refused.detail
    first, second = store.dead_letter_items()
    assert (first.kind, first.error) == (EventKind.PARTITION, refused.detail)
    assert second.kind is EventKind.MATERIALIZATION
    assert second.error == (
        f"not sent: the dynamic partition add of t/orders [{DAY}] before it failed: "
        + refused.detail
    )
    assert not store.has_dynamic_partition(DEF, DAY)
    assert store.counts().pending == 0


@pytest.mark.parametrize(
    ("failure", "paused"), [(TIMED_OUT, False), (http(503, "busy"), False), (http(401), True)]
)
def test_an_add_that_fails_for_now_holds_its_reports_back_until_it_goes_through(
    store: StateStore, clock: FakeClock, failure: Answer, paused: bool
) -> None:
    transport = AddTransport(settings(), {f"add {DAY}": [failure, OK]})
    queue_reports(store, version(seq=0))
    delivering = deliverer(store, transport, clock)
    summary = delivering.drain(patience_seconds=0)
    assert transport.sent == [f"add {DAY}"]
    assert summary.paused is paused
    assert (summary.delivered, summary.dead, store.counts().pending) == (0, 0, 2)
    (head,) = pending(store)  # the add, still ahead of its report
    assert head.kind is EventKind.PARTITION

    clock.advance(60)
    summary = delivering.drain(patience_seconds=0)
    assert transport.sent == [f"add {DAY}", f"add {DAY}", "orders/0"]
    assert (summary.delivered, store.counts().pending) == (2, 0)
    assert store.has_dynamic_partition(DEF, DAY)


@pytest.mark.parametrize(
    ("status", "result_type", "verdict"),
    [
        (200, "AddDynamicPartitionSuccess", Verdict.DELIVERED),
        (200, "DuplicateDynamicPartitionError", Verdict.DELIVERED),  # added before: fine
        (200, "UnauthorizedError", Verdict.DEAD),  # also: no such definition or location
        (200, "PythonError", Verdict.DEAD),
        (200, None, Verdict.DEAD),  # a GraphQL `errors` list, or not GraphQL at all
        (400, None, Verdict.DEAD),  # a query Dagster cannot validate
        (401, None, Verdict.PAUSE),
        (403, None, Verdict.PAUSE),
        (500, None, Verdict.RETRY),
        (503, None, Verdict.RETRY),
        (None, None, Verdict.RETRY),  # no answer
        (302, None, Verdict.RETRY),  # a wrong dagster.url, as for the REST reports
    ],
)
def test_classify_partition_add(
    status: int | None, result_type: str | None, verdict: Verdict
) -> None:
    assert classify_partition_add(status, result_type) is verdict


def test_explain_names_the_dynamic_partitions_definition(
    cli: CliRun, config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    config = config_file(
        f"""
        [dagster]
        location = "data_host"
        [[watch]]
        path = "{tmp_path}"
        asset_key = "acme/orders"
        partition = "{{stem}}"
        dynamic_partitions = "{DEF}"
        """
    )
    result = cli("-c", str(config), "explain", str(tmp_path / f"{DAY}.csv"))
    assert result.returncode == 0, result.stderr
    assert f"partition: {DAY}" in result.stdout
    assert f"dynamic partitions: {DEF} (the key is added before its first report)" in result.stdout


def test_the_location_may_come_from_the_environment(
    config_file: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASSET_WATCHER_DAGSTER__LOCATION", "from_env")
    path = config_file(
        f"""
        [[watch]]
        path = "{tmp_path}"
        asset_key = "a"
        partition = "{{stem}}"
        dynamic_partitions = "{DEF}"
        """
    )
    assert load_config(path).dagster.location == "from_env"
    # With another problem in the file, the location is not claimed missing.
    broken = config_file(path.read_text() + 'event = "explosion"\n')
    problems = problems_of(broken)
    assert problems and not any(p.startswith("dagster.location") for p in problems), problems
