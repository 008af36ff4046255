"""HTTP to Dagster: URL building, the auth header, one request and its `Answer`.

urllib3 (and requests' reading of the proxy environment) lives here and nowhere else:
one HTTP stack for http and https, direct or through a proxy, with one mapping from
answers and errors to an `Answer`. Bodies are sent exactly as stored in the outbox, with
`Content-Type: application/json` and nothing after it: Dagster rejects
`application/json; charset=utf-8`.

What a misbehaving server or link can do to a request is bounded (SPEC section 5):

* time: `timeout_seconds` bounds the whole request, from connect to the last byte of the
  answer. urllib3's timeout applies to each socket read, so a server dripping one byte a
  second would hold a sender for ever; a thread (`deadlines.DeadlineWatch`) shuts down the
  connection of a request still running at its deadline, which ends whatever read or
  TLS handshake it is blocked in, and the request counts as a timeout.
* size: an answer's body is read up to MAX_ANSWER_BYTES; a longer (or endless) one is
  an error, retried, and its connection is closed.
* reuse: a pooled connection is reused only if nothing is readable on it (urllib3 asks
  `is_connected` before each reuse; ours also counts bytes TLS already decrypted), and
  one whose answer was not read to its end is closed, never pooled: an extra or late
  answer can never be taken for the answer to a later request.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import requests.utils
import urllib3
import urllib3.connection
import urllib3.exceptions
from urllib3.util.wait import wait_for_read

from asset_watcher.config import SecretStr
from asset_watcher.deadlines import Deadline, DeadlineWatch
from asset_watcher.model import EventKind
from asset_watcher.retry import (
    Verdict,
    classify,
    classify_partition_add,
    retry_after_seconds,
)
from asset_watcher.settings import DagsterSettings

log = logging.getLogger(__name__)

TOKEN_HEADER = "Dagster-Cloud-Api-Token"
ERROR_TEXT_MAX = 500
# Dagster answers a report with a few bytes of JSON, an error with a few KiB of text.
MAX_ANSWER_BYTES = 1 << 20


# A PARTITION report's stored body holds the mutation's variables but the repository
# selector, taken from the settings when it is sent: after a wrong `dagster.location` is
# fixed, `retry-dead` sends the same adds to the right place.
ADD_DYNAMIC_PARTITION = (
    "mutation AddDynamicPartition($partitionsDefName: String!, $partitionKey: String!,"
    " $repositorySelector: RepositorySelector!) {"
    " addDynamicPartition(partitionsDefName: $partitionsDefName, partitionKey: $partitionKey,"
    " repositorySelector: $repositorySelector) { __typename ... on Error { message } } }"
)


def graphql_request(settings: DagsterSettings, stored_body: str) -> str:
    """The GraphQL request that adds the dynamic partition a PARTITION report names."""
    if settings.location is None:
        raise ValueError("dagster.location is not set: no code location to add the partition to")
    variables = dict(json.loads(stored_body))
    variables["repositorySelector"] = {
        "repositoryName": settings.repository,
        "repositoryLocationName": settings.location,
    }
    return json.dumps({"query": ADD_DYNAMIC_PARTITION, "variables": variables})


def endpoint_url(base_url: str, kind: EventKind) -> str:
    """`base_url` may carry a path (Dagster+ deployment, --path-prefix); keep it."""
    return f"{base_url.rstrip('/')}/{kind.endpoint}"


@dataclass(frozen=True)
class Answer:
    """What came back for one request, already classified."""

    verdict: Verdict
    status: int | None
    detail: str
    # Retry-After in seconds from now, capped at backoff_max_seconds when it was read
    # (retry.retry_after_seconds), so the report's own next attempt is bounded as well.
    retry_after_seconds: float | None = None


class AnswerTooLarge(Exception):
    """The answer's body went on past MAX_ANSWER_BYTES."""


# -- the total deadline of a request ---------------------------------------------------


