"""`asset-watcher demo`: a local Dagster webserver plus the watcher on ./drop, for a first look.

Everything lives under the current folder: `./drop` (watched), `./demo/config.toml` (kept
across runs, edit it freely), `./demo/state`, and a throwaway `./demo/dagster_home`. The
webserver runs in its own process group, so it outlives neither the demo nor a Ctrl-C: the
demo stops the watcher first, then the webserver and its code server.

The demo owns SIGINT/SIGTERM/SIGHUP for its whole life (the webserver start included,
before any agent exists) through `signals.handle_signals`, and hands the flags to the
agent, whose main loop stops on them. SIGHUP stops the demo too (its terminal closed):
a reload would re-read ./demo/config.toml without the demo's own webserver URL. dagster
itself is not imported here: the webserver subprocess loads
`asset_watcher.dagster.build_definitions` from the generated `./demo/defs.py`.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from asset_watcher.config import Config, load_config
from asset_watcher.errors import AssetWatcherError
from asset_watcher.signals import SignalFlags, handle_signals

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_PORT = 3000
STARTUP_TIMEOUT_SECONDS = 180.0
STOP_TIMEOUT_SECONDS = 15.0
POLL_SECONDS = 0.2

_LOCATIONS_QUERY = """{ workspaceOrError { __typename ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


class DemoError(AssetWatcherError):
    """The demo could not start (port taken, webserver failed, extra missing)."""


@dataclass(frozen=True)
class DemoLayout:
    """Where the demo keeps its files, all under one folder (the current one)."""

    root: Path

    @property
    def drop(self) -> Path:
        return self.root / "drop"

    @property
    def folder(self) -> Path:
        return self.root / "demo"

    @property
    def config(self) -> Path:
        return self.folder / "config.toml"

    @property
    def state(self) -> Path:
        return self.folder / "state"

    @property
    def dagster_home(self) -> Path:
        return self.folder / "dagster_home"

    @property
    def defs(self) -> Path:
        return self.folder / "defs.py"

    @property
    def webserver_log(self) -> Path:
        return self.folder / "webserver.log"


def _toml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # JSON string escapes are valid TOML


def demo_config_text(layout: DemoLayout, url: str) -> str:
    """A small configuration showing the main ideas: globs to keys, row counts, checks."""
    drop = _toml_string(str(layout.drop))
    return f"""\
# Written by `asset-watcher demo`; kept on later runs, so edit it freely.
# The demo always reports to its own webserver, whatever dagster.url says.
[dagster]
url = {_toml_string(url)}

[state]
directory = {_toml_string(str(layout.state))}

[defaults]
settle_seconds = 1.0

# The agent's own heartbeat: asset_watcher/agents/<this host> is observed every 30 s with
# its version, rules and outbox counts (README "Fleet").
[heartbeat]
every_seconds = 30

# CSV files: each one is a new materialization of demo/csv_files, with its row count.
[[watch]]
name = "demo-csv"
path = {drop}
glob = "**/*.csv"
asset_key = "demo/csv_files"
description = "CSV files dropped into ./drop"
count_rows = true

[[watch.checks]]
type = "size"
min_bytes = 1

[[watch.checks]]
type = "row_count"
min_rows = 1

[[watch.checks]]
type = "name_regex"
name = "plain_name"
pattern = '^[A-Za-z0-9_.-]+$'
severity = "WARN"

# JSON files: checked to parse.
[[watch]]
name = "demo-json"
path = {drop}
glob = "**/*.json"
asset_key = "demo/json_files"
description = "JSON files dropped into ./drop"

[[watch.checks]]
type = "json"

# Anything else.
[[watch]]
name = "demo-other"
path = {drop}
asset_key = "demo/other_files"
description = "Other files dropped into ./drop"

[[watch.checks]]
type = "size"
min_bytes = 1
severity = "WARN"
"""


def prepare(layout: DemoLayout, url: str) -> None:
    """Create the folders; write the config once, the defs file and instance config always."""
    for folder in (layout.drop, layout.folder, layout.state, layout.dagster_home):
        folder.mkdir(parents=True, exist_ok=True)
    if not layout.config.exists():
        layout.config.write_text(demo_config_text(layout, url), encoding="utf-8")
    layout.defs.write_text(
        "# Written by `asset-watcher demo`: the Dagster side of the demo.\n"
        "from asset_watcher.dagster import build_definitions\n\n"
        f"defs = build_definitions({str(layout.config)!r})\n",
        encoding="utf-8",
    )
    instance_yaml = layout.dagster_home / "dagster.yaml"
    if not instance_yaml.exists():
        instance_yaml.write_text("telemetry:\n  enabled: false\n", encoding="utf-8")


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise DemoError(
                    f"port {port} on {HOST} is already in use (another Dagster?); "
                    "choose another with --port"
                ) from None
            raise DemoError(f"cannot listen on {HOST}:{port}: {exc.strerror}") from None


class Webserver:
    """A `dagster-webserver` subprocess in its own process group, loading the demo defs."""

    def __init__(self, layout: DemoLayout, port: int) -> None:
        self.layout = layout
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ)
        env["DAGSTER_HOME"] = str(self.layout.dagster_home)
        # The code server must import this very asset_watcher, installed or not.
        package_parent = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_parent, env.get("PYTHONPATH", "")) if p
        )
        command = [
            sys.executable,
            "-m",
            "dagster_webserver",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--python-file",
            str(self.layout.defs),
            "--working-directory",
            str(self.layout.folder),
        ]
        with open(self.layout.webserver_log, "ab") as log_file:
            self.process = subprocess.Popen(
                command,
                cwd=self.layout.folder,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the demo only; it stops the group
            )

    def wait_ready(
        self, stop: threading.Event, timeout_seconds: float, signals: SignalFlags | None = None
    ) -> bool:
        """True once it serves with the code location loaded; False if stopped first
        (`stop` set, or a stop signal flagged in `signals`)."""
        deadline = time.monotonic() + timeout_seconds
        while not stop.is_set() and not (signals is not None and signals.stop_requested):
            self._raise_if_exited()
            if self._serving() and self._location_loaded():
                return True
            if time.monotonic() > deadline:
                raise DemoError(
                    f"dagster-webserver did not come up within {timeout_seconds:.0f}s; "
                    f"see {self.layout.webserver_log}"
                )
            stop.wait(POLL_SECONDS)
        return False

    def _raise_if_exited(self) -> None:
        assert self.process is not None
        code = self.process.poll()
        if code is not None:
            raise DemoError(
                f"dagster-webserver exited with status {code}; see {self.layout.webserver_log}"
            )

    def _serving(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/server_info", timeout=2) as answer:
                return bool(answer.status == 200)
        except (OSError, ValueError):
            return False

    def _location_loaded(self) -> bool:
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": _LOCATIONS_QUERY}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                data = json.loads(answer.read())["data"]["workspaceOrError"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        entries = data.get("locationEntries") or []
        if not entries or any(entry["loadStatus"] == "LOADING" for entry in entries):
            return False
        for entry in entries:
            loaded = entry.get("locationOrLoadError") or {}
            if loaded.get("__typename") == "PythonError":
                raise DemoError(
                    f"Dagster could not load the demo definitions: {loaded.get('message')}"
                    f"(see {self.layout.webserver_log})"
                )
        return True

    def stop(self) -> None:
        """SIGTERM the process group (webserver and code server), SIGKILL what lingers."""
        process, self.process = self.process, None
        if process is None:
            return
        group = process.pid  # start_new_session: the group id is the leader's pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            log.warning("dagster-webserver did not stop in %.0fs, killing it", STOP_TIMEOUT_SECONDS)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while process_group_alive(group) and time.monotonic() < deadline:
            time.sleep(0.05)  # the code server exits a moment after the webserver
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_TIMEOUT_SECONDS)


