"""Finished spool files kept until their commit is safe from a failover.

With asynchronous replication a commit the primary acknowledged may be missing on the standby
that a failover promotes: the new primary's offsets are then behind what the collector
committed. A finished file deleted at once would take its lines with it; one kept is read
again from the new primary's offsets, and nothing is lost or stored twice.

A finished, stored file is kept (TASKLOG_FAILOVER_GRACE > 0) until one of:

- every standby streaming from the primary (``pg_stat_replication``, at least one) has
  flushed WAL past the primary's position read after the commit (a promoted standby replays
  all it flushed); reading the standbys' positions needs the ``pg_monitor`` role or a
  superuser, and without it only the grace period counts;
- TASKLOG_FAILOVER_GRACE seconds have passed since it was kept.

When the offsets are reloaded from Postgres (a failed commit, a new connection), the kept set
is emptied: what the new primary says is stored is kept again from then on (the collector
keeps any finished file whose end is stored), and the rest is read again.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class _Kept:
    #: When the grace period ends (monotonic seconds).
    until: float
    #: The primary's WAL position, read after the commit; None until the next check.
    position: int | None = None


class KeptFiles:
    """The finished files kept, by name, and when each may go."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._kept: dict[str, _Kept] = {}

    @property
    def enabled(self) -> bool:
        return self.grace > 0

    def __contains__(self, name: object) -> bool:
        return name in self._kept

    def __len__(self) -> int:
        return len(self._kept)

    def keep(self, name: str, now: float) -> None:
        """Keep a finished file whose end was just committed (a no-op if kept already)."""
        self._kept.setdefault(name, _Kept(until=now + self.grace))

    def release(self, written: int | None, confirmed: int | None, now: float) -> list[str]:
        """The files that may go now, no longer kept.

        `written`: the primary's WAL position now, at or past the commit of every file kept so
        far without a position (they get it); `confirmed`: the lowest position every standby
        has flushed, or None (no standby, or their positions cannot be read).
        """
        free = []
        for name, kept in self._kept.items():
            if kept.position is None:
                kept.position = written
            on_standbys = (
                confirmed is not None and kept.position is not None and kept.position <= confirmed
            )
            if on_standbys or now >= kept.until:
                free.append(name)
        for name in free:
            del self._kept[name]
        return free

    def discard(self, name: str) -> None:
        """A kept file deleted by someone else: nothing left to keep."""
        self._kept.pop(name, None)

    def clear(self) -> None:
        """Forget every kept file: the offsets were reloaded from Postgres."""
        self._kept.clear()
