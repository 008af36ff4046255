"""`asset-watcher run` as a process: signals, sd_notify on a real socket, the state lock,
a real inotify queue overflow, and a real inotify watch limit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from asset_watcher.state import StateStore
from tests.support.agent_run import (
    AgentProcess,
    barrier,
    poll_until,
    reported_paths,
    wait_reported,
    write,
)
from tests.support.sink import Sink


def config_text(sink: Sink, state: Path, *rules: str, **defaults: object) -> str:
    settings = {"settle_seconds": 0.2, "rescan_interval_seconds": 0, **defaults}
    lines = [
        "[dagster]",
        f'url = "{sink.url}"',
        "timeout_seconds = 5",
        "max_in_flight = 1",  # barrier() relies on reports reaching the sink in order
        "[state]",
        f'directory = "{state}"',
        "[defaults]",
        *(f"{key} = {json.dumps(value)}" for key, value in settings.items()),
    ]
    return "\n".join(lines) + "\n" + "\n".join(textwrap.dedent(rule) for rule in rules)


def rule(path: Path, asset_key: str = "drop/{stem}", **extra: object) -> str:
    body = [f'path = "{path}"', f'asset_key = "{asset_key}"']
    body += [f"{key} = {json.dumps(value)}" for key, value in extra.items()]
    return "[[watch]]\n" + "\n".join(body) + "\n"


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for process in started:
        process.kill()


def spawn(
    processes: list[AgentProcess],
    config: Path,
    name: str = "agent",
    env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
) -> AgentProcess:
    process = AgentProcess(
        config, config.parent / f"{name}.log", env=env or {}, prefix=prefix or []
    ).start()
    processes.append(process)
    return process


def test_sigterm_exits_0_and_loses_nothing(
    tmp_path: Path, sink: Sink, drop: Path, processes: list[AgentProcess]
) -> None:
    config = tmp_path / "config.toml"
    # One request at a time (config_text) to a slow Dagster: most reports are still queued.
    text = config_text(sink, tmp_path / "state", rule(drop))
    config.write_text(text)
    files = [write(drop / f"file{i}.csv", f"{i}\n") for i in range(6)]
    sink.set_delay(0.5)
    agent = spawn(processes, config)
    sink.wait_for_count(1, timeout=15)  # one request in flight
    agent.signal(signal.SIGTERM)
    assert agent.wait(timeout=30) == 0
    assert "report(s) left in the outbox" in agent.log()
    with StateStore(tmp_path / "state", lock=False, create=False) as store:
        left = store.counts().pending
    delivered = {r.json["metadata"]["path"] for r in sink.requests if r.status == 200}
    assert left >= 1 and len(delivered) + left >= len(files)

    sink.reset()
    again = spawn(processes, config, "again")
    poll_until(
        lambda: {str(f) for f in files} <= set(reported_paths(sink)), 15, what="all reported"
    )
    again.signal(signal.SIGINT)
    assert again.wait(timeout=30) == 0


def test_sighup_reloads_a_good_configuration_and_keeps_the_old_one_on_a_broken_one(
    tmp_path: Path, sink: Sink, drop: Path, processes: list[AgentProcess]
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    config = tmp_path / "config.toml"
    config.write_text(config_text(sink, tmp_path / "state", rule(drop)))
    agent = spawn(processes, config)
    agent.wait_ready()
    barrier(sink, drop)

    two_rules = config_text(sink, tmp_path / "state", rule(drop), rule(other, "other/{stem}"))
    config.write_text(two_rules)
    agent.signal(signal.SIGHUP)
    agent.wait_log("configuration reloaded")
    wait_reported(sink, write(other / "new-rule.csv"))

    config.write_text("[[watch]]\npath = 'relative/path'\n")  # two problems
    agent.signal(signal.SIGHUP)
    log = agent.wait_log("not reloaded; keeping the running one")
    assert "watch[1].path" in log and "watch[1].asset_key" in log
    wait_reported(sink, write(drop / "still-watched.csv"))
    wait_reported(sink, write(other / "still-watched-too.csv"))
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0


def test_a_storm_of_sighups_while_files_flow_then_sigterm_exits_0_reporting_each_once(
    tmp_path: Path, sink: Sink, drop: Path, processes: list[AgentProcess]
) -> None:
    """Hundreds of SIGHUPs land on a working agent (its handlers only count them; the main
    loop reloads once per batch): it keeps reporting, every file exactly once, and still
    stops cleanly on SIGTERM."""
    rounds, hangups_per_round, files_per_round = 6, 50, 10
    config = tmp_path / "config.toml"
    config.write_text(config_text(sink, tmp_path / "state", rule(drop)))
    agent = spawn(processes, config)
    agent.wait_ready()  # the handlers are in place: a SIGHUP no longer kills it
    barrier(sink, drop)
    files: list[Path] = []
    for round_ in range(rounds):
        reloads = agent.log().count("configuration reloaded")
        for i in range(hangups_per_round):
            os.kill(agent.pid, signal.SIGHUP)
            if i % (hangups_per_round // files_per_round) == 0:
                files.append(write(drop / f"storm-{round_}-{i:02d}.csv", f"{round_},{i}\n"))
        # Files flow while it reloads: the next round starts once this one's reload ran.
        agent.wait_log("configuration reloaded", timeout=15, count=reloads + 1)
    assert len(files) == rounds * files_per_round
    poll_until(
        lambda: {str(f) for f in files} <= set(reported_paths(sink)), 30, what="all reported"
    )
    agent.signal(signal.SIGTERM)
    assert agent.wait(timeout=30) == 0
    log = agent.log()
    assert "received SIGTERM, stopping" in log
    assert "Traceback" not in log
    paths = reported_paths(sink)
    assert {str(f): paths.count(str(f)) for f in files} == {str(f): 1 for f in files}


def test_sd_notify_messages_on_a_real_notify_socket(
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    sink: Sink,
    drop: Path,
    processes: list[AgentProcess],
) -> None:
    address = tmp_path_factory.mktemp("n") / "notify"  # short: sun_path holds 108 bytes
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(address))
    receiver.settimeout(0.2)
    messages: list[str] = []
    done = threading.Event()

    def receive() -> None:
        while not done.is_set():
            try:
                messages.append(receiver.recv(4096).decode())
            except TimeoutError:
                continue

    reader = threading.Thread(target=receive)
    reader.start()
    try:
        config = tmp_path / "config.toml"
        config.write_text(config_text(sink, tmp_path / "state", rule(drop)))
        env = {"NOTIFY_SOCKET": str(address), "WATCHDOG_USEC": "400000"}  # ping every 0.2s
        agent = spawn(processes, config, env=env)
        poll_until(lambda: "READY=1" in messages, 15, what="READY=1")
        poll_until(lambda: messages.count("WATCHDOG=1") >= 3, 10, what="watchdog pings")
        agent.signal(signal.SIGHUP)
        poll_until(lambda: any(m.startswith("RELOADING=1\n") for m in messages), 10)
        poll_until(lambda: messages.count("READY=1") >= 2, 10, what="READY=1 after reload")
        agent.signal(signal.SIGTERM)
        assert agent.wait() == 0
        poll_until(lambda: "STOPPING=1" in messages, 5, what="STOPPING=1")
    finally:
        done.set()
        reader.join()
        receiver.close()
    statuses = [m for m in messages if m.startswith("STATUS=")]
    assert any("watching 1/1 folder(s)" in m for m in statuses), statuses
    assert all("\n" not in m for m in statuses)
    reloading = next(m for m in messages if m.startswith("RELOADING=1"))
    assert reloading.split("\n")[1].startswith("MONOTONIC_USEC=")
    assert messages.index("READY=1") < messages.index("STOPPING=1")


def test_a_second_agent_on_the_same_state_exits_2_naming_the_holder(
    tmp_path: Path, sink: Sink, drop: Path, processes: list[AgentProcess]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(config_text(sink, tmp_path / "state", rule(drop)))
    first = spawn(processes, config, "first")
    first.wait_ready()
    second = spawn(processes, config, "second")
    assert second.wait(timeout=30) == 2
    assert f"pid {first.pid}" in second.log()
    assert "Traceback" not in second.log()
    first.signal(signal.SIGTERM)
    assert first.wait() == 0


def _state(pid: int) -> str:
    """The process state letter from /proc/PID/stat (T: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _max_queued_events() -> int:
    return int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())


