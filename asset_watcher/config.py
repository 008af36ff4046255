"""The one Config: TOML file plus `ASSET_WATCHER_*` environment overrides, validated once.

Every problem is collected before giving up, and each is reported as one line naming its
key (`watch[1].regex: ...`), so an operator fixes a broken file in one pass.
"""

from __future__ import annotations

import json
import os
import re
import string
import sys
from collections.abc import Iterable
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from asset_watcher.errors import ConfigError
from asset_watcher.expect import check_cron, check_partition, host_zone_name, zone
from asset_watcher.globs import check_ranges, glob_to_regex, ignore_regex
from asset_watcher.sidecars import ALGORITHMS, algorithm_from_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_CONFIG_PATH = "/etc/asset-watcher/config.toml"
CONFIG_PATH_ENV = "ASSET_WATCHER_CONFIG"
TOKEN_ENV = "DAGSTER_CLOUD_API_TOKEN"
CREDENTIAL_NAME = "dagster-token"

# Fields every template may use; a rule's regex adds its named groups.
FILE_FIELDS = frozenset({"name", "stem", "suffix", "parent", "relpath", "reldir", "rule", "host"})
DEFAULT_IGNORE = (".*", "*~", "*.tmp", "*.part", "*.partial", "*.filepart", "*.crdownload")
# Off while the Dagster side reads the agent's config: the drop folders live on the data host.
_CHECK_DIRECTORIES: ContextVar[bool] = ContextVar("check_directories", default=True)


class _Strict(BaseModel):
    # inf and nan are valid TOML floats, and useless (or harmful) as any setting here.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DagsterSettings(_Strict):
    """Where and how to reach Dagster."""

    url: str = "http://localhost:3000"
    token_file: Path | None = None
    timeout_seconds: float = Field(10.0, gt=0, le=3600)
    max_in_flight: int = Field(8, ge=1, le=256)
    verify_tls: bool | str = True
    backoff_max_seconds: float = Field(300.0, gt=0, le=86400)
    # The code location and repository holding the dynamic partitions definitions that
    # rules name (`dynamic_partitions`): Dagster's addDynamicPartition selects them so.
    location: str | None = Field(None, min_length=1)
    repository: str = Field("__repository__", min_length=1)

    @field_validator("url")
    @classmethod
    def _url_has_scheme(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"must be an http:// or https:// URL with a host, got {url!r}")
        return url.rstrip("/")

    @field_validator("verify_tls")
    @classmethod
    def _ca_bundle_exists(cls, value: bool | str) -> bool | str:
        if isinstance(value, str) and not os.path.exists(value):
            raise ValueError(f"CA bundle {value!r} does not exist (or use true/false)")
        return value


class StateSettings(_Strict):
    """Where the state database (reported versions, outbox) lives."""

    directory: Path | None = None

    def resolved_directory(self) -> Path:
        if self.directory is not None:
            return self.directory
        if os.environ.get("STATE_DIRECTORY"):  # systemd StateDirectory=, may hold several
            return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
        xdg = os.environ.get("XDG_STATE_HOME") or os.path.join(
            os.path.expanduser("~"), ".local", "state"
        )
        return Path(xdg) / "asset-watcher"


class MetricsSettings(_Strict):
    """Optional Prometheus endpoint, off unless `listen` is set."""

    listen: str | None = None  # "HOST:PORT", e.g. "127.0.0.1:9464" or "[::1]:9464"

    @field_validator("listen")
    @classmethod
    def _host_and_port(cls, listen: str | None) -> str | None:
        if listen:
            parse_listen(listen)
        return listen or None


