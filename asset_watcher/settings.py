"""The validated model of each configuration table: [dagster], [state], [metrics],
[heartbeat], and a rule's [[watch.checks]], [watch.expect] and [watch.batch]."""

from __future__ import annotations

import os
import re
import string
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from asset_watcher.expect import check_cron, check_partition, host_zone_name, zone
from asset_watcher.globs import check_ranges, ignore_regex

# Fields every template may use; a rule's regex adds its named groups.
FILE_FIELDS = frozenset({"name", "stem", "suffix", "parent", "relpath", "reldir", "rule", "host"})
DEFAULT_IGNORE = (".*", "*~", "*.tmp", "*.part", "*.partial", "*.filepart", "*.crdownload")


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