# The request each sender thread is running, for the connection to attach to.
_current = threading.local()
# Serialises shutting a connection down (the watchdog) against closing it (its sender),
# so a descriptor closed and reused in between is never shut down.
_switch_lock = threading.Lock()


class _Connection(urllib3.connection.HTTPConnection):
    """urllib3's connection, attached to the deadline of the request it runs, and reused
    only with nothing left to read on it.

    `_switch` duplicates the socket when it connects: shutting the duplicate down ends
    the TCP connection for every descriptor of it, also while the TLS handshake owns the
    original (urllib3 sets `sock` only once the handshake is done).
    """

    owner: Deadline | None = None
    _switch: socket.socket | None = None

    def kill(self) -> None:
        """Shut the connection down (any thread): a read blocked on it ends at once."""
        with _switch_lock:
            if self._switch is not None:
                with contextlib.suppress(OSError):  # gone already: its read ends anyway
                    self._switch.shutdown(socket.SHUT_RDWR)

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        switch = sock.dup()
        with _switch_lock:
            old, self._switch = self._switch, switch
            owner = self.owner
        if old is not None:
            old.close()
        if owner is not None and owner.expired:  # connecting took all its time
            self.kill()
        return sock

    def connect(self) -> None:
        self._attach()
        super().connect()

    def request(self, *args: Any, **kwargs: Any) -> None:
        self._attach()
        super().request(*args, **kwargs)

    def close(self) -> None:
        try:
            super().close()
        finally:
            with _switch_lock:
                switch, self._switch = self._switch, None
            if switch is not None:
                switch.close()

    @property
    def is_connected(self) -> bool:
        """False when closed, closed by the server, or with anything unread on it."""
        sock = self.sock
        if sock is None:
            return False
        pending = getattr(sock, "pending", None)  # TLS: decrypted and not yet read
        if pending is not None and pending():
            return False
        return not wait_for_read(sock, timeout=0.0)

    def _attach(self) -> None:
        running = getattr(_current, "request", None)
        if running is not None:
            watchdog, deadline = running
            if deadline.connection is not self:
                watchdog.attach(deadline, self)


