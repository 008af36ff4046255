"""signals.py: handlers only set flags, so a signal landing while the main thread holds a
lock cannot deadlock; the previous handlers come back."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import pytest

from asset_watcher.signals import HangupCounter, SignalFlags, handle_signals
from tests.conftest import REPO_ROOT

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# A deadlocked child is killed after this; a healthy one ends in well under a second.
CHILD_TIMEOUT_SECONDS = 30.0
# The control child is expected to hang: this only bounds how long we let it.
DEADLOCK_PROBE_SECONDS = 3.0

# The main thread holds the lock `threading.Event.wait` holds around its blocking wait
# (the stop event's condition lock: what the agent's main loop holds a hundred times a
# second) while signals land. `raise_signal` runs the Python handler before it returns,
# so each handler runs with the lock held.
HOLD_THE_LOCK = """\
import signal, sys, threading
from asset_watcher.signals import handle_signals

stop = threading.Event()
{install}
with stop._cond:
    for signum in (signal.SIGHUP, signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.raise_signal(signum)
    print("handlers returned", flush=True)
{report}
"""


def run_child(install: str, report: str, timeout: float) -> subprocess.CompletedProcess[str]:
    source = HOLD_THE_LOCK.format(install=install, report=report)
    return subprocess.run(
        [sys.executable, "-c", source],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_a_signal_landing_while_the_main_thread_holds_the_event_lock_sets_the_flags() -> None:
    result = run_child(
        install="handlers = handle_signals()\nflags = handlers.__enter__()",
        report=(
            "print(flags.stop_signal, flags.hangups, flush=True)\n"
            "handlers.__exit__(None, None, None)"
        ),
        timeout=CHILD_TIMEOUT_SECONDS,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["handlers returned", "SIGTERM 2"]


def test_the_old_design_setting_the_event_in_the_handler_deadlocks_in_the_same_harness() -> None:
    """The control: the test above would catch a handler that calls `Event.set()`."""
    with pytest.raises(subprocess.TimeoutExpired):
        run_child(
            install=(
                "for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n"
                "    signal.signal(signum, lambda signum, frame: stop.set())"
            ),
            report="",
            timeout=DEADLOCK_PROBE_SECONDS,
        )


def test_stop_signals_name_themselves_and_hangups_count() -> None:
    with handle_signals() as flags:
        signal.raise_signal(signal.SIGHUP)
        signal.raise_signal(signal.SIGHUP)
        assert flags.hangups == 2 and not flags.stop_requested
        signal.raise_signal(signal.SIGINT)
        assert flags.stop_signal == "SIGINT"
        signal.raise_signal(signal.SIGTERM)
        assert flags.stop_signal == "SIGTERM"


def test_hangup_may_stop_instead_of_reloading() -> None:
    with handle_signals(hangup="stop") as flags:
        signal.raise_signal(signal.SIGHUP)
    assert flags.stop_signal == "SIGHUP" and flags.hangups == 0


def test_the_previous_handlers_come_back_even_after_an_error() -> None:
    seen: list[int] = []

    def mine(signum: int, frame: object) -> None:
        seen.append(signum)

    before = {signum: signal.signal(signum, mine) for signum in SIGNALS}
    try:
        with pytest.raises(RuntimeError), handle_signals():
            assert all(signal.getsignal(signum) is not mine for signum in SIGNALS)
            raise RuntimeError("boom")
        assert all(signal.getsignal(signum) is mine for signum in SIGNALS)
        signal.raise_signal(signal.SIGHUP)
        assert seen == [signal.SIGHUP]
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def test_off_the_main_thread_nothing_is_installed() -> None:
    before = {signum: signal.getsignal(signum) for signum in SIGNALS}
    outcome: list[SignalFlags] = []

    def body() -> None:
        with handle_signals() as flags:
            outcome.append(flags)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(10)
    assert outcome and outcome[0].hangups == 0 and not outcome[0].stop_requested
    assert {signum: signal.getsignal(signum) for signum in SIGNALS} == before


def test_a_batch_of_hangups_is_taken_as_one_reload() -> None:
    flags = SignalFlags()
    counter = HangupCounter(flags)
    assert not counter.take()
    flags.hangups += 3
    assert counter.take()
    assert not counter.take()
    flags.hangups += 1
    assert counter.take()
