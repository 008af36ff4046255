"""The one Config: TOML file plus `ASSET_WATCHER_*` environment overrides, validated once.

Every problem is collected before giving up, and each is reported as one line naming its
key (`watch[1].regex: ...`), so an operator fixes a broken file in one pass.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import (
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
from asset_watcher.globs import glob_to_regex
from asset_watcher.settings import (
    BATCH_FIELDS,
    CHECK_TYPES,
    DEFAULT_IGNORE,
    FILE_FIELDS,
    BatchSettings,
    CheckSettings,
    ChecksumCheck,
    DagsterSettings,
    ExpectSettings,
    HeartbeatSettings,
    IgnorePattern,
    MetricsSettings,
    StateSettings,
    _compile_regex,
    _Strict,
    folder_groups,
    template_fields,
)
from asset_watcher.sidecars import ALGORITHMS, algorithm_from_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_CONFIG_PATH = "/etc/asset-watcher/config.toml"
CONFIG_PATH_ENV = "ASSET_WATCHER_CONFIG"
TOKEN_ENV = "DAGSTER_CLOUD_API_TOKEN"
CREDENTIAL_NAME = "dagster-token"

# Off while the Dagster side reads the agent's config: the drop folders live on the data host.
_CHECK_DIRECTORIES: ContextVar[bool] = ContextVar("check_directories", default=True)


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
