"""Benchmark: cost per line of fd-level capture against Python-level capture.

Drives the shim in this process as a prefork/solo task would (no worker, no Redis), writing
`--lines` lines of `--width` bytes each way, `--runs` times, interleaved, median reported:

* ``python``: `print` through the `StreamRouter` into a `TaskCapture` (fd capture off);
* ``fd print``: the same prints with an `FdSession` on (each print first looks at the pipes);
* ``fd os.write``: `os.write(1, line)` per line, through the pipe and the reader thread;
* ``fd child``: a child process writes all lines at once to its inherited stdout;
  ``child /dev/null`` is the same child with nothing capturing it (the floor).

Every captured way ends with its spool file written and closed. A last figure is the fixed
cost per task of an `FdSession` (pipes, thread, descriptors put back) on top of a `TaskCapture`.
Run:
``python -m bench.fd_capture [--lines 100000] [--width 100] [--runs 5]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from capture_shim import spool
from capture_shim.capture import TaskCapture, ensure_routing
from capture_shim.config import ShimConfig
from capture_shim.fdcapture import FdSession


def _capture(spool_dir: Path, n: int) -> TaskCapture:
    config = ShimConfig(
        enabled=True,
        spool_dir=str(spool_dir),
        max_lines=1000,
        max_line_bytes=16384,
        record_args=False,
    )
    return TaskCapture(config, f"bench-{n}", {"task_id": f"bench-{n}", "name": "bench"})


def _child_argv(lines: int, width: int) -> list[str]:
    script = (
        f"import sys; pad = 'x' * {width - 14}; sys.stdout.write(''.join("
        f"f'line {{i:08d}}{{pad}}\\n' for i in range({lines})))"
    )
    return [sys.executable, "-c", script]


def _ways(spool_dir: Path, lines: int, width: int) -> dict[str, Callable[[int], float]]:
    pad = "x" * (width - 14)
    texts = [f"line {i:08d}{pad}" for i in range(lines)]
    raw = [(t + "\n").encode() for t in texts]
    child = _child_argv(lines, width)

    def python_level(n: int) -> float:
        cap = _capture(spool_dir, n)
        cap.activate()
        started = time.perf_counter()
        for text in texts:
            print(text)
        cap.finish("SUCCESS")
        elapsed = time.perf_counter() - started
        cap.deactivate()
        return elapsed

    def fd_level(body: Callable[[], None]) -> Callable[[int], float]:
        def way(n: int) -> float:
            cap = _capture(spool_dir, n)
            cap.activate()
            started = time.perf_counter()
            session = FdSession(cap)
            session.start()
            body()
            session.end()
            cap.finish("SUCCESS")
            elapsed = time.perf_counter() - started
            cap.deactivate()
            return elapsed

        return way

    def prints() -> None:
        for text in texts:
            print(text)

    def os_writes() -> None:
        for data in raw:
            os.write(1, data)

    def child_run() -> None:
        subprocess.run(child, check=True)

    def child_devnull(n: int) -> float:
        started = time.perf_counter()
        subprocess.run(child, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - started

    return {
        "python": python_level,
        "fd print": fd_level(prints),
        "fd os.write": fd_level(os_writes),
        "fd child": fd_level(child_run),
        "child /dev/null": child_devnull,
    }


def _per_task(spool_dir: Path, tasks: int) -> tuple[float, float]:
    """Median seconds per task of an empty TaskCapture, without and with an FdSession
    (interleaved, so a busy machine weighs on both alike)."""
    config = ShimConfig(
        enabled=True,
        spool_dir=str(spool_dir),
        max_lines=1000,
        max_line_bytes=16384,
        record_args=False,
    )
    costs: dict[bool, list[float]] = {False: [], True: []}
    for i in range(tasks):
        for with_fd in (False, True):
            started = time.perf_counter()
            cap = TaskCapture(config, f"task-{with_fd}-{i}", {"task_id": "t"})
            if with_fd:
                session = FdSession(cap)
                session.start()
                session.end()
            cap.finish("SUCCESS")
            costs[with_fd].append(time.perf_counter() - started)
    return statistics.median(costs[False]), statistics.median(costs[True])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--width", type=int, default=100, help="bytes per line, newline included")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)

    ensure_routing()
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="tasklog-bench-fd-") as tmp:
        spool_dir = Path(tmp)
        ways = _ways(spool_dir, args.lines, args.width)
        n = 0
        for _ in range(args.runs):
            for name, way in ways.items():
                n += 1
                times.setdefault(name, []).append(way(n))
                for path in spool_dir.glob("*" + spool.SUFFIX):
                    path.unlink()
        plain_task, fd_task = _per_task(spool_dir, 500)

    out = sys.__stdout__
    assert out is not None
    out.write(f"fd capture: {args.lines} lines of {args.width} bytes, median of {args.runs} runs\n")
    floor = statistics.median(times["python"])
    for name, values in times.items():
        median = statistics.median(values)
        us = median / args.lines * 1e6
        out.write(
            f"  {name:<16} {us:7.2f} µs/line  {median * 1e3:8.1f} ms  "
            f"({median / floor:4.2f}x python)\n"
        )
    out.write(
        f"  per task: {plain_task * 1e6:.0f} µs without fd capture, "
        f"{fd_task * 1e6:.0f} µs with it (+{(fd_task - plain_task) * 1e6:.0f} µs)\n"
    )
    out.flush()


if __name__ == "__main__":
    main()
