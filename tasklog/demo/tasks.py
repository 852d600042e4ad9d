"""The guide's demo tasks, plus a few that exercise what the capture must survive."""

from __future__ import annotations

import logging
import random
import sys
import time
from datetime import UTC, datetime

from celery.exceptions import Ignore, Reject

from capture_shim import TerminalLoggingTask, group, progress
from tasklog.core.constants import PROGRESS, STARTED
from tasklog.demo.app import app

logger = logging.getLogger(__name__)


@app.task(base=TerminalLoggingTask, bind=True, name="demo.demo_long_task")
def demo_long_task(self, duration: float = 60, steps: int = 20) -> str:
    """Prints a line per step and reports progress for `duration` seconds."""
    print(f"Processing for {duration} seconds")
    for step in range(1, steps + 1):
        time.sleep(duration / steps)
        print(f"step {step}/{steps}")
        self.update_state(state=PROGRESS, meta={"current": step, "total": steps})
    print("done")
    return "done"


@app.task(base=TerminalLoggingTask, bind=True, name="demo.demo_failing_task")
def demo_failing_task(self) -> None:
    print("About to fail")
    raise Exception("Demo failure")


@app.task(base=TerminalLoggingTask, bind=True, name="demo.grouped_steps")
def grouped_steps(self, steps: int = 3, fail: bool = False) -> int:
    """Each step's lines in a CI-style group (`capture_shim.group`); with `fail`, the last step
    raises inside its group."""
    for i in range(1, steps + 1):
        with group(f"step {i}"):
            print(f"step {i}: working")
            if fail and i == steps:
                raise ValueError(f"step {i} failed")
            print(f"step {i}: done")
    return steps


@app.task(base=TerminalLoggingTask, bind=True, name="demo.demo_quick_task")
def demo_quick_task(self) -> str:
    print("Quick task done")
    return "quick"


@app.task(bind=True, name="celery_tasklog.tasks.timed_print_task")
def timed_print_task(self, duration: float | None = None) -> dict[str, object]:
    """The guide's test task: prints the time at random intervals with progress."""
    task_id = self.request.id
    print(f"Task {task_id} started manually")
    logger.info("Starting timed_print_task with ID: %s", task_id)
    self.update_state(state=STARTED, meta={"progress": 0})
    duration = duration if duration is not None else random.randint(5, 10)
    end_time = time.time() + duration
    print(f"Task will run for approximately {duration} seconds")
    iteration = 0
    total_iterations = max(1, int(duration * 2))
    while time.time() < end_time:
        iteration += 1
        stamp = datetime.now(tz=UTC).isoformat()
        pct = min(int(iteration / total_iterations * 100), 99)
        self.update_state(state=PROGRESS, meta={"progress": pct})
        print(f"Iteration {iteration}: {stamp} (Progress: {pct}%)")
        logger.info("Iteration %s: %s (Progress: %s%%)", iteration, stamp, pct)
        time.sleep(random.uniform(0.25, 0.5))
    print(f"Task {task_id} completed successfully after {iteration} iterations")
    return {"status": "done", "iterations": iteration, "duration": duration}


@app.task(bind=True, name="demo.print_lines")
def print_lines(
    self, count: int, stderr_every: int = 0, text: str = "line", delay: float = 0.0
) -> int:
    """Prints `count` numbered lines (every `stderr_every`th to stderr); for tests and benches."""
    for i in range(1, count + 1):
        stream = sys.stderr if stderr_every and i % stderr_every == 0 else sys.stdout
        print(f"{text} {i}", file=stream)
        if delay:
            time.sleep(delay)
    return count


@app.task(bind=True, name="demo.print_text")
def print_text(self, text: str, stream: str = "stdout") -> str:
    """Writes `text` as it is (tests: unicode, NUL, markup, ANSI)."""
    (sys.stderr if stream == "stderr" else sys.stdout).write(text)
    return "ok"


@app.task(bind=True, name="demo.print_bytes")
def print_bytes(self, hex_bytes: str, stream: str = "stdout") -> int:
    """Writes raw bytes (given as hex) to `sys.stdout.buffer` (tests: invalid UTF-8)."""
    data = bytes.fromhex(hex_bytes)
    (sys.stderr if stream == "stderr" else sys.stdout).buffer.write(data)
    return len(data)


@app.task(bind=True, name="demo.progress_task")
def progress_task(self, steps: int = 5, delay: float = 0.2, state: str | None = None) -> int:
    """Progress in `steps` steps; with `state`, through `update_state` in that (custom) state."""
    for step in range(1, steps + 1):
        if state is None:
            progress(100 * step / steps, f"step {step}")
        else:
            self.update_state(state=state, meta={"progress": 100 * step / steps})
        print(f"step {step}")
        time.sleep(delay)
    return steps


@app.task(bind=True, name="demo.log_task")
def log_task(self) -> str:
    logger.warning("a warning from logging")
    print("a print")
    return "logged"


