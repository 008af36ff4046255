"""Globs over relative paths, compiled to regular expressions (pure; imports nothing internal).

A rule's `glob` matches `/`-separated paths below its root: `*` and `?` stay within one
folder, `**` spans folders. `ignore` patterns are fnmatch patterns over one path
component. Both are checked when the config loads, so a broken pattern is a config
error naming its key, never a surprise in `scan` or `run`.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable


def _bracket_end(pattern: str, start: int) -> int:
    """The index of the `]` closing the bracket expression opened at `start`, or -1 (a
    lone `[` is literal). As in fnmatch: `]` right after `[` or `[!` is a member."""
    j = start + 1
    if j < len(pattern) and pattern[j] == "!":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1
    return pattern.find("]", j)


def check_ranges(pattern: str) -> None:
    """A reversed range (`[z-a]`) is a mistake: say so rather than match nothing."""
    i = 0
    while i < len(pattern):
        end = _bracket_end(pattern, i) if pattern[i] == "[" else -1
        if end < 0:
            i += 1
            continue
        body = pattern[i + 1 : end].removeprefix("!")
        k = 0
        while k < len(body):
            if k + 2 < len(body) and body[k + 1] == "-":
                low, high = body[k], body[k + 2]
                if low > high:
                    raise ValueError(
                        f"invalid pattern {pattern!r}: reversed character range "
                        f"{low}-{high} in {pattern[i : end + 1]}"
                    )
                k += 3
            else:
                k += 1
        i = end + 1


def glob_to_regex(glob: str) -> re.Pattern[str]:
    """A glob over `/`-separated relative paths: `*` and `?` stay within one folder, `**`
    spans folders (`**/` also matches no folder at all). Raises ValueError for a glob
    that cannot be compiled (a reversed range): config load reports it as the key's
    problem, so `explain`, `scan` and `run` never meet it."""
    check_ranges(glob)
    out, i = [], 0
    while i < len(glob):
        char = glob[i]
        end = _bracket_end(glob, i) if char == "[" else -1
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif char == "*":
            out.append("[^/]*")
            i += 1
        elif char == "?":
            out.append("[^/]")
            i += 1
        elif end >= 0:
            body = glob[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            # Backslash, `[` and the set operators (&&, ~~, ||) are members, not syntax.
            body = re.sub(r"([\\\[&~|])", r"\\\1", body)
            out.append("[" + body + "]")
            i = end + 1
        else:
            out.append(re.escape(char))
            i += 1
    try:
        return re.compile("".join(out) + r"\Z", re.DOTALL)
    except re.error as exc:
        raise ValueError(f"invalid glob {glob!r}: {exc}") from None


def ignore_regex(patterns: Iterable[str]) -> re.Pattern[str]:
    """One regex matching a path component that any of the fnmatch `patterns` match."""
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