def process_group_alive(group: int) -> bool:
    """Whether any process of `group` still runs (one we may not signal counts)."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch_webserver(webserver: Webserver, stop: threading.Event, died: threading.Event) -> None:
    """Stop the demo if the webserver dies under it (not when the demo stops it)."""
    process = webserver.process
    assert process is not None
    while not stop.is_set():
        if process.poll() is not None:
            died.set()
            stop.set()
            return
        stop.wait(POLL_SECONDS)


def run_demo(
    port: int = DEFAULT_PORT, *, root: Path | None = None, stop: threading.Event | None = None
) -> int:
    """Run the demo until SIGINT/SIGTERM (or `stop`); 0 after a clean stop."""
    if importlib.util.find_spec("dagster_webserver") is None:
        raise DemoError("the demo needs Dagster's webserver: pip install 'asset-watcher[dagster]'")
    stop = stop or threading.Event()
    layout = DemoLayout((root or Path.cwd()).resolve())
    url = f"http://{HOST}:{port}"
    _check_port_free(port)
    prepare(layout, url)
    config = load_config(layout.config)
    config = config.model_copy(update={"dagster": config.dagster.model_copy(update={"url": url})})
    webserver = Webserver(layout, port)
    died = threading.Event()
    with handle_signals(hangup="stop") as signals:
        print(f"starting dagster-webserver on {url} (log: {layout.webserver_log}) ...", flush=True)
        webserver.start()
        monitor = threading.Thread(
            target=_watch_webserver, args=(webserver, stop, died), name="demo-webserver-monitor"
        )
        status = 0
        try:
            if webserver.wait_ready(stop, STARTUP_TIMEOUT_SECONDS, signals):
                monitor.start()
                _print_banner(layout, url)
                status = _run_watcher(config, layout.config, stop, signals)
        finally:
            stop.set()
            if monitor.is_alive():
                monitor.join()
            webserver.stop()
    if died.is_set():
        raise DemoError(f"dagster-webserver exited unexpectedly; see {layout.webserver_log}")
    print("demo stopped", flush=True)
    return status


def _print_banner(layout: DemoLayout, url: str) -> None:
    print(
        "\nasset-watcher demo is running\n"
        f"  Dagster UI:   {url}/assets\n"
        f"  drop files:   {layout.drop}   (try: printf 'id,name\\n1,a\\n' > "
        f"{layout.drop / 'hello.csv'})\n"
        f"  config:       {layout.config}\n"
        "Ctrl-C stops both.\n",
        flush=True,
    )


def _run_watcher(
    config: Config, config_path: Path, stop: threading.Event, signals: SignalFlags
) -> int:
    from asset_watcher.agent import run_agent

    return run_agent(config, config_path=str(config_path), stop=stop, signals=signals)
