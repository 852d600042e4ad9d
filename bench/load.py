"""``python -m bench.load --rate N --spool DIR``: background output at N lines/s, until SIGTERM.

Writes through the shim's own `TaskCapture`, as tasks of a worker would: one spool file per
task of ``--task-lines`` lines, lines of 40-200 bytes, paced every few milliseconds.
"""

from __future__ import annotations

import argparse
import os
import signal
import time

from bench.common import sample_lines


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    p.add_argument("--rate", type=float, required=True, help="lines per second")
    p.add_argument("--spool", required=True, help="the spool directory")
    p.add_argument("--task-lines", type=int, default=5000, help="lines per task")
    args = p.parse_args()

    from capture_shim.capture import TaskCapture
    from capture_shim.config import ShimConfig

    config = ShimConfig(
        enabled=True, spool_dir=args.spool, max_lines=1000, max_line_bytes=16384, record_args=False
    )
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    pool = sample_lines(10_007, seed=3)
    cap: TaskCapture | None = None
    in_task = tasks = sent = 0
    started = time.monotonic()
    while not stop:
        due = int((time.monotonic() - started) * args.rate)
        while sent < due:
            if cap is None or in_task >= args.task_lines:
                if cap is not None:
                    cap.finish("SUCCESS")
                tasks += 1
                task_id = f"load-{os.getpid()}-{tasks}"
                cap = TaskCapture(config, task_id, {"task_id": task_id, "name": "bench.load"})
                in_task = 0
            cap.emit("stdout", pool[sent % len(pool)])
            in_task += 1
            sent += 1
        time.sleep(0.002)
    if cap is not None:
        cap.finish("SUCCESS")
    elapsed = time.monotonic() - started
    print(f"load: {sent} lines in {elapsed:.1f}s ({sent / elapsed:,.0f} lines/s)", flush=True)


if __name__ == "__main__":
    main()
