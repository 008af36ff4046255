"""One streaming read of a file: size, digest, first line and line count together.

The buffer is reused across the reads of one file, so memory stays bounded for a 10 GB
file, and sized to the file when it is smaller (zeroing 1 MiB for each of 10,000 small
files cost more than reading them). The file is read once however many facts are wanted.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import signal
import stat as stat_module
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asset_watcher.model import FileStat, Fingerprint

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
# From this size on, a second digest is updated on a thread of its own while the first is
# updated on the reading one (hashlib lets go of the GIL): two digests cost about the time
# of the slower one. Below it, starting the thread costs more than it saves.
PARALLEL_DIGEST_MIN_BYTES = 8 * CHUNK_BYTES
FIRST_LINE_MAX_BYTES = 64 * 1024
_lease_unavailable_said = False


class FileChangedError(OSError):
    """The file changed while it was read: it is still being written."""


class NotRegularFileError(OSError):
    """The path is a folder, a FIFO, a device or a symbolic link that is not followed."""


def new_hash(algorithm: str) -> Any:
    if algorithm == "md5":
        return hashlib.md5(usedforsecurity=False)
    if algorithm == "sha1":
        return hashlib.sha1(usedforsecurity=False)
    return hashlib.new(algorithm)


def stat_of(result: os.stat_result) -> FileStat:
    return FileStat(
        size=result.st_size,
        mtime_ns=result.st_mtime_ns,
        inode=result.st_ino,
        ctime_ns=result.st_ctime_ns,
    )


def file_stat(path: str, follow_symlinks: bool = False) -> FileStat | None:
    """The stat of a regular file, or None for anything else (or nothing)."""
    try:
        st = os.stat(path, follow_symlinks=follow_symlinks)
    except OSError:
        return None
    return stat_of(st) if stat_module.S_ISREG(st.st_mode) else None


def fingerprint(
    path: str,
    algorithm: str = "sha256",
    *,
    count_lines: bool = False,
    follow_symlinks: bool = False,
    expected_real_path: str | None = None,
    extra_algorithms: Sequence[str] = (),
) -> Fingerprint:
    """Read `path` once. Raises OSError (vanished, unreadable), NotRegularFileError, or
    FileChangedError when another process holds it open for writing or its size or mtime
    moved during the read. `extra_algorithms` are digested in the same read (a checksum
    sidecar's algorithm when it is not the rule's).

    O_NOFOLLOW guards only the last component: `expected_real_path` makes sure no folder
    on the way was swapped for a link (an SFTP user racing the agent out of the drop)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK  # NONBLOCK: a FIFO must not hang us
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the final component is a symbolic link
            raise NotRegularFileError(exc.errno, "is a symbolic link (not followed)") from None
        raise
    with os.fdopen(fd, "rb", buffering=0) as handle:
        if expected_real_path is not None and _real_path(fd) not in (None, expected_real_path):
            raise NotRegularFileError(0, "reached through a symbolic link (not followed)")
        before = os.fstat(fd)
        if not stat_module.S_ISREG(before.st_mode):
            raise NotRegularFileError(0, "not a regular file")
        if open_for_writing(fd):
            raise FileChangedError(0, "open for writing by another process")
        if before.st_size > CHUNK_BYTES:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        digest = None if algorithm == "none" else new_hash(algorithm)
        extras = [(name, new_hash(name)) for name in dict.fromkeys(extra_algorithms)]
        extras = [(name, hasher) for name, hasher in extras if name != algorithm]
        hashers = [h for h in (digest, *(hasher for _, hasher in extras)) if h is not None]
        helper = None
        if len(hashers) > 1 and before.st_size >= PARALLEL_DIGEST_MIN_BYTES:
            helper = ThreadPoolExecutor(max_workers=len(hashers) - 1)
        # A byte more than the size: one read meets the end of a file that did not grow.
        buffer = bytearray(min(CHUNK_BYTES, max(FIRST_LINE_MAX_BYTES, before.st_size + 1)))
        view = memoryview(buffer)
        first_line = bytearray()
        first_line_done = False
        newlines = 0
        last_byte = b""
        try:
            while True:
                read = handle.readinto(buffer)
                if not read:
                    break
                chunk = view[:read]
                if helper is not None:
                    # The buffer is read into again only after every digest took this chunk.
                    pending = [helper.submit(h.update, chunk) for h in hashers[1:]]
                    hashers[0].update(chunk)
                    for future in pending:
                        future.result()
                else:
                    for hasher in hashers:
                        hasher.update(chunk)
                if not first_line_done:
                    end = buffer.find(b"\n", 0, read)
                    first_line += bytes(chunk[: end if end >= 0 else read])
                    first_line_done = end >= 0 or len(first_line) >= FIRST_LINE_MAX_BYTES
                    first_line = first_line[:FIRST_LINE_MAX_BYTES]
                if count_lines:
                    newlines += buffer.count(b"\n", 0, read)
                    last_byte = bytes(buffer[read - 1 : read])
        finally:
            if helper is not None:
                helper.shutdown()
        after = os.fstat(fd)
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        raise FileChangedError(0, "changed while it was read")
    line_count = None
    if count_lines:
        line_count = newlines + (1 if last_byte not in (b"", b"\n") else 0)
    return Fingerprint(
        stat=stat_of(after),
        algorithm=algorithm,
        digest=digest.hexdigest() if digest is not None else None,
        first_line=bytes(first_line).rstrip(b"\r"),
        line_count=line_count,
        extra_digests=tuple((name, hasher.hexdigest()) for name, hasher in extras),
    )


def open_for_writing(fd: int) -> bool:
    """Whether some process holds the file open for writing: a writer paused for longer
    than settle_seconds, which no stat can tell from a finished file. The kernel refuses
    a read lease on such a file, so one is taken and at once given back.

    Leases need the file's owner or CAP_LEASE (outside a user namespace); where they are
    refused or unsupported (NFS) this says False and completion rests on close events
    and settle_seconds, as it does without it. That is said once in the log."""
    try:
        # A lease broken in the microseconds we hold it signals us; SIGIO would end the
        # process, SIGURG is ignored by default.
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            return True
        _say_leases_unavailable(exc)
        return False
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return False


def _say_leases_unavailable(exc: OSError) -> None:
    global _lease_unavailable_said
    if not _lease_unavailable_said:
        _lease_unavailable_said = True
        log.info(
            "cannot ask the kernel whether a file is still open for writing (%s): a writer "
            "paused for longer than settle_seconds can look finished to a scan; the README's "
            "CAP_LEASE drop-in lets the agent tell",
            exc.strerror or exc,
        )


def _real_path(fd: int) -> str | None:
    """Where an open file really is (Linux /proc); None where that cannot be told."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
