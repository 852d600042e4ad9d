"""The names of the search's trigram indexes: the collector builds them (`collector.searchindex`),
the search picks its time windows by them (`api.lookups`), so the names are a contract of both.

- ``lines_YYYYMMDD_message_trgm``: a whole day's lines, built once the day is over;
- ``lines_YYYYMMDD_HHMM_HHMM_trgm``: a slice of a day (UTC, end exclusive, ``2400`` for the
  next midnight), a partial index on ``ts >= low AND ts < high`` of the day's partition. The
  open day is indexed in such slices as it goes: an hour once it is over, and the hour under
  way in slices of `SLICE` as each one ends.

A search window that lies inside a slice lets Postgres use the slice's partial index; one that
no valid index covers is scanned. A line stored late (its time inside a slice already built) is
indexed all the same: Postgres adds every row its predicate holds for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

#: The open hour is indexed in slices of this length, each built once it is over.
SLICE = timedelta(minutes=2)
HOUR = timedelta(hours=1)
_DAY = re.compile(r"lines_(\d{8})_message_trgm")
_SLICE = re.compile(r"lines_(\d{8})_(\d{2})(\d{2})_(\d{2})(\d{2})_trgm")


@dataclass(frozen=True, order=True)
class Slice:
    """A time range of one day's lines with a trigram index of its own."""

    low: datetime
    high: datetime

    @property
    def name(self) -> str:
        day = self.low.date()
        end = self.high - midnight(day)
        hours, minutes = divmod(int(end.total_seconds()) // 60, 60)
        return f"lines_{day:%Y%m%d}_{self.low:%H%M}_{hours:02d}{minutes:02d}_trgm"


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def day_index(day: date) -> str:
    return f"lines_{day:%Y%m%d}_message_trgm"


def parse(name: str) -> date | Slice | None:
    """The day a day index covers, the slice a slice index covers, or None for other names."""
    try:
        if m := _DAY.fullmatch(name):
            return datetime.strptime(m[1], "%Y%m%d").date()
        if m := _SLICE.fullmatch(name):
            start = midnight(datetime.strptime(m[1], "%Y%m%d").date())
            low = start + timedelta(hours=int(m[2]), minutes=int(m[3]))
            high = start + timedelta(hours=int(m[4]), minutes=int(m[5]))
            if start <= low < high <= start + timedelta(days=1):
                return Slice(low, high)
    except ValueError:
        return None
    return None


def floor(moment: datetime, step: timedelta) -> datetime:
    """`moment` (UTC) rounded down to a multiple of `step` since its midnight."""
    moment = moment.astimezone(UTC)
    start = midnight(moment.date())
    return start + step * ((moment - start) // step)