def parse_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 in brackets) as (host, port); ValueError when malformed."""
    host, sep, port = listen.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:9464, got {listen!r}")
    return host, int(port)


# The heartbeat's asset key template knows only the host: it is one asset per agent.
HEARTBEAT_FIELDS = frozenset({"host"})
DEFAULT_HEARTBEAT_KEY = "asset_watcher/agents/{host}"
# A heartbeat more often than this costs Dagster more than it tells anyone.
HEARTBEAT_MIN_SECONDS = 1.0


class HeartbeatSettings(_Strict):
    """The agent's heartbeat (SPEC 16): an observation of its own asset every
    `every_seconds` (0, the default, is off)."""

    every_seconds: float = 0.0
    asset_key: str = DEFAULT_HEARTBEAT_KEY
    # Dagster 1.13's freshness policies judge materializations only (see README "Fleet").
    event: Literal["observation", "materialization"] = "observation"

    @field_validator("every_seconds")
    @classmethod
    def _off_or_positive(cls, seconds: float) -> float:
        if seconds != 0 and seconds < HEARTBEAT_MIN_SECONDS:
            raise ValueError(
                f"must be 0 (off) or at least {HEARTBEAT_MIN_SECONDS:g} seconds, got {seconds:g}"
            )
        return seconds

    @field_validator("asset_key")
    @classmethod
    def _only_host(cls, template: str) -> str:
        for name in template_fields(template):
            if name not in HEARTBEAT_FIELDS:
                raise ValueError(f"unknown template field {{{name}}}; known: host")
        if not any(part.strip() for part in template.split("/")):
            raise ValueError("asset key template is empty")
        return template

    @property
    def enabled(self) -> bool:
        return self.every_seconds > 0


Severity = Literal["WARN", "ERROR"]


class _CheckBase(_Strict):
    name: str | None = Field(None, min_length=1)
    severity: Severity = "ERROR"

    @property
    def check_name(self) -> str:
        return self.name or str(getattr(self, "type"))  # noqa: B009


class SizeCheck(_CheckBase):
    type: Literal["size"]
    min_bytes: int | None = Field(None, ge=0)
    max_bytes: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> SizeCheck:
        if self.min_bytes is None and self.max_bytes is None:
            raise ValueError("size check needs min_bytes or max_bytes")
        if None not in (self.min_bytes, self.max_bytes) and self.min_bytes > self.max_bytes:  # type: ignore[operator]
            raise ValueError("min_bytes is greater than max_bytes")
        return self


class NameRegexCheck(_CheckBase):
    type: Literal["name_regex"]
    pattern: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        _compile_regex(pattern)
        return pattern


class CsvHeaderCheck(_CheckBase):
    type: Literal["csv_header"]
    columns: list[str] = Field(min_length=1)
    delimiter: str = Field(",", min_length=1, max_length=1)
    exact: bool = True

    @field_validator("columns")
    @classmethod
    def _columns_named(cls, columns: list[str]) -> list[str]:
        if any(not column.strip() for column in columns):
            raise ValueError("column names must not be empty")
        return columns

    @field_validator("delimiter")
    @classmethod
    def _usable_delimiter(cls, delimiter: str) -> str:
        if delimiter in '\r\n"':
            raise ValueError(f"{delimiter!r} cannot separate columns")
        return delimiter


class RowCountCheck(_CheckBase):
    type: Literal["row_count"]
    min_rows: int | None = Field(None, ge=0)
    max_rows: int | None = Field(None, ge=0)
    header: bool = True

    @model_validator(mode="after")
    def _bounds(self) -> RowCountCheck:
        if self.min_rows is None and self.max_rows is None:
            raise ValueError("row_count check needs min_rows or max_rows")
        if None not in (self.min_rows, self.max_rows) and self.min_rows > self.max_rows:  # type: ignore[operator]
            raise ValueError("min_rows is greater than max_rows")
        return self


class JsonCheck(_CheckBase):
    type: Literal["json"]
    lines: bool = False


class GzipCheck(_CheckBase):
    type: Literal["gzip"]


class ChecksumCheck(_CheckBase):
    """The file's digest equals the one its sidecar gives (SPEC 14)."""

    type: Literal["checksum"]
    # Relative to the rule's path, like ready_marker; its fields are checked against the
    # rule's (regex groups included) when the whole Config is validated.
    sidecar: str = Field(min_length=1)
    # None only until the Config is validated: then the sidecar's suffix, else the rule's hash.
    algorithm: Literal["md5", "sha1", "sha256", "sha512", "blake2b"] | None = None
    wait_seconds: float = Field(300.0, ge=0, le=7 * 24 * 3600)

    @field_validator("sidecar")
    @classmethod
    def _template_parses(cls, template: str) -> str:
        template_fields(template)  # malformed templates raise, naming what is wrong
        if not template.strip("/"):
            raise ValueError("must name a file relative to the rule's path")
        return template

    @property
    def digest_algorithm(self) -> str:
        if self.algorithm is None:  # pragma: no cover - resolved by Config
            raise RuntimeError("checksum algorithm not resolved")
        return self.algorithm


