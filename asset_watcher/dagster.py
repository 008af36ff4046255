"""The Dagster side of an installation (the optional extra `asset-watcher[dagster]`).

`build_definitions(config_path)` reads the agent's own configuration and declares in
Dagster what the agent reports: an external AssetSpec per rule whose asset key is the
same for every file, and an AssetCheckSpec per configured check, so the UI lists the
assets and their checks under exactly the keys the REST reports use. Dagster records
reports for undeclared keys too, but lists reported checks of an asset only when they
are declared. This is the only module that imports dagster.

[watch.expect]: the rule's `arrived_on_time` check (its `check_name`) is declared like
the others, and, where the installed Dagster has cron freshness policies
(`FreshnessPolicy.cron`, 1.12+), a matching one on the asset: due by the window's
deadline, counting materializations since the previous due time. Dagster judges the asset
as a whole (not one partner file per day), and only where freshness is enabled, so the
check stays the answer per due time; a cron whose deadline cannot be written as a cron
(a grace that moves it to another day) gets no policy.

Partitions: a rule's `partition` template alone is not turned into a partitions
definition. The REST reports record their partition either way, and an unpartitioned
asset shows them (event list, latest check results); a DynamicPartitionsDefinition would
show an empty partition set, as nothing registers the partitions the agent makes up. A
rule with `dynamic_partitions = "NAME"` does register them (the agent adds each new key
before its first report), so its asset is declared with DynamicPartitionsDefinition(NAME).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import dagster as dg

from asset_watcher.config import Config, load_config
from asset_watcher.heartbeat import heartbeat_key
from asset_watcher.model import FileMatch
from asset_watcher.reports import file_uri
from asset_watcher.rules import Rule, compile_rules, short_host_name
from asset_watcher.settings import CheckSettings, ExpectSettings, HeartbeatSettings, template_fields

log = logging.getLogger(__name__)

DEFAULT_GROUP = "asset_watcher"
# Template fields with one value per rule rather than per file.
RULE_FIELDS = frozenset({"rule", "host"})
NOT_RUNNABLE = (
    "This check is evaluated by asset-watcher on the data host when a file arrives and "
    "reported through Dagster's REST API; it cannot run inside Dagster."
)
# The interval a declared heartbeat is judged by when the configuration has it off.
DEFAULT_HEARTBEAT_SECONDS = 300.0
# A heartbeat is late after this many intervals (one lost or slow one is no alarm).
HEARTBEAT_LAG_INTERVALS = 3
# Dagster refuses freshness windows shorter than a minute.
MIN_FRESHNESS_SECONDS = 60.0


@dataclass
class _Asset:
    """One declared asset: the first rule with this key, and the checks of every such rule."""

    key: tuple[str, ...]
    rule: Rule
    checks: dict[str, CheckSettings] = field(default_factory=dict)
    expected: dict[str, ExpectSettings] = field(default_factory=dict)  # by check name
    manifest: str | None = None  # a batch rule's manifest template: its `manifest` check


def build_definitions(
    config_path: str | os.PathLike[str] | None = None,
    *,
    host: str | None = None,
    group_name: str = DEFAULT_GROUP,
    heartbeat: bool | None = None,
    heartbeat_hosts: Sequence[str] | None = None,
) -> dg.Definitions:
    """Definitions for the assets and checks the agent with this configuration reports.

    The configuration is read as the agent reads it (`--config` default and environment
    overrides included), except that the watched folders need not exist here. `host` is
    the data host's short name for keys that use `{host}`; default: this host's.

    `heartbeat` declares the agent's heartbeat asset (default: when the configuration
    turns the heartbeat on), one per name in `heartbeat_hosts` (default: `host`), with a
    freshness policy where Dagster can judge it (see `heartbeat_freshness_policy`).
    """
    config = load_config(config_path, check_directories=False)
    return definitions_for(
        config,
        host=host,
        group_name=group_name,
        heartbeat=heartbeat,
        heartbeat_hosts=heartbeat_hosts,
    )


def definitions_for(
    config: Config,
    *,
    host: str | None = None,
    group_name: str = DEFAULT_GROUP,
    heartbeat: bool | None = None,
    heartbeat_hosts: Sequence[str] | None = None,
) -> dg.Definitions:
    """`build_definitions` for an already loaded configuration."""
    host = host or short_host_name()
    assets: dict[tuple[str, ...], _Asset] = {}
    for rule in compile_rules(config, host=host):
        key = static_key(rule)
        if isinstance(key, str):
            log.warning("rule %r is not declared in Dagster: %s", rule.name, key)
            continue
        if "host" in template_fields(rule.settings.asset_key):
            log.info("rule %r: asset key uses {host}, rendered as %r", rule.name, host)
        asset = assets.get(key)
        if asset is None:
            asset = assets[key] = _Asset(key, rule)
        elif asset.rule is not rule:
            log.info(
                "rules %r and %r report the same asset %s; declared once with the checks of both",
                asset.rule.name,
                rule.name,
                "/".join(key),
            )
        for check in rule.settings.checks:
            asset.checks.setdefault(check.check_name, check)
        if rule.settings.expect is not None:
            asset.expected.setdefault(rule.settings.expect.check_name, rule.settings.expect)
        batch = rule.settings.batch
        if batch is not None and batch.complete_when == "manifest" and asset.manifest is None:
            asset.manifest = batch.manifest
    specs = [_asset_spec(asset, host, group_name) for asset in assets.values()]
    if config.heartbeat.enabled if heartbeat is None else heartbeat:
        for name in heartbeat_hosts or [host]:
            spec = heartbeat_spec(config.heartbeat, name, group_name)
            if tuple(spec.key.path) in assets:
                log.warning(
                    "heartbeat asset %s is also a rule's asset; declared as the rule's",
                    spec.key.to_user_string(),
                )
                continue
            specs.append(spec)
    checks = [
        _checks_definition(asset, index)
        for index, asset in enumerate(assets.values(), start=1)
        if asset.checks or asset.expected or asset.manifest
    ]
    return dg.Definitions(assets=specs, asset_checks=checks)


def static_key(rule: Rule) -> tuple[str, ...] | str:
    """The asset key every file of the rule reports, or why files report different keys."""
    template = rule.settings.asset_key
    per_file = sorted(set(template_fields(template)) - RULE_FIELDS)
    if per_file:
        fields = ", ".join(f"{{{name}}}" for name in per_file)
        return (
            f"its asset key {template!r} uses the per-file field(s) {fields}, so each file "
            "names its own asset (Dagster learns those keys from the reports)"
        )
    rendered = _render_for_any_file(rule)
    if not isinstance(rendered, FileMatch):
        return f"its asset key cannot be rendered: {rendered}"
    return rendered.asset_key


def _render_for_any_file(rule: Rule) -> FileMatch | str:
    """Render through the agent's own code path, so key parts are exactly what it sends.

    Per-file fields get a placeholder: only templates that do not use them are read.
    """
    regex = rule.settings.regex
    groups = dict.fromkeys(regex.groupindex if regex else (), "_")
    return rule.render(os.path.join(rule.root, "_"), "_", groups)


def _description(rule: Rule) -> str:
    template = rule.settings.description
    if template and set(template_fields(template)) <= RULE_FIELDS:
        rendered = _render_for_any_file(rule)
        if isinstance(rendered, FileMatch) and rendered.description:
            return rendered.description
    event = "materialized" if rule.settings.event == "materialization" else "observed"
    return (
        f"Files matching {rule.settings.glob!r} under {rule.root}, {event} by asset-watcher "
        f"(rule {rule.name!r}) when they arrive."
    )


def _kinds(rule: Rule) -> set[str]:
    return {"sftp"} if re.search("sftp", rule.root, re.IGNORECASE) else {"file"}


def _asset_spec(asset: _Asset, host: str, group_name: str) -> dg.AssetSpec:
    rule = asset.rule
    metadata: dict[str, Any] = {
        "dagster/uri": file_uri(rule.root, host),
        "path": rule.root,
        "glob": rule.settings.glob,
        "rule": rule.name,
        "event": rule.settings.event,
    }
    if rule.settings.partition:
        metadata["partition_template"] = rule.settings.partition
    extra: dict[str, Any] = {}
    expect = next(iter(asset.expected.values()), None)
    if expect is not None:
        metadata["expected_cron"] = f"{expect.cron} ({expect.timezone})"
        policy = _freshness_policy(expect)
        if policy is not None:
            extra["freshness_policy"] = policy
    partitions_def = None
    if rule.settings.dynamic_partitions is not None:
        partitions_def = dg.DynamicPartitionsDefinition(name=rule.settings.dynamic_partitions)
    return dg.AssetSpec(
        key=dg.AssetKey(list(asset.key)),
        description=_description(rule),
        group_name=group_name,
        kinds=_kinds(rule),
        metadata=metadata,
        partitions_def=partitions_def,
        **extra,
    )


def heartbeat_freshness_policy(settings: HeartbeatSettings) -> Any | None:
    """A time-window freshness policy failing after a few missed heartbeats, or None.

    None where Dagster has no `FreshnessPolicy.time_window` (before 1.11), and for
    observations: Dagster's freshness (1.11 to 1.13 at least) looks only at an asset's
    latest materialization, so an observed heartbeat would stay UNKNOWN forever. With
    `heartbeat.event = "materialization"` the policy fails once the agent went quiet.
    """
    if settings.event != "materialization":
        return None
    window = getattr(getattr(dg, "FreshnessPolicy", None), "time_window", None)
    if window is None:
        return None
    every = settings.every_seconds or DEFAULT_HEARTBEAT_SECONDS
    seconds = max(MIN_FRESHNESS_SECONDS, HEARTBEAT_LAG_INTERVALS * every)
    return window(fail_window=timedelta(seconds=seconds))


def heartbeat_spec(settings: HeartbeatSettings, host: str, group_name: str) -> dg.AssetSpec:
    """The heartbeat asset of the agent on `host`."""
    every = settings.every_seconds or DEFAULT_HEARTBEAT_SECONDS
    policy = heartbeat_freshness_policy(settings)
    seen = "Last observed" if settings.event == "observation" else "Last materialized"
    extra: dict[str, Any] = {"freshness_policy": policy} if policy is not None else {}
    return dg.AssetSpec(
        key=dg.AssetKey(list(heartbeat_key(settings, host))),
        description=(
            f"Heartbeat of asset-watcher on {host}: an {settings.event} every {every:g}s "
            f"with its version, rules and outbox counts. {seen} is when the agent was last "
            "heard from."
        ),
        group_name=group_name,
        metadata={
            "host": host,
            "heartbeat_every_seconds": every,
            "event": settings.event,
            "asset_key_template": settings.asset_key,
        },
        **extra,
    )


def deadline_cron(cron: str, grace_minutes: float) -> str | None:
    """The cron of the windows' deadlines (due + grace), where a cron can say it: a grace
    of whole minutes that keeps fixed minute and hour fields on the same day (or, with
    every hour, the minute within the hour). None otherwise."""
    if grace_minutes != int(grace_minutes):
        return None
    grace = int(grace_minutes)
    minute, hour, *days = cron.split()
    if grace == 0:
        return cron
    if not minute.isdigit():
        return None
    if hour == "*":
        shifted = int(minute) + grace
        return " ".join([str(shifted), hour, *days]) if shifted < 60 else None
    if not hour.isdigit():
        return None
    total = int(hour) * 60 + int(minute) + grace
    if total >= 24 * 60:
        return None
    return " ".join([str(total % 60), str(total // 60), *days])


def _freshness_policy(expect: ExpectSettings) -> Any:
    """A cron freshness policy matching [watch.expect], where this Dagster has them."""
    policy_type = getattr(dg, "FreshnessPolicy", None)
    cron_policy = getattr(policy_type, "cron", None)
    deadline = deadline_cron(expect.cron, expect.grace_minutes)
    if cron_policy is None or deadline is None:
        log.info("no cron freshness policy for %r (%s)", expect.cron, expect.timezone)
        return None
    from datetime import timedelta

    # At most the smallest interval between deadlines (Dagster's rule); the window and
    # the time since the previous due time are what the check counts, so try those.
    for seconds in (86400.0, 3600.0, max(60.0, expect.grace_minutes * 60)):
        try:
            return cron_policy(
                deadline_cron=deadline,
                lower_bound_delta=timedelta(seconds=seconds),
                timezone=expect.timezone,
            )
        except Exception:  # dagster's CheckError: too wide a bound for this cron
            continue
    return None


def _check_parameters(check: CheckSettings) -> dict[str, Any]:
    return check.model_dump(exclude={"type", "name", "severity"}, exclude_none=True)


def _check_spec(key: tuple[str, ...], check: CheckSettings) -> dg.AssetCheckSpec:
    parameters = _check_parameters(check)
    shown = ", ".join(f"{name} = {value!r}" for name, value in parameters.items())
    description = f"{check.type} check" + (f" ({shown})" if shown else "")
    return dg.AssetCheckSpec(
        check.check_name,
        asset=dg.AssetKey(list(key)),
        description=f"{description}, severity {check.severity}, evaluated on every file.",
        metadata={"type": check.type, "severity": check.severity, **parameters},
    )


def _checks_definition(asset: _Asset, index: int) -> dg.AssetChecksDefinition:
    """One op declaring every check of an asset; running it explains it cannot run here.

    Built by hand rather than with @multi_asset_check, which names the op's inputs and
    outputs after the asset key and check names: parts with spaces, '#' or non-ASCII
    characters (which the agent reports fine) are not valid op input names.
    """
    specs = {f"check_{n}": _check_spec(asset.key, c) for n, c in enumerate(asset.checks.values())}
    for n, (name, expect) in enumerate(asset.expected.items()):
        specs[f"expected_{n}"] = dg.AssetCheckSpec(
            name,
            asset=dg.AssetKey(list(asset.key)),
            description=(
                f"A file arrived for each due time ({expect.cron}, {expect.timezone}) within "
                f"{expect.grace_minutes:g} minutes; evaluated once per due time, "
                f"severity {expect.severity} when missed."
            ),
            metadata={"type": "arrived_on_time", "cron": expect.cron, "timezone": expect.timezone},
        )

    if asset.manifest is not None:
        specs["manifest"] = dg.AssetCheckSpec(
            "manifest",
            asset=dg.AssetKey(list(asset.key)),
            description=(
                f"Every member the batch's manifest ({asset.manifest}) lists is present with "
                "the listed size and digest, and no unlisted member; evaluated once per "
                "batch, severity ERROR."
            ),
            metadata={"type": "manifest", "manifest": asset.manifest},
        )

    @dg.op(
        name=f"asset_watcher_checks_{index}",
        description=NOT_RUNNABLE,
        ins={"asset": dg.In(dg.Nothing)},
        out={name: dg.Out(is_required=False) for name in specs},
    )
    def _reported_by_agent():  # type: ignore[no-untyped-def]  # dagster reads the annotation
        raise dg.Failure(description=NOT_RUNNABLE)

    checks: dg.AssetChecksDefinition = dg.AssetChecksDefinition.create(
        keys_by_input_name={"asset": dg.AssetKey(list(asset.key))},
        node_def=_reported_by_agent,
        check_specs_by_output_name=specs,
        can_subset=True,
    )
    return checks
