"""Expected failures, each mapped to an exit status and a one-line message (no traceback)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # work failed: reports left undelivered, Dagster unreachable
EXIT_USAGE = 2  # usage or configuration error, state directory held by another agent


class AssetWatcherError(Exception):
    """Base of the failures the CLI reports as one line and an exit status."""

    exit_status = EXIT_FAILED


class ConfigError(AssetWatcherError):
    """Every problem found in a configuration, one `key.path: message` line each."""

    exit_status = EXIT_USAGE

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class StateLockedError(AssetWatcherError):
    """Another agent holds the state directory."""

    exit_status = EXIT_USAGE

    def __init__(self, directory: str, holder: str) -> None:
        self.directory = directory
        self.holder = holder
        super().__init__(
            f"state directory {directory} is held by another asset-watcher ({holder}); "
            "one agent per state directory"
        )


class StateError(AssetWatcherError):
    """The state database cannot be opened or written (full disk, permissions, corruption)."""


class StateVersionError(StateError):
    """The state database was written by a newer release; it is left as it is."""

    exit_status = EXIT_USAGE