CheckSettings = Annotated[
    SizeCheck
    | NameRegexCheck
    | CsvHeaderCheck
    | RowCountCheck
    | JsonCheck
    | GzipCheck
    | ChecksumCheck,
    Field(discriminator="type"),
]
CHECK_TYPES = ("size", "name_regex", "csv_header", "row_count", "json", "gzip", "checksum")


def _ignore_pattern(pattern: str) -> str:
    check_ranges(pattern)
    try:
        ignore_regex([pattern])
    except re.error as exc:
        raise ValueError(f"invalid pattern {pattern!r}: {exc}") from None
    return pattern


# An ignore pattern, checked alone: a problem names its index (`watch[1].ignore[2]`).
IgnorePattern = Annotated[str, AfterValidator(_ignore_pattern)]


class ExpectSettings(_Strict):
    """[watch.expect]: when the rule's files are due (SPEC 15); judged by `arrived_on_time`."""

    cron: str
    timezone: str = Field(default_factory=host_zone_name)
    grace_minutes: float = Field(60.0, ge=0, le=7 * 24 * 60)
    partition: str | None = None
    check_name: str = Field("arrived_on_time", min_length=1)
    severity: Severity = "ERROR"

    @field_validator("cron")
    @classmethod
    def _cron_fires(cls, cron: str) -> str:
        return check_cron(cron)

    @field_validator("timezone")
    @classmethod
    def _zone_known(cls, name: str) -> str:
        zone(name)
        return name

    @field_validator("partition")
    @classmethod
    def _partition_renders(cls, template: str | None) -> str | None:
        return None if template is None else check_partition(template)


# Fields only one file has: a batch's templates cannot use them (SPEC 13).
PER_FILE_FIELDS = frozenset({"name", "stem", "suffix", "relpath"})
# Fields every member of a batch shares: the batch lives in one folder.
BATCH_FIELDS = frozenset({"reldir", "parent", "rule", "host"})
BATCH_CONTROL_FIELDS = ("marker", "manifest")


class BatchSettings(_Strict):
    """[watch.batch]: many files, one asset version (SPEC 13). A batch is the rule's files
    in one folder whose `group` renders the same value; it completes when its `marker`
    appears, when every member its `manifest` lists is there, or after `quiet_seconds`
    without a new or changed member."""

    group: str = "{reldir}"
    complete_when: Literal["marker", "manifest", "quiet"]
    marker: str | None = Field(None, min_length=1)
    manifest: str | None = Field(None, min_length=1)
    # For "quiet", the quiet time; for "manifest", optional: how long after the manifest
    # listed members may still be missing before the batch is reported with a failed
    # `manifest` check naming them (without it, the batch waits for them).
    quiet_seconds: float | None = Field(None, gt=0)

    @field_validator("group")
    @classmethod
    def _group_shared(cls, template: str) -> str:
        per_file = sorted(set(template_fields(template)) & PER_FILE_FIELDS)
        if per_file:
            raise ValueError(
                f"uses the per-file field(s) {', '.join(per_file)}: every file would be "
                "a batch of its own"
            )
        return template

    @field_validator("marker", "manifest")
    @classmethod
    def _a_name_in_the_folder(cls, template: str | None) -> str | None:
        if template is None:
            return None
        if "/" in template or template in (".", ".."):
            raise ValueError(f"must be a file name in the batch's folder, got {template!r}")
        per_file = sorted(set(template_fields(template)) & PER_FILE_FIELDS)
        if per_file:
            raise ValueError(f"uses the per-file field(s) {', '.join(per_file)}")
        return template

    @model_validator(mode="after")
    def _completion_configured(self) -> BatchSettings:
        needed = {"marker": "marker", "manifest": "manifest", "quiet": "quiet_seconds"}
        key = needed[self.complete_when]
        if getattr(self, key) is None:
            raise ValueError(f"{key} is required when complete_when = {self.complete_when!r}")
        return self

    @property
    def control_templates(self) -> tuple[str, ...]:
        """Templates of the files that complete a batch and are never members."""
        return tuple(t for t in (self.marker, self.manifest) if t is not None)


