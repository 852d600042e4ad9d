"""The guide's demo tasks, plus a few that exercise what the capture must survive."""

from __future__ import annotations

import logging
import random
import sys
import time
from datetime import UTC, datetime

from capture_shim import TerminalLoggingTask, progress
from demo.app import app

logger = logging.getLogger(__name__)


@app.task(base=TerminalLoggingTask, bind=True, name="demo.demo_long_task")
def demo_long_task(self, duration: float = 60, steps: int = 20) -> str:
    """Prints a line per step and reports progress for `duration` seconds."""
    print(f"Processing for {duration} seconds")
    for step in range(1, steps + 1):
        time.sleep(duration / steps)
        print(f"step {step}/{steps}")
        self.update_state(state="PROGRESS", meta={"current": step, "total": steps})
    print("done")
    return "done"


@app.task(base=TerminalLoggingTask, bind=True, name="demo.demo_failing_task")
def demo_failing_task(self) -> None:
    print("About to fail")
    raise Exception("Demo failure")


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
    self.update_state(state="STARTED", meta={"progress": 0})
    duration = duration if duration is not None else random.randint(5, 10)
    end_time = time.time() + duration
    print(f"Task will run for approximately {duration} seconds")
    iteration = 0
    total_iterations = max(1, int(duration * 2))
    while time.time() < end_time:
        iteration += 1
        stamp = datetime.now(tz=UTC).isoformat()
        pct = min(int(iteration / total_iterations * 100), 99)
        self.update_state(state="PROGRESS", meta={"progress": pct})
        print(f"Iteration {iteration}: {stamp} (Progress: {pct}%)")
        logger.info("Iteration %s: %s (Progress: %s%%)", iteration, stamp, pct)
        time.sleep(random.uniform(0.25, 0.5))
    print(f"Task {task_id} completed successfully after {iteration} iterations")
    return {"status": "done", "iterations": iteration, "duration": duration}


@app.task(bind=True, name="demo.print_lines")
def print_lines(self, count: int, stderr_every: int = 0, text: str = "line",
                delay: float = 0.0) -> int:
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


@app.task(bind=True, name="demo.progress_task")
def progress_task(self, steps: int = 5, delay: float = 0.2) -> int:
    for step in range(1, steps + 1):
        progress(100 * step / steps, f"step {step}")
        print(f"step {step}")
        time.sleep(delay)
    return steps


@app.task(bind=True, name="demo.log_task")
def log_task(self) -> str:
    logger.warning("a warning from logging")
    print("a print")
    return "logged"


@app.task(bind=True, name="demo.retry_task", max_retries=1, default_retry_delay=0)
def retry_task(self) -> str:
    print(f"attempt {self.request.retries}")
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return "retried"