@pytest.mark.skipif(not Path("/proc/sys/fs/inotify").is_dir(), reason="needs Linux inotify")
def test_inotify_queue_overflow_is_noticed_and_rescanned(
    tmp_path: Path, sink: Sink, drop: Path, processes: list[AgentProcess]
) -> None:
    """SIGSTOP the agent, make the kernel queue overflow, SIGCONT: the file whose events
    were dropped is found by the rescan the overflow triggers (periodic rescans are off)."""
    limit = _max_queued_events()
    if limit > 200_000:
        pytest.skip(f"fs.inotify.max_queued_events = {limit}: too many events to overflow")
    config = tmp_path / "config.toml"
    config.write_text(config_text(sink, tmp_path / "state", rule(drop)))
    agent = spawn(processes, config)
    agent.wait_ready()
    barrier(sink, drop)
    agent.signal(signal.SIGSTOP)
    try:
        poll_until(lambda: _state(agent.pid) in ("T", "t"), 10, what="agent stopped")
        noise = [drop / ".noise-a", drop / ".noise-b"]  # ignored names
        for i in range(limit + limit // 2):  # alternate: identical events in a row merge
            with open(noise[i % 2], "wb"):
                pass
        lost = write(drop / "lost.csv")
    finally:
        agent.signal(signal.SIGCONT)
    wait_reported(sink, lost, timeout=30)
    assert "inotify event queue overflowed" in agent.log()
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0


def _unshare_with_watch_limit(watches: int) -> list[str] | None:
    """A prefix running the agent in a new user namespace with its own (namespaced)
    inotify watch limit: the host's limit is untouched."""
    unshare = shutil.which("unshare")
    if unshare is None or not Path("/proc/sys/user/max_inotify_watches").exists():
        return None
    prefix = [
        unshare,
        "--user",
        "--map-root-user",
        "sh",
        "-c",
        f'echo {watches} > /proc/sys/user/max_inotify_watches && exec "$@"',
        "sh",
    ]
    probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30, check=False)
    return prefix if probe.returncode == 0 else None


