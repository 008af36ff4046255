"""Command line: parse, load the config, call one function, print, return an exit status."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from asset_watcher import __version__
from asset_watcher.config import Config, dump_json, load_config
from asset_watcher.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, AssetWatcherError, ConfigError
from asset_watcher.logs import note, setup_logging

log = logging.getLogger("asset_watcher")

# How long `scan` keeps retrying delivery before it exits 1 and leaves the rest queued,
# in units of the request timeout.
SCAN_PATIENCE_TIMEOUTS = 3


def _common_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("-c", "--config", default=default, help="configuration file")
    parser.add_argument(
        "--log-format", choices=("text", "json"), default=default, help="log line format"
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=default,
        help="least severe level logged",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asset-watcher",
        description="Report files that land on this host to Dagster's External Assets API.",
    )
    parser.add_argument("--version", action="version", version=f"asset-watcher {__version__}")
    _common_options(parser, None)
    # The same options after the subcommand; SUPPRESS keeps them from hiding earlier ones.
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", parents=[common], help="the service: catch-up scan, then watch and report"
    )
    run.set_defaults(handler=cmd_run)

    scan = commands.add_parser("scan", parents=[common], help="report new or changed files, once")
    scan.add_argument(
        "--dry-run", action="store_true", help="print what would be sent, change nothing"
    )
    scan.add_argument("--force", action="store_true", help="report unchanged files too")
    scan.add_argument("--json", action="store_true", help="one JSON object per report on stdout")
    scan.set_defaults(handler=cmd_scan)

    check = commands.add_parser(
        "check-config", parents=[common], help="validate and print the resolved configuration"
    )
    check.set_defaults(handler=cmd_check_config)

    explain = commands.add_parser(
        "explain", parents=[common], help="which rule owns each path, and what it would report"
    )
    explain.add_argument("paths", nargs="+", metavar="PATH")
    explain.set_defaults(handler=cmd_explain)

    status = commands.add_parser("status", parents=[common], help="tracked files and outbox state")
    status.add_argument("--json", action="store_true", help="print a JSON object")
    status.set_defaults(handler=cmd_status)

    retry = commands.add_parser(
        "retry-dead", parents=[common], help="requeue dead-lettered reports"
    )
    retry.set_defaults(handler=cmd_retry_dead)

    report = commands.add_parser(
        "report", parents=[common], help="send one report by hand, through the same reporter"
    )
    report.add_argument("event", choices=("materialization", "observation", "check"))
    report.add_argument("--asset-key", required=True, help="key parts separated by '/'")
    report.add_argument("--partition")
    report.add_argument("--description")
    report.add_argument("--data-version")
    report.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=TEXT|KEY:=JSON",
        help="metadata entry; repeatable",
    )
    report.add_argument("--check-name", help="for `check`: the check's name")
    verdict = report.add_mutually_exclusive_group()
    verdict.add_argument("--passed", dest="passed", action="store_true", default=None)
    verdict.add_argument("--failed", dest="passed", action="store_false")
    report.add_argument("--severity", choices=("WARN", "ERROR"), default="ERROR")
    report.set_defaults(handler=cmd_report)

    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="try it: a local Dagster webserver and the watcher on ./drop (needs the extra)",
    )
    demo.add_argument(
        "--port", type=int, default=3000, help="webserver port on 127.0.0.1 (default 3000)"
    )
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level or "info", args.log_format or "text")
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        for problem in exc.problems:
            note(problem, logging.ERROR)
        return EXIT_USAGE
    except AssetWatcherError as exc:
        note(str(exc), logging.ERROR)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `asset-watcher check-config | head`
        sys.stderr.close()
        return EXIT_OK


def _load(args: argparse.Namespace, *, require_file: bool = True) -> Config:
    config = load_config(args.config, require_file=require_file)
    secrets = [config.token.get_secret_value()] if config.token else []
    setup_logging(args.log_level or "info", args.log_format or "text", secrets)
    return config


# -- run ----------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from asset_watcher.agent import run_agent

    config = _load(args)
    return run_agent(config, config_path=args.config)


# -- scan ---------------------------------------------------------------------------------


def cmd_scan(args: argparse.Namespace) -> int:
    from asset_watcher.rules import compile_rules
    from asset_watcher.scan import scan
    from asset_watcher.state import StateStore
    from asset_watcher.status import open_existing_store

    config = _load(args)
    rules = compile_rules(config)
    if not rules:
        log.warning("no [[watch]] rules configured in %s; nothing to scan", config.source)
    if args.dry_run:
        # Read what was reported before, hold no lock, write nothing.
        store = open_existing_store(config, read_only=True)
    else:
        store = StateStore(config.state.resolved_directory())
    with store:
        printer = _ReportPrinter(config, as_json=args.json, dry_run=args.dry_run)
        show_progress = sys.stderr.isatty() and not args.json and args.log_format != "json"
        progress = _progress_printer() if show_progress else None
        result = scan(
            rules, store, force=args.force, dry_run=args.dry_run, emit=printer, progress=progress
        )
        if progress is not None:
            print(file=sys.stderr)
        scanned = {
            "files_seen": result.files_seen,
            "reported": result.reported,
            "unchanged": result.unchanged,
            "skipped": result.skipped,
        }
        summary = (
            f"{result.files_seen} files seen, {result.reported} reported, "
            f"{result.unchanged} unchanged, {result.skipped} skipped"
        )
        if args.dry_run:
            note(f"dry run: {summary}; nothing sent or recorded", dry_run=True, **scanned)
            return EXIT_OK
        return _deliver_and_summarize(config, store, summary, scanned)


def _deliver_and_summarize(
    config: Config, store: Any, summary: str, scanned: dict[str, int]
) -> int:
    """Deliver, print a summary; exit 1 when reports of this or earlier runs are still
    pending or this run dead-lettered some (older dead letters alone do not fail a run:
    `status` shows them)."""
    delivered, set_aside, pending_error, dead_error = 0, 0, None, None
    before = store.counts()
    dead_before = before.dead
    if before.pending:  # an idle rescan never loads the HTTP stack
        from asset_watcher.delivery import Deliverer
        from asset_watcher.reporter import Reporter

        reporter = Reporter(config.dagster, config.token)
        try:
            patience = SCAN_PATIENCE_TIMEOUTS * config.dagster.timeout_seconds
            delivery = Deliverer(store, reporter).drain(patience)
        finally:
            reporter.close()
        delivered, set_aside = delivery.delivered, delivery.set_aside
        pending_error, dead_error = delivery.pending_error, delivery.dead_error
    counts = store.counts()
    aside = f", {set_aside} set aside" if set_aside else ""
    note(
        f"{summary}; {delivered} delivered, {counts.pending} pending, {counts.dead} dead{aside}",
        **scanned,
        delivered=delivered,
        pending=counts.pending,
        dead=counts.dead,
        set_aside=set_aside,
    )
    if set_aside:
        note(
            f"{set_aside} repeated partitioned check evaluation(s) set aside (Dagster keeps "
            "one per asset, check and partition); `asset-watcher status` lists them",
            logging.WARNING,
        )
    if dead_before:
        note(
            f"{dead_before} report(s) were dead-lettered before this run; "
            "`asset-watcher status` lists them, `asset-watcher retry-dead` requeues them",
            logging.WARNING,
        )
    dead_now = counts.dead - dead_before
    if counts.pending or dead_now > 0:
        if counts.pending:
            why = f": {pending_error}" if pending_error else " (not attempted in this run)"
            note(f"{counts.pending} report(s) left undelivered{why}", logging.ERROR)
        if dead_now > 0:
            why = f", the latest: {dead_error}" if dead_error else ""
            note(f"{dead_now} report(s) dead-lettered by Dagster in this run{why}", logging.ERROR)
        return EXIT_FAILED
    return EXIT_OK


class _ReportPrinter:
    """Prints each report as the scan produces it: a line, or one JSON object."""

    def __init__(self, config: Config, *, as_json: bool, dry_run: bool) -> None:
        self.base_url = config.dagster.url
        self.as_json = as_json
        self.dry_run = dry_run

    def url(self, kind: Any) -> str:
        from asset_watcher.reporter import endpoint_url

        return endpoint_url(self.base_url, kind)

    def __call__(self, report: Any, match: Any) -> None:
        from asset_watcher.paths import display_path, utf8_path

        if self.as_json:
            entry = {
                "event": report.kind.value,
                "url": self.url(report.kind),
                "path": utf8_path(match.path),
                "asset_key": list(report.asset_key),
                "partition": report.partition,
                "body": report.body,
            }
            print(json.dumps(entry, ensure_ascii=False), flush=True)
            return
        key = "/".join(report.asset_key)
        partition = f" [{report.partition}]" if report.partition else ""
        print(f"{report.kind.value} {key}{partition} <- {display_path(match.path)}")
        if self.dry_run:
            print(f"  POST {self.url(report.kind)} {json.dumps(report.body, ensure_ascii=False)}")


def _progress_printer() -> Callable[[int], None]:
    """Called after each folder; redraws the line at most five times a second."""
    started = time.monotonic()
    shown_at = 0.0

    def show(files_seen: int) -> None:
        nonlocal shown_at
        now = time.monotonic()
        if now - shown_at < 0.2:
            return
        shown_at = now
        rate = files_seen / max(now - started, 1e-6)
        print(f"\rscanned {files_seen} files ({rate:.0f}/s)", end="", file=sys.stderr, flush=True)

    return show


# -- configuration and rules --------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    print(dump_json(config.redacted()))
    note(f"configuration {config.source} is valid: {len(config.watch)} rule(s)")
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    from asset_watcher import explain

    return explain.show(_load(args), args.paths)


# -- outbox -------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    from asset_watcher import status

    return status.show(_load(args), as_json=args.json)


def cmd_retry_dead(args: argparse.Namespace) -> int:
    from asset_watcher.status import open_existing_store

    config = _load(args)
    with open_existing_store(config, read_only=False) as store:
        count = store.retry_dead()
    print(f"requeued {count} dead-lettered report(s)")
    return EXIT_OK


# -- report -------------------------------------------------------------------------------


def _metadata_entries(entries: list[str]) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for entry in entries:
        if ":=" in entry and entry.index(":=") < entry.index("=") + 1:
            key, raw = entry.split(":=", 1)
            try:
                metadata[key] = json.loads(raw)
            except ValueError:
                raise ConfigError([f"--metadata {key}: not valid JSON after ':='"]) from None
        elif "=" in entry:
            key, value = entry.split("=", 1)
            metadata[key] = value
        else:
            raise ConfigError([f"--metadata {entry!r}: expected KEY=TEXT or KEY:=JSON"])
    return metadata


def cmd_report(args: argparse.Namespace) -> int:
    from asset_watcher.model import EventKind
    from asset_watcher.reporter import Reporter
    from asset_watcher.reports import check_report, event_report
    from asset_watcher.retry import Verdict

    key = tuple(part for part in args.asset_key.split("/") if part)
    if not key:
        raise ConfigError(["--asset-key: must name at least one key part"])
    metadata = _metadata_entries(args.metadata)
    kind = EventKind(args.event)
    if kind is EventKind.CHECK:
        if not args.check_name or args.passed is None:
            raise ConfigError(["report check: needs --check-name and --passed or --failed"])
        report = check_report(
            key,
            args.check_name,
            passed=args.passed,
            severity=args.severity,
            metadata=metadata,
            partition=args.partition,
        )
    else:
        report = event_report(
            kind,
            key,
            metadata=metadata,
            partition=args.partition,
            description=args.description,
            data_version=args.data_version,
        )
    config = _load(args, require_file=False)
    reporter = Reporter(config.dagster, config.token)
    try:
        answer = reporter.post(kind, json.dumps(report.body, ensure_ascii=False))
    finally:
        reporter.close()
    if answer.verdict is Verdict.DELIVERED:
        print(f"reported {kind.value} of {'/'.join(key)}")
        return EXIT_OK
    note(f"not delivered: {answer.detail}", logging.ERROR)
    return EXIT_FAILED


# -- demo ---------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from asset_watcher.demo import run_demo

    if args.config:
        raise ConfigError(["demo: --config is not used; the demo writes ./demo/config.toml"])
    if not 1 <= args.port <= 65535:
        raise ConfigError([f"--port: {args.port} is not a TCP port (1-65535)"])
    return run_demo(args.port)
