"""HTTP delivery to Dagster: URL building, auth header, and draining the outbox.

requests lives here and nowhere else. Bodies are sent exactly as stored in the outbox,
with `Content-Type: application/json` and nothing after it: Dagster rejects
`application/json; charset=utf-8`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests
from pydantic import SecretStr

from asset_watcher.config import DagsterSettings
from asset_watcher.model import EventKind
from asset_watcher.outbox import OutboxItem, StateStore
from asset_watcher.retry import Verdict, backoff_seconds, classify, retry_after_seconds

log = logging.getLogger(__name__)

TOKEN_HEADER = "Dagster-Cloud-Api-Token"
ERROR_TEXT_MAX = 500


def endpoint_url(base_url: str, kind: EventKind) -> str:
    """`base_url` may carry a path (Dagster+ deployment, --path-prefix); keep it."""
    return f"{base_url.rstrip('/')}/{kind.endpoint}"


@dataclass(frozen=True)
class Answer:
    """What came back for one request, already classified."""

    verdict: Verdict
    status: int | None
    detail: str
    retry_after_seconds: float | None = None


class Reporter:
    """A keep-alive session to one Dagster, shared by every sender thread."""

    def __init__(self, settings: DagsterSettings, token: SecretStr | None = None) -> None:
        self.settings = settings
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=1, pool_maxsize=settings.max_in_flight
        )
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.verify = settings.verify_tls
        self.session.headers["Content-Type"] = "application/json"
        self.session.headers["User-Agent"] = "asset-watcher"
        if token is not None and token.get_secret_value():
            self.session.headers[TOKEN_HEADER] = token.get_secret_value()

    def url(self, kind: EventKind) -> str:
        return endpoint_url(self.settings.url, kind)

    def post(self, kind: EventKind, body: str) -> Answer:
        """Send one stored body; never raises for network trouble."""
        try:
            response = self.session.post(
                self.url(kind),
                data=body.encode("utf-8"),
                timeout=self.settings.timeout_seconds,
                allow_redirects=False,
            )
        except requests.Timeout:
            return Answer(Verdict.RETRY, None, f"no answer within {self.settings.timeout_seconds}s")
        except requests.RequestException as exc:
            return Answer(Verdict.RETRY, None, f"cannot reach {self.settings.url}: {_reason(exc)}")
        verdict = classify(response.status_code)
        detail = "" if verdict is Verdict.DELIVERED else _error_text(response)
        return Answer(
            verdict,
            response.status_code,
            detail,
            retry_after_seconds(response.headers.get("Retry-After"), time.time()),
        )

    def close(self) -> None:
        self.session.close()


def _reason(exc: requests.RequestException) -> str:
    """The innermost cause, without the request's URL and headers."""
    cause: BaseException = exc
    while cause.__context__ is not None and cause.__context__ is not cause:
        cause = cause.__context__
    return type(cause).__name__ + (f": {cause}" if str(cause) else "")


def _error_text(response: requests.Response) -> str:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    text = str(error) if error else response.text.strip()
    return f"HTTP {response.status_code}: {text[:ERROR_TEXT_MAX]}"


def auth_message(answer: Answer, item: OutboxItem) -> str:
    return (
        f"Dagster answered {answer.status} for {item.kind.value} of "
        f"{item.order_key.split(chr(0x1E))[0].replace(chr(0x1F), '/')}: the API token is "
        "missing, wrong or lacks permission (set $DAGSTER_CLOUD_API_TOKEN, dagster.token_file "
        "or the dagster-token credential); delivery is paused, nothing is dropped"
    )


@dataclass
class DrainSummary:
    delivered: int = 0
    dead: int = 0
    paused: bool = False
    last_error: str | None = None


