"""The exactly-once pipeline (`collector.pipeline.Pipeline`) by itself, against an in-memory
store (`tests.memory_store`): whatever the order of events, every complete record of a spool
file is stored once, none twice.

Hypothesis chooses the files, the batch sizes and the faults: commits that fail while the next
batch is in flight, refused lines bisected down to their file, a file deleted under the
collector, a stop in the middle of a batch followed by a new collector on the same store. The
real-process fault tests (`tests/integration/test_collector_faults.py`, `test_faults_spool.py`,
`test_collector_stop.py`) do the same to the real collector with Postgres.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from capture_shim import spool
from collector.batch import FileState
from collector.metrics import Counters
from collector.pipeline import Pipeline
from collector.settings import CollectorSettings
from collector.tail import SpoolDir
from tests.memory_store import POISON, MemoryPublisher, MemoryStore, SecondConnection

#: A pid no process has (Linux pids stop below 2**22): a file's writer is dead.
DEAD_PID = 4_000_000


def write_file(directory: Path, index: int, lines: int, *, ended: bool, poison: int = 0) -> str:
    """A spool file as the shim writes it: start, `lines` lines, maybe an end; line `poison`
    (if any) holds what the store refuses."""
    task_id = f"task-{index}"
    name = spool.file_name(task_id, DEAD_PID, 1_000 + index)
    records = [
        spool.encode(
            {"k": "start", "v": spool.VERSION, "task_id": task_id, "t": 1.8e9, "max_lines": 10**6}
        )
    ]
    for n in range(1, lines + 1):
        text = f"{POISON} {n}" if n == poison else f"{task_id} line {n}"
        records.append(spool.encode_line(n, spool.STDOUT, text))
    if ended:
        records.append(spool.encode({"k": "end", "state": "SUCCESS", "t": 1.8e9 + 1}))
    (directory / name).write_bytes(b"".join(records))
    return task_id


def expected(task_id: str, lines: int) -> list[str]:
    return [f"{task_id} line {n}" for n in range(1, lines + 1)]


def pipeline_for(
    directory: Path,
    store: MemoryStore,
    files: dict[str, FileState],
    batch_lines: int,
    *,
    spare: bool,
    failover_grace: float = 0.0,
    debounce_ms: int = 10,
) -> tuple[Pipeline, asyncio.Event]:
    config = CollectorSettings(
        spool_dir=directory,
        batch_lines=batch_lines,
        quarantine_dir=directory.parent / "quarantine",
        orphan_timeout=0.1,
        failover_grace=failover_grace,
        debounce_ms=debounce_ms,
    )
    spool_dir = SpoolDir(directory, files)
    spool_dir.scan()
    stop = asyncio.Event()
    machine = Pipeline(
        store,
        MemoryPublisher(),
        spool_dir,
        config,
        spare=SecondConnection(store) if spare else None,
        counters=Counters(),
        stop=stop,
    )
    return machine, stop


async def settle(machine: Pipeline, done: Callable[[], bool] = lambda: True) -> None:
    """Scan and drain until nothing is left to store (as the collector's loop does), and
    `done` holds."""
    for _ in range(200):
        before = machine.counters.batches
        await machine.vanished(machine.spool.scan())
        await machine.drain(final=True)
        await machine.forged()
        if machine.counters.batches == before and machine.spool.backlog() == (0, 0) and done():
            return
    raise AssertionError("the pipeline never settled")


FILES = st.lists(
    st.tuples(st.integers(0, 12), st.booleans()),  # (lines, ended)
    min_size=1,
    max_size=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    files=FILES,
    batch_lines=st.integers(1, 7),
    unavailable=st.sets(st.integers(1, 12), max_size=4),
    reply_lost=st.sets(st.integers(1, 12), max_size=3),
    spare=st.booleans(),
)
def test_nothing_lost_nothing_twice_when_commits_fail_with_the_next_batch_in_flight(
    files: list[tuple[int, bool]],
    batch_lines: int,
    unavailable: set[int],
    reply_lost: set[int],
    spare: bool,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "spool"
        directory.mkdir()
        tasks = {
            write_file(directory, i, lines, ended=ended): lines
            for i, (lines, ended) in enumerate(files)
        }
        store = MemoryStore(unavailable=unavailable, reply_lost=reply_lost - unavailable)
        machine, _ = pipeline_for(directory, store, {}, batch_lines, spare=spare)

        def rows_only_of_files_left() -> bool:
            # A finished file is deleted once stored, and its offsets row goes with it: with
            # the next commit, or a later one when that one failed (the collector drains again).
            return set(store.files) == {path.name for path in directory.iterdir()}

        asyncio.run(settle(machine, rows_only_of_files_left))
        assert store.duplicates == 0
        for task_id, lines in tasks.items():
            assert store.messages(task_id) == expected(task_id, lines)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    files=st.lists(st.integers(1, 8), min_size=2, max_size=6),
    poisoned=st.data(),
    batch_lines=st.integers(3, 40),
)
def test_a_refused_line_is_bisected_to_its_file_and_the_others_are_stored_once(
    files: list[int], poisoned: st.DataObject, batch_lines: int
) -> None:
    bad = poisoned.draw(st.integers(0, len(files) - 1))
    bad_line = poisoned.draw(st.integers(1, files[bad]))
    note(f"files {files}, line {bad_line} of file {bad} refused, batches of {batch_lines}")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "spool"
        directory.mkdir()
        tasks = {
            write_file(directory, i, lines, ended=True, poison=bad_line if i == bad else 0): lines
            for i, lines in enumerate(files)
        }
        store = MemoryStore()
        machine, _ = pipeline_for(directory, store, {}, batch_lines, spare=True)
        asyncio.run(settle(machine))
        assert store.duplicates == 0
        bad_task = f"task-{bad}"
        for task_id, lines in tasks.items():
            if task_id != bad_task:
                assert store.messages(task_id) == expected(task_id, lines)
        # The refused file is moved aside whole: none of its lines past the poison is stored.
        assert (
            store.messages(bad_task)
            == expected(bad_task, bad_line - 1)[: len(store.messages(bad_task))]
        )
        assert machine.counters.quarantined == 1
        assert (Path(tmp) / "quarantine").is_dir()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    files=st.lists(st.integers(1, 10), min_size=2, max_size=5),
    batch_lines=st.integers(1, 4),
    gone=st.data(),
)
def test_a_file_vanishing_keeps_what_was_stored_and_loses_its_task(
    files: list[int], batch_lines: int, gone: st.DataObject
) -> None:
    victim = gone.draw(st.integers(0, len(files) - 1))
    note(f"files {files}, file {victim} deleted at the second commit, batches of {batch_lines}")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "spool"
        directory.mkdir()
        tasks = {
            write_file(directory, i, lines, ended=False): lines for i, lines in enumerate(files)
        }
        victim_task = f"task-{victim}"
        victim_file = next(directory.glob(f"{victim_task}.*"))

        def delete_on_second_commit(number: int) -> None:
            if number == 2:
                victim_file.unlink(missing_ok=True)

        store = MemoryStore(on_commit=delete_on_second_commit)
        machine, _ = pipeline_for(directory, store, {}, batch_lines, spare=True)
        asyncio.run(settle(machine))
        assert store.duplicates == 0
        for task_id, lines in tasks.items():
            stored = store.messages(task_id)
            if task_id == victim_task:
                assert stored == expected(task_id, lines)[: len(stored)]  # a prefix, once
            else:
                assert stored == expected(task_id, lines)
        if victim_task in store.tasks and not victim_file.exists():  # stored, then deleted
            assert store.tasks[victim_task]["state"] == "LOST"
            assert machine.counters.vanished == 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    files=FILES,
    batch_lines=st.integers(1, 5),
    stop_at=st.integers(1, 8),
    unavailable=st.sets(st.integers(1, 10), max_size=2),
    reply_lost=st.sets(st.integers(1, 10), max_size=2),
)
def test_a_stop_mid_batch_then_a_new_collector_stores_the_rest_once(
    files: list[tuple[int, bool]],
    batch_lines: int,
    stop_at: int,
    unavailable: set[int],
    reply_lost: set[int],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "spool"
        directory.mkdir()
        tasks = {
            write_file(directory, i, lines, ended=ended): lines
            for i, (lines, ended) in enumerate(files)
        }
        stops: list[asyncio.Event] = []

        def stop_there(number: int) -> None:
            if number == stop_at and stops:
                stops[0].set()

        store = MemoryStore(
            unavailable=unavailable, reply_lost=reply_lost - unavailable, on_commit=stop_there
        )

        async def first_collector() -> None:
            machine, stop = pipeline_for(directory, store, {}, batch_lines, spare=True)
            stops.append(stop)
            with ThreadPoolExecutor(1) as reader:
                machine._reader = reader
                await machine.drain()  # returns once the stop came and the batches settled

        asyncio.run(first_collector())

        async def second_collector() -> None:
            files_known = await store.load_files()
            machine, _ = pipeline_for(directory, store, files_known, batch_lines, spare=True)
            await settle(machine)

        asyncio.run(second_collector())
        assert store.duplicates == 0
        for task_id, lines in tasks.items():
            assert store.messages(task_id) == expected(task_id, lines)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    files=st.lists(st.integers(0, 12), min_size=1, max_size=6),
    batch_lines=st.integers(1, 7),
    kept=st.data(),
    spare=st.booleans(),
)
def test_a_failover_that_rolls_commits_back_loses_nothing_with_the_grace_period(
    files: list[int], batch_lines: int, kept: st.DataObject, spare: bool
) -> None:
    """Every file stored and ended, then a standby that had only the first k commits is
    promoted (an asynchronous one): the kept files are read again from its offsets."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "spool"
        directory.mkdir()
        tasks = {
            write_file(directory, i, lines, ended=True): lines for i, lines in enumerate(files)
        }
        store = MemoryStore()
        machine, _ = pipeline_for(
            directory, store, {}, batch_lines, spare=spare, failover_grace=600
        )
        asyncio.run(settle(machine))
        assert len(list(directory.iterdir())) == len(files)  # kept: no standby confirmed
        held = kept.draw(st.integers(0, len(store.history)), label="commits the standby had")
        store.fail_over(held)
        asyncio.run(settle(machine))
        assert store.duplicates == 0
        for task_id, lines in tasks.items():
            assert store.messages(task_id) == expected(task_id, lines)
            assert store.tasks[task_id]["state"] == "SUCCESS"


def test_a_batch_is_published_once_committed_while_the_next_read_waits_its_turn() -> None:
    """Print → browser: a committed batch goes to the live path at once, not once the read
    ahead has waited out TASKLOG_DEBOUNCE_MS (it did: ~10 ms on every lone line)."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "spool"
        directory.mkdir()
        write_file(directory, 0, 3, ended=False)
        machine, _ = pipeline_for(directory, MemoryStore(), {}, 100, spare=True, debounce_ms=4_000)
        publisher = machine.publisher
        assert isinstance(publisher, MemoryPublisher)

        async def published_while_draining() -> int:
            drain = asyncio.create_task(machine.drain())
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 3.0  # the read ahead waits 4 s
            while publisher.lines < 3 and not drain.done() and loop.time() < deadline:
                await asyncio.sleep(0.01)
            seen = publisher.lines if not drain.done() else -1
            await drain
            return seen

        assert asyncio.run(published_while_draining()) == 3


def test_a_file_whose_batch_was_applied_while_the_next_read_waited_is_in_that_read() -> None:
    """Two files written at once, under a steady stream: the read that waited its turn takes
    both, not only the one that was not in the batch then in flight (they were read in turns,
    each every other batch: ~20 ms more from print to browser)."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "spool"
        directory.mkdir()
        write_file(directory, 0, 3, ended=False)
        store = MemoryStore()
        machine, _ = pipeline_for(directory, store, {}, 100, spare=True, debounce_ms=300)
        publisher = machine.publisher
        assert isinstance(publisher, MemoryPublisher)
        batches: list[set[str]] = []
        commit = store.commit

        async def noting(batch, *args, **kwargs):  # type: ignore[no-untyped-def]
            batches.append({chunk.state.name for chunk in batch.chunks})
            return await commit(batch, *args, **kwargs)

        store.commit = noting  # type: ignore[method-assign]

        async def run() -> None:
            drain = asyncio.create_task(machine.drain())
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10.0
            while publisher.lines < 3 and loop.time() < deadline:
                await asyncio.sleep(0.005)
            assert publisher.lines == 3 and batches == [{first}]  # the read ahead still waits
            with (directory / first).open("ab") as f:
                f.write(spool.encode_line(4, spool.STDOUT, "task-0 line 4"))
            write_file(directory, 1, 1, ended=False)
            machine.spool.scan()  # what the watcher reports
            await drain

        [first] = [p.name for p in directory.iterdir()]
        asyncio.run(run())
        assert len(batches) == 2, batches
        assert len(batches[1]) == 2  # both files, in the read that waited
        assert store.messages("task-0") == expected("task-0", 4)
        assert store.messages("task-1") == expected("task-1", 1)
