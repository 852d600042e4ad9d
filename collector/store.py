"""Postgres: one transaction per batch, lines by COPY, offsets advanced in the same commit.

`Store.commit` is the heart of "exactly once": the lines of a batch, the task changes they
imply and the new offsets of their spool files become visible together or not at all. After a
failed commit the caller reloads offsets from `spool_files` (the truth) and reads again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from collector.tail import Batch, FileChunk, FileState, clean_text
from tasklog.core import queries
from tasklog.core.errors import StoreUnavailable

log = logging.getLogger("tasklog.collector")

Q = queries.load("collector.sql")
_COPY = "COPY lines (task_id, seq, ts, stream, level, message) FROM STDIN"
#: Lines planned and sent to COPY at a time (see `_commit`).
_SLICE_LINES = 2000
# Record times outside 2000..2100 are clock errors (or garbage); they are clamped.
_EARLIEST = 946684800.0
_LATEST = 4102444800.0


@dataclass
class Stored:
    """What a committed batch stored: for the live path and for the file bookkeeping."""

    lines: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    ended: list[FileState] = field(default_factory=list)
    rows: int = 0


class _Plan(NamedTuple):
    """The rows to COPY and the parameters of the statements that go with them."""

    rows: list[tuple[Any, ...]]
    trims: list[dict[str, Any]]
    advances: list[dict[str, Any]]
    ends: list[dict[str, Any]]
    markers: list[dict[str, Any]]


@dataclass
class _Run:
    """A chunk's placement in its task: pending until the batch commits."""

    chunk: FileChunk
    task_id: str
    seq_base: int
    head: int
    tail: int
    max_seq: int


