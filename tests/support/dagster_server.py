"""A real ``dagster-webserver`` in a subprocess, plus read-back helpers for what it recorded.

The webserver runs from the Dagster environment (`tests/support/envs.py`), never from the
agent's: the agent is tested on the versions its lock file gives an operator. It uses a
throwaway ``DAGSTER_HOME`` (default sqlite storage). The reading helpers ask a probe process
in the same Dagster environment (`tests/support/dagster_probe.py`), which opens a fresh
``DagsterInstance`` on that home for every question, so each sees every event the webserver
has committed so far; they return plain Python values (lists, dicts, str, int...) that are
convenient to assert on.

Facts verified against dagster / dagster-webserver 1.13.28 (see
``tests/integration/test_support_smoke.py`` for the executable proof):

* Readiness: ``GET {url}/server_info`` answers 200 JSON once uvicorn serves; with
  ``--path-prefix /p`` every route (the REST endpoints too) lives under ``/p`` and the
  unprefixed paths answer 404 ``Not Found`` (text/plain).
* ``dagster-webserver`` starts a code server (``dagster api grpc``) as a child in its own
  process group, so terminating the group stops both.
* Runless REST events are stored with ``run_id == ""``; materializations/observations are
  read with ``instance.fetch_materializations`` / ``fetch_observations``; check evaluations
  with ``instance.event_log_storage.get_asset_check_execution_history`` (the table the UI
  uses, one row per evaluation) and ``get_records_for_run("", of_type=ASSET_CHECK_EVALUATION)``
  (the event log; storage ids comparable with materializations').
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from asset_watcher.demo import process_group_alive
from tests.support.envs import dagster_python
from tests.support.waiting import poll_value

DATA_VERSION_TAG = "dagster/data_version"

#: Instance config written to the throwaway DAGSTER_HOME.
DEFAULT_DAGSTER_YAML = "telemetry:\n  enabled: false\n"

#: An "empty-ish" code location: Definitions with no assets at all. The REST endpoints do
#: not need definitions (they record events for any key), but a code location must exist.
DEFAULT_DEFS_SOURCE = textwrap.dedent(
    """\
    import dagster as dg

    defs = dg.Definitions()
    """
)

_LOCATIONS_QUERY = """
{
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on PythonError { message causes { message } }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""


class DagsterServerError(RuntimeError):
    """The webserver did not start, or a code location failed to load."""


@dataclass(frozen=True)
class AssetEventRecord:
    """One materialization or observation as Dagster stored it, as plain values."""

    kind: str  # "materialization" | "observation"
    asset_key: list[str]
    partition: str | None
    description: str | None
    metadata: dict[str, Any]  # MetadataValue.value for each entry (int stays int, ...)
    metadata_types: dict[str, str]  # e.g. {"size_bytes": "IntMetadataValue"}
    tags: dict[str, Any]
    run_id: str
    storage_id: int
    timestamp: float

    @property
    def data_version(self) -> Any:
        """The ``dagster/data_version`` tag (set from the body's ``data_version``), or None."""
        return self.tags.get(DATA_VERSION_TAG)


@dataclass(frozen=True)
class CheckEvaluationRecord:
    """One asset check evaluation as Dagster stored it, as plain values."""

    asset_key: list[str]
    check_name: str
    passed: bool
    severity: str  # "ERROR" | "WARN"
    metadata: dict[str, Any]
    metadata_types: dict[str, str]
    partition: str | None
    description: str | None
    run_id: str
    storage_id: int
    timestamp: float


@dataclass(frozen=True)
class CodeLocationStatus:
    """Load status of one code location of the webserver's workspace."""

    name: str
    load_status: str  # "LOADING" | "LOADED"
    error: str | None = field(default=None)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _key_parts(asset_key: Sequence[str] | str) -> list[str]:
    if isinstance(asset_key, str):
        raise TypeError("pass asset key parts as a list (e.g. ['acme', 'orders']), not a string")
    return [str(part) for part in asset_key]


class DagsterServer:
    """A real ``dagster-webserver`` subprocess on a free 127.0.0.1 port.

    Use as a context manager, or call :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        home: Path | str | None = None,
        defs_file: Path | str | None = None,
        defs_source: str | None = None,
        path_prefix: str = "",
        startup_timeout: float = 90.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        """Configure (but do not start) a webserver.

        home: DAGSTER_HOME directory to use (created if missing); default a temp dir that
            :meth:`stop` removes. defs_file: Python file with Definitions to load; else
            ``defs_source`` (default :data:`DEFAULT_DEFS_SOURCE`) is written to the home.
            path_prefix: e.g. ``"/dagster"`` for ``--path-prefix``.
        """
        if path_prefix and (not path_prefix.startswith("/") or path_prefix.endswith("/")):
            raise ValueError("path_prefix must look like '/dagster' (leading, no trailing '/')")
        if defs_file is not None and defs_source is not None:
            raise ValueError("give defs_file or defs_source, not both")
        self._owns_home = home is None
        self.home: Path = (
            Path(tempfile.mkdtemp(prefix="dagster-home-")) if home is None else Path(home)
        )
        self._defs_file = Path(defs_file).resolve() if defs_file is not None else None
        self._defs_source = defs_source if defs_source is not None else DEFAULT_DEFS_SOURCE
        self.path_prefix = path_prefix
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.startup_timeout = startup_timeout
        self.startup_seconds: float | None = None
        self._extra_args = list(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._probe: DagsterProbe | None = None
        self._probe_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """Base URL including the path prefix, no trailing slash (``http://127.0.0.1:P/pfx``)."""
        if self.port is None:
            raise DagsterServerError("server not started")
        return f"http://{self.host}:{self.port}{self.path_prefix}"

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT`` without the path prefix."""
        if self.port is None:
            raise DagsterServerError("server not started")
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        """File receiving the webserver's (and code server's) stdout and stderr."""
        return self.home / "webserver.log"

    @property
    def pid(self) -> int | None:
        """PID of the webserver process (also its process group id), if running."""
        return self._proc.pid if self._proc is not None else None

    def log_text(self) -> str:
        """The webserver log so far (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> DagsterServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> DagsterServer:
        """Start the webserver and block until it serves and its code locations loaded."""
        if self._proc is not None:
            raise DagsterServerError("already started")
        self.home.mkdir(parents=True, exist_ok=True)
        dagster_yaml = self.home / "dagster.yaml"
        if not dagster_yaml.exists():
            dagster_yaml.write_text(DEFAULT_DAGSTER_YAML)
        defs_file = self._defs_file
        if defs_file is None:
            defs_file = self.home / "defs.py"
            defs_file.write_text(self._defs_source)

        started = time.monotonic()
        last_error: DagsterServerError | None = None
        for _attempt in range(3):  # a port taken between free_port() and bind: retry
            self.port = free_port(self.host)
            try:
                self._spawn(defs_file)
                self._wait_ready(started + self.startup_timeout)
            except DagsterServerError as exc:
                last_error = exc
                self._terminate()
                if "address already in use" not in str(exc).lower():
                    break
                continue
            except BaseException:  # e.g. KeyboardInterrupt: never leave the process behind
                self._terminate()
                self._cleanup_home()
                raise
            self.startup_seconds = time.monotonic() - started
            atexit.register(self.stop)
            return self
        self.port = None
        self._cleanup_home()
        assert last_error is not None
        raise last_error

    def stop(self) -> None:
        """Terminate the webserver's process group (SIGTERM, then SIGKILL) and clean up."""
        atexit.unregister(self.stop)
        with self._probe_lock:
            probe, self._probe = self._probe, None
        if probe is not None:
            probe.close()
        self._terminate()
        self._cleanup_home()

    def _spawn(self, defs_file: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_WEBSERVER_")}
        env["DAGSTER_HOME"] = str(self.home)
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [
            str(dagster_python()),
            "-m",
            "dagster_webserver",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--python-file",
            str(defs_file),
            "--working-directory",
            str(defs_file.parent),
            *(["--path-prefix", self.path_prefix] if self.path_prefix else []),
            *self._extra_args,
        ]
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in _terminate
        self._proc = subprocess.Popen(
            cmd,
            cwd=str(self.home),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: the code server child joins it
        )

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
        proc, info_url = self._proc, f"{self.url}/server_info"

        def serving() -> bool:
            code = proc.poll()
            if code is not None:
                raise DagsterServerError(
                    f"dagster-webserver exited with {code} before serving; log:\n"
                    + self.log_text()[-4000:]
                )
            try:
                with urllib.request.urlopen(info_url, timeout=2) as resp:
                    return resp.status == 200 and "dagster_version" in json.loads(resp.read())
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                return False

        def loaded() -> list[CodeLocationStatus] | None:
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
                locations = self.code_locations()
                if locations and all(loc.load_status != "LOADING" for loc in locations):
                    return locations
            return None

        try:
            poll_value(serving, bool, max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise DagsterServerError(
                f"dagster-webserver not serving {info_url} in time; log:\n"
                + self.log_text()[-4000:]
            ) from None
        try:
            locations = poll_value(loaded, bool, max(0.0, deadline - time.monotonic()))
        except TimeoutError as exc:
            raise DagsterServerError(f"code locations still loading: {exc}") from None
        assert locations is not None
        errors = [loc for loc in locations if loc.error]
        if errors:
            raise DagsterServerError(
                "code location failed to load: "
                + "; ".join(f"{loc.name}: {loc.error}" for loc in errors)
            )

    def _terminate(self, timeout: float = 15.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            pgid = proc.pid  # start_new_session=True: pgid == pid
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                proc.wait(timeout=timeout)
            # The code server may outlive the webserver for a moment: wait for the group to
            # empty, then kill whatever is left.
            try:
                poll_value(lambda: process_group_alive(pgid), lambda alive: not alive, timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _cleanup_home(self) -> None:
        if self._owns_home:
            shutil.rmtree(self.home, ignore_errors=True)

    # ------------------------------------------------------------------ HTTP helpers

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> Any:
        """POST a GraphQL query to the webserver and return the decoded JSON answer."""
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(
            f"{self.url}/graphql",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def code_locations(self) -> list[CodeLocationStatus]:
        """The workspace's code locations with their load status and load error, if any."""
        data = self.graphql(_LOCATIONS_QUERY)["data"]["workspaceOrError"]
        if data["__typename"] != "Workspace":
            raise DagsterServerError(f"workspace error: {data.get('message')}")
        result = []
        for entry in data["locationEntries"]:
            loaded = entry.get("locationOrLoadError") or {}
            error = None
            if loaded.get("__typename") == "PythonError":
                causes = [c.get("message", "") for c in loaded.get("causes") or []]
                error = "\n".join([loaded.get("message", ""), *causes]).strip()
            result.append(CodeLocationStatus(entry["name"], entry["loadStatus"], error))
        return result

    # ------------------------------------------------------------------ read-back helpers

    def _ask(self, op: str, **question: Any) -> Any:
        """One question to the probe (started on first use, in the Dagster environment)."""
        with self._probe_lock:
            if self._probe is None or self._probe.poll() is not None:
                self._probe = DagsterProbe()
            return self._probe.ask({"op": op, "home": str(self.home), **question})

    def all_asset_keys(self) -> list[list[str]]:
        """Every asset key with recorded events, as sorted lists of parts."""
        return [list(key) for key in self._ask("all_asset_keys")]

    def dynamic_partitions(self, name: str) -> list[str]:
        """The keys of the dynamic partitions definition `name`, in the order added."""
        return list(self._ask("dynamic_partitions", name=name))

    def materializations(
        self, asset_key_parts: Sequence[str], partition: str | None = None
    ) -> list[AssetEventRecord]:
        """Materializations of the asset, oldest first; only ``partition`` if given."""
        return self._asset_events("materialization", asset_key_parts, partition)

    def observations(
        self, asset_key_parts: Sequence[str], partition: str | None = None
    ) -> list[AssetEventRecord]:
        """Observations of the asset, oldest first; only ``partition`` if given."""
        return self._asset_events("observation", asset_key_parts, partition)

    def check_evaluations(
        self, asset_key_parts: Sequence[str], check_name: str | None = None
    ) -> list[CheckEvaluationRecord]:
        """Runless check evaluations of the asset (of ``check_name``, else all), oldest first."""
        records = self._ask("check_evaluations", key=_key_parts(asset_key_parts))
        return [
            CheckEvaluationRecord(**record)
            for record in records
            if check_name is None or record["check_name"] == check_name
        ]

    def check_execution_statuses(
        self, asset_key_parts: Sequence[str], check_name: str
    ) -> list[str]:
        """Statuses in the asset-check execution table the UI reads, oldest first.

        E.g. ``["SUCCEEDED", "FAILED"]``; each reported evaluation adds one row.
        """
        return list(
            self._ask(
                "check_execution_statuses", key=_key_parts(asset_key_parts), check_name=check_name
            )
        )

    def wait_for_materializations(
        self,
        asset_key_parts: Sequence[str],
        count: int = 1,
        partition: str | None = None,
        timeout: float = 10.0,
    ) -> list[AssetEventRecord]:
        """Poll storage until at least ``count`` materializations exist; return them."""
        return poll_value(
            lambda: self.materializations(asset_key_parts, partition),
            lambda records: len(records) >= count,
            timeout,
            what=f"{count} materialization(s) of {list(asset_key_parts)}",
        )

    def wait_for_observations(
        self,
        asset_key_parts: Sequence[str],
        count: int = 1,
        partition: str | None = None,
        timeout: float = 10.0,
    ) -> list[AssetEventRecord]:
        """Poll storage until at least ``count`` observations exist; return them."""
        return poll_value(
            lambda: self.observations(asset_key_parts, partition),
            lambda records: len(records) >= count,
            timeout,
            what=f"{count} observation(s) of {list(asset_key_parts)}",
        )

    def wait_for_check_evaluations(
        self,
        asset_key_parts: Sequence[str],
        check_name: str | None = None,
        count: int = 1,
        timeout: float = 10.0,
    ) -> list[CheckEvaluationRecord]:
        """Poll storage until at least ``count`` check evaluations exist; return them."""
        return poll_value(
            lambda: self.check_evaluations(asset_key_parts, check_name),
            lambda records: len(records) >= count,
            timeout,
            what=f"{count} evaluation(s) of {list(asset_key_parts)}/{check_name}",
        )

    def _asset_events(
        self, kind: str, asset_key_parts: Sequence[str], partition: str | None
    ) -> list[AssetEventRecord]:
        records = self._ask(
            "asset_events", kind=kind, key=_key_parts(asset_key_parts), partition=partition
        )
        return [AssetEventRecord(**record) for record in records]


class DagsterProbe:
    """`tests/support/dagster_probe.py` in the Dagster environment: one JSON line per
    question and per answer. dagster is imported there once, never in this process."""

    def __init__(self, timeout: float = 120.0) -> None:
        self._proc = subprocess.Popen(
            [str(dagster_python()), str(Path(__file__).with_name("dagster_probe.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
        )
        ready = self._read(timeout)
        if ready != "ready":
            raise DagsterServerError(f"the Dagster probe did not start: {ready!r}")

    def poll(self) -> int | None:
        return self._proc.poll()

    def ask(self, question: dict[str, Any], timeout: float = 60.0) -> Any:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(question) + "\n")
        self._proc.stdin.flush()
        return self._read(timeout)

    def _read(self, timeout: float) -> Any:
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        line = self._proc.stdout.readline() if ready else ""
        if not line:
            code = self._proc.poll()
            raise DagsterServerError(f"the Dagster probe gave no answer (exit status {code})")
        reply = json.loads(line)
        if "error" in reply:
            raise DagsterServerError(f"the Dagster probe failed: {reply['error']}")
        return reply["ok"]

    def close(self) -> None:
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
