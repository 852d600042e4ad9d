"""Postgres: one transaction per batch, lines by COPY, offsets advanced in the same commit.

`Store.commit` is the heart of "exactly once": the lines of a batch, the task changes they
imply and the new offsets of their spool files become visible together or not at all. After a
failed commit the caller reloads offsets from `spool_files` (the truth) and reads again.
Driver errors leave as the project's errors (`StoreUnavailable` and its subclasses).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import nullcontext
from typing import Any, TypeVar

import orjson
import psycopg
from psycopg.types.json import Jsonb

from collector import clock, copydata, fields, retention
from collector.batch import Batch, FileChunk, FileState, shown
from collector.plan import Run, plan, slices, start_params, state_marker, window
from collector.ports import After
from collector.stored import Stored
from tasklog.core import db
from tasklog.core.errors import StoreUnavailable, TasklogError

log = logging.getLogger("tasklog.collector")

Q = db.queries("collector", "sql/store.sql")
#: Lines planned and sent to COPY at a time (see `_commit`).
_SLICE_LINES = 2000

T = TypeVar("T")
Conn = psycopg.AsyncConnection[Any]

#: Driver errors that a value of the batch causes, not the server: another batch would pass.
_REFUSALS = (
    psycopg.DataError,
    psycopg.IntegrityError,
    psycopg.errors.ProgramLimitExceeded,  # an index entry too large, nesting too deep
)


class RecordRefused(TasklogError):
    """Postgres refused a value of the batch."""

    def __init__(self, exc: BaseException) -> None:
        # The class and SQLSTATE only: Postgres's message may quote the value, which is a
        # task's output or arguments.
        state = getattr(exc, "sqlstate", None)
        self.why = f"Postgres refused a record ({type(exc).__name__}{f' {state}' if state else ''})"
        super().__init__(self.why)


class Store:
    def __init__(
        self, conninfo: str, host: str, retention_days: int = 30, *, prepare: bool = True
    ) -> None:
        self._conninfo = conninfo
        self.host = host
        #: TASKLOG_DATABASE_PREPARED_STATEMENTS (off behind a transaction-pooling PgBouncer).
        self._prepare = prepare
        #: Connections lost so far: the next one may lead to another server (a failover),
        #: whose offsets are the truth from then on.
        self.losses = 0
        #: The window a run's start is held to (`collector.clock`).
        self.retention_days = retention_days
        self._conn: Conn | None = None
        #: Partitions of `lines` known to exist, as far as this connection has seen.
        self._partitions: set[str] = set()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> Conn:
        if self._conn is None or self._conn.closed:
            self._conn = await db.aconnect(
                self._conninfo,
                application_name=f"tasklog-collector@{self.host}",
                prepare=self._prepare,
            )
            self._partitions.clear()
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _run(self, step: Callable[[Conn], Awaitable[T]]) -> T:
        """Run a database step; a lost connection is closed and becomes StoreUnavailable."""
        conn = await self.connect()
        try:
            with db.translated(self._conninfo):
                try:
                    return await step(conn)
                except (*_REFUSALS, UnicodeError) as exc:
                    raise RecordRefused(exc) from exc
        except StoreUnavailable:
            await self.close()
            self.losses += 1
            raise

    # -- offsets ----------------------------------------------------------------------------

    async def load_files(self) -> dict[str, FileState]:
        async def step(conn: Conn) -> dict[str, FileState]:
            cur = await conn.execute(Q["load_files"], {"host": self.host})
            files = {}
            for row in await cur.fetchall():
                name, inode, offset, task_id, base, max_seq, head, tail, ended, flat = row
                files[name] = FileState(
                    name=name,
                    inode=inode,
                    offset=offset,
                    task_id=task_id,
                    seq_base=base,
                    segments=tuple(zip(flat[::2], flat[1::2], strict=True)),
                    max_seq=max_seq,
                    head=head,
                    tail=tail,
                    ended=ended,
                    size=offset,
                )
            return files

        return await self._run(step)

    # -- the batch transaction --------------------------------------------------------------

    async def commit(
        self,
        batch: Batch,
        forget: Iterable[str] = (),
        *,
        trial: bool = False,
        after: After | None = None,
        placed: asyncio.Event | None = None,
    ) -> Stored:
        """Store a batch in one transaction. The files' states are left alone: the caller
        applies the result (`SpoolDir.commit`) once this returned.

        `trial`: roll the transaction back at its end; raises as the commit would (to find
        which record Postgres refuses). `after`: the batch before this one, on another
        connection (`collector.ports.After`): this one begins once that one is placed (its
        partitions made, its tasks' rows locked), and commits after it, or rolls back if it
        failed. `placed` is set once this one is placed (or failed).
        """
        try:
            if after is not None:
                await after.placed.wait()
            return await self._run(
                functools.partial(
                    self._commit,
                    batch=batch,
                    forget=list(forget),
                    trial=trial,
                    after=after,
                    placed=placed,
                )
            )
        finally:
            if placed is not None:
                placed.set()

    async def _commit(
        self,
        conn: Conn,
        *,
        batch: Batch,
        forget: list[str],
        trial: bool = False,
        after: After | None = None,
        placed: asyncio.Event | None = None,
    ) -> Stored:
        # Times a file chose are held to its run's window first: they choose partitions.
        known = {day for name in self._partitions if (day := retention.partition_day(name))}
        days, clamped = clock.hold(batch, known, self.retention_days)
        await retention.ensure_partitions(conn, days, self._partitions)
        stored = Stored()
        stored.clamped = clamped
        async with conn.transaction():
            runs = stored.runs = await self._place(conn, batch.chunks, stored)
            if placed is not None:
                placed.set()  # the batch after this one may begin (`collector.ports.After`)
            trims: list[Any] = []
            advances: list[Any] = []
            ends: list[Any] = []
            markers: list[Any] = []
            any_lines = any(run.chunk.lines for run in runs)
            async with conn.cursor().copy(Q["copy_lines"]) if any_lines else nullcontext() as copy:
                if copy is not None:
                    await copy.write(copydata.HEADER)
                # Slice by slice, each sent before the next is planned: Postgres stores one
                # while this process prepares the next, on the other core.
                for runs_slice in slices(runs, _SLICE_LINES):
                    pieces, *statements = plan(runs_slice)
                    for done, more in zip(
                        (trims, advances, ends, markers), statements, strict=True
                    ):
                        done += more
                    if pieces:
                        assert copy is not None
                        await copy.write(copydata.copy_data(pieces))
                    for piece in pieces:
                        stored.lines.setdefault(piece.task_id, []).append(piece)
                        stored.rows += len(piece.lines)
                if copy is not None:
                    await copy.write(copydata.TRAILER)
            # Where each new run begins in the task's seqs. The trigger that records a run
            # (migration 0007) can only guess it from the row's last seq, which a batch holding
            # two runs of one task (an immediate retry) has not advanced yet when the second
            # run's start is upserted. Set before the ends: finish_task and end_run find a run
            # by it.
            firsts = [
                {
                    "task_id": run.task_id,
                    "t": fields.record_time(start.get("t")),
                    "first_seq": run.seq(1),
                }
                for run in runs
                if (start := run.chunk.start) is not None and not run.chunk.state.registered
            ]
            changed = list({run.task_id for run in runs})
            advances, finishes = _finishes(advances, ends)
            # Everything else the batch changes goes in one pipeline: one round trip, and one
            # statement of each kind (its rows as one JSON array, `_rounds`), however many files.
            async with conn.cursor() as tasks:
                async with conn.pipeline(), conn.cursor() as cur:
                    for name, rows in (
                        ("run_first_seq", firsts),
                        ("trim_tail", trims),
                        ("advance_task", advances),
                        ("finish_task", finishes),
                        ("end_run", ends),
                        ("insert_marker", markers),
                        ("save_file", [self._file_row(run) for run in runs]),
                    ):
                        for params in _rounds(rows):
                            await cur.execute(Q[name], params)
                    if forget:
                        await cur.execute(Q["forget_files"], {"host": self.host, "files": forget})
                    if changed:
                        await tasks.execute(Q["changed_tasks"], {"ids": changed})
                if changed:  # read once the pipeline synced (a fetch within it syncs again)
                    names = [d.name for d in tasks.description or ()]
                    rows = await tasks.fetchall()
                    stored.tasks = [dict(zip(names, r, strict=True)) for r in rows]
            if after is not None:
                await after.committed
            if trial:
                raise psycopg.Rollback()
        return stored

    async def _place(self, conn: Conn, chunks: list[FileChunk], stored: Stored) -> list[Run]:
        """Give each chunk its task and its seqs; new runs are upserted as STARTED.

        Seqs come from the task's `last_seq`, read under the row's lock (held to the commit),
        so two runs of one task (a retry on another host, stored by another collector) never
        get the same seq. Rows are locked in task-id order: two collectors never wait on each
        other in a circle.
        """
        placed: list[tuple[FileChunk, str]] = []
        starts: dict[str, list[dict[str, Any]]] = {}
        for chunk in chunks:
            state = chunk.state
            if state.task_id is not None:
                task_id: str = state.task_id
                starts.setdefault(task_id, [])
            elif chunk.start is not None:
                task_id = chunk.start["task_id"]
                starts.setdefault(task_id, []).append(chunk.start)
            else:
                log.error(
                    "spool file %s has no start record; its %d lines are skipped",
                    shown(state.name),
                    len(chunk.lines),
                )
                chunk.corrupt += len(chunk.lines)
                chunk.lines.clear()
                continue
            placed.append((chunk, task_id))
        last_seq, refused = await _lock_tasks(conn, starts)
        runs: list[Run] = []
        for chunk, task_id in placed:
            state = chunk.state
            if chunk.start is not None and id(chunk.start) in refused:
                log.warning(
                    "spool file %s claims task %s, which already succeeded or failed under the"
                    " same delivery; its %d lines are not stored and the file is set aside",
                    shown(state.name),
                    shown(task_id),
                    len(chunk.lines),
                )
                stored.refused.append(state)
                chunk.lines.clear()
                continue
            if state.registered:
                run = Run(
                    chunk,
                    task_id,
                    state.seq_base,
                    state.head,
                    state.tail,
                    state.max_seq,
                    state.segments,
                )
            else:
                assert chunk.start is not None
                head, tail = window(chunk.start.get("max_lines"))
                run = Run(chunk, task_id, last_seq[task_id], head, tail, 0)
            # A chunk's seqs only go up (the reader refuses any other): its last is its highest.
            after = max(run.max_seq, chunk.lines[-1].seq) if chunk.lines else run.max_seq
            last_seq[task_id] = run.allocate(last_seq[task_id], after)
            runs.append(run)
        return runs

    def _file_row(self, run: Run) -> dict[str, Any]:
        chunk = run.chunk
        return {
            "host": self.host,
            "file": chunk.state.name,
            "inode": chunk.state.inode,
            "offset": chunk.end_offset,
            "task_id": run.task_id,
            "seq_base": run.seq_base,
            "segments": _flat(run.segments),
            "max_seq": run.max_seq,
            "head": run.head,
            "tail": run.tail,
            "ended": chunk.end is not None,
        }

    # -- orphans, heartbeats, retention -----------------------------------------------------

    async def lose(self, state: FileState, reason: str) -> dict[str, Any] | None:
        """Finalize a run whose writer died: its task becomes LOST, its lines stay."""

        async def step(conn: Conn) -> dict[str, Any] | None:
            omitted = max(0, state.max_seq - state.head - state.tail)
            async with conn.transaction():
                await conn.execute(
                    Q["lose_task"],
                    {"task_id": state.task_id, "reason": reason, "omitted": omitted},
                )
                if omitted:
                    await conn.execute(Q["insert_marker"], _rows([state_marker(state, omitted)]))
                file_row = {
                    "host": self.host,
                    "file": state.name,
                    "inode": state.inode,
                    "offset": state.offset,
                    "task_id": state.task_id,
                    "seq_base": state.seq_base,
                    "segments": _flat(state.segments),
                    "max_seq": state.max_seq,
                    "head": state.head,
                    "tail": state.tail,
                    "ended": True,
                }
                await conn.execute(Q["save_file"], _rows([file_row]))
                cur = await conn.execute(Q["changed_tasks"], {"ids": [state.task_id]})
                names = [d.name for d in cur.description or ()]
                row = await cur.fetchone()
            return dict(zip(names, row, strict=True)) if row else None

        return await self._run(step)

    async def replication_position(self) -> tuple[int | None, int | None]:
        """(this primary's WAL position, the lowest position every standby has flushed) as
        byte counts; the second is None without a standby or without the right to read their
        positions (`collector.keep`)."""

        async def step(conn: Conn) -> tuple[int | None, int | None]:
            cur = await conn.execute(Q["replication_position"])
            found = await cur.fetchone()
            if found is None:
                return None, None
            written, confirmed = found
            return (
                None if written is None else int(written),
                None if confirmed is None else int(confirmed),
            )

        return await self._run(step)

    async def heartbeat(self, params: dict[str, Any]) -> None:
        async def step(conn: Conn) -> None:
            await conn.execute(
                Q["heartbeat"], {**params, "host": self.host, "stats": Jsonb(params["stats"])}
            )

        await self._run(step)

    async def prune(self, retention_days: int) -> tuple[list[str], int]:
        """`retention.prune` on this store's connection."""
        return await self._run(
            functools.partial(
                retention.prune, retention_days=retention_days, known=self._partitions
            )
        )


async def _lock_tasks(
    conn: Conn, starts: dict[str, list[dict[str, Any]]]
) -> tuple[dict[str, int], set[int]]:
    """Lock the row of every task in `starts` (upserting those with new runs as STARTED), in
    task-id order and in one round trip; returns each one's last allocated seq, and the ids
    (`id()`) of the start records refused: new runs of a settled task (`start_task`).

    One statement per stretch of tasks of one kind (locked only, or new runs), each taking
    its rows in the order given: the rows are locked in task-id order as one statement per
    task locked them. A task's second new run in the batch begins a new stretch (an upsert
    cannot touch a row twice)."""
    stretches: list[tuple[str, list[str], list[dict[str, Any]]]] = []
    for task_id in sorted(starts):
        claims = starts[task_id]
        for claim in claims or (None,):
            kind = "lock_tasks" if claim is None else "start_tasks"
            if not stretches or stretches[-1][0] != kind or stretches[-1][1][-1] == task_id:
                stretches.append((kind, [], []))
            stretches[-1][1].append(task_id)
            if claim is not None:
                stretches[-1][2].append(claim)
    cursors: list[tuple[list[str], list[dict[str, Any]], psycopg.AsyncCursor[Any]]] = []
    async with conn.pipeline():
        for kind, ids, claims in stretches:
            cur = conn.cursor()
            if claims:
                rows = [{"n": n, **_start_row(claim)} for n, claim in enumerate(claims)]
            else:
                rows = [{"n": n, "task_id": task_id} for n, task_id in enumerate(ids)]
            await cur.execute(Q[kind], _rows(rows))
            cursors.append((ids, claims, cur))
    found: dict[str, int] = {}
    refused: set[int] = set()
    for ids, claims, cur in cursors:
        returned = dict(await cur.fetchall())
        for task_id, claim in itertools.zip_longest(ids, claims):
            last = returned.get(task_id)
            if last is None and claim is not None:
                # The settled task's row is locked all the same (ON CONFLICT locks the row
                # it leaves alone); its seqs are read as lock_task reads them.
                refused.add(id(claim))
                locked = await conn.execute(Q["lock_task"], {"task_id": task_id})
                row = await locked.fetchone()
                last = row[0] if row else None
            # None: a task deleted by retention while its run went on; its seqs start afresh.
            found[task_id] = max(found.get(task_id, 0), last or 0)
    return found, refused


def _finishes(
    advances: list[dict[str, Any]], ends: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(advances, finishes): each end a `finish_task` row, in the ends' order, with the advance
    of its task when that task has one run in the batch (the advance row then goes); a task
    with several runs in the batch keeps its advances apart, all before its ends, as before."""
    runs = collections.Counter(advance["task_id"] for advance in advances)
    single = {a["task_id"]: a for a in advances if runs[a["task_id"]] == 1}
    finishes = [{**end, **_advanced(single.get(end["task_id"]))} for end in ends]
    ended = {end["task_id"] for end in ends}
    return [a for a in advances if a["task_id"] not in ended or runs[a["task_id"]] > 1], finishes


def _advanced(advance: dict[str, Any] | None) -> dict[str, Any]:
    """An advance's values as a `finish_task` row takes them; none: nothing to advance."""
    if advance is None:
        return {
            "added": 0,
            "last_seq": 0,
            "progress": None,
            "progress_message": None,
            "progress_state": None,
        }
    return {
        "added": advance["added"],
        "last_seq": advance["last_seq"],
        "progress": advance["progress"],
        "progress_message": advance["progress_message"],
        "progress_state": advance["state"],
    }


def _start_row(start: dict[str, Any]) -> dict[str, Any]:
    """`start_params` as a row of `start_tasks`: the arguments as JSON text, made as psycopg
    makes a Jsonb parameter's."""
    params = start_params(start)
    if params["args"] is not None:
        params["args"] = json.dumps(params["args"].obj)
    return params


def _rounds(rows: list[dict[str, Any]]) -> Iterator[dict[str, str]]:
    """The parameters of a set-based statement for `rows` (`_rows`), in rounds that each
    hold at most one row of a task: a task's rows apply one after the other, in their order,
    as they did one statement each (an UPDATE FROM takes one row per target)."""
    rounds: list[list[dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for row in rows:
        n = seen.get(row["task_id"], 0)
        seen[row["task_id"]] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(row)
    for group in rounds:
        yield _rows(group)


def _rows(rows: list[dict[str, Any]]) -> dict[str, str]:
    """The parameter of a set-based statement: its rows as one JSON array, which Postgres
    reads with json_to_recordset (one value to send, where arrays cost psycopg a Python call
    per element)."""
    try:
        return {"rows": orjson.dumps(rows).decode()}
    except orjson.JSONEncodeError:
        # What orjson refuses (an integer beyond 64 bits, a lone surrogate) goes as before:
        # Postgres or the driver refuses it (`RecordRefused`).
        return {"rows": json.dumps(rows, ensure_ascii=False)}


def _flat(segments: tuple[tuple[int, int], ...]) -> list[int]:
    return [number for segment in segments for number in segment]