def folder_groups(regex: re.Pattern[str] | None) -> frozenset[str]:
    """The regex's named groups that match in a file's folder part, not its name: those
    start before the pattern's last `/` (a heuristic on the pattern text, stated in the
    README: write a batch rule's regex with its folder part before a literal `/`)."""
    if regex is None:
        return frozenset()
    pattern = regex.pattern
    last_slash = pattern.rfind("/")
    return frozenset(
        name for name in regex.groupindex if 0 <= pattern.find(f"(?P<{name}>") < last_slash
    )


def batch_problems(index: int, rule: WatchRule) -> list[str]:
    """Templates of a batch rule that need a field only one file has (SPEC 13), one
    problem per key."""
    batch = rule.batch
    if batch is None:
        return []
    regex_groups = set(rule.regex.groupindex) if rule.regex else set()
    shared = BATCH_FIELDS | folder_groups(rule.regex) | set(template_fields(batch.group))
    problems = []
    templates = {
        "asset_key": rule.asset_key,
        "partition": rule.partition,
        "description": rule.description,
        "batch.group": batch.group,
        "batch.marker": batch.marker,
        "batch.manifest": batch.manifest,
    }
    for key, template in templates.items():
        if template is None:
            continue
        used = template_fields(template)
        unknown = [f for f in used if f not in FILE_FIELDS and f not in regex_groups]
        if unknown and key.startswith("batch."):  # the rule's own templates say so already
            known = ", ".join(sorted(FILE_FIELDS | regex_groups))
            problems.append(
                f"watch[{index}].{key}: unknown template field(s) "
                f"{', '.join(sorted(set(unknown)))}; known: {known}"
            )
            continue
        # The group's own regex groups define the batch; the other templates get what
        # the members of one batch surely share.
        shared_here = BATCH_FIELDS | regex_groups if key == "batch.group" else shared
        wrong = [
            f for f in used if f not in shared_here and (f in FILE_FIELDS or f in regex_groups)
        ]
        if wrong:
            problems.append(
                f"watch[{index}].{key}: needs the per-file field(s) "
                f"{', '.join(sorted(set(wrong)))}; a batch renders it from what its members "
                f"share: {', '.join(sorted(shared_here))}"
            )
    if rule.ready_marker is not None:
        problems.append(
            f"watch[{index}].ready_marker: a batch rule completes by batch.complete_when; "
            "use batch.marker instead"
        )
    if rule.expect is not None:
        problems.append(f"watch[{index}].expect: not supported on a batch rule yet")
    if batch.complete_when == "manifest" and any(c.check_name == "manifest" for c in rule.checks):
        problems.append(
            f"watch[{index}].checks: a check is named 'manifest', the name of the check a "
            "batch manifest implies; give it another `name`"
        )
    return problems


# Fields an expected rule's asset key may use: a missed file has no name to render.
EXPECT_ASSET_FIELDS = frozenset({"rule", "host"})


class RuleDefaults(_Strict):
    """Settings every [[watch]] inherits unless it sets its own."""

    event: Literal["materialization", "observation"] = "materialization"
    hash: Literal["sha256", "blake2b", "md5", "sha1", "none"] = "sha256"
    settle_seconds: float = Field(2.0, ge=0)
    ignore: list[IgnorePattern] = Field(default_factory=lambda: list(DEFAULT_IGNORE))
    recursive: bool = True
    observer: Literal["auto", "inotify", "polling"] = "auto"
    poll_interval_seconds: float = Field(5.0, gt=0)
    rescan_interval_seconds: float = Field(3600.0, ge=0)
    on_delete: Literal["ignore", "observe"] = "ignore"
    follow_symlinks: bool = False
    count_rows: bool = False


INHERITED = tuple(RuleDefaults.model_fields)