def drain(
    store: StateStore,
    reporter: Reporter,
    *,
    patience_seconds: float,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.time,
) -> DrainSummary:
    """Send due reports oldest first until the outbox is empty, delivery pauses on 401/403,
    or the next retry would come later than `patience_seconds` from now."""
    stop = stop or threading.Event()
    summary = DrainSummary()
    give_up_at = clock() + patience_seconds
    cap = reporter.settings.backoff_max_seconds
    while not stop.is_set():
        items = store.due(clock(), limit=reporter.settings.max_in_flight)
        if not items:
            next_at = store.next_due_at()
            if next_at is None or next_at > give_up_at:
                return summary
            stop.wait(max(0.0, next_at - clock()))
            continue
        for item in items:
            answer = reporter.post(item.kind, item.body)
            if answer.verdict is Verdict.DELIVERED:
                store.ack(item.id)
                summary.delivered += 1
            elif answer.verdict is Verdict.DEAD:
                log.error("Dagster rejected a report, dead-lettered: %s", answer.detail)
                store.dead_letter(item.id, answer.detail)
                summary.dead += 1
            elif answer.verdict is Verdict.PAUSE:
                summary.paused, summary.last_error = True, auth_message(answer, item)
                log.error("%s", summary.last_error)
                store.set_meta("last_error", summary.last_error)
                return summary
            else:
                delay = answer.retry_after_seconds
                if delay is None:
                    delay = backoff_seconds(item.attempts, cap_seconds=cap)
                summary.last_error = answer.detail
                log.warning("delivery failed (%s), retrying in %.1fs", answer.detail, delay)
                store.retry_later(item.id, clock() + delay, answer.detail)
    return summary


# How often a waiting Deliverer looks at its stop event (run() cannot wait on two events).
STOP_POLL_SECONDS = 0.2
# While Dagster answers 401/403, try again (and log again) this often.
AUTH_PAUSE_SECONDS = 60.0


class Deliverer:
    """Sends the outbox to Dagster for the long-running agent.

    The agent calls `wake()` after queueing reports and runs `run(stop)` on a thread;
    `scan` calls `drain()`. This is the minimal sequential form: one request at a time.
    """

    def __init__(
        self, store: StateStore, reporter: Reporter, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.reporter = reporter
        self.clock = clock
        self._wake = threading.Event()
        self.delivered = 0

    def wake(self) -> None:
        """New reports were queued."""
        self._wake.set()

    def drain(self, patience_seconds: float) -> DrainSummary:
        return drain(self.store, self.reporter, patience_seconds=patience_seconds, clock=self.clock)

    def _sleep(self, stop: threading.Event, seconds: float | None) -> None:
        """Until woken, stopped, or `seconds` (None: no limit) passed."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while not stop.is_set():
            left = STOP_POLL_SECONDS if deadline is None else deadline - time.monotonic()
            if left <= 0 or self._wake.wait(min(left, STOP_POLL_SECONDS)):
                return

    def run(self, stop: threading.Event) -> None:
        """Deliver until `stop` is set. The request in flight then finishes (bounded by
        the request timeout); everything else stays in the outbox."""
        cap = self.reporter.settings.backoff_max_seconds
        batch = max(self.reporter.settings.max_in_flight, 64)
        while not stop.is_set():
            self._wake.clear()
            items = self.store.due(self.clock(), limit=batch)
            if not items:
                next_at = self.store.next_due_at()
                self._sleep(stop, None if next_at is None else max(0.0, next_at - self.clock()))
                continue
            for item in items:
                if stop.is_set():
                    return
                answer = self.reporter.post(item.kind, item.body)
                if answer.verdict is Verdict.DELIVERED:
                    self.store.ack(item.id)
                    self.delivered += 1
                elif answer.verdict is Verdict.DEAD:
                    log.error("Dagster rejected a report, dead-lettered: %s", answer.detail)
                    self.store.dead_letter(item.id, answer.detail)
                elif answer.verdict is Verdict.PAUSE:
                    message = auth_message(answer, item)
                    log.error("%s", message)
                    self.store.set_meta("last_error", message)
                    stop.wait(AUTH_PAUSE_SECONDS)
                    break
                else:
                    delay = answer.retry_after_seconds
                    if delay is None:
                        delay = backoff_seconds(item.attempts, cap_seconds=cap)
                    log.warning("delivery failed (%s), retrying in %.1fs", answer.detail, delay)
                    self.store.retry_later(item.id, self.clock() + delay, answer.detail)
