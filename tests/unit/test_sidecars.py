"""sidecars.py: the sidecar formats, the algorithm a name implies, the line for a file."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from asset_watcher.reports import iso_utc
from asset_watcher.sidecars import algorithm_from_name, expected_digest, parse
from tests.conftest import CliRun

DATA = b"id,qty\n1,2\n"
SHA256 = hashlib.sha256(DATA).hexdigest()
MD5 = hashlib.md5(DATA).hexdigest()
OTHER = hashlib.sha256(b"other").hexdigest()


@pytest.mark.parametrize(
    ("text", "algorithm", "expected"),
    [
        (f"{SHA256}  orders.csv\n", "sha256", SHA256),  # sha256sum, text mode
        (f"{SHA256} *orders.csv\n", "sha256", SHA256),  # sha256sum -b
        (f"{SHA256} orders.csv\n", "sha256", SHA256),  # one space, as some tools write
        (f"{SHA256.upper()}  orders.csv\r\n", "sha256", SHA256),  # upper case, CRLF
        (f"{SHA256}\n", "sha256", SHA256),  # a bare digest
        (f"  {SHA256.upper()}  ", "sha256", SHA256),  # bare, padded, no newline
        (f"SHA256 (orders.csv) = {SHA256}\n", "sha256", SHA256),  # BSD
        (f"MD5 (orders.csv) = {MD5}\n", "md5", MD5),
        (f"{MD5}  orders.csv\n", "md5", MD5),  # md5sum
        (f"\ufeff{SHA256}  orders.csv\n", "sha256", SHA256),  # a BOM from a Windows tool
        (f"# made by export job\n\n{SHA256}  orders.csv\n", "sha256", SHA256),
        (f"{SHA256}  /export/out/orders.csv\n", "sha256", SHA256),  # written elsewhere
        (f"{SHA256}  ./orders.csv\n", "sha256", SHA256),
    ],
)
def test_formats(text: str, algorithm: str, expected: str) -> None:
    assert expected_digest(text, "orders.csv", "orders.csv", algorithm) == expected


def test_a_list_file_gives_the_line_for_the_files_name() -> None:
    text = f"{OTHER}  customers.csv\n{SHA256}  orders.csv\n{OTHER} *refunds.csv\n"
    assert expected_digest(text, "orders.csv", "orders.csv", "sha256") == SHA256


def test_a_list_prefers_the_path_below_the_root_over_the_name() -> None:
    text = f"{OTHER}  eu/orders.csv\n{SHA256}  us/orders.csv\n"
    assert expected_digest(text, "orders.csv", "us/orders.csv", "sha256") == SHA256


def test_a_bsd_list_of_several_files() -> None:
    text = f"SHA256 (a.csv) = {OTHER}\nSHA256 (orders.csv) = {SHA256}\n"
    assert expected_digest(text, "orders.csv", "orders.csv", "sha256") == SHA256


def test_escaped_names_as_sha256sum_writes_them() -> None:
    # sha256sum prefixes the line with \ when the name holds a backslash or a newline.
    (entry,) = parse(f"\\{SHA256}  we\\\\ird\\nname.csv\n")
    assert entry.name == "we\\ird\nname.csv"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "holds no digest line"),
        ("not a checksum at all\n", "holds no digest line"),
        (f"{OTHER}  customers.csv\n", "none named 'orders.csv'"),
        (f"{OTHER}\n{SHA256}\n", "none named"),  # two bare digests: which one?
        (f"MD5 (orders.csv) = {MD5}\n", "the sidecar line is md5, the check expects sha256"),
        (f"{MD5}  orders.csv\n", "32 hex digits; sha256 has 64"),
    ],
)
def test_sidecars_that_give_no_digest_say_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        expected_digest(text, "orders.csv", "orders.csv", "sha256")


@pytest.mark.parametrize(
    ("name", "algorithm"),
    [
        ("{relpath}.sha256", "sha256"),
        ("{relpath}.SHA256", "sha256"),
        ("{stem}.md5", "md5"),
        ("{name}.sha1", "sha1"),
        ("{name}.sha512", "sha512"),
        ("SHA256SUMS", "sha256"),
        ("{reldir}/MD5SUMS", "md5"),
        ("sha1sums.txt", "sha1"),
        ("{relpath}.sum", None),
        ("{relpath}.checksum", None),
        ("CHECKSUMS", None),
    ],
)
def test_algorithm_from_the_sidecars_name(name: str, algorithm: str | None) -> None:
    assert algorithm_from_name(name) == algorithm


def test_explain_names_the_sidecar_whether_present_and_until_when_the_file_waits(
    cli: CliRun, tmp_path: Path, drop: Path, config_file: Callable[[str], Path]
) -> None:
    path = config_file(
        f"""
        [state]
        directory = "{tmp_path / "state"}"
        [[watch]]
        path = "{drop}"
        asset_key = "partner/{{stem}}"
        [[watch.checks]]
        type = "checksum"
        sidecar = "{{relpath}}.sha256"
        wait_seconds = 600
        """
    )
    data = drop / "orders.csv"
    data.write_bytes(b"id\n1\n")
    until = data.stat().st_ctime_ns / 1e9 + 600  # as the agent computes it (float-exact)
    waiting = cli("explain", "-c", str(path), str(data))
    assert waiting.returncode == 0, waiting.stderr
    assert (
        f"  checksum sidecar (checksum, sha256): {data}.sha256 (missing; waited for up to 600s)\n"
        in waiting.stdout
    )
    shown = iso_utc(int(until * 1e9))
    assert f"  waits for its sidecar {data}.sha256 until {shown}," in waiting.stdout
    (drop / "orders.csv.sha256").write_text(hashlib.sha256(b"id\n1\n").hexdigest() + "\n")
    present = cli("explain", "-c", str(path), str(data))
    assert f"{data}.sha256 (present; waited for up to 600s)\n" in present.stdout
    assert "waits for its sidecar" not in present.stdout