class Store:
    def __init__(self, conninfo: str, host: str) -> None:
        self._conninfo = conninfo
        self.host = host
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._partitions: set[str] = set()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = await psycopg.AsyncConnection.connect(
                    self._conninfo,
                    autocommit=True,
                    connect_timeout=5,
                    application_name=f"tasklog-collector@{self.host}",
                )
            except psycopg.OperationalError as exc:
                raise StoreUnavailable(_reason(exc)) from exc
            self._partitions.clear()
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _run(self, coro_fn: Any, *args: Any) -> Any:
        """Run a database step; a lost connection becomes StoreUnavailable."""
        conn = await self.connect()
        try:
            return await coro_fn(conn, *args)
        except psycopg.OperationalError as exc:
            await self.close()
            raise StoreUnavailable(_reason(exc)) from exc

    # -- offsets ----------------------------------------------------------------------------

    async def load_files(self) -> dict[str, FileState]:
        async def step(conn: psycopg.AsyncConnection[Any]) -> dict[str, FileState]:
            cur = await conn.execute(Q["load_files"], {"host": self.host})
            files = {}
            for row in await cur.fetchall():
                name, inode, offset, task_id, base, max_seq, head, tail, ended = row
                files[name] = FileState(
                    name=name,
                    inode=inode,
                    offset=offset,
                    task_id=task_id,
                    seq_base=base,
                    max_seq=max_seq,
                    head=head,
                    tail=tail,
                    ended=ended,
                    size=offset,
                )
            return files

        result: dict[str, FileState] = await self._run(step)
        return result

    # -- the batch transaction --------------------------------------------------------------

    async def commit(self, batch: Batch, forget: Iterable[str] = ()) -> Stored:
        return await self._run(self._commit, batch, list(forget))  # type: ignore[no-any-return]

    async def _commit(
        self, conn: psycopg.AsyncConnection[Any], batch: Batch, forget: list[str]
    ) -> Stored:
        await self._ensure_partitions(conn, _days(batch))
        stored = Stored()
        async with conn.transaction():
            runs = await self._place(conn, batch.chunks)
            trims: list[Any] = []
            advances: list[Any] = []
            ends: list[Any] = []
            markers: list[Any] = []
            any_lines = any(run.chunk.lines for run in runs)
            async with conn.cursor().copy(_COPY) if any_lines else nullcontext() as copy:
                # Slice by slice, each sent before the next is planned: Postgres stores one
                # while this process prepares the next, on the other core.
                for runs_slice in _slices(runs, _SLICE_LINES):
                    rows, *statements = _plan(runs_slice, stored)
                    for done, more in zip(
                        (trims, advances, ends, markers), statements, strict=True
                    ):
                        done += more
                    if rows:
                        assert copy is not None
                        await copy.write(_copy_text(rows))
                    stored.rows += len(rows)
            async with conn.cursor() as cur:
                if trims:
                    await cur.executemany(Q["trim_tail"], trims)
                if advances:
                    await cur.executemany(Q["advance_task"], advances)
                if ends:
                    await cur.executemany(Q["end_task"], ends)
                if markers:
                    await cur.executemany(Q["insert_marker"], markers)
                saves = [self._file_row(run) for run in runs]
                if saves:
                    await cur.executemany(Q["save_file"], saves)
                if forget:
                    await cur.executemany(
                        Q["forget_file"], [{"host": self.host, "file": f} for f in forget]
                    )
                changed = list({run.task_id for run in runs})
                if changed:
                    await cur.execute(Q["changed_tasks"], {"ids": changed})
                    names = [d.name for d in cur.description or ()]
                    stored.tasks = [dict(zip(names, r, strict=True)) for r in await cur.fetchall()]
        # Committed: only now may the in-memory states move.
        for run in runs:
            state = run.chunk.state
            state.task_id, state.seq_base = run.task_id, run.seq_base
            state.head, state.tail, state.max_seq = run.head, run.tail, run.max_seq
            if run.chunk.end is not None:
                state.ended = True
                stored.ended.append(state)
        return stored

    async def _place(
        self, conn: psycopg.AsyncConnection[Any], chunks: list[FileChunk]
    ) -> list[_Run]:
        """Give each chunk its task and seq base; new runs are upserted as STARTED."""
        runs: list[_Run] = []
        batch_last: dict[str, int] = {}
        stored_last = iter(
            await _start_runs(
                conn,
                [
                    chunk.start
                    for chunk in chunks
                    if not chunk.state.registered and chunk.start is not None
                ],
            )
        )
        for chunk in chunks:
            state = chunk.state
            if state.registered:
                assert state.task_id is not None
                run = _Run(
                    chunk, state.task_id, state.seq_base, state.head, state.tail, state.max_seq
                )
            elif chunk.start is not None:
                start = chunk.start
                task_id = start["task_id"]
                base = max(next(stored_last), batch_last.get(task_id, 0))
                max_lines = start.get("max_lines")
                if type(max_lines) is not int or max_lines < 2:
                    max_lines = 1000
                head = max_lines // 2
                run = _Run(chunk, task_id, base, head, max_lines - head, 0)
            else:
                log.error(
                    "spool file %s has no start record; its %d lines are skipped",
                    state.name,
                    len(chunk.lines),
                )
                chunk.corrupt += len(chunk.lines)
                chunk.lines.clear()
                continue
            last = run.seq_base + max([run.max_seq, *(line.seq for line in chunk.lines)])
            batch_last[run.task_id] = max(batch_last.get(run.task_id, 0), last)
            runs.append(run)
        return runs

    def _file_row(self, run: _Run) -> dict[str, Any]:
        chunk = run.chunk
        return {
            "host": self.host,
            "file": chunk.state.name,
            "inode": chunk.state.inode,
            "offset": chunk.end_offset,
            "task_id": run.task_id,
            "seq_base": run.seq_base,
            "max_seq": run.max_seq,
            "head": run.head,
            "tail": run.tail,
            "ended": chunk.end is not None,
        }

    async def _ensure_partitions(self, conn: psycopg.AsyncConnection[Any], days: set[date]) -> None:
        for day in sorted(days):
            name = f"lines_{day:%Y%m%d}"
            if name in self._partitions:
                continue
            stmt = sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} PARTITION OF lines FOR VALUES FROM ({}) TO ({})"
            ).format(
                sql.Identifier(name),
                sql.Literal(f"{day.isoformat()} 00:00:00+00"),
                sql.Literal(f"{(day + timedelta(days=1)).isoformat()} 00:00:00+00"),
            )
            try:
                await conn.execute(stmt)
            except psycopg.errors.DuplicateTable:
                pass  # another collector made it at the same moment
            except psycopg.errors.UniqueViolation:
                pass
            self._partitions.add(name)

    # -- orphans, heartbeats, retention -----------------------------------------------------

    async def lose(self, state: FileState, reason: str) -> dict[str, Any] | None:
        """Finalize a run whose writer died: its task becomes LOST, its lines stay."""

        async def step(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any] | None:
            omitted = max(0, state.max_seq - state.head - state.tail)
            async with conn.transaction():
                await conn.execute(
                    Q["lose_task"],
                    {"task_id": state.task_id, "reason": reason, "omitted": omitted},
                )
                if omitted:
                    await conn.execute(Q["insert_marker"], _marker(state, omitted, None))
                await conn.execute(
                    Q["save_file"],
                    {
                        "host": self.host,
                        "file": state.name,
                        "inode": state.inode,
                        "offset": state.offset,
                        "task_id": state.task_id,
                        "seq_base": state.seq_base,
                        "max_seq": state.max_seq,
                        "head": state.head,
                        "tail": state.tail,
                        "ended": True,
                    },
                )
                cur = await conn.execute(Q["changed_tasks"], {"ids": [state.task_id]})
                names = [d.name for d in cur.description or ()]
                row = await cur.fetchone()
            state.ended = True
            return dict(zip(names, row, strict=True)) if row else None

        result: dict[str, Any] | None = await self._run(step)
        return result

    async def heartbeat(self, params: dict[str, Any]) -> None:
        async def step(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(
                Q["heartbeat"], {**params, "host": self.host, "stats": Jsonb(params["stats"])}
            )

        await self._run(step)

    async def prune(self, retention_days: int) -> tuple[list[str], int]:
        """Drop line partitions and delete tasks older than the retention; cheap at any size."""

        async def step(conn: psycopg.AsyncConnection[Any]) -> tuple[list[str], int]:
            cutoff = datetime.now(UTC) - timedelta(days=retention_days)
            dropped = []
            cur = await conn.execute(Q["line_partitions"])
            for (name,) in await cur.fetchall():
                day = _partition_day(name)
                if day is not None and day + timedelta(days=1) <= cutoff.date():
                    drop = sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name))
                    await conn.execute(drop)
                    self._partitions.discard(name)
                    dropped.append(name)
            deleted = 0
            while True:
                cur = await conn.execute(Q["prune_tasks"], {"cutoff": cutoff})
                deleted += cur.rowcount
                if cur.rowcount < 10000:
                    break
            return dropped, deleted

        result: tuple[list[str], int] = await self._run(step)
        return result


