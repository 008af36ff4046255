"""Paths as text and as places: one home for each question asked about a path.

Display text for logs and people, UTF-8 text for report metadata, whether a path lies
under a folder, and whether a folder on the way to it is a symbolic link. Imports
nothing internal.
"""

from __future__ import annotations

import os
import stat
from typing import AnyStr


def utf8_path(path: str) -> str:
    """A path as valid UTF-8 text for report metadata: undecodable bytes of a name shown as
    backslash escapes, everything else as it is."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def display_path(path: str) -> str:
    """A path as printable text for logs and people: like `utf8_path`, and control
    characters escaped too (a newline in an uploaded file's name must not forge a log
    line)."""
    text = utf8_path(path)
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


def is_under(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies below it (by text: nothing is resolved)."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def relative_to(folder: str, path: str) -> str | None:
    """`path` relative to `folder`, or None when it lies outside or is `folder` itself."""
    if not is_under(path, folder):
        return None
    return path[len(folder.rstrip("/")) + 1 :] or None


def through_link(root: AnyStr, path: AnyStr) -> bool:
    """Whether a folder between `root` (excluded) and `path` (excluded) is a symbolic link
    or no folder at all: then `path` does not lie in the tree we were asked to watch."""
    sep = "/" if isinstance(path, str) else b"/"
    prefix = root.rstrip(sep) + sep
    if not path.startswith(prefix):
        return False
    parts = path[len(prefix) :].split(sep)[:-1]
    current = root
    for part in parts:
        current = current.rstrip(sep) + sep + part
        try:
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                return True
        except OSError:
            return True
    return False
