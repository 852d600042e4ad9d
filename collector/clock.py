"""Times a spool file gives, kept within its run's window before they choose partitions.

A line's time is written by the task's process: a hostile or broken one can date its lines
anywhere, and each day it names would become a partition of `lines` (every query on `lines`
then locks every partition). So a run's times are held to its window: not before the run's
start minus `SKEW`, not after now plus `SKEW`; the run's start itself is held within the
retention window. A time outside is clamped to the nearer edge and counted.

Even inside the windows, one batch creates at most `MAX_NEW_PARTITIONS` partitions (the
newest days it needs); a line of any other new day moves to the nearest day that has one.
Honest runs never see it: their lines fall on the day or two before now.
"""

from __future__ import annotations

import bisect
import operator
import time
from datetime import date, timedelta

from collector import fields
from collector.batch import Batch, FileChunk, Line

#: How far a time may lie outside its run's window (clocks of hosts disagree a little).
SKEW = 300.0
#: New partitions of `lines` one batch may create.
MAX_NEW_PARTITIONS = 4
_DAY = 86400
_EPOCH_DAY = date(1970, 1, 1)
_TIME = operator.attrgetter("t")


def window_floor(retention_days: int, now: float) -> float:
    """The earliest time a run may start at: the retention window's (older is pruned)."""
    return now - (retention_days + 1) * _DAY


def hold(
    batch: Batch, known: set[date], retention_days: int, now: float | None = None
) -> tuple[set[date], int]:
    """Clamp the batch's times into their runs' windows, in place; returns the days whose
    partitions the batch needs and how many times were clamped.

    `known`: the days whose partitions exist (as far as the caller knows); new days beyond
    `MAX_NEW_PARTITIONS` are not created, their lines go to the nearest allowed day.
    """
    now = time.time() if now is None else now
    floor, ceiling = window_floor(retention_days, now), now + SKEW
    clamped = 0
    for chunk in batch.chunks:
        clamped += _hold_chunk(chunk, floor, ceiling)
    days: set[date] = set()
    for chunk in batch.chunks:
        days |= _days(chunk.lines)
    new = sorted(days - known)
    if len(new) <= MAX_NEW_PARTITIONS:
        return days, clamped
    allowed = sorted((days & known) | set(new[-MAX_NEW_PARTITIONS:]))
    days = set()
    for chunk in batch.chunks:
        clamped += _to_allowed(chunk, allowed)
        days |= _days(chunk.lines)
    return days, clamped


def _hold_chunk(chunk: FileChunk, floor: float, ceiling: float) -> int:
    """One file's records: the run's start within [floor, ceiling], its lines and end within
    [start - SKEW, ceiling]."""
    clamped = 0
    state = chunk.state
    if chunk.start is not None:
        t = fields.record_time(chunk.start.get("t"))
        held = min(max(t, floor), ceiling)
        clamped += held != t
        chunk.start["t"] = held
        started = held
    else:
        started = max(state.started, floor) if state.started is not None else floor
    low = max(started - SKEW, floor)
    lines = chunk.lines
    if lines:
        times = list(map(_TIME, lines))
        if min(times) < low or max(times) > ceiling:
            for i, line in enumerate(lines):
                if not low <= line.t <= ceiling:
                    lines[i] = line._replace(t=min(max(line.t, low), ceiling))
                    clamped += 1
    for record in (chunk.progress, chunk.end):
        if record is not None and "t" in record:
            t = fields.record_time(record.get("t"))
            held = min(max(t, low), ceiling)
            clamped += held != t
            record["t"] = held
    return clamped


def _to_allowed(chunk: FileChunk, allowed: list[date]) -> int:
    """Move lines whose day is not in `allowed` (sorted) to the nearest allowed day's edge."""
    clamped = 0
    numbers = [(day - _EPOCH_DAY).days for day in allowed]
    allowed_set = set(numbers)
    for i, line in enumerate(chunk.lines):
        n = int(line.t // _DAY)
        if n in allowed_set:
            continue
        at = bisect.bisect_left(numbers, n)
        before = numbers[at - 1] if at > 0 else None
        after = numbers[at] if at < len(numbers) else None
        if after is None or (before is not None and n - before <= after - n):
            assert before is not None
            t = (before + 1) * _DAY - 1e-6  # the last moment of the earlier day
        else:
            t = after * _DAY
        chunk.lines[i] = Line(line.seq, float(t), line.stream, line.level, line.message)
        clamped += 1
    return clamped


def _days(lines: list[Line]) -> set[date]:
    """The days of the lines' times: mostly one, found from the earliest and the latest."""
    if not lines:
        return set()
    times = list(map(_TIME, lines))
    first, last = int(min(times) // _DAY), int(max(times) // _DAY)
    numbers = {first} if first == last else {int(t // _DAY) for t in times}
    return {_EPOCH_DAY + timedelta(days=n) for n in numbers}
