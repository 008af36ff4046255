"""Fingerprints agree with hashlib on real files, in one bounded read."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
from pathlib import Path

import pytest

from asset_watcher import fingerprint as fingerprint_module
from asset_watcher.fingerprint import (
    CHUNK_BYTES,
    PARALLEL_DIGEST_MIN_BYTES,
    FileChangedError,
    NotRegularFileError,
    fingerprint,
    open_for_writing,
)
from tests.support.agent_run import skip_without_file_leases


@pytest.mark.parametrize("algorithm", ["sha256", "blake2b", "md5", "sha1"])
@pytest.mark.parametrize("size", [0, 1, CHUNK_BYTES - 1, CHUNK_BYTES, 3 * CHUNK_BYTES + 17])
def test_digest_matches_hashlib(tmp_path: Path, algorithm: str, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    result = fingerprint(str(path), algorithm)
    assert result.digest == hashlib.new(algorithm, data).hexdigest()
    assert result.stat.size == size
    assert result.stat.inode == path.stat().st_ino
    assert result.stat.mtime_ns == path.stat().st_mtime_ns


def test_no_digest(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    result = fingerprint(str(path), "none")
    assert (result.digest, result.stat.size) == (None, 3)


@pytest.mark.parametrize(
    ("content", "first_line", "lines"),
    [
        (b"", b"", 0),
        (b"a,b\n", b"a,b", 1),
        (b"a,b\r\n1,2\r\n3,4", b"a,b", 3),
        (b"h\n" + b"x\n" * 300_000, b"h", 300_001),  # spans several chunks
    ],
)
def test_first_line_and_line_count(
    tmp_path: Path, content: bytes, first_line: bytes, lines: int
) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(content)
    result = fingerprint(str(path), count_lines=True)
    assert result.first_line == first_line
    assert result.line_count == lines


def test_symlink_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"outside the drop")
    link = tmp_path / "link.csv"
    link.symlink_to(secret)
    with pytest.raises(NotRegularFileError):
        fingerprint(str(link))
    assert fingerprint(str(link), follow_symlinks=True).stat.size == 16


def test_fifo_and_folder_are_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFileError):
        fingerprint(str(fifo))
    with pytest.raises(OSError):
        fingerprint(str(tmp_path))


def test_vanished_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        fingerprint(str(tmp_path / "gone"))


def test_a_file_held_open_for_writing_is_still_being_written(tmp_path: Path) -> None:
    """A writer paused for longer than settle_seconds: stat cannot tell, the kernel can."""
    path = tmp_path / "upload.csv"
    path.write_bytes(b"")
    skip_without_file_leases(path)
    with open(path, "ab") as writer:
        writer.write(b"first chunk\n")
        writer.flush()
        with pytest.raises(FileChangedError, match="open for writing"):
            fingerprint(str(path))
    with open(path, "rb") as reader:  # readers do not count
        assert not open_for_writing(reader.fileno())
        assert fingerprint(str(path)).stat.size == len(b"first chunk\n")


def test_where_leases_are_refused_the_agent_says_so_once_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Not the owner and no CAP_LEASE (the shipped unit), or NFS: completion rests on
    close events and settle_seconds, as without the check."""

    def refuse(fd: int, command: int, arg: int = 0) -> int:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(fingerprint_module.fcntl, "fcntl", refuse)
    monkeypatch.setattr(fingerprint_module, "_lease_unavailable_said", False)
    path = tmp_path / "f.csv"
    path.write_bytes(b"x\n")
    with caplog.at_level(logging.INFO, logger="asset_watcher.fingerprint"):
        assert fingerprint(str(path)).stat.size == 2
        assert fingerprint(str(path)).stat.size == 2
    said = [r.getMessage() for r in caplog.records if "open for writing" in r.getMessage()]
    assert len(said) == 1 and "Permission denied" in said[0] and "CAP_LEASE" in said[0]


@pytest.mark.parametrize("size", [0, 10, 3 * (1 << 20), PARALLEL_DIGEST_MIN_BYTES + 12345])
def test_a_second_digest_comes_from_the_same_read(tmp_path: Path, size: int) -> None:
    path = tmp_path / "data.bin"
    data = os.urandom(size)
    path.write_bytes(data)
    print_ = fingerprint(str(path), "sha256", extra_algorithms=("md5", "sha256", "sha512"))
    assert print_.digest == hashlib.sha256(data).hexdigest()
    assert print_.digest_in("md5") == hashlib.md5(data).hexdigest()
    assert print_.digest_in("sha512") == hashlib.sha512(data).hexdigest()
    assert [name for name, _ in print_.extra_digests] == ["md5", "sha512"]


def test_a_sidecar_digest_without_the_rules_hash(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * 100)
    print_ = fingerprint(str(path), "none", extra_algorithms=("sha1",))
    assert print_.digest is None
    assert print_.digest_in("sha1") == hashlib.sha1(b"x" * 100).hexdigest()
