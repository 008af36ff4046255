"""What the Reporter sends for a dynamic partition add, and what it makes of each answer
Dagster's GraphQL endpoint can give (the result union of dagster_graphql 1.13's
`addDynamicPartition`: AddDynamicPartitionSuccess, DuplicateDynamicPartitionError,
UnauthorizedError, PythonError; an `errors` list; HTTP errors), against a real local
HTTP server answering as scripted. The real webserver: test_dynamic_partitions_dagster.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from asset_watcher.config import SecretStr
from asset_watcher.model import EventKind
from asset_watcher.reporter import Reporter
from asset_watcher.retry import Verdict
from asset_watcher.settings import DagsterSettings
from tests.support.sink import Response, Sink

TOKEN = "s3cr3t-token-value"
STORED = json.dumps({"partitionsDefName": "partner_files", "partitionKey": "2026-11-26"})


def result(type_name: str, **fields: Any) -> dict[str, Any]:
    return {"data": {"addDynamicPartition": {"__typename": type_name, **fields}}}


@pytest.fixture
def reporter(sink: Sink) -> Iterator[Reporter]:
    settings = DagsterSettings(
        url=sink.url + "/prefix", timeout_seconds=5, location="data_host", repository="repo"
    )
    opened = Reporter(settings, SecretStr(TOKEN))
    try:
        yield opened
    finally:
        opened.close()


def test_the_add_is_a_graphql_mutation_under_the_url_prefix_with_the_token(
    sink: Sink, reporter: Reporter
) -> None:
    sink.respond_next(1, Response(200, result("AddDynamicPartitionSuccess")))
    answer = reporter.post(EventKind.PARTITION, STORED)
    assert (answer.verdict, answer.detail) == (Verdict.DELIVERED, "")
    (request,) = sink.requests
    assert (request.method, request.path) == ("POST", "/prefix/graphql")
    assert request.header("Content-Type") == "application/json"
    assert request.header("Dagster-Cloud-Api-Token") == TOKEN
    assert "addDynamicPartition(" in request.json["query"]
    assert request.json["variables"] == {
        "partitionsDefName": "partner_files",
        "partitionKey": "2026-11-26",
        "repositorySelector": {"repositoryName": "repo", "repositoryLocationName": "data_host"},
    }


@pytest.mark.parametrize(
    ("response", "verdict", "detail"),
    [
        (Response(200, result("DuplicateDynamicPartitionError", message="exists")),
         Verdict.DELIVERED, ""),
        (Response(200, result("UnauthorizedError", message="The repository does not contain")),
         Verdict.DEAD,
         "HTTP 200: addDynamicPartition answered UnauthorizedError: The repository does not "
         "contain"),
        (Response(200, result("PythonError", message="KeyError: boom")),
         Verdict.DEAD, "HTTP 200: addDynamicPartition answered PythonError: KeyError: boom"),
        (Response(200, {"data": None, "errors": [{"message": "a"}, {"message": "b"}]}),
         Verdict.DEAD, "HTTP 200: addDynamicPartition answered GraphQL errors: a; b"),
        (Response(200, b"<html>login</html>"), Verdict.DEAD,
         "HTTP 200: addDynamicPartition answered what is not a GraphQL result: "
         "<html>login</html>"),
        (Response(400, {"data": None, "errors": [{"message": "Unknown argument 'x'"}]}),
         Verdict.DEAD, "HTTP 400: GraphQL errors: Unknown argument 'x'"),
        (Response(401, {"error": "no"}), Verdict.PAUSE, "HTTP 401: no"),
        (Response(500, {"data": None, "errors": [{"message": "db locked"}]}),
         Verdict.RETRY, "HTTP 500: GraphQL errors: db locked"),
        (Response(503, b"busy"), Verdict.RETRY, "HTTP 503: busy"),
    ],
)  # fmt: skip
def test_each_answer_means_one_thing(
    sink: Sink, reporter: Reporter, response: Response, verdict: Verdict, detail: str
) -> None:
    sink.respond_next(1, response)
    answer = reporter.post(EventKind.PARTITION, STORED)
    assert (answer.verdict, answer.status, answer.detail) == (verdict, response.status, detail)


def test_an_error_text_echoing_the_token_is_scrubbed(sink: Sink, reporter: Reporter) -> None:
    sink.respond_next(1, Response(200, result("PythonError", message=f"header {TOKEN}")))
    answer = reporter.post(EventKind.PARTITION, STORED)
    assert answer.verdict is Verdict.DEAD
    assert TOKEN not in answer.detail and "**********" in answer.detail


def test_no_answer_is_retried(sink: Sink, reporter: Reporter) -> None:
    sink.down()
    answer = reporter.post(EventKind.PARTITION, STORED)
    assert (answer.verdict, answer.status) == (Verdict.RETRY, None)
    assert "cannot reach" in answer.detail


def test_without_a_location_the_add_cannot_be_sent(sink: Sink) -> None:
    # A rule with dynamic_partitions needs dagster.location (a config error otherwise);
    # adds still queued after it was removed are refused here, and dead-lettered.
    reporter = Reporter(DagsterSettings(url=sink.url))
    try:
        with pytest.raises(ValueError, match=r"dagster\.location is not set"):
            reporter.post(EventKind.PARTITION, STORED)
    finally:
        reporter.close()
    assert sink.count == 0
