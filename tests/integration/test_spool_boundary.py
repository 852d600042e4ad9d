"""The spool directory as a trust boundary, with a real collector and a real Postgres.

Whatever a spool file holds (values Postgres refuses, names it cannot store, links, FIFOs),
the collector stores every other task, moves what it cannot take aside with one warning, and
keeps running. Two runs of one task stored by two collectors never share a seq.
"""

from __future__ import annotations

import functools
import json
import os
import re
import stat
import time
from pathlib import Path

import pytest

from capture_shim import spool
from capture_shim.capture import TaskCapture
from capture_shim.config import ShimConfig
from tests.helpers import Proc, ProcessFactory, pg_rows, wait_for
from tests.integration.api_support import PREFIX, api_settings, running_api

T0 = 1_800_000_000.0
QUICK = {"TASKLOG_HEARTBEAT_INTERVAL": "0.2", "TASKLOG_RESCAN_INTERVAL": "0.2"}


def record(**fields: object) -> bytes:
    return (json.dumps(fields) + "\n").encode()


def start(task_id: str, **extra: object) -> bytes:
    return record(k="start", v=spool.VERSION, t=T0, task_id=task_id, name="boundary", **extra)


def line(n: int, text: str, **extra: object) -> bytes:
    return record(k="line", n=n, t=T0 + n, s="stdout", m=text, **extra)


def end(state: str = "SUCCESS", **extra: object) -> bytes:
    return record(**{"k": "end", "t": T0 + 100, "state": state, "errors": 0, **extra})


def good_task(task_id: str) -> bytes:
    return start(task_id) + b"".join(line(n, f"{task_id} {n}") for n in (1, 2, 3)) + end()


def write(spool_dir: Path, stem: str, ns: int, data: bytes) -> Path:
    path = spool_dir / f"{stem}.{os.getpid()}.{ns}{spool.SUFFIX}"
    path.write_bytes(data)
    return path


def among_good_tasks(spool_dir: Path, bad: bytes, bad_name: bytes | None = None) -> list[str]:
    """Three good tasks written before the bad file and three after (names order files)."""
    good = []
    for i in range(6):
        if i == 3:
            if bad_name is None:
                write(spool_dir, "bad", 1000 + 2 * i, bad)
            else:
                with open(os.path.join(bytes(spool_dir), bad_name), "wb") as f:
                    f.write(bad)
        task_id = f"good-{i}"
        write(spool_dir, task_id, 1000 + i * 2 + 1, good_task(task_id))
        good.append(task_id)
    return good


def stored_good(url: str, ids: list[str]) -> bool:
    rows = pg_rows(
        url,
        "SELECT t.task_id, t.state, count(l.seq) FROM tasks t LEFT JOIN lines l USING (task_id) "
        "WHERE t.task_id = ANY(%s) GROUP BY 1, 2",
        (ids,),
    )
    return sorted(rows) == [(i, "SUCCESS", 3) for i in sorted(ids)]


def stats(url: str) -> dict[str, object]:
    rows = pg_rows(url, "SELECT stats FROM collectors")
    return rows[0][0] if rows else {}


def collector(procs: ProcessFactory, url: str, spool_dir: Path, **env: str) -> Proc:
    return procs.collector(
        database_url=url, spool_dir=spool_dir, ready="following", env={**QUICK, **env}
    )


def warnings_about(proc: Proc, text: str) -> list[str]:
    return [entry for entry in proc.log_text().splitlines() if text in entry]


def has_rows(url: str, query: str, task_id: str, rows: list[tuple[object, ...]]) -> bool:
    return pg_rows(url, query, (task_id,)) == rows


def after_rescans(url: str, spool_dir: Path, count: int = 2) -> None:
    """Return once the collector has rescanned the whole spool directory `count` times from
    now on. Each time, a probe's file is deleted before its end: the watcher cannot say which
    file went, only a rescan finds it gone, and then the collector makes its task LOST."""
    for i in range(count):
        task_id = f"rescan-probe-{i}"
        path = write(spool_dir, task_id, time.time_ns(), start(task_id) + line(1, "probe"))
        wait_for(
            functools.partial(
                has_rows, url, "SELECT count(*) FROM lines WHERE task_id = %s", task_id, [(1,)]
            ),
            message=f"{task_id}'s line stored",
        )
        path.unlink()
        wait_for(
            functools.partial(
                has_rows, url, "SELECT state FROM tasks WHERE task_id = %s", task_id, [("LOST",)]
            ),
            message=f"rescan {i + 1} finding {task_id}'s file gone",
        )


