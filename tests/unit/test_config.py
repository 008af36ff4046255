"""Configuration: every problem named by its key, env overrides, token resolution."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from asset_watcher.config import load_config
from asset_watcher.errors import ConfigError
from tests.conftest import CliRun


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def test_minimal_config_inherits_defaults(
    config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    path = config_file(
        f"""
        [defaults]
        settle_seconds = 0.5
        hash = "blake2b"
        [[watch]]
        path = "{tmp_path}"
        asset_key = "acme/orders"
        [[watch]]
        name = "second"
        path = "{tmp_path}"
        asset_key = "x"
        hash = "none"
        """
    )
    config = load_config(path)
    first, second = config.watch
    assert first.rule_name == "acme/orders"
    assert (first.settle_seconds, first.hash, first.event) == (0.5, "blake2b", "materialization")
    assert (second.rule_name, second.hash) == ("second", "none")
    assert first.ignore is not None and "*.filepart" in first.ignore
    assert config.dagster.url == "http://localhost:3000"


def test_every_problem_is_reported_with_its_key(
    config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    path = config_file(
        f"""
        [dagster]
        url = "dagster.example.com"
        bogus = 1
        [[watch]]
        path = "relative/dir"
        asset_key = "a"
        [[watch]]
        path = "{tmp_path / "missing"}"
        asset_key = "b"
        [[watch]]
        path = "{tmp_path}"
        regex = 'orders_(?P<date>\\d+'
        asset_key = "c"
        [[watch]]
        path = "{tmp_path}"
        regex = 'orders_(?P<date>\\d+)'
        asset_key = "acme/{{datum}}"
        partition = "{{date}}"
        [[watch]]
        path = "{tmp_path}"
        asset_key = "a"
        event = "explosion"
        """
    )
    problems = problems_of(path)
    text = "\n".join(problems)
    assert any(p.startswith("dagster.url: must be an http") for p in problems), text
    assert "dagster.bogus: unknown key" in problems
    assert any(p.startswith("watch[1].path: must be an absolute path") for p in problems), text
    assert any(p.startswith("watch[2].path: directory") for p in problems), text
    assert any(p.startswith("watch[3].regex: invalid regular expression") for p in problems), text
    assert any(p.startswith("watch[4].asset_key: unknown template field {datum}") for p in problems)
    assert any(p.startswith("watch[5].event:") for p in problems), text
    assert not any("Traceback" in p for p in problems)


def test_duplicate_rule_names(config_file: Callable[[str], Path], tmp_path: Path) -> None:
    path = config_file(
        f"""
        [[watch]]
        path = "{tmp_path}"
        asset_key = "same"
        [[watch]]
        path = "{tmp_path}"
        name = "same"
        asset_key = "other"
        """
    )
    assert problems_of(path) == ["watch[2].name: duplicate rule name 'same' (also watch[1])"]


@pytest.mark.parametrize(
    ("check", "expected"),
    [
        ('{ type = "size" }', "watch[1].checks[1]: size check needs min_bytes or max_bytes"),
        ('{ type = "nope" }', "watch[1].checks[1]: unknown check type"),
        ('{ type = "size", min_bytes = -1 }', "watch[1].checks[1].min_bytes:"),
        ('{ type = "name_regex", pattern = "(" }', "watch[1].checks[1].pattern: invalid regular"),
        ('{ type = "gzip", severity = "FATAL" }', "watch[1].checks[1].severity:"),
    ],
)
def test_check_problems_name_their_key(
    config_file: Callable[[str], Path], tmp_path: Path, check: str, expected: str
) -> None:
    path = config_file(
        f"""
        [[watch]]
        path = "{tmp_path}"
        asset_key = "a"
        checks = [{check}]
        """
    )
    problems = problems_of(path)
    assert any(p.startswith(expected) for p in problems), problems


def test_malformed_toml_and_missing_file(
    config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    path = config_file("[dagster\nurl = 1\n")
    (problem,) = problems_of(path)
    assert "invalid TOML" in problem
    (problem,) = problems_of(tmp_path / "nowhere.toml")
    assert "configuration file not found" in problem


def test_environment_overrides_the_file(
    config_file: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = config_file(
        f"""
        [dagster]
        url = "http://file.example:3000"
        timeout_seconds = 3
        [[watch]]
        path = "{tmp_path}"
        asset_key = "a"
        """
    )
    monkeypatch.setenv("ASSET_WATCHER_DAGSTER__URL", "https://env.example/dagster/")
    monkeypatch.setenv("ASSET_WATCHER_STATE__DIRECTORY", str(tmp_path / "state"))
    config = load_config(path)
    assert config.dagster.url == "https://env.example/dagster"
    assert config.dagster.timeout_seconds == 3
    assert config.state.resolved_directory() == tmp_path / "state"


def test_config_path_from_environment(
    config_file: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = config_file('[dagster]\nurl = "http://from-env:1"\n')
    monkeypatch.setenv("ASSET_WATCHER_CONFIG", str(path))
    assert load_config().dagster.url == "http://from-env:1"


def test_token_sources_in_order(
    config_file: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "dagster-token").write_text("from-credential")
    path = config_file(f'[dagster]\ntoken_file = "{token_file}"\n')
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))

    monkeypatch.setenv("DAGSTER_CLOUD_API_TOKEN", "from-env")
    config = load_config(path)
    assert config.token is not None and config.token.get_secret_value() == "from-env"
    assert "from-env" not in repr(config) and "from-env" not in str(config.redacted())

    monkeypatch.delenv("DAGSTER_CLOUD_API_TOKEN")
    config = load_config(path)
    assert config.token is not None and config.token.get_secret_value() == "from-file"

    token_file.unlink()
    config = load_config(path)
    assert config.token is not None and config.token.get_secret_value() == "from-credential"

    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    (problem,) = problems_of(path)
    assert problem.startswith("dagster.token_file: cannot read")


def test_state_directory_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from asset_watcher.settings import StateSettings

    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/a:{tmp_path}/b")
    assert StateSettings().resolved_directory() == tmp_path / "a"
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert StateSettings().resolved_directory() == tmp_path / "xdg" / "asset-watcher"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('token = "in-the-file"\n', "token: unknown key"),
        ("[dagster]\ntimeout_seconds = inf\n", "dagster.timeout_seconds: Input should be a finite"),
        ("[dagster]\ntimeout_seconds = 100000\n", "dagster.timeout_seconds: Input should be less"),
    ],
)
def test_settings_that_must_not_be_accepted(
    config_file: Callable[[str], Path], text: str, expected: str
) -> None:
    problems = problems_of(config_file(text))
    assert any(p.startswith(expected) for p in problems), problems


def test_bad_environment_json_is_a_config_error(
    config_file: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASSET_WATCHER_DEFAULTS__IGNORE", "not json")
    (problem,) = problems_of(config_file(""))
    assert problem.startswith("environment:") and "defaults" in problem


def test_unusable_tokens_are_refused_without_echoing_them(
    config_file: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = config_file("")
    monkeypatch.setenv("DAGSTER_CLOUD_API_TOKEN", "part-one\npart-two")
    (problem,) = problems_of(path)
    assert "white space or control characters" in problem
    assert "part-one" not in problem
    monkeypatch.delenv("DAGSTER_CLOUD_API_TOKEN")
    token_file = tmp_path / "token"
    token_file.write_bytes(b"\xff\xfe")
    (problem,) = problems_of(config_file(f'[dagster]\ntoken_file = "{token_file}"\n'))
    assert problem.startswith("dagster.token_file: cannot read") and "UTF-8" in problem


def test_duplicate_names_come_out_with_the_other_problems(
    config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    path = config_file(
        f"""
        [[watch]]
        path = "{tmp_path}"
        regex = '(?P<d>x'
        asset_key = "a/{{d}}"
        [[watch]]
        path = "{tmp_path}"
        asset_key = "a/{{d}}"
        event = "bogus"
        """
    )
    problems = problems_of(path)
    assert any(p.startswith("watch[1].regex: invalid") for p in problems)
    assert not any(p.startswith("watch[1].asset_key") for p in problems)  # not a 2nd symptom
    assert any(p.startswith("watch[2].event") for p in problems)
    assert any(p.startswith("watch[2].name: duplicate rule name") for p in problems)


def test_a_reversed_range_in_a_glob_or_an_ignore_pattern_names_its_key(
    config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    path = config_file(
        f"""
        [defaults]
        ignore = [".*", "[9-0]*"]
        [[watch]]
        path = "{tmp_path}"
        glob = "[z-a].csv"
        asset_key = "a"
        [[watch]]
        path = "{tmp_path}"
        asset_key = "b"
        ignore = ["*.tmp", "[!z-b]"]
        """
    )
    problems = problems_of(path)
    assert problems == [
        "defaults.ignore[2]: invalid pattern '[9-0]*': reversed character range 9-0 in [9-0]",
        "watch[1].glob: invalid pattern '[z-a].csv': reversed character range z-a in [z-a]",
        "watch[2].ignore[2]: invalid pattern '[!z-b]': reversed character range z-b in [!z-b]",
    ]


@pytest.mark.parametrize(
    "glob", ["[ab]*.csv", "[!a-c]?.csv", "[]]x", "[!]x]", "[a-]", "[a&&b]", "[[:x:]]", "a["]
)
def test_globs_that_compile_are_accepted(
    config_file: Callable[[str], Path], tmp_path: Path, glob: str
) -> None:
    path = config_file(f'[[watch]]\npath = "{tmp_path}"\nglob = {glob!r}\nasset_key = "a"\n')
    assert load_config(path).watch[0].glob == glob


@pytest.mark.parametrize("command", [["check-config"], ["explain", "a.csv"], ["scan"]])
def test_an_invalid_glob_exits_2_naming_the_key_without_a_traceback(
    cli: CliRun, config_file: Callable[[str], Path], tmp_path: Path, command: list[str]
) -> None:
    path = config_file(
        f"""
        [state]
        directory = "{tmp_path / "state"}"
        [[watch]]
        path = "{tmp_path}"
        glob = "[z-a].csv"
        asset_key = "a"
        ignore = ["[9-0]*"]
        """
    )
    if command[0] == "explain":
        command = ["explain", str(tmp_path / "z.csv")]
    result = cli("-c", str(path), *command)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert any(line.startswith("asset-watcher: watch[1].glob: ") for line in lines), lines
    assert any(line.startswith("asset-watcher: watch[1].ignore[1]: ") for line in lines), lines
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("check", "expected"),
    [
        ('{ type = "checksum" }', "watch[1].checks[1].sidecar: required key is missing"),
        (
            '{ type = "checksum", sidecar = "{nope}.sha256" }',
            "watch[1].checks[1].sidecar: unknown template field {nope}; known: day, host,",
        ),
        (
            '{ type = "checksum", sidecar = "{relpath.sha256" }',
            "watch[1].checks[1].sidecar: malformed template",
        ),
        (
            '{ type = "checksum", sidecar = "{relpath}.sha256", algorithm = "crc32" }',
            "watch[1].checks[1].algorithm:",
        ),
        (
            '{ type = "checksum", sidecar = "{relpath}.sha256", wait_seconds = -1 }',
            "watch[1].checks[1].wait_seconds:",
        ),
        (
            '{ type = "checksum", sidecar = "{relpath}.sum" }',  # and the rule's hash is none
            "watch[1].checks[1].algorithm: the sidecar name '{relpath}.sum' does not say",
        ),
    ],
)
def test_checksum_problems_name_their_key(
    config_file: Callable[[str], Path], tmp_path: Path, check: str, expected: str
) -> None:
    path = config_file(
        f"""
        [[watch]]
        path = "{tmp_path}"
        asset_key = "a"
        regex = '(?P<day>\\d+)'
        hash = "none"
        checks = [{check}]
        """
    )
    problems = problems_of(path)
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize(
    ("settings", "rule_hash", "algorithm"),
    [
        ('sidecar = "{relpath}.md5"', "sha256", "md5"),  # the suffix says
        ('sidecar = "{reldir}/SHA1SUMS"', "sha256", "sha1"),
        ('sidecar = "{relpath}.sum"', "blake2b", "blake2b"),  # else the rule's hash
        ('sidecar = "{relpath}.md5", algorithm = "sha512"', "sha256", "sha512"),  # explicit
    ],
)
def test_the_checksum_algorithm_is_settled_at_load(
    config_file: Callable[[str], Path],
    tmp_path: Path,
    settings: str,
    rule_hash: str,
    algorithm: str,
) -> None:
    path = config_file(
        f"""
        [defaults]
        hash = "{rule_hash}"
        [[watch]]
        path = "{tmp_path}"
        asset_key = "a"
        checks = [{{ type = "checksum", {settings} }}]
        """
    )
    (check,) = load_config(path).watch[0].checks
    assert check.algorithm == algorithm  # type: ignore[union-attr]
    assert check.wait_seconds == 300  # type: ignore[union-attr]
