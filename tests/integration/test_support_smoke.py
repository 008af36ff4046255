"""Smoke tests for the test infrastructure: a real dagster-webserver, the fault sink and
the benchmarks' fast sink.

They also pin down how Dagster (1.13.28) records what the External Assets REST API gets;
the findings are asserted, not just written down:

* ``"asset_key": ["acme", "orders"]`` (a JSON list) is recorded as the two-part
  ``AssetKey(["acme", "orders"])``; the string ``"acme/orders"`` in the body becomes the
  ONE-part key ``AssetKey(["acme/orders"])`` (only the URL path form splits on "/").
* Parts with spaces, '#', '%', '?' and non-ASCII characters survive the list form unchanged.
* Nothing is validated against definitions: unknown assets, undefined checks, a partition
  on an unpartitioned asset and an unknown partition of a partitioned asset are all
  accepted (200 ``{}``) and stored as sent. Undefined checks are stored but are not listed
  among the asset's checks in the UI/GraphQL.
* Success is ``200`` with body ``{}``; errors are ``400 {"error": "..."}``, except a body
  that is not JSON or a key part that is not a string: ``500`` ``Internal Server Error``
  (text/plain). ``{"asset_key": []}`` is accepted and records an empty key.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import pytest
import requests

from tests.support.dagster_server import DagsterServer
from tests.support.fast_sink import FastSink
from tests.support.sink import RecordedRequest, Sink

JSON_HEADERS = {"Content-Type": "application/json"}
MAT = "report_asset_materialization"
OBS = "report_asset_observation"
CHECK = "report_asset_check"


def post(base_url: str, endpoint: str, body: Any, **headers: str) -> requests.Response:
    """POST ``body`` as JSON with ``Content-Type: application/json`` exactly."""
    return requests.post(
        f"{base_url}/{endpoint}/",
        data=json.dumps(body).encode(),
        headers={**JSON_HEADERS, **headers},
        timeout=10,
    )


def assert_ok(resp: requests.Response) -> None:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {}


# --------------------------------------------------------------------------- Dagster


def test_materialization_list_key_partition_metadata_data_version(
    dagster: DagsterServer, unique_name: str
) -> None:
    partition = f"2026-11-26/{unique_name}"
    digest = "ab" * 32
    metadata = {
        "path": "/srv/sftp/acme/upload/orders_2026-11-26.csv",
        "dagster/uri": "file://data01/srv/sftp/acme/upload/orders%202026.csv",
        "size_bytes": 1234,
        "sha256": digest,
        "ratio": 0.5,
        "ok": True,
        "nothing": None,
        "listed": [1, "a"],
        "nested": {"k": "v"},
    }
    assert_ok(
        post(
            dagster.url,
            MAT,
            {
                "asset_key": ["acme", "orders"],
                "partition": partition,
                "description": "Orders from ACME",
                "data_version": digest,
                "metadata": metadata,
            },
        )
    )

    (rec,) = dagster.materializations(["acme", "orders"], partition=partition)
    assert rec.asset_key == ["acme", "orders"]
    assert rec.partition == partition
    assert rec.description == "Orders from ACME"
    assert rec.metadata == metadata
    assert rec.metadata_types["size_bytes"] == "IntMetadataValue"
    assert rec.metadata_types["ratio"] == "FloatMetadataValue"
    assert rec.metadata_types["ok"] == "BoolMetadataValue"
    assert rec.metadata_types["path"] == "TextMetadataValue"
    assert rec.metadata_types["dagster/uri"] == "TextMetadataValue"  # a str stays text
    assert rec.metadata_types["nested"] == "JsonMetadataValue"
    assert rec.data_version == digest
    assert rec.tags == {
        "dagster/data_version": digest,
        "dagster/data_version_is_user_provided": "true",
    }
    assert rec.run_id == ""  # runless event
    assert ["acme", "orders"] in dagster.all_asset_keys()
    assert rec in dagster.materializations(["acme", "orders"])  # unfiltered read sees it too


def test_string_asset_key_in_body_is_one_part(dagster: DagsterServer, unique_name: str) -> None:
    # Finding: in the JSON body a string is NOT split on "/": "acme/<x>" is recorded as the
    # single-part AssetKey(["acme/<x>"]). The agent must send a list of parts.
    assert_ok(post(dagster.url, MAT, {"asset_key": f"acme/{unique_name}"}))

    (rec,) = dagster.materializations([f"acme/{unique_name}"])
    assert rec.asset_key == [f"acme/{unique_name}"]
    assert dagster.materializations(["acme", unique_name]) == []
    assert [f"acme/{unique_name}"] in dagster.all_asset_keys()


def test_awkward_key_parts_survive_list_form(dagster: DagsterServer, unique_name: str) -> None:
    key = ["we ird#%?é", unique_name, "日本 語/x"]
    assert_ok(post(dagster.url, MAT, {"asset_key": key, "partition": "p #%?é"}))

    (rec,) = dagster.materializations(key)
    assert rec.asset_key == key
    assert rec.partition == "p #%?é"
    assert key in dagster.all_asset_keys()


def test_observation(dagster: DagsterServer, unique_name: str) -> None:
    key = ["acme", unique_name]
    assert_ok(
        post(
            dagster.url,
            OBS,
            {
                "asset_key": key,
                "partition": "2026-11-26",
                "description": "seen",
                "data_version": "v1",
                "metadata": {"deleted": True, "size_bytes": 0},
            },
        )
    )

    (rec,) = dagster.observations(key)
    assert rec.kind == "observation"
    assert rec.asset_key == key
    assert rec.partition == "2026-11-26"
    assert rec.description == "seen"
    assert rec.metadata == {"deleted": True, "size_bytes": 0}
    assert rec.data_version == "v1"
    assert dagster.observations(key, partition="other") == []
    assert dagster.materializations(key) == []


def test_check_evaluation_needs_no_definition(dagster: DagsterServer, unique_name: str) -> None:
    # Finding: neither the asset nor the check has to be defined; the evaluation is stored
    # (event log and the execution table the UI reads), with its partition.
    key = ["acme", unique_name]
    assert_ok(
        post(
            dagster.url,
            CHECK,
            {
                "asset_key": key,
                "check_name": "size",
                "passed": False,
                "severity": "WARN",
                "partition": "2026-11-26",
                "metadata": {"size_bytes": 0, "min_bytes": 1},
            },
        )
    )
    assert_ok(post(dagster.url, CHECK, {"asset_key": key, "check_name": "size", "passed": True}))

    first, second = dagster.check_evaluations(key, "size")
    assert (first.asset_key, first.check_name) == (key, "size")
    assert (first.passed, first.severity, first.partition) == (False, "WARN", "2026-11-26")
    assert first.metadata == {"size_bytes": 0, "min_bytes": 1}
    assert (second.passed, second.severity, second.partition) == (True, "ERROR", None)
    assert dagster.check_evaluations(key) == [first, second]
    assert dagster.check_evaluations(key, "other") == []
    assert dagster.check_execution_statuses(key, "size") == ["FAILED", "SUCCEEDED"]
    # A check evaluation alone does not register the asset key.
    assert key not in dagster.all_asset_keys()


def test_checks_on_defined_asset_defined_or_not(dagster: DagsterServer, unique_name: str) -> None:
    key = ["smoke", "defined"]
    for name in ("defined_check", "undefined_check"):
        assert_ok(
            post(
                dagster.url,
                CHECK,
                {
                    "asset_key": key,
                    "check_name": name,
                    "passed": True,
                    "metadata": {"t": unique_name},
                },
            )
        )
        evaluations = dagster.check_evaluations(key, name)
        assert [e for e in evaluations if e.metadata == {"t": unique_name}]

    # The UI lists only the defined check for the asset, although both were stored.
    answer = dagster.graphql(
        """query($k: AssetKeyInput!) { assetNodeOrError(assetKey: $k) { ... on AssetNode {
             assetChecksOrError { ... on AssetChecks { checks { name } } } } } }""",
        {"k": {"path": key}},
    )
    checks = answer["data"]["assetNodeOrError"]["assetChecksOrError"]["checks"]
    assert [c["name"] for c in checks] == ["defined_check"]


def test_partitions_are_not_validated(dagster: DagsterServer, unique_name: str) -> None:
    # Finding: a partition on an unpartitioned asset, or an unknown partition of a
    # partitioned one, is accepted and stored as sent.
    assert_ok(post(dagster.url, MAT, {"asset_key": ["smoke", "defined"], "partition": unique_name}))
    assert_ok(post(dagster.url, MAT, {"asset_key": ["smoke", "static"], "partition": unique_name}))
    for key in (["smoke", "defined"], ["smoke", "static"]):
        (rec,) = dagster.materializations(key, partition=unique_name)
        assert rec.partition == unique_name


def test_error_answers(dagster: DagsterServer) -> None:
    resp = requests.post(
        f"{dagster.url}/{MAT}/",
        data=b'{"asset_key": ["a"]}',
        headers={"Content-Type": "application/json; charset=utf-8"},
        timeout=10,
    )
    assert resp.status_code == 400
    assert resp.json() == {
        "error": "Unhandled content type application/json; charset=utf-8,"
        " expect no body or application/json"
    }

    resp = post(dagster.url, MAT, {"partition": "x"})
    assert resp.status_code == 400
    assert resp.json() == {
        "error": "Empty asset key, must provide asset key as url path after"
        " /report_asset_materialization/ or query param asset_key."
    }

    resp = post(dagster.url, CHECK, {"asset_key": ["a"], "check_name": "c"})
    assert (resp.status_code, resp.json()) == (
        400,
        {"error": "Missing required parameter 'passed'."},
    )

    resp = post(
        dagster.url,
        CHECK,
        {"asset_key": ["a"], "check_name": "c", "passed": True, "severity": "INFO"},
    )
    assert resp.status_code == 400
    assert resp.json() == {
        "error": "Error constructing AssetCheckEvaluation: 'INFO' is not a valid AssetCheckSeverity"
    }

    resp = post(dagster.url, MAT, {"asset_key": ["a"], "partition": 5})
    assert resp.status_code == 400
    assert resp.json()["error"].startswith(
        'Error constructing AssetMaterialization: Param "partition" is not a str.'
    )

    # Not JSON at all, or a non-string key part: an unhandled exception, 500 text/plain.
    for data in (b"not json", b'{"asset_key": ["a", 1]}'):
        resp = requests.post(f"{dagster.url}/{MAT}/", data=data, headers=JSON_HEADERS, timeout=10)
        assert (resp.status_code, resp.text) == (500, "Internal Server Error")
        assert resp.headers["content-type"].startswith("text/plain")


def test_prefixed_server(dagster_prefixed: DagsterServer, unique_name: str) -> None:
    assert dagster_prefixed.url == f"{dagster_prefixed.root_url}/dagster"
    key = ["acme", unique_name]
    assert_ok(post(dagster_prefixed.url, MAT, {"asset_key": key, "data_version": "d1"}))
    assert_ok(post(dagster_prefixed.url, OBS, {"asset_key": key}))
    assert_ok(
        post(dagster_prefixed.url, CHECK, {"asset_key": key, "check_name": "c", "passed": True})
    )

    (mat,) = dagster_prefixed.materializations(key)
    assert (mat.asset_key, mat.data_version) == (key, "d1")
    assert len(dagster_prefixed.observations(key)) == 1
    assert len(dagster_prefixed.check_evaluations(key, "c")) == 1

    resp = post(dagster_prefixed.root_url, MAT, {"asset_key": key})  # without the prefix
    assert (resp.status_code, resp.text) == (404, "Not Found")


# --------------------------------------------------------------------------- sink


def test_sink_records_requests_and_answers_200(sink: Sink) -> None:
    before = time.monotonic()
    resp = requests.post(
        f"{sink.url}/{MAT}/?q=1",
        json={"asset_key": ["acme", "orders"]},  # requests sends exactly application/json
        headers={"Dagster-Cloud-Api-Token": "secret"},
        timeout=5,
    )
    assert (resp.status_code, resp.json()) == (200, {})

    (req,) = sink.wait_for_count(1, timeout=5)
    assert (req.index, req.method, req.path, req.target) == (0, "POST", f"/{MAT}/", f"/{MAT}/?q=1")
    assert req.query == {"q": ["1"]}
    assert req.header("content-type") == "application/json"
    assert req.header("Dagster-Cloud-Api-Token") == "secret"
    assert req.json == {"asset_key": ["acme", "orders"]}
    assert req.status == 200
    assert before <= req.arrived_at <= time.monotonic()
    assert sink.bodies(f"/{MAT}/") == [{"asset_key": ["acme", "orders"]}]


@pytest.mark.parametrize("status", [400, 401, 403, 408, 429, 500, 503])
def test_sink_answers_status_for_next_k(sink: Sink, status: int) -> None:
    sink.fail_next(2, status, retry_after="3", message="nope")
    with requests.Session() as session:
        answers = [session.post(f"{sink.url}/{MAT}/", json={"n": i}, timeout=5) for i in range(3)]

    assert [a.status_code for a in answers] == [status, status, 200]
    assert answers[0].json() == {"error": "nope"}
    assert answers[0].headers["Retry-After"] == "3"
    assert "Retry-After" not in answers[2].headers
    assert [r.status for r in sink.requests] == [status, status, 200]
    assert [r.json for r in sink.requests] == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_sink_rules_match_and_default_response(sink: Sink) -> None:
    def is_bad(req: RecordedRequest) -> bool:
        return isinstance(req.json, dict) and req.json.get("asset_key") == ["bad"]

    sink.fail_next(None, 400, match=is_bad)
    sink.set_default_response(401)
    assert requests.post(sink.url, json={"asset_key": ["bad"]}, timeout=5).status_code == 400
    resp = requests.post(sink.url, json={"asset_key": ["good"]}, timeout=5)
    assert (resp.status_code, resp.json()) == (401, {"error": "sink: injected 401"})
    sink.reset()
    assert requests.post(sink.url, json={"asset_key": ["bad"]}, timeout=5).status_code == 200


def test_sink_delay_is_concurrent(sink: Sink) -> None:
    sink.set_delay(0.2)
    durations: list[float] = []
    lock = threading.Lock()

    def one() -> None:
        start = time.monotonic()
        resp = requests.post(sink.url, json={}, timeout=5)
        with lock:
            durations.append(time.monotonic() - start)
        assert resp.status_code == 200

    threads = [threading.Thread(target=one) for _ in range(8)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(durations) == 8
    assert min(durations) >= 0.2
    assert time.monotonic() - start < 8 * 0.2  # answered concurrently, not one by one


def test_sink_down_refuses_then_up_on_same_port(sink: Sink) -> None:
    port = sink.port
    with requests.Session() as session:  # keep-alive connection across the outage
        assert session.post(sink.url, json={"n": 1}, timeout=5).status_code == 200
        sink.down()
        assert not sink.is_up
        with pytest.raises(requests.ConnectionError):
            session.post(sink.url, json={"n": 2}, timeout=5)
        with pytest.raises(requests.ConnectionError):  # fresh connection: refused
            requests.post(sink.url, json={"n": 3}, timeout=5)
        sink.up()
        assert sink.port == port
        assert session.post(sink.url, json={"n": 4}, timeout=5).status_code == 200
    assert [r.json for r in sink.requests] == [{"n": 1}, {"n": 4}]


def test_sink_down_drops_requests_in_flight(sink: Sink) -> None:
    sink.set_delay(30)
    errors: list[BaseException] = []

    def client() -> None:
        try:
            requests.post(sink.url, json={"n": 1}, timeout=60)
        except requests.ConnectionError as exc:
            errors.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    sink.wait_for_count(1, timeout=5)  # recorded on arrival, before the delay
    start = time.monotonic()
    sink.down()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert time.monotonic() - start < 10  # the 30 s delay was cut short
    assert len(errors) == 1


def test_sink_drop_connection_and_wait_timeout(sink: Sink) -> None:
    sink.drop_next(1)
    with pytest.raises(requests.ConnectionError):
        requests.post(sink.url, json={"n": 1}, timeout=5)
    assert requests.post(sink.url, json={"n": 2}, timeout=5).status_code == 200
    assert [r.status for r in sink.requests] == [0, 200]
    with pytest.raises(TimeoutError):
        sink.wait_for_count(3, timeout=0.1)
    reqs = sink.wait_for(lambda rs: any(r.json == {"n": 2} for r in rs), timeout=1)
    assert len(reqs) == 2


def test_sink_stops_without_leaking_threads() -> None:
    before = set(threading.enumerate())
    with requests.Session() as session, Sink() as sink:
        sink.set_delay(0.05)
        for _ in range(3):
            assert session.post(sink.url, json={}, timeout=5).status_code == 200
        # Leaving the block stops the sink first, while the Session's keep-alive connection
        # is still open: stop() must not wait for the client to hang up.
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert leaked == []


def test_fast_sink_counts_keep_alive_reports_and_reads_back_their_keys() -> None:
    """The benchmarks' sink: requests in one keep-alive connection, Content-Length last
    (the agent's client) or not (requests), each answered at once."""
    with FastSink() as sink:
        with socket.create_connection(("127.0.0.1", int(sink.url.rsplit(":", 1)[1])), 5) as conn:
            reader = conn.makefile("rb")
            for n in range(3):
                body = json.dumps({"asset_key": ["fast", f"k{n}"]}).encode()
                conn.sendall(
                    f"POST /{MAT}/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                head = b"".join(iter(reader.readline, b"\r\n"))
                assert head.startswith(b"HTTP/1.1 200 ")
                assert reader.read(2) == b"{}"
            reader.close()
        assert requests.post(f"{sink.url}/{MAT}/", json={"asset_key": ["x"]}, timeout=5).ok
        received = sink.wait_for(4, timeout=10)
        assert received["keys"] == ["fast/k0", "fast/k1", "fast/k2", "x"]
        assert received["last"] > 0
        with pytest.raises(TimeoutError):
            sink.wait_for(1, timeout=0.2)  # counting started again
