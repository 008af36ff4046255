"""Compile [[watch]] tables into Rules: matching, templates, and why a file is (not) owned.

`explain`, `scan` and `run` all go through `owner()`, so what `explain` says is what the
agent does.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import socket
import string
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from asset_watcher.config import Config, WatchRule
from asset_watcher.globs import glob_to_regex, ignore_regex
from asset_watcher.model import EventKind, FileMatch
from asset_watcher.paths import display_path, relative_to
from asset_watcher.settings import BATCH_FIELDS, ChecksumCheck, folder_groups, template_fields

log = logging.getLogger(__name__)


def short_host_name() -> str:
    return socket.gethostname().split(".")[0]


@dataclass(frozen=True)
class Rule:
    """A compiled [[watch]] rule. Settings not compiled here are read from `settings`."""

    settings: WatchRule
    host: str

    @property
    def name(self) -> str:
        return self.settings.rule_name

    @property
    def root(self) -> str:
        return str(self.settings.path)

    @cached_property
    def real_root(self) -> str:
        """The root with its own links resolved: what a file below it really lives under."""
        return os.path.realpath(self.root)

    @property
    def event(self) -> EventKind:
        return EventKind(self.settings.event)

    @property
    def needs_line_count(self) -> bool:
        return self.settings.count_rows or any(
            check.type == "row_count" for check in self.settings.checks
        )

    @cached_property
    def checksum_checks(self) -> tuple[ChecksumCheck, ...]:
        return tuple(c for c in self.settings.checks if isinstance(c, ChecksumCheck))

    @cached_property
    def extra_algorithms(self) -> tuple[str, ...]:
        """Digests the one read of a file computes besides the rule's hash: its sidecars'."""
        wanted = (check.digest_algorithm for check in self.checksum_checks)
        return tuple(dict.fromkeys(a for a in wanted if a != self.settings.hash))

    @cached_property
    def glob_regex(self) -> re.Pattern[str]:
        return glob_to_regex(self.settings.glob)

    @cached_property
    def ignore_regex(self) -> re.Pattern[str] | None:
        patterns = self.settings.ignore
        if not patterns:
            return None
        return ignore_regex(patterns)

    def ignores(self, name: str) -> str | None:
        """The ignore pattern matching one path component (file or folder name), if any."""
        if self.ignore_regex is None or not self.ignore_regex.match(name):
            return None
        return next(p for p in self.settings.ignore if fnmatch.fnmatchcase(name, p))

    def relative(self, path: str) -> str | None:
        """`path` relative to this rule's root, or None when it lies outside."""
        return relative_to(self.root, path)

    def match(self, path: str) -> FileMatch | str:
        """The rendered match for a file, or the reason this rule does not own it."""
        rel = self.relative(path)
        if rel is None:
            return f"outside {self.root}"
        parts = rel.split("/")
        if not self.settings.recursive and len(parts) > 1:
            return "in a subfolder and the rule is not recursive"
        for part in parts:
            pattern = self.ignores(part)
            if pattern is not None:
                return f"{part!r} is ignored by {pattern!r}"
        if not self.glob_regex.match(rel):
            return f"glob {self.settings.glob!r} does not match {rel!r}"
        groups: dict[str, str] = {}
        if self.settings.regex is not None:
            found = self.settings.regex.search(rel)
            if found is None:
                return f"regex {self.settings.regex.pattern!r} does not match {rel!r}"
            groups = {k: v for k, v in found.groupdict().items() if v is not None}
        return self.render(path, rel, groups)

    def render(self, path: str, rel: str, groups: dict[str, str]) -> FileMatch | str:
        name = rel.rsplit("/", 1)[-1]
        stem, dot, suffix = name.rpartition(".")
        if not stem:  # ".profile" or "README": no suffix
            stem, suffix = name, ""
        else:
            suffix = dot + suffix
        reldir = rel.rpartition("/")[0]
        fields = {
            "name": name,
            "stem": stem,
            "suffix": suffix,
            "parent": os.path.basename(os.path.dirname(path)),
            "relpath": rel,
            "reldir": reldir,
            "rule": self.name,
            "host": self.host,
            **groups,
        }
        settings = self.settings
        try:
            key = tuple(p for p in settings.asset_key.format_map(fields).split("/") if p)
            partition = settings.partition.format_map(fields) if settings.partition else None
            description = settings.description.format_map(fields) if settings.description else None
        except KeyError as exc:  # a regex group that did not take part in the match
            return f"template field {exc} has no value for {rel!r}"
        if not key:
            return f"asset key renders empty for {rel!r}"
        for text in (*key, partition or "", description or ""):
            if not is_utf8(text) or "\x00" in text:
                shown = display_path(rel)
                return f"name of {shown!r} is not valid UTF-8: cannot render the asset key"
        return FileMatch(
            rule_name=self.name,
            path=path,
            relpath=rel,
            asset_key=key,
            partition=partition,
            description=description,
            fields=fields,
        )

    def marker_for(self, match: FileMatch) -> str | None:
        """The ready-marker path a data file waits for, if the rule has one."""
        if not self.settings.ready_marker:
            return None
        # An empty {reldir} renders "/name.done": still relative to the root.
        return self._render_relative(self.settings.ready_marker, match)

    def sidecar_for(self, match: FileMatch, check: ChecksumCheck) -> str | None:
        """The checksum sidecar path `check` reads for a data file (SPEC 14)."""
        return self._render_relative(check.sidecar, match)

    def _render_relative(self, template: str, match: FileMatch) -> str | None:
        try:
            rendered = template.format_map(dict(match.fields))
        except KeyError:
            return None
        return os.path.normpath(os.path.join(self.root, rendered.lstrip("/")))

    @cached_property
    def marker_regex(self) -> re.Pattern[str] | None:
        """What this rule's ready markers look like, relative to the root: the template
        with each field as a wildcard (`rule` and `host` as their values)."""
        template = self.settings.ready_marker
        return self._template_regex(template) if template else None

    @cached_property
    def sidecar_regexes(self) -> tuple[re.Pattern[str], ...]:
        """What this rule's checksum sidecars look like, as `marker_regex`."""
        return tuple(self._template_regex(check.sidecar) for check in self.checksum_checks)

    def _template_regex(self, template: str) -> re.Pattern[str]:
        fixed = {"rule": self.name, "host": self.host}
        out = []
        for literal, field, _, _ in string.Formatter().parse(template):
            out.append(re.escape(literal))
            if field is None:
                continue
            if field in fixed:
                out.append(re.escape(fixed[field]))
            else:
                out.append(".*" if field in ("reldir", "suffix") else ".+")
        return re.compile("".join(out) + r"\Z", re.DOTALL)

    # -- batches (SPEC 13) --------------------------------------------------------------

    @property
    def is_batch(self) -> bool:
        return self.settings.batch is not None

    @cached_property
    def batch_shared_fields(self) -> frozenset[str]:
        """The fields a batch's templates render from: what its members share."""
        batch = self.settings.batch
        if batch is None:
            return frozenset()
        return BATCH_FIELDS | folder_groups(self.settings.regex) | set(template_fields(batch.group))

    def batch_group(self, match: FileMatch) -> tuple[str, dict[str, str]] | None:
        """(group value, the batch's fields) of a member; None when the group does not render."""
        batch = self.settings.batch
        if batch is None:
            return None
        try:
            group = batch.group.format_map(dict(match.fields))
        except KeyError:
            return None
        shared = self.batch_shared_fields
        return group, {k: v for k, v in match.fields.items() if k in shared}

    @cached_property
    def batch_control_regex(self) -> re.Pattern[str] | None:
        """What the names of this rule's batch markers and manifests look like (each field
        a wildcard, `rule` and `host` their values)."""
        batch = self.settings.batch
        if batch is None or not batch.control_templates:
            return None
        fixed = {"rule": self.name, "host": self.host}
        alternatives = []
        for template in batch.control_templates:
            out = []
            for literal, field, _, _ in string.Formatter().parse(template):
                out.append(re.escape(literal))
                if field is not None:
                    out.append(re.escape(fixed[field]) if field in fixed else "[^/]*")
            alternatives.append("".join(out))
        return re.compile("(?:" + "|".join(alternatives) + r")\Z", re.DOTALL)

    def is_batch_control(self, path: str) -> bool:
        """Whether `path` is shaped like one of this rule's batch markers or manifests,
        in a folder of the rule: never reported as a file."""
        regex = self.batch_control_regex
        if regex is None:
            return False
        rel = self.relative(path)
        if rel is None or (not self.settings.recursive and "/" in rel):
            return False
        return bool(regex.match(rel.rsplit("/", 1)[-1]))

    def is_sidecar(self, path: str) -> bool:
        """Whether `path` is shaped like one of this rule's checksum sidecars, which are
        never reported themselves."""
        rel = self.relative(path)
        if rel is None:
            return False
        return any(regex.match(rel) or regex.match("/" + rel) for regex in self.sidecar_regexes)

    def is_marker(self, path: str) -> bool:
        """Whether `path` is (shaped like) one of this rule's ready markers, which are
        never reported themselves."""
        regex = self.marker_regex
        rel = self.relative(path)
        if regex is None or rel is None:
            return False
        return bool(regex.match(rel) or regex.match("/" + rel))


