"""The Dagster side of an installation (the optional extra `asset-watcher[dagster]`).

`build_definitions(config_path)` reads the agent's own configuration and declares in
Dagster what the agent reports: an external AssetSpec per rule whose asset key is the
same for every file, and an AssetCheckSpec per configured check, so the UI lists the
assets and their checks under exactly the keys the REST reports use. Dagster records
reports for undeclared keys too, but lists reported checks of an asset only when they
are declared. This is the only module that imports dagster.

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
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from asset_watcher.config import CheckSettings, Config, load_config, template_fields
from asset_watcher.model import FileMatch
from asset_watcher.reports import file_uri
from asset_watcher.rules import Rule, compile_rules, short_host_name

log = logging.getLogger(__name__)

DEFAULT_GROUP = "asset_watcher"
# Template fields with one value per rule rather than per file.
RULE_FIELDS = frozenset({"rule", "host"})
NOT_RUNNABLE = (
    "This check is evaluated by asset-watcher on the data host when a file arrives and "
    "reported through Dagster's REST API; it cannot run inside Dagster."
)


@dataclass
class _Asset:
    """One declared asset: the first rule with this key, and the checks of every such rule."""

    key: tuple[str, ...]
    rule: Rule
    checks: dict[str, CheckSettings] = field(default_factory=dict)


def build_definitions(
    config_path: str | os.PathLike[str] | None = None,
    *,
    host: str | None = None,
    group_name: str = DEFAULT_GROUP,
) -> dg.Definitions:
    """Definitions for the assets and checks the agent with this configuration reports.

    The configuration is read as the agent reads it (`--config` default and environment
    overrides included), except that the watched folders need not exist here. `host` is
    the data host's short name for keys that use `{host}`; default: this host's.
    """
    config = load_config(config_path, check_directories=False)
    return definitions_for(config, host=host, group_name=group_name)


def definitions_for(
    config: Config, *, host: str | None = None, group_name: str = DEFAULT_GROUP
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
    specs = [_asset_spec(asset, host, group_name) for asset in assets.values()]
    checks = [
        _checks_definition(asset, index)
        for index, asset in enumerate(assets.values(), start=1)
        if asset.checks
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
    )


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