class _HTTPSConnection(_Connection, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _Connection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOL_CLASSES = {"http": _HTTPPool, "https": _HTTPSPool}


def _pool_manager(settings: DagsterSettings) -> tuple[urllib3.PoolManager | None, str]:
    """Pools of our connections to `settings.url`, through the proxy the environment names
    for it (HTTP(S)_PROXY, ALL_PROXY, NO_PROXY, read once, with requests' reading of
    them); or None and why not.

    urllib3 directly rather than a requests Session on top of it: a Session merges
    settings, cookies and hooks into every request, which doubled the CPU each report
    costs (about 1 ms instead of 0.5 ms here), and delivery of a burst waited on it.
    """
    kwargs: dict[str, Any] = {
        "num_pools": 2,
        "maxsize": settings.max_in_flight,
        **_tls_settings(settings.verify_tls),
    }
    proxies = requests.utils.get_environ_proxies(settings.url)
    proxy = proxies.get(urllib3.util.parse_url(settings.url).scheme or "") or proxies.get("all")
    manager: urllib3.PoolManager
    if not proxy:
        manager = urllib3.PoolManager(**kwargs)
    else:
        parts = urllib3.util.parse_url(proxy)
        if parts.scheme not in ("http", "https"):
            # Named without its user and password, which must never reach a log line.
            where = f"{parts.scheme}://{parts.host}" + (f":{parts.port}" if parts.port else "")
            return None, f"the proxy {where} from the environment is not an http(s):// proxy"
        user, password = requests.utils.get_auth_from_url(proxy)
        auth = {}
        if user or password:  # as requests does it: the URL's user info, as Basic auth
            auth = urllib3.make_headers(proxy_basic_auth=f"{user}:{password}")
        bare = parts._replace(auth=None).url
        manager = urllib3.ProxyManager(bare, proxy_headers=auth, **kwargs)
    manager.pool_classes_by_scheme = dict(_POOL_CLASSES)
    return manager, ""


def _tls_settings(verify_tls: bool | str) -> dict[str, Any]:
    """What `verify_tls` means, as requests reads it: True checks against
    $REQUESTS_CA_BUNDLE or $CURL_CA_BUNDLE if set, else certifi's bundle; a path names a
    bundle file or a folder of certificates; False checks nothing."""
    if verify_tls is False:
        return {"cert_reqs": "CERT_NONE"}
    where = verify_tls
    if where is True:
        where = (
            os.environ.get("REQUESTS_CA_BUNDLE")
            or os.environ.get("CURL_CA_BUNDLE")
            or requests.utils.DEFAULT_CA_BUNDLE_PATH
        )
    assert isinstance(where, str)
    if os.path.isdir(where):
        return {"cert_reqs": "CERT_REQUIRED", "ca_cert_dir": where}
    return {"cert_reqs": "CERT_REQUIRED", "ca_certs": where}


# -- the reporter ----------------------------------------------------------------------


class Reporter:
    """Keep-alive connection pools to one Dagster, shared by every sender thread."""

    def __init__(self, settings: DagsterSettings, token: SecretStr | None = None) -> None:
        self.settings = settings
        self._secret = token.get_secret_value() if token is not None else ""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "asset-watcher",
            # An error text is stored and shown: it should never arrive compressed.
            "Accept-Encoding": "identity",
        }
        if self._secret:
            headers[TOKEN_HEADER] = self._secret
        self._headers = headers
        self._timeout = urllib3.Timeout(
            connect=settings.timeout_seconds, read=settings.timeout_seconds
        )
        self._manager, self._setup_error = _pool_manager(settings)
        self._proxied = isinstance(self._manager, urllib3.ProxyManager)
        self._targets: dict[EventKind, tuple[Callable[..., urllib3.BaseHTTPResponse], str]] = {}
        self._watchdog = DeadlineWatch()

    def url(self, kind: EventKind) -> str:
        return endpoint_url(self.settings.url, kind)

    def post(self, kind: EventKind, body: str) -> Answer:
        """Send one stored body; never raises for network trouble. Returns within
        `timeout_seconds` (plus what resolving the host name takes)."""
        if kind is EventKind.PARTITION:
            body = graphql_request(self.settings, body)  # raises on a stored body it cannot use
        deadline = self._watchdog.begin(self.settings.timeout_seconds)
        if deadline.expired:  # closed: nothing more is sent
            return self._timed_out()
        _current.request = (self._watchdog, deadline)
        try:
            status, content, retry_after = self._exchange(kind, body.encode("utf-8"))
        except Exception as exc:
            answer = self._failure(exc, deadline)
            if answer is None:
                raise
            return answer
        finally:
            self._watchdog.end(deadline)
            _current.request = None
        if deadline.expired:
            # Cut off at the deadline, what was read may look whole and is not (http.client
            # takes a header block cut short for a complete one): never trust it.
            return self._timed_out()
        return self._answer(kind, status, content, retry_after)

    def _exchange(self, kind: EventKind, data: bytes) -> tuple[int, bytes, str | None]:
        if self._manager is None:
            raise OSError(self._setup_error)
        urlopen, target = self._target(kind)
        response = urlopen(
            "POST",
            target,
            body=data,
            headers=self._headers,
            timeout=self._timeout,
            retries=False,
            redirect=False,
            preload_content=False,
        )
        try:
            status = response.status
            if status < 200:
                # An interim answer where the final one belongs: whatever follows it is
                # unread, so the connection must not carry another request.
                _discard_connection(response)
                return status, b"", None
            _check_header(response)
            content = _read_bounded(response)
        except BaseException:
            _discard_connection(response)
            raise
        finally:
            response.release_conn()  # a fully read connection goes back to the pool
        return status, content, response.headers.get("Retry-After")

    def _target(self, kind: EventKind) -> tuple[Callable[..., urllib3.BaseHTTPResponse], str]:
        """What sends to `kind`'s endpoint, and the request target it takes, worked out
        once: its connection pool and path (the PoolManager would parse the URL and build
        a pool key on every request); through a proxy, the ProxyManager, which adds the
        proxy's headers, and the whole URL."""
        found = self._targets.get(kind)
        if found is None:
            assert self._manager is not None
            url = self.url(kind)
            if self._proxied:
                found = (self._manager.urlopen, url)
            else:
                pool = self._manager.connection_from_url(url)
                found = (pool.urlopen, urllib3.util.parse_url(url).request_uri)
            self._targets[kind] = found
        return found

    def _failure(self, exc: Exception, deadline: Deadline) -> Answer | None:
        """The answer for a request that raised; None if `exc` is not about the network."""
        if deadline.expired or _is_timeout(exc):
            return self._timed_out()
        unreadable = _unreadable_reason(exc)
        if unreadable is not None:
            detail = f"unreadable answer from {self.settings.url}: {self.scrub(unreadable)}"
            return Answer(Verdict.RETRY, None, detail)
        if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
            reason = self.scrub(_reason(exc))
            return Answer(Verdict.RETRY, None, f"cannot reach {self.settings.url}: {reason}")
        return None

    def _timed_out(self) -> Answer:
        return Answer(Verdict.RETRY, None, f"no answer within {self.settings.timeout_seconds}s")

    def _answer(
        self, kind: EventKind, status: int, content: bytes, retry_after: str | None
    ) -> Answer:
        if kind is EventKind.PARTITION:
            result_type, text = _partition_add_result(content)
            verdict = classify_partition_add(status, result_type)
            if verdict is Verdict.DEAD and 200 <= status < 300:
                text = f"HTTP {status}: addDynamicPartition answered {text}"[:ERROR_TEXT_MAX]
            else:
                text = _error_text(status, content)
        else:
            verdict, text = classify(status), _error_text(status, content)
        # Dagster's error text is stored, shown by `status` and printed by `scan`: mask the
        # token in it too, should a proxy or server ever echo the request headers.
        detail = "" if verdict is Verdict.DELIVERED else self.scrub(text)
        wait = retry_after_seconds(
            retry_after, time.time(), cap_seconds=self.settings.backoff_max_seconds
        )
        return Answer(verdict, status, detail, wait)

    def scrub(self, text: str) -> str:
        """Error text with the token masked (a malformed token can echo in an exception)."""
        if not self._secret:
            return text
        for form in {self._secret, repr(self._secret)[1:-1], json.dumps(self._secret)[1:-1]}:
            text = text.replace(form, "**********")
        return text

    def close(self) -> None:
        """Close the connections; a request still running is cut off and answers as a
        timeout."""
        self._watchdog.close()
        if self._manager is not None:
            self._manager.clear()