async def _start_runs(
    conn: psycopg.AsyncConnection[Any], starts: list[dict[str, Any]]
) -> list[int]:
    """Upsert the tasks of new runs as STARTED, pipelined in one round trip: each one's stored
    last_seq, in order (the upsert leaves last_seq alone, so none depends on another)."""
    if not starts:
        return []
    found = []
    async with conn.cursor() as cur:
        await cur.executemany(Q["start_task"], [_start_params(s) for s in starts], returning=True)
        while True:
            row = await cur.fetchone()
            found.append(row[0] if row else 0)
            if not cur.nextset():
                break
    return found


# -- planning a batch (pure) ----------------------------------------------------------------


def _slices(runs: list[_Run], lines: int) -> Iterator[list[_Run]]:
    """Consecutive runs holding about `lines` lines each (a run is never split)."""
    group: list[_Run] = []
    count = 0
    for run in runs:
        group.append(run)
        count += len(run.chunk.lines)
        if count >= lines:
            yield group
            group, count = [], 0
    if group:
        yield group


def _plan(runs: list[_Run], stored: Stored) -> _Plan:
    """The rows to COPY and the statements that go with them, applying the head+tail bound.

    A run keeps its first `head` lines and its last `tail` lines: lines of this batch that are
    already out of the tail window are never inserted, stored ones that leave it are deleted,
    and the end of the run adds one "N lines omitted" marker where the gap is.
    """
    rows: list[tuple[Any, ...]] = []
    trims: list[dict[str, Any]] = []
    advances: list[dict[str, Any]] = []
    ends: list[dict[str, Any]] = []
    markers: list[dict[str, Any]] = []
    for run in runs:
        chunk, base, head, tail = run.chunk, run.seq_base, run.head, run.tail
        before = run.max_seq
        after = max([before, *(line.seq for line in chunk.lines)])
        cutoff = after - tail  # local seqs above head and at or below this are omitted
        published = stored.lines.setdefault(run.task_id, [])
        added = 0
        for line in chunk.lines:
            if line.seq <= head or line.seq > cutoff:
                seq = base + line.seq
                ts = _iso(line.t)
                rows.append((run.task_id, seq, ts, line.stream, line.level, line.message))
                published.append(
                    {
                        "seq": seq,
                        "ts": ts,
                        "stream": line.stream,
                        "level": line.level,
                        "message": line.message,
                    }
                )
                added += 1
        low, high = max(head, before - tail), min(before, cutoff)
        if high > low:
            trims.append({"task_id": run.task_id, "low": base + low, "high": base + high})
            added -= high - low
        progress = chunk.progress or {}
        omitted = max(0, after - head - tail)
        if chunk.end is not None and omitted:
            markers.append(_marker_for(run.task_id, base, head, omitted, chunk.end.get("t")))
            added += 1
        advances.append(
            {
                "task_id": run.task_id,
                "added": added,
                "last_seq": base + after,
                "progress": _percent(progress.get("p")),
                "progress_message": _text(progress.get("msg")),
                "state": (_text(progress.get("state")) or "")[:32] or None,
            }
        )
        if chunk.end is not None:
            end = chunk.end
            ends.append(
                {
                    "task_id": run.task_id,
                    "state": str(end["state"])[:32],
                    "t": _when(_number(end.get("t")) or time.time()),
                    "runtime": _number(end.get("runtime")),
                    "exc_type": _text(end.get("exc_type")),
                    "exc_message": _text(end.get("exc_message")),
                    "traceback": _text(end.get("traceback")),
                    "errors": end["errors"] if type(end.get("errors")) is int else 0,
                    "omitted": omitted,
                }
            )
        run.max_seq = after
        if not published:
            del stored.lines[run.task_id]
    return _Plan(rows, trims, advances, ends, markers)