def is_utf8(text: str) -> bool:
    """Whether `text` (a file name decoded with surrogateescape) is valid UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def compile_rules(config: Config, host: str | None = None) -> list[Rule]:
    host = host or short_host_name()
    return [Rule(settings=rule, host=host) for rule in config.watch]


def owner(rules: Sequence[Rule], path: str) -> FileMatch | None:
    """The first rule's match for `path`; None when no rule owns it or it is a marker."""
    return explain(rules, path)[0]


# Ownership answers remembered (path -> rule and match): a new file's events (create,
# close) and its settling ask the same question several times.
OWNER_CACHE_SIZE = 4096


class Owners:
    """`owner()` for one set of rules, as (rule, match), with a bounded memory of answers."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self._by_name = {rule.name: rule for rule in self.rules}
        self._answers: dict[str, tuple[Rule, FileMatch] | None] = {}

    def __call__(self, path: str) -> tuple[Rule, FileMatch] | None:
        """The owning rule and match; None for unowned files and ready markers."""
        if path in self._answers:
            return self._answers[path]
        match = owner(self.rules, path)
        found = (self._by_name[match.rule_name], match) if match is not None else None
        if match is None and not is_utf8(path) and any(r.relative(path) for r in self.rules):
            log.info(
                "skipped %s: its name is not valid UTF-8 and the rule's templates use it",
                display_path(path),
            )
        if len(self._answers) >= OWNER_CACHE_SIZE:
            self._answers.clear()
        self._answers[path] = found
        return found

    def rule(self, name: str) -> Rule | None:
        return self._by_name.get(name)


def marker_rule(rules: Sequence[Rule], path: str) -> Rule | None:
    """The rule whose ready marker `path` is, if any: markers are never reported."""
    return next((rule for rule in rules if rule.is_marker(path)), None)


def sidecar_rule(rules: Sequence[Rule], path: str) -> Rule | None:
    """The rule whose checksum sidecar `path` is, if any: sidecars are never reported."""
    return next((rule for rule in rules if rule.is_sidecar(path)), None)


def explain(rules: Sequence[Rule], path: str) -> tuple[FileMatch | None, list[tuple[str, str]]]:
    """The owning match, and for each rule tried before it why it did not match."""
    reasons: list[tuple[str, str]] = []
    marker_of = marker_rule(rules, path)
    if marker_of is not None:
        return None, [(marker_of.name, "a ready marker of this rule; markers are not reported")]
    control_of = next((rule for rule in rules if rule.is_batch_control(path)), None)
    if control_of is not None:
        return None, [
            (control_of.name, "a batch marker or manifest of this rule; never reported as a file")
        ]
    sidecar_of = sidecar_rule(rules, path)
    if sidecar_of is not None:
        reason = "a checksum sidecar of this rule; sidecars are not reported"
        return None, [(sidecar_of.name, reason)]
    for rule in rules:
        found = rule.match(path)
        if isinstance(found, FileMatch):
            return found, reasons
        reasons.append((rule.name, found))
    return None, reasons