# -- values Postgres would refuse, among good tasks --------------------------------------------

#: Each kind of bad record the issue names, and what the collector stores of it instead.
BAD = {
    "nan_in_args": (
        start("bad", args=[float("nan")], kwargs={"x": float("inf")}) + line(1, "ok") + end(),
        "SELECT args::text FROM tasks WHERE task_id = 'bad'",
        [('{"args": ["nan"], "kwargs": {"x": "inf"}}',)],
    ),
    "surrogate_in_level": (
        start("bad") + line(1, "ok", l="\ud800") + end(),
        "SELECT level FROM lines WHERE task_id = 'bad'",
        [("\\ud800",)],
    ),
    "nul_in_level": (
        start("bad") + line(1, "ok", l="WARN\x00ING") + end(),
        "SELECT level FROM lines WHERE task_id = 'bad'",
        [("WARN\\x00ING",)],
    ),
    "n_past_bigint": (
        start("bad") + line(1, "kept") + line(2**70, "skipped") + line(2, "kept too") + end(),
        "SELECT seq, message FROM lines WHERE task_id = 'bad' ORDER BY seq",
        [(1, "kept"), (2, "kept too")],
    ),
    "max_lines_past_int4": (
        start("bad", max_lines=2**40) + line(1, "ok") + end(),
        "SELECT count(*) FROM lines WHERE task_id = 'bad'",
        [(1,)],
    ),
    "nul_in_end_state": (
        start("bad") + line(1, "ok") + end(state="SUC\x00CESS"),
        "SELECT state FROM tasks WHERE task_id = 'bad'",
        [("SUC\\x00CESS",)],
    ),
    "errors_out_of_range": (
        start("bad") + line(1, "ok") + end(errors=10**30),
        "SELECT spool_errors FROM tasks WHERE task_id = 'bad'",
        [(2**31 - 1,)],
    ),
    "nul_and_surrogates_in_text": (
        start("bad", worker="w\x00\udfff", root_id="r" * 5000) + line(1, "a\x00b\udc80") + end(),
        "SELECT t.worker, length(t.root_id), l.message FROM tasks t JOIN lines l USING (task_id) "
        "WHERE task_id = 'bad'",
        [("w\\x00\\udfff", 1024, "a\\x00b\\udc80")],
    ),
    "oversized_line": (
        start("bad") + line(1, "x" * 100_000) + end(),
        "SELECT octet_length(message) <= 16384 + 48, message LIKE '%more bytes]' "
        "FROM lines WHERE task_id = 'bad'",
        [(True, True)],
    ),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_a_bad_record_among_good_tasks_stops_nothing(
    procs: ProcessFactory, database_url: str, spool_dir: Path, kind: str
) -> None:
    data, query, expected = BAD[kind]
    good = among_good_tasks(spool_dir, data)
    proc = collector(procs, database_url, spool_dir)
    wait_for(lambda: stored_good(database_url, good), message="the six good tasks stored")
    wait_for(lambda: pg_rows(database_url, query) == expected, message=f"{kind} stored clamped")
    wait_for(lambda: not list(spool_dir.glob("*" + spool.SUFFIX)), message="spool emptied")
    # A task written afterwards is stored too: nothing is stuck behind the bad record.
    write(spool_dir, "later", 5000, good_task("later"))
    wait_for(lambda: stored_good(database_url, ["later"]), message="a later task stored")
    assert proc.alive
    assert "Traceback" not in proc.log_text()
    assert stats(database_url).get("store_failures") == 0


def test_a_file_name_postgres_cannot_store_is_quarantined(
    procs: ProcessFactory, database_url: str, spool_dir: Path, tmp_path: Path
) -> None:
    metrics = tmp_path / "collector.prom"
    good = among_good_tasks(spool_dir, good_task("bad-name"), bad_name=b"bad-\xff.1.2.jsonl")
    proc = collector(procs, database_url, spool_dir, TASKLOG_METRICS_FILE=str(metrics))
    wait_for(lambda: stored_good(database_url, good), message="the six good tasks stored")
    wait_for(lambda: stats(database_url).get("quarantined") == 1, message="counted")
    assert os.listdir(bytes(spool_dir / "quarantine")) == [b"bad-\xff.1.2.jsonl"]
    assert pg_rows(database_url, "SELECT count(*) FROM tasks WHERE task_id = 'bad-name'") == [(0,)]
    (warning,) = warnings_about(proc, "quarantined")
    assert "'bad-\\udcff.1.2.jsonl'" in warning and "not UTF-8" in warning
    wait_for(
        lambda: "tasklog_collector_quarantined_total 1.0" in metrics.read_text(),
        message="quarantined files in the metrics",
        ignore=(OSError,),
    )
    assert proc.alive


@pytest.mark.asyncio(loop_scope="session")
async def test_the_diagnostic_page_shows_quarantined_files(
    procs: ProcessFactory, database_url: str, spool_dir: Path
) -> None:
    with open(os.path.join(bytes(spool_dir), b"odd-\xfe.1.2.jsonl"), "wb") as f:
        f.write(good_task("odd"))
    collector(procs, database_url, spool_dir)
    wait_for(lambda: stats(database_url).get("quarantined") == 1, message="counted")
    async with running_api(api_settings(database_url, None)) as client:
        report = await (await client.get(f"{PREFIX}/api/diagnostic/")).json()
        (row,) = report["collectors"]
        assert row["stats"]["quarantined"] == 1
        assert row["stats"]["quarantine_dir"] == str(spool_dir / "quarantine")
        page = await (await client.get(f"{PREFIX}/diagnostic/")).text()
        # The quarantine comes right after the backlog, marked as a problem, with its directory.
        assert page.index('class="stat-backlog') < page.index('class="stat-quarantined bad"')
        quarantine = re.escape(str(spool_dir / "quarantine"))
        assert re.search(rf"Quarantined</th>\s*<td[^>]*>1 file <span[^>]*>in {quarantine}<", page)


def test_a_record_postgres_still_refuses_costs_its_file_alone(
    procs: ProcessFactory, database_url: str, spool_dir: Path
) -> None:
    """Values the collector cannot foresee (here: constraints of the database's own) are
    found by splitting the batch; the file holding one is quarantined, the rest stored, and
    the warning says which record (found by trial transactions, rolled back)."""
    pg_rows(
        database_url,
        "ALTER TABLE tasks ADD CONSTRAINT refuse_name CHECK (task_name <> 'SENSITIVE-1'), "
        "ADD CONSTRAINT refuse_message CHECK (exc_message <> 'SENSITIVE-2')",
    )
    pg_rows(
        database_url,
        "ALTER TABLE lines ADD CONSTRAINT refuse_line CHECK (message <> 'SENSITIVE-3')",
    )
    # Refused at its start: the task is never stored.
    at_start = record(k="start", v=1, t=T0, task_id="bad", name="SENSITIVE-1") + line(1, "x")
    good = among_good_tasks(spool_dir, at_start + end())
    # Refused at its end, its start and lines stored in an earlier batch: the task is LOST
    # with the lines it had.
    late = write(spool_dir, "late", 9000, start("late") + line(1, "late 1") + line(2, "late 2"))
    # Refused at its sixth line.
    texts = ["ok"] * 5 + ["SENSITIVE-3"] + ["ok"] * 3
    at_line = start("at-line") + b"".join(line(n, m) for n, m in enumerate(texts, 1)) + end()
    write(spool_dir, "at-line", 8000, at_line)
    proc = collector(procs, database_url, spool_dir)
    wait_for(lambda: stored_good(database_url, good), message="the six good tasks stored")
    wait_for(
        lambda: (
            pg_rows(database_url, "SELECT count(*) FROM lines WHERE task_id = 'late'") == [(2,)]
        ),
        message="the late task's first lines",
    )
    with late.open("ab") as f:
        f.write(line(3, "late 3") + end(state="FAILURE", exc_message="SENSITIVE-2"))
    wait_for(lambda: stats(database_url).get("quarantined") == 3, message="three quarantined")
    quarantined = sorted(os.listdir(spool_dir / "quarantine"))
    assert [name.split(".")[0] for name in quarantined] == ["at-line", "bad", "late"]
    assert pg_rows(
        database_url, "SELECT count(*) FROM tasks WHERE task_id IN ('bad', 'at-line')"
    ) == [(0,)]
    ((state, message),) = pg_rows(
        database_url, "SELECT state, exc_message FROM tasks WHERE task_id = 'late'"
    )
    assert state == "LOST" and "quarantined" in message and "CheckViolation" in message
    assert pg_rows(
        database_url, "SELECT seq, message FROM lines WHERE task_id = 'late' ORDER BY seq"
    ) == [(1, "late 1"), (2, "late 2")]
    warnings = {w.split("spool file ")[1].split(".")[0]: w for w in warnings_about(proc, "quarant")}
    assert sorted(warnings) == ["at-line", "bad", "late"], warnings
    assert "CheckViolation 23514) in its start record" in warnings["bad"]
    assert "in its line 6;" in warnings["at-line"]
    assert "in its end record; task late is LOST" in warnings["late"]
    assert "SENSITIVE" not in proc.log_text()  # never a record's content
    write(spool_dir, "later", 9999, good_task("later"))
    wait_for(lambda: stored_good(database_url, ["later"]), message="a later task stored")
    assert proc.alive and stats(database_url).get("store_failures") == 0


# -- what is not a regular file ----------------------------------------------------------------


def test_symlinks_and_fifos_in_the_spool_are_never_read(
    procs: ProcessFactory, database_url: str, spool_dir: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.jsonl"  # readable by the collector, and a valid spool file
    secret.write_bytes(start("secret") + line(1, "TOPSECRET") + end())
    (spool_dir / f"link.1.1{spool.SUFFIX}").symlink_to(secret)
    os.mkfifo(spool_dir / f"fifo.1.3{spool.SUFFIX}")
    good = [f"good-{i}" for i in range(3)]
    for i, task_id in enumerate(good):
        write(spool_dir, task_id, 10 + i, good_task(task_id))
    proc = collector(procs, database_url, spool_dir)
    wait_for(lambda: stored_good(database_url, good), message="the good tasks stored")
    # Responsive: a task written now is stored now (a blocked read would stop everything).
    write(spool_dir, "later", 99, good_task("later"))
    wait_for(lambda: stored_good(database_url, ["later"]), timeout=10, message="later stored")
    after_rescans(database_url, spool_dir)  # each entry is still warned about only once
    assert pg_rows(database_url, "SELECT count(*) FROM tasks WHERE task_id = 'secret'") == [(0,)]
    assert pg_rows(database_url, "SELECT count(*) FROM lines WHERE message LIKE '%SECRET%'") == [
        (0,)
    ]
    log = proc.log_text()
    assert "TOPSECRET" not in log
    assert len(warnings_about(proc, "link.1.1.jsonl is not a regular file (symbolic link)")) == 1
    assert len(warnings_about(proc, "fifo.1.3.jsonl is not a regular file (FIFO)")) == 1
    assert proc.alive and secret.read_bytes().endswith(end())  # untouched


# -- the lock ----------------------------------------------------------------------------------


def test_the_lock_is_outside_the_spool_and_holds_across_names(
    procs: ProcessFactory, database_url: str, spool_dir: Path, tmp_path: Path
) -> None:
    lock_dir = tmp_path / "run"
    lock_dir.mkdir()
    env = {"TASKLOG_LOCK_DIR": str(lock_dir)}
    first = collector(procs, database_url, spool_dir, **env)
    (lock,) = lock_dir.iterdir()
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    assert lock.read_text().strip() == str(first.pid)
    assert [p.name for p in spool_dir.iterdir()] == []  # nothing of the collector's in the spool
    other_name = tmp_path / "same-spool"
    other_name.symlink_to(spool_dir)
    second = procs.collector(database_url=database_url, spool_dir=other_name, env=env)
    assert second.wait(30) != 0
    assert f"another collector (pid {first.pid}) already follows" in second.log_text()
    assert first.alive


# -- retries on two hosts ----------------------------------------------------------------------


def seqs(url: str, task_id: str) -> list[tuple[int, str]]:
    return pg_rows(
        url, "SELECT seq, message FROM lines WHERE task_id = %s ORDER BY seq", (task_id,)
    )


def test_runs_of_one_task_on_two_hosts_never_share_a_seq(
    procs: ProcessFactory, database_url: str, tmp_path: Path
) -> None:
    """A retry starts on host B while host A's run still has lines to store: the two runs
    interleave in seq, each in its own order, and no seq is given twice."""
    dirs = {name: tmp_path / name for name in ("a", "b")}
    for path in dirs.values():
        path.mkdir()

    def capture(host: str, retries: int) -> TaskCapture:
        config = ShimConfig(
            enabled=True,
            spool_dir=str(dirs[host]),
            max_lines=100_000,
            max_line_bytes=16384,
            record_args=False,
        )
        return TaskCapture(
            config,
            "retried",
            {"task_id": "retried", "name": "retried", "retries": retries, "max_lines": 100_000},
        )

    for host, path in dirs.items():
        collector(procs, database_url, path, TASKLOG_HOST=f"host-{host}")

    def emit(cap: TaskCapture, host: str, numbers: range) -> None:
        for i in numbers:
            cap.write(spool.STDOUT, f"{host} {i}\n")

    def stored() -> int:
        return len(seqs(database_url, "retried"))

    run_a = capture("a", 0)
    emit(run_a, "a", range(1, 6))
    wait_for(lambda: stored() == 5, message="run A's first lines")
    run_b = capture("b", 1)  # the retry starts on host B
    emit(run_b, "b", range(1, 4))
    wait_for(lambda: stored() == 8, message="run B's first lines")
    emit(run_a, "a", range(6, 11))  # run A's late lines, after B took seqs
    wait_for(lambda: stored() == 13, message="run A's late lines")
    # Then both at once, each collector committing as its files grow.
    for i in range(11, 211):
        emit(run_a, "a", range(i, i + 1))
        emit(run_b, "b", range(i - 7, i - 6))
        if i % 20 == 0:
            time.sleep(0.02)
    run_a.finish("RETRY")
    run_b.finish("SUCCESS")
    total = 210 + 203
    wait_for(lambda: stored() == total, timeout=30, message=f"{total} lines")
    rows = seqs(database_url, "retried")
    assert len({seq for seq, _ in rows}) == total  # no seq twice
    assert rows[:13] == [
        (i + 1, m)
        for i, m in enumerate(
            [f"a {i}" for i in range(1, 6)]
            + [f"b {i}" for i in range(1, 4)]
            + [f"a {i}" for i in range(6, 11)]
        )
    ]
    for host, count in (("a", 210), ("b", 203)):
        # Each run's lines in its own order along the seqs.
        assert [m for _, m in rows if m.startswith(host)] == [
            f"{host} {i}" for i in range(1, count + 1)
        ]
    wait_for(
        lambda: pg_rows(database_url, "SELECT state, last_seq FROM tasks") == [("SUCCESS", total)],
        message="the task finished, every seq accounted for",
    )


def test_a_quarantine_others_may_write_is_not_used(
    procs: ProcessFactory, database_url: str, spool_dir: Path, tmp_path: Path
) -> None:
    """Files are never moved where others could read or replace them: the file stays, ignored,
    with one warning saying why (not one per rescan)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    good = among_good_tasks(spool_dir, good_task("odd"), bad_name=b"odd-\xfe.1.2.jsonl")
    proc = collector(procs, database_url, spool_dir, TASKLOG_QUARANTINE_DIR=str(shared))
    wait_for(lambda: stored_good(database_url, good), message="the six good tasks stored")
    wait_for(lambda: stats(database_url).get("quarantined") == 1, message="counted")
    after_rescans(database_url, spool_dir)
    (warning,) = warnings_about(proc, "quarantined")
    assert "left in place" in warning and "others may write it" in warning
    assert os.listdir(shared) == [] and b"odd-\xfe.1.2.jsonl" in os.listdir(bytes(spool_dir))
    assert stats(database_url).get("quarantined") == 1 and proc.alive