def _read_bounded(raw: urllib3.BaseHTTPResponse) -> bytes:
    """The whole body, at most MAX_ANSWER_BYTES of it; raises AnswerTooLarge beyond.

    A declared length over the bound is refused before reading: urllib3 hands a connection
    back to the pool as soon as its body was read to the end, where another sender could
    take it before this one closes it."""
    declared = raw.headers.get("Content-Length", "").strip()
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
        raise AnswerTooLarge(f"an answer longer than {MAX_ANSWER_BYTES} bytes")
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = raw.read(MAX_ANSWER_BYTES + 1 - size, decode_content=True)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise AnswerTooLarge(f"an answer longer than {MAX_ANSWER_BYTES} bytes")


class UnreadableHeader(Exception):
    """The answer's header block is malformed or cut short."""


def _check_header(raw: urllib3.BaseHTTPResponse) -> None:
    """Raise UnreadableHeader if http.client found defects in the header block: it takes
    one cut short by a closed connection for a whole one (urllib3 only logs that)."""
    original = getattr(raw, "_original_response", None)
    defects = getattr(getattr(original, "msg", None), "defects", None)
    if defects:
        names = ", ".join(type(defect).__name__ for defect in defects)
        raise UnreadableHeader(f"a malformed or truncated header ({names})")


