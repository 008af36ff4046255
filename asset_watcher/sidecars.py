"""Checksum sidecars (SPEC 14): which algorithm a sidecar holds, and the digest it gives
for a file. Pure text handling; reading the sidecar and comparing is checks.py's job.

Formats understood, one per line (a sidecar may hold one line or list many files):

- `HEX  name` and `HEX *name`, as sha256sum/md5sum write them (text and binary mode);
- `SHA256 (name) = HEX`, BSD style (`sha256 -r`-less output, `openssl dgst`);
- a bare `HEX`, for a sidecar that holds one digest only.

Hex is case-insensitive. Lines starting with `#` and blank lines are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Algorithm -> hex digits of its digest; the names are hashlib's.
DIGEST_HEX_LENGTH = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128, "blake2b": 128}
ALGORITHMS = tuple(DIGEST_HEX_LENGTH)
# A sidecar's suffix (or a list file's name, `SHA256SUMS`) names its algorithm.
_SUFFIX_ALGORITHMS = {"md5": "md5", "sha1": "sha1", "sha256": "sha256", "sha512": "sha512"}
_LIST_NAME = re.compile(r"(?i)(md5|sha1|sha256|sha512)sums?(\.txt)?\Z")
# BSD names (`SHA256 (x) = ...`, `MD5 (x) = ...`, `BLAKE2b (x) = ...`) -> hashlib names.
_BSD_LINE = re.compile(r"\A(?P<algo>[A-Za-z0-9-]+) ?\((?P<name>.*)\) ?= ?(?P<hex>[0-9A-Fa-f]+)\Z")
# Two spaces (text mode) or " *" (binary mode); one space, as some tools write, too.
_GNU_LINE = re.compile(r"\A\\?(?P<hex>[0-9A-Fa-f]+)(?: [ *]|\s+)(?P<name>.+)\Z")
_BARE_LINE = re.compile(r"\A(?P<hex>[0-9A-Fa-f]+)\Z")
# A sidecar is small; a "sidecar" much larger than a listing of many files is not one.
SIDECAR_MAX_BYTES = 16 * 1024 * 1024


def algorithm_from_name(sidecar: str) -> str | None:
    """The algorithm a sidecar's name implies (`x.csv.sha256`, `MD5SUMS`), if any."""
    name = sidecar.rstrip("/").rsplit("/", 1)[-1]
    found = _LIST_NAME.match(name)
    if found:
        return found.group(1).lower()
    suffix = name.rpartition(".")[2].lower() if "." in name else ""
    return _SUFFIX_ALGORITHMS.get(suffix)


def _bsd_algorithm(name: str) -> str:
    return name.lower().replace("-", "")


@dataclass(frozen=True)
class Entry:
    """One digest line of a sidecar: `name` is None for a bare digest."""

    digest: str  # lower-case hex
    name: str | None
    algorithm: str | None = None  # named by the line itself (BSD style)


def parse(text: str) -> list[Entry]:
    """Every digest line of a sidecar; lines of no known shape are passed over."""
    entries = []
    for raw in text.splitlines():
        line = raw.strip().removeprefix("\ufeff")
        if not line or line.startswith("#"):
            continue
        bsd = _BSD_LINE.match(line)
        if bsd:
            algorithm = _bsd_algorithm(bsd["algo"])
            entries.append(Entry(bsd["hex"].lower(), bsd["name"], algorithm))
            continue
        gnu = _GNU_LINE.match(line)
        if gnu:
            name = gnu["name"]
            if line.startswith("\\"):  # sha256sum escapes names with \ or newlines so
                name = name.replace("\\n", "\n").replace("\\\\", "\\")
            entries.append(Entry(gnu["hex"].lower(), name))
            continue
        bare = _BARE_LINE.match(line)
        if bare:
            entries.append(Entry(bare["hex"].lower(), None))
    return entries


def _listed(entries: list[Entry], name: str, relpath: str) -> list[Entry]:
    """The lines naming the file: by its path below the rule's root first, then by its
    name alone (a list written elsewhere, `/export/x.csv`, or in the file's folder)."""
    named = [e for e in entries if e.name is not None]
    exact = [e for e in named if e.name is not None and e.name.removeprefix("./") == relpath]
    return exact or [e for e in named if e.name is not None and e.name.rsplit("/", 1)[-1] == name]


def expected_digest(text: str, name: str, relpath: str, algorithm: str) -> str:
    """The digest a sidecar's `text` gives for the file `name` (at `relpath` below the
    rule's root), in `algorithm`. Raises ValueError saying why there is none.

    A line naming the file wins; a sidecar of a single bare digest is the file's own."""
    entries = parse(text)
    if not entries:
        raise ValueError("the sidecar holds no digest line")
    chosen = _listed(entries, name, relpath)
    if not chosen and len(entries) == 1 and entries[0].name is None:
        chosen = entries
    if not chosen:
        raise ValueError(f"the sidecar lists {len(entries)} file(s), none named {name!r}")
    entry = chosen[0]
    if entry.algorithm is not None and entry.algorithm != algorithm:
        raise ValueError(f"the sidecar line is {entry.algorithm}, the check expects {algorithm}")
    wanted = DIGEST_HEX_LENGTH.get(algorithm)
    if wanted is not None and len(entry.digest) != wanted:
        raise ValueError(
            f"the sidecar's digest has {len(entry.digest)} hex digits; {algorithm} has {wanted}"
        )
    return entry.digest
