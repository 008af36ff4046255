"""When a rule's files are due ([watch.expect]): cron due times in an IANA zone, pure.

The only home of croniter (a maintained cron library: Vixie-cron semantics, day-of-month
OR day-of-week, ranges, steps and names, and a clear error for a cron that never fires)
and of zoneinfo. Times go in and out as UTC epoch seconds; no clock is read here.

Due times are wall-clock times in the zone, iterated by croniter over naive local times
and then placed on the time line:

- a local time that does not exist (clocks spring forward over it) is due once, at the
  moment the clocks jump: `30 2 * * *` in Europe/Berlin is due at 03:00 CEST that day, and
  several such times (`*/15 2 * * *`) fall together into that one due time;
- a local time that happens twice (clocks fall back) is due once, at its first occurrence.

So every due time is a distinct instant, in order, and a day never has more due times
than its cron says.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

# Offsets change by at most a few hours: looking back this far past a local time finds
# every due time that may lie before an instant (see `previous_due`).
_OFFSET_SLACK = timedelta(hours=3)
# A cron whose next due time is further away than this is taken as never firing (croniter
# gives up first for impossible dates; 29 February fires every 4 to 8 years).
NEVER_YEARS = 10


def check_cron(expression: str) -> str:
    """`expression` if it is a five-field cron that fires; ValueError saying why not."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(
            f"expected five fields (minute hour day month weekday), got {len(fields)}: "
            f"{expression!r}"
        )
    start = datetime(2000, 1, 1)
    try:
        croniter(expression, start, max_years_between_matches=NEVER_YEARS).get_next(datetime)
    except CroniterBadDateError:
        raise ValueError(
            f"{expression!r} never fires (no due time within {NEVER_YEARS} years)"
        ) from None
    except (CroniterError, ValueError, KeyError) as exc:
        raise ValueError(f"invalid cron expression {expression!r}: {exc}") from None
    return " ".join(fields)


def zone(name: str) -> ZoneInfo:
    """The IANA zone `name`; ValueError when there is no such zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown IANA time zone {name!r} (e.g. Europe/Berlin, UTC)") from None


def host_zone_name() -> str:
    """The host's IANA zone: $TZ, else the /etc/localtime link, else /etc/timezone, else
    UTC. A fixed offset (what `datetime.astimezone()` gives) would ignore DST."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name and _known(name):
        return name
    try:
        target = os.readlink("/etc/localtime")
    except OSError:
        target = ""
    if "zoneinfo/" in target:
        name = target.split("zoneinfo/", 1)[1]
        if _known(name):
            return name
    try:
        name = Path("/etc/timezone").read_text(encoding="utf-8").strip()
    except OSError:
        name = ""
    return name if name and _known(name) else "UTC"


def _known(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def check_partition(template: str) -> str:
    """A partition template over the due time, such as "{due:%Y-%m-%d}"."""
    try:
        rendered = template.format(due=datetime(2000, 1, 2, 3, 4, tzinfo=timezone.utc))
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise ValueError(
            f"template {template!r} may use only {{due:FORMAT}} (strftime): {exc}"
        ) from None
    if not rendered.strip():
        raise ValueError(f"template {template!r} renders empty")
    return template


@dataclass(frozen=True)
class Schedule:
    """A cron in a zone with a grace time: the due times and their windows' deadlines."""

    cron: str
    zone: ZoneInfo
    grace_seconds: int

    def local(self, due: float) -> datetime:
        return datetime.fromtimestamp(due, self.zone)

    def deadline(self, due: float) -> float:
        return due + self.grace_seconds

    def partition(self, template: str, due: float) -> str:
        return template.format(due=self.local(due))

    def due_times(self, after: float) -> Iterator[int]:
        """The due times strictly after `after`, in order, without end."""
        naive = datetime.fromtimestamp(after, self.zone).replace(tzinfo=None)
        last = math.floor(after)
        for local in croniter(self.cron, naive).all_next(datetime):
            due = self._instant(local)
            if due > last:  # a time that fell together with the one before is not repeated
                last = due
                yield due

    def next_due(self, after: float) -> int:
        return next(self.due_times(after))

    def previous_due(self, before: float) -> int | None:
        """The latest due time strictly before `before` (None if croniter finds none)."""
        return next(self.due_times_before(before), None)

    def due_times_before(self, before: float) -> Iterator[int]:
        """The due times strictly before `before`, latest first."""
        # Started a few hours late in local time: around a change of offset, a due time
        # before `before` may read later on the clock than `before` does.
        start = datetime.fromtimestamp(before, self.zone).replace(tzinfo=None) + _OFFSET_SLACK
        last = math.ceil(before)
        try:
            for local in croniter(self.cron, start).all_prev(datetime):
                due = self._instant(local)
                if due < last and due < before:
                    last = due
                    yield due
        except CroniterBadDateError:
            return

    def due_between(self, after: float, until: float) -> Iterator[int]:
        """Due times in (after, until]."""
        for due in self.due_times(after):
            if due > until:
                return
            yield due

    def _instant(self, local: datetime) -> int:
        """A naive local wall-clock time on the time line (see the module docstring)."""
        first = local.replace(tzinfo=self.zone, fold=0)
        utc = first.astimezone(timezone.utc)
        if utc.astimezone(self.zone).replace(tzinfo=None) == local:
            return int(utc.timestamp())  # exists; fold=0 is the first of a repeated time
        # In a gap: fold=0 reads it with the offset before the jump, fold=1 with the one
        # after, so the jump lies between the two readings. Find its minute.
        low = int(local.replace(tzinfo=self.zone, fold=1).timestamp())
        high = int(utc.timestamp())
        low, high = min(low, high), max(low, high)
        before = datetime.fromtimestamp(low, self.zone).utcoffset()
        while high - low > 1:
            middle = (low + high) // 2
            if datetime.fromtimestamp(middle, self.zone).utcoffset() == before:
                low = middle
            else:
                high = middle
        return high