def _discard_connection(response: urllib3.BaseHTTPResponse) -> None:
    """Close the connection under `response`, so the pool gets it back closed."""
    connection = getattr(response, "connection", None)
    if connection is not None:
        connection.close()


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it wraps: its cause or context chain and exceptions in its args
    (urllib3 and requests wrap the error that happened as an argument)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend(arg for arg in current.args if isinstance(arg, BaseException))
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                todo.append(linked)


def _is_timeout(exc: BaseException) -> bool:
    timeouts = (TimeoutError, urllib3.exceptions.TimeoutError)
    return any(
        isinstance(cause, timeouts)
        # urllib3's "connection refused" is a ConnectTimeoutError, for compatibility
        and not isinstance(cause, urllib3.exceptions.NewConnectionError)
        for cause in _causes(exc)
    )


def _unreadable_reason(exc: BaseException) -> str | None:
    """Why an answer that came could not be read (it is not HTTP as we read it, or too
    long); None when the trouble is the connection itself."""
    for cause in _causes(exc):
        if isinstance(cause, (AnswerTooLarge, UnreadableHeader)):
            return str(cause)
        if isinstance(cause, http.client.BadStatusLine) and not isinstance(cause, ConnectionError):
            return f"not an HTTP/1.x status line: {cause.args[0]!r}"[:ERROR_TEXT_MAX]
        if isinstance(cause, http.client.HTTPException) and not isinstance(
            cause, (ConnectionError, http.client.IncompleteRead)
        ):
            return f"{type(cause).__name__}: {cause}"[:ERROR_TEXT_MAX]
        if isinstance(cause, urllib3.exceptions.DecodeError):
            return f"{type(cause).__name__}: {cause}"[:ERROR_TEXT_MAX]
    return None


def _reason(exc: BaseException) -> str:
    """The innermost cause, without the request's URL and headers."""
    cause: BaseException = exc
    while cause.__context__ is not None and cause.__context__ is not cause:
        cause = cause.__context__
    return type(cause).__name__ + (f": {cause}" if str(cause) else "")


def _error_text(status: int, content: bytes) -> str:
    try:
        answer = json.loads(content)
        error = answer.get("error") or _graphql_errors(answer)
    except (ValueError, AttributeError):
        error = None
    text = str(error) if error else content.decode("utf-8", "replace").strip()
    return f"HTTP {status}: {text[:ERROR_TEXT_MAX]}"


def _graphql_errors(answer: dict[str, Any]) -> str | None:
    """The messages of a GraphQL answer's `errors` list, joined; None without one."""
    errors = answer.get("errors")
    if not isinstance(errors, list) or not errors:
        return None
    messages = [str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors]
    return "GraphQL errors: " + "; ".join(messages)


def _partition_add_result(content: bytes) -> tuple[str | None, str]:
    """(`__typename` of addDynamicPartition's result or None, a text saying what came)."""
    try:
        answer = json.loads(content)
        errors = _graphql_errors(answer)
        if errors:
            return None, errors
        result = answer["data"]["addDynamicPartition"]
        result_type = result["__typename"]
    except (ValueError, TypeError, KeyError, AttributeError):
        text = content.decode("utf-8", "replace").strip()
        return None, f"what is not a GraphQL result: {text[:ERROR_TEXT_MAX]}"
    message = result.get("message")
    return str(result_type), f"{result_type}: {message}" if message else str(result_type)