@pytest.mark.parametrize("when", ["at-start", "new-subfolder"])
def test_inotify_watch_limit_names_the_sysctl_and_falls_back_to_rescans(
    tmp_path: Path, sink: Sink, drop: Path, processes: list[AgentProcess], when: str
) -> None:
    existing = 3 if when == "new-subfolder" else 8
    for i in range(existing):
        (drop / f"d{i}").mkdir()
    prefix = _unshare_with_watch_limit(watches=5)
    if prefix is None:
        pytest.skip("cannot lower the inotify watch limit in a user namespace here")
    config = tmp_path / "config.toml"
    config.write_text(
        config_text(
            sink, tmp_path / "state", rule(drop), observer="inotify", poll_interval_seconds=0.2
        )
    )
    agent = spawn(processes, config, prefix=prefix)
    agent.wait_ready()
    if when == "new-subfolder":
        for i in range(existing, existing + 4):
            (drop / f"d{i}").mkdir()
    log = agent.wait_log("fs.inotify.max_user_watches")
    assert "rescanned every 0.2s" in log
    late = write(drop / f"d{existing + 1}" / "late.csv") if when == "new-subfolder" else None
    inside = write(drop / "d2" / "inside.csv")
    wait_reported(sink, inside)
    if late is not None:
        wait_reported(sink, late)
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0
