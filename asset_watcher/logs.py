"""Log formatting for journald (text) and machines (JSON), with secrets redacted.

The token never reaches a log line by design; the redaction here is the second lock on
that door, applied to the fully formatted line, traceback included.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import datetime, timezone

REDACTED = "**********"
_format = "text"  # of the handler setup_logging installed last


class RedactingFormatter(logging.Formatter):
    """Formats a record, then replaces every secret with asterisks."""

    def __init__(self, inner: logging.Formatter, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.inner = inner
        self.secrets = [s for s in secrets if s]

    def format(self, record: logging.LogRecord) -> str:
        line = self.inner.format(record)
        for secret in self.secrets:
            line = line.replace(secret, REDACTED)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update({k: v for k, v in fields.items() if k not in entry})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str = "info", fmt: str = "text", secrets: Iterable[str] = ()) -> None:
    """Send logs to stderr (journald takes them); call again to add newly known secrets."""
    global _format
    _format = fmt
    inner: logging.Formatter
    if fmt == "json":
        inner = JsonFormatter()
    else:
        inner = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(inner, secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_asset_watcher", False):
            root.removeHandler(old)
    handler._asset_watcher = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("urllib3", "watchdog"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def add_secret(secret: str) -> None:
    """Redact one more secret (a token read on reload) without touching level or format."""
    if not secret:
        return
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter
        ours = getattr(handler, "_asset_watcher", False)
        if ours and isinstance(formatter, RedactingFormatter) and secret not in formatter.secrets:
            formatter.secrets.append(secret)


def note(message: str, level: int = logging.INFO, **fields: object) -> None:
    """A line for the person at the terminal (a summary, a hint, an error) on stderr,
    whatever --log-level says: as it is with text logs; with JSON logs one JSON line with
    `fields` added, so that everything on stderr is JSON lines then."""
    if _format != "json":
        print(f"asset-watcher: {message}" if level >= logging.WARNING else message, file=sys.stderr)
        return
    logger = logging.getLogger("asset_watcher")
    record = logger.makeRecord(
        logger.name, level, "(note)", 0, "%s", (message,), None, extra={"fields": fields}
    )
    logger.handle(record)  # not filtered by level: text mode prints it too