class WatchRule(RuleDefaults):
    """One [[watch]] table. The settings of `RuleDefaults` it does not set itself are
    filled in from [defaults] when the Config is validated: after loading, every setting
    is concrete."""

    name: str | None = None
    path: Path
    glob: str = "**/*"
    regex: re.Pattern[str] | None = None
    asset_key: str
    partition: str | None = None
    description: str | None = None
    metadata: dict[str, str | int | float | bool] = Field(default_factory=dict)
    ready_marker: str | None = None
    checks: list[CheckSettings] = Field(default_factory=list)
    # The name of a DynamicPartitionsDefinition: each new partition key is added to it
    # (GraphQL addDynamicPartition) before its first report.
    dynamic_partitions: str | None = Field(None, min_length=1)
    expect: ExpectSettings | None = None
    batch: BatchSettings | None = None

    @field_validator("expect")
    @classmethod
    def _expect_fits_rule(
        cls, expect: ExpectSettings | None, info: ValidationInfo
    ) -> ExpectSettings | None:
        if expect is None:
            return None
        asset_key = info.data.get("asset_key")
        if asset_key is not None:
            fields = set(template_fields(asset_key)) - EXPECT_ASSET_FIELDS
            if fields:
                raise ValueError(
                    "needs an asset key that names one asset (a missed file has no name to "
                    f"render it from); asset_key uses {', '.join(sorted(fields))}"
                )
        if expect.partition is not None and info.data.get("partition", "") is None:
            raise ValueError(
                "partition needs the rule's own `partition` template: a file belongs "
                "to the due time whose partition equals the file's"
            )
        checks = info.data.get("checks") or []
        if any(check.check_name == expect.check_name for check in checks):
            raise ValueError(f"check_name {expect.check_name!r} is also a [[watch.checks]] name")
        return expect

    @field_validator("path")
    @classmethod
    def _absolute_directory(cls, path: Path) -> Path:
        if not path.is_absolute():
            raise ValueError(f"must be an absolute path, got {str(path)!r}")
        if _CHECK_DIRECTORIES.get() and not path.is_dir():
            raise ValueError(f"directory {str(path)!r} does not exist")
        return Path(os.path.normpath(path))

    @field_validator("checks")
    @classmethod
    def _check_names_unique(cls, checks: list[Any]) -> list[Any]:
        seen: dict[str, int] = {}
        for index, check in enumerate(checks, start=1):
            if check.check_name in seen:
                raise ValueError(
                    f"checks[{seen[check.check_name]}] and checks[{index}] are both named "
                    f"{check.check_name!r}; give one a distinct `name`"
                )
            seen[check.check_name] = index
        return checks

    @field_validator("glob")
    @classmethod
    def _glob_relative(cls, glob: str) -> str:
        if not glob or glob.startswith("/"):
            raise ValueError("must be a non-empty pattern relative to `path`")
        glob_to_regex(glob)  # raises ValueError naming what is wrong
        return glob

    @field_validator("regex", mode="before")
    @classmethod
    def _regex_compiles(cls, value: Any) -> Any:
        return _compile_regex(value) if isinstance(value, str) else value

    @field_validator("asset_key", "partition", "description", "ready_marker")
    @classmethod
    def _template_fields_known(cls, template: str | None, info: ValidationInfo) -> str | None:
        if template is None:
            return None
        if "regex" not in info.data:
            return template  # the regex itself is broken (reported); its groups are unknown
        regex = info.data["regex"]
        known = FILE_FIELDS | set(regex.groupindex if regex else ())
        for field in template_fields(template):
            if field not in known:
                raise ValueError(
                    f"unknown template field {{{field}}}; known: {', '.join(sorted(known))}"
                )
        if info.field_name == "asset_key" and not any(part.strip() for part in template.split("/")):
            raise ValueError("asset key template is empty")
        return template

    @field_validator("dynamic_partitions")
    @classmethod
    def _needs_a_partition(cls, name: str | None, info: ValidationInfo) -> str | None:
        # A broken `partition` template is reported on its own; only a missing one here.
        if name is not None and "partition" in info.data and info.data["partition"] is None:
            raise ValueError("needs a `partition` template on the rule: the key it adds")
        return name

    @property
    def rule_name(self) -> str:
        return self.name or self.asset_key