@app.task(bind=True, name="demo.ignored_task")
def ignored_task(self, lines: int = 2) -> None:
    """Prints `lines` lines, then takes itself out of Celery's bookkeeping (`raise Ignore()`)."""
    for i in range(1, lines + 1):
        print(f"before ignore {i}")
    raise Ignore()


@app.task(bind=True, name="demo.rejected_task")
def rejected_task(self) -> None:
    """Prints a line, then rejects its message (`raise Reject(requeue=True)`). The demo
    acknowledges a message before its task runs (task_acks_late=False): Celery does not run
    it again, and the run stays REJECTED. (`Reject(requeue=False)` is Celery's FAILURE.)"""
    print("before reject")
    raise Reject("rejected by the demo", requeue=True)


@app.task(bind=True, name="demo.retry_task", max_retries=1, default_retry_delay=0)
def retry_task(self) -> str:
    print(f"attempt {self.request.retries}")
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return "retried"


@app.task(bind=True, name="demo.log_levels")
def log_levels(self, names: list[str]) -> int:
    """One `logging` line at each of the custom levels `names`, numbered from 51 up."""
    log = logging.getLogger("demo.levels")
    for number, name in enumerate(names, start=51):
        logging.addLevelName(number, name)
        log.log(number, "at level %d", number)
    return len(names)


# -- fd-level capture (tests/integration/test_fd_capture.py) -----------------------------------


@app.task(bind=True, name="demo.fd_mixed")
def fd_mixed(self) -> str:
    """Writes to fd 1/2 every way Python's sys.stdout never sees, between two prints."""
    import ctypes
    import os
    import subprocess

    print("py before")
    subprocess.run(["sh", "-c", "echo out; echo err >&2"], check=True)
    os.write(1, b"os write 1\n")
    os.write(2, b"os write 2\n")
    libc = ctypes.CDLL(None)
    libc.printf(b"c printf %d\n", 42)
    libc.fflush(None)
    print("py after")
    print("py err", file=sys.stderr)
    return "mixed"


@app.task(bind=True, name="demo.fd_burst")
def fd_burst(self, megabytes: int = 20, width: int = 100) -> int:
    """A child process writes `megabytes` MB of `width`-byte numbered lines to its stdout."""
    import subprocess

    count = megabytes * 1_000_000 // width
    script = (
        "import sys\n"
        f"pad = 'x' * {width - 14}\n"
        f"for start in range(1, {count + 1}, 10000):\n"
        f"    stop = min(start + 10000, {count + 1})\n"
        "    sys.stdout.write(''.join(f'burst {i:07d}{pad}\\n' for i in range(start, stop)))\n"
    )
    print("burst start")
    subprocess.run([sys.executable, "-c", script], check=True)
    print("burst end")
    return count


@app.task(bind=True, name="demo.fd_orphan")
def fd_orphan(self, delay: float = 1.5) -> int:
    """Starts a child that outlives the task and writes after it returned."""
    import subprocess

    child = subprocess.Popen(["sh", "-c", f"sleep {delay}; echo orphan-late; echo orphan-err >&2"])
    print("orphan started")
    return child.pid


@app.task(bind=True, name="demo.fd_close")
def fd_close(self) -> str:
    """Closes fd 1 and points fd 2 at /dev/null, as some daemonizing code does."""
    import os

    os.write(1, b"before close\n")
    os.close(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    print("python still captured")
    return "closed"


# -- workflows: chains, groups and chords (tests/integration/test_workflows.py, the demo) -------


@app.task(bind=True, name="demo.wf_step")
def wf_step(self, value: int = 0, label: str = "step", lines: int = 3, delay: float = 0.05) -> int:
    """One step of a workflow: prints `lines` lines and passes `value + 1` on."""
    for i in range(1, lines + 1):
        print(f"{label}: line {i} of {lines} (value {value})")
        if delay:
            time.sleep(delay)
    return value + 1


@app.task(bind=True, name="demo.wf_sum")
def wf_sum(self, values: list[int], label: str = "sum", fail: bool = False) -> int:
    """A chord's body: prints what the group returned and adds it up (or fails, if asked)."""
    print(f"{label}: got {sorted(values)}")
    if fail:
        raise ValueError(f"{label}: refusing {values}")
    total = sum(values)
    print(f"{label}: total {total}")
    return total


@app.task(bind=True, name="demo.demo_workflow")
def demo_workflow(self, width: int = 3, lines: int = 5, delay: float = 0.3) -> str:
    """Starts a chain whose middle is a group, ending in a chord's body: a workflow to watch."""
    from celery import chain, group

    flow = chain(
        wf_step.s(1, label="extract", lines=lines, delay=delay),
        group(wf_step.s(label=f"transform-{i}", lines=lines, delay=delay) for i in range(width)),
        wf_sum.s(label="load"),
    )
    result = flow.apply_async()
    print(f"workflow started: {result.id}")
    return str(result.id)