def _marker_for(task_id: str, base: int, head: int, omitted: int, t: Any) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "seq": base + head + 1,
        "t": _when(_number(t) or time.time()),
        "message": f"… {omitted} lines omitted "
        "(TASKLOG_MAX_LINES keeps the first and last lines) …",
    }


def _marker(state: FileState, omitted: int, t: Any) -> dict[str, Any]:
    assert state.task_id is not None
    return _marker_for(state.task_id, state.seq_base, state.head, omitted, t)


def _start_params(start: dict[str, Any]) -> dict[str, Any]:
    args = None
    if "args" in start or "kwargs" in start:
        args = Jsonb({"args": start.get("args"), "kwargs": start.get("kwargs")})
    pid = start.get("pid")
    retries = start.get("retries")
    return {
        "task_id": start["task_id"],
        "name": _text(start.get("name")),
        "host": _text(start.get("host")),
        "worker": _text(start.get("worker")),
        "pid": pid if type(pid) is int and 0 < pid < 2**31 else None,
        "parent_id": _text(start.get("parent_id")),
        "root_id": _text(start.get("root_id")),
        "retries": retries if type(retries) is int and 0 <= retries < 2**31 else 0,
        "args": args,
        "t": _when(_number(start.get("t")) or time.time()),
    }


def _percent(value: Any) -> float | None:
    number = _number(value)
    return None if number is None else min(max(number, 0.0), 100.0)


def _text(value: Any) -> str | None:
    return clean_text(value) if isinstance(value, str) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if number == number and abs(number) < 1e15 else None


def _when(t: float) -> float:
    return min(max(t, _EARLIEST), _LATEST)


def _days(batch: Batch) -> set[date]:
    """The UTC days of the batch's lines, clamped as `_when` clamps (its bounds are midnights)."""
    numbers = {line.t // 86400 for chunk in batch.chunks for line in chunk.lines}
    low, high = _EARLIEST // 86400, _LATEST // 86400
    return {_EPOCH_DAY + timedelta(days=int(min(max(n, low), high))) for n in numbers}


_EPOCH_DAY = date(1970, 1, 1)
#: "YYYY-MM-DDTHH:MM:SS" of recent whole seconds: a batch's lines share a few of them.
_seconds: dict[str, str] = {}


def _iso(t: float) -> str:
    """A line's time as ISO 8601 UTC with microseconds, for COPY and for the live path alike.

    Built from a cached second and the microseconds: a datetime per line cost more than
    everything else in a batch but the parsing.
    """
    if not _EARLIEST <= t <= _LATEST:
        t = _when(t)
    # Cut as text: formatting an int with "06d" costs twice the rest.
    micros = str(int(t * 1_000_000 + 0.5))  # 15 digits from 2000 to 2100
    prefix = _seconds.get(micros[:-6])
    if prefix is None:
        if len(_seconds) >= 4096:
            _seconds.clear()
        prefix = _seconds[micros[:-6]] = datetime.fromtimestamp(int(micros[:-6]), UTC).strftime(
            "%Y-%m-%dT%H:%M:%S"
        )
    return f"{prefix}.{micros[-6:]}+00:00"


def _copy_text(rows: list[tuple[Any, ...]]) -> bytes:
    """Rows in COPY text format, one buffer: one write instead of a `write_row` per line."""
    null = "\\N"
    return "".join(
        [
            f"{_copy_escape(task_id)}\t{seq}\t{ts}\t{stream}\t"
            f"{null if level is None else _copy_escape(level)}\t{_copy_escape(message)}\n"
            for task_id, seq, ts, stream, level, message in rows
        ]
    ).encode("utf-8")


def _copy_escape(text: str) -> str:
    # Text is clean (no NUL, no lone surrogate); COPY gives meaning to these four.
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        return (
            text.replace("\\", "\\\\")
            .replace("\t", "\\t")
            .replace("\n", "\\n")
            .replace("\r", "\\r")
        )
    return text


def _partition_day(name: str) -> date | None:
    try:
        return datetime.strptime(name, "lines_%Y%m%d").date()
    except ValueError:
        return None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