class Config(BaseSettings):
    """The whole resolved configuration, passed down in slices to each stage."""

    model_config = SettingsConfigDict(
        env_prefix="ASSET_WATCHER_",
        env_nested_delimiter="__",
        extra="forbid",
        arbitrary_types_allowed=True,
        allow_inf_nan=False,
    )

    dagster: DagsterSettings = Field(default_factory=lambda: DagsterSettings())
    state: StateSettings = Field(default_factory=StateSettings)
    defaults: RuleDefaults = Field(default_factory=lambda: RuleDefaults())
    watch: list[WatchRule] = Field(default_factory=list)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    heartbeat: HeartbeatSettings = Field(default_factory=lambda: HeartbeatSettings())

    # Resolved after validation; never part of the file.
    source: str = Field("", exclude=True)
    token: SecretStr | None = Field(None, exclude=True)
    token_source: str | None = Field(None, exclude=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init arguments; the environment overrides it.
        return (env_settings, init_settings)

    @model_validator(mode="before")
    @classmethod
    def _only_settings(cls, data: Any) -> Any:
        """`token`, `source` and `token_source` are resolved, never read from the file or the
        environment: the token must not sit in a configuration file."""
        if isinstance(data, dict):
            resolved = [key for key in ("token", "source", "token_source") if key in data]
            if resolved:
                raise ValueError("\n".join(f"{key}: unknown key" for key in resolved))
        return data

    @model_validator(mode="after")
    def _inherit_and_check_names(self) -> Config:
        for rule in self.watch:
            for key in INHERITED:
                if key not in rule.model_fields_set:
                    setattr(rule, key, getattr(self.defaults, key))
        problems = duplicate_rule_names(rule.rule_name for rule in self.watch)
        for index, rule in enumerate(self.watch, start=1):
            problems += batch_problems(index, rule)
            problems += resolve_checksums(rule, index)
        problems += missing_location(
            [rule.dynamic_partitions for rule in self.watch], self.dagster.location
        )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def redacted(self) -> dict[str, Any]:
        """The resolved configuration as plain data, the token shown only as present or not."""
        data = self.model_dump(mode="json")
        for rule, model in zip(data["watch"], self.watch, strict=True):
            rule["regex"] = model.regex.pattern if model.regex else None
        data["dagster"]["token"] = (
            f"********** (from {self.token_source})" if self.token else "(not set)"
        )
        data["state"]["directory"] = str(self.state.resolved_directory())
        return data


def duplicate_rule_names(names: Iterable[object]) -> list[str]:
    """One problem per rule whose name an earlier rule already has."""
    seen: dict[object, int] = {}
    problems = []
    for index, name in enumerate(names, start=1):
        if name in seen:
            problems.append(
                f"watch[{index}].name: duplicate rule name {name!r} (also watch[{seen[name]}])"
            )
        seen.setdefault(name, index)
    return problems


def resolve_checksums(rule: WatchRule, index: int) -> list[str]:
    """Check each `checksum` check's sidecar template against the rule's fields and
    settle its algorithm (after [defaults] filled in the rule's hash); the problems."""
    problems = []
    known = FILE_FIELDS | set(rule.regex.groupindex if rule.regex else ())
    for number, check in enumerate(rule.checks, start=1):
        if not isinstance(check, ChecksumCheck):
            continue
        key = f"watch[{index}].checks[{number}]"
        unknown = [field for field in template_fields(check.sidecar) if field not in known]
        if unknown:
            problems.append(
                f"{key}.sidecar: unknown template field {{{unknown[0]}}}; "
                f"known: {', '.join(sorted(known))}"
            )
        if check.algorithm is None:
            implied = algorithm_from_name(check.sidecar)
            if implied is None and rule.hash in ALGORITHMS:
                implied = rule.hash
            if implied is None:
                problems.append(
                    f"{key}.algorithm: the sidecar name {check.sidecar!r} does not say which "
                    f"algorithm it holds and the rule's hash is {rule.hash!r}; set algorithm "
                    f"(one of {', '.join(ALGORITHMS)})"
                )
            check.algorithm = implied  # type: ignore[assignment]
    return problems


def missing_location(dynamic_partitions: Iterable[object], location: object) -> list[str]:
    """`dagster.location` is needed as soon as one rule adds dynamic partitions (each
    rule's `dynamic_partitions`, in order)."""
    naming = [f"watch[{index}]" for index, name in enumerate(dynamic_partitions, 1) if name]
    if not naming or location:
        return []
    return [
        f"dagster.location: required by dynamic_partitions ({', '.join(naming)}): the name of "
        "the code location that defines the dynamic partitions"
    ]


def template_fields(template: str) -> list[str]:
    """The `{field}` names a template uses; malformed templates raise ValueError."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"malformed template {template!r}: {exc}") from None
    fields = []
    for _, field, _, conversion in parsed:
        if field is None:
            continue
        if not field.isidentifier():
            raise ValueError(f"template field {{{field}}} must be a plain name")
        if conversion:
            raise ValueError(f"template field {{{field}!{conversion}}}: no conversions")
        fields.append(field)
    return fields


def _compile_regex(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None


def config_path(explicit: str | None) -> Path:
    """`--config`, else $ASSET_WATCHER_CONFIG, else the system-wide default."""
    return Path(explicit or os.environ.get(CONFIG_PATH_ENV) or DEFAULT_CONFIG_PATH)


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    require_file: bool = True,
    check_directories: bool = True,
) -> Config:
    """Read, merge with the environment and validate; raise ConfigError listing every problem.

    `check_directories=False` accepts watched folders that do not exist here: the Dagster
    side (`asset_watcher.dagster`) reads the agent's config on another host.
    """
    file = config_path(os.fspath(path) if path is not None else None)
    data: dict[str, Any] = {}
    try:
        with open(file, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        if require_file:
            raise ConfigError([f"{file}: configuration file not found"]) from None
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{file}: invalid TOML: {exc}"]) from None
    token = _CHECK_DIRECTORIES.set(check_directories)
    try:
        config = Config(**data)
    except ValidationError as exc:
        problems = [_problem_line(error) for error in exc.errors()]
        # Found on the raw tables too, so they come out with the other problems at once.
        raw_rules = data.get("watch")
        raw_rules = raw_rules if isinstance(raw_rules, list) else []
        names = [r.get("name") or r.get("asset_key") for r in raw_rules if isinstance(r, dict)]
        problems += [p for p in duplicate_rule_names(names) if p not in problems]
        dagster = data.get("dagster")
        location = dagster.get("location") if isinstance(dagster, dict) else None
        if any(name.upper().startswith("ASSET_WATCHER_DAGSTER") for name in os.environ):
            location = location or "(perhaps from the environment)"  # said once it validates
        dynamic = [r.get("dynamic_partitions") if isinstance(r, dict) else None for r in raw_rules]
        problems += [p for p in missing_location(dynamic, location) if p not in problems]
        raise ConfigError(problems) from None
    except SettingsError as exc:  # an ASSET_WATCHER_* variable that is not valid JSON
        raise ConfigError([f"environment: {exc}"]) from None
    finally:
        _CHECK_DIRECTORIES.reset(token)
    config.source = str(file)
    _resolve_token(config)
    return config


def _resolve_token(config: Config) -> None:
    """First found wins: $DAGSTER_CLOUD_API_TOKEN, token_file, systemd credential."""
    found: tuple[str, str] | None = None
    problem = None
    if os.environ.get(TOKEN_ENV, "").strip():
        found = (os.environ[TOKEN_ENV], f"${TOKEN_ENV}")
    elif config.dagster.token_file is not None:
        token_file = config.dagster.token_file
        try:
            found = (token_file.read_text(encoding="utf-8"), str(token_file))
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            problem = f"dagster.token_file: cannot read {str(token_file)!r}: {reason}"
    if found is None:
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        path = os.path.join(credentials or "", CREDENTIAL_NAME)
        if credentials and os.path.isfile(path):
            source = f"$CREDENTIALS_DIRECTORY/{CREDENTIAL_NAME}"
            try:
                with open(path, encoding="utf-8") as handle:
                    found = (handle.read(), source)
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or "not UTF-8 text"
                raise ConfigError([f"dagster token: cannot read {source}: {reason}"]) from None
    if found is None:
        if problem:
            raise ConfigError([problem])
        return
    token, source = found[0].strip(), found[1]
    # A header value cannot hold white space or control characters; saying so here keeps
    # the token out of the HTTP library's error message.
    if any(char.isspace() or not char.isprintable() for char in token):
        raise ConfigError(
            [f"dagster token from {source}: contains white space or control characters"]
        )
    config.token, config.token_source = SecretStr(token), source


def _problem_line(error: Any) -> str:
    """One pydantic error as `watch[1].checks[2].min_bytes: message`."""
    key = ""
    for part in error["loc"]:
        if isinstance(part, int):
            key += f"[{part + 1}]"
        elif part in CHECK_TYPES and key.endswith("]"):
            continue  # the discriminated union's tag adds nothing for the reader
        else:
            key += f".{part}" if key else str(part)
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] == "missing":
        message = "required key is missing"
    elif error["type"] == "union_tag_invalid":
        message = f"unknown check type; known: {', '.join(CHECK_TYPES)}"
    elif error["type"] == "union_tag_not_found":
        message = f"`type` is required; one of: {', '.join(CHECK_TYPES)}"
    # Cross-rule problems (duplicate names) already name their keys.
    return f"{key}: {message}" if key else message


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)
