"""What every benchmark needs: figures, fresh databases, realistic lines, child processes."""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"

T = TypeVar("T")

# -- figures -----------------------------------------------------------------------------------


@dataclass
class Figure:
    """Several runs of one measurement."""

    name: str
    unit: str
    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def text(self, digits: int = 2) -> str:
        lo, hi = min(self.values), max(self.values)
        return (
            f"{self.median:,.{digits}f} {self.unit} "
            f"(min-max {lo:,.{digits}f}-{hi:,.{digits}f}, {len(self.values)} runs)"
        )


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, round(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def title(text: str) -> None:
    print(f"\n== {text} ==", flush=True)


def row(label: str, value: str, note: str = "") -> None:
    print(f"  {label:<52} {value}" + (f"   [{note}]" if note else ""), flush=True)


def verdict(ok: bool) -> str:
    return "target met" if ok else "TARGET MISSED"


# -- realistic output --------------------------------------------------------------------------

_WORDS = (
    "processing batch item user order invoice retry connection timeout ok done starting "
    "finished records rows elapsed ms warning error cache hit miss upload download chunk "
    "payload request response status queued worker celery redis postgres sync step"
).split()


def sample_lines(count: int, seed: int = 1) -> list[str]:
    """`count` log-like lines of 40-200 bytes (ASCII, with the odd tab and quote)."""
    rng = random.Random(seed)
    lines = []
    for i in range(count):
        size = rng.randint(40, 200)
        parts = [f"[{i:07d}]"]
        length = len(parts[0])
        while length < size:
            word = rng.choice(_WORDS)
            if rng.random() < 0.05:
                word = f'"{word}"'
            elif rng.random() < 0.02:
                word = f"{word}\t{rng.randint(0, 9999)}"
            parts.append(word)
            length += len(word) + 1
        lines.append(" ".join(parts)[:size])
    return lines


# -- Postgres ----------------------------------------------------------------------------------


def with_database(url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


class Databases:
    """Fresh migrated databases cloned from one template; all dropped at the end."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.prefix = f"tlbench_{secrets.token_hex(3)}"
        self._made: list[str] = []
        self._template: str | None = None

    def _admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.server_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(statement.encode())

    def fresh(self) -> str:
        """URL of a new, migrated, empty tasklog database."""
        from collector.migrate import migrate

        if self._template is None:
            self._template = f"{self.prefix}_template"
            self._admin(f'CREATE DATABASE "{self._template}"')
            self._made.append(self._template)
            migrate(with_database(self.server_url, self._template))
        name = f"{self.prefix}_{len(self._made)}"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{self._template}"')
        self._made.append(name)
        return with_database(self.server_url, name)

    def drop(self, url: str) -> None:
        name = urllib.parse.urlsplit(url).path.lstrip("/")
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self._made:
            self._made.remove(name)

    def close(self) -> None:
        for name in reversed(self._made):
            with contextlib.suppress(Exception):
                self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._made.clear()


def scalar(url: str, statement: str, params: Sequence[Any] | None = None) -> Any:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        found = conn.execute(statement.encode(), params).fetchone()
        return found[0] if found else None


# -- processes ---------------------------------------------------------------------------------


class Child:
    """A subprocess in a session of its own, logging to a file, always stopped by `stop`."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_dir: Path,
        cwd: Path = REPO_ROOT,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKLOG_")}
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**clean, "PYTHONUNBUFFERED": "1", **env},
                cwd=cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, needle: str, timeout: float = 60) -> float:
        """Wait until `needle` appears in the log; returns the monotonic time it was seen."""
        return wait_for(
            lambda: needle in self.log_text(), timeout, f"{self.name} to log {needle!r}", self
        )

    def rss_peak_kb(self) -> int:
        """The process's peak resident set (VmHWM), in KiB."""
        return _status_kb(self.pid, "VmHWM")

    def rss_kb(self) -> int:
        return _status_kb(self.pid, "VmRSS")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 10) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def wait_for(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    child: Child | None = None,
    interval: float = 0.01,
) -> float:
    """Poll until `predicate()` is truthy; returns the monotonic time it became so."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.monotonic()
        if child is not None and child.popen.poll() is not None:
            raise RuntimeError(
                f"{child.name} exited ({child.popen.returncode}) before {what}:\n"
                + "\n".join(child.log_text().splitlines()[-30:])
            )
        if time.monotonic() > deadline:
            tail = "" if child is None else "\n" + "\n".join(child.log_text().splitlines()[-30:])
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}{tail}")
        time.sleep(interval)


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """A list to put started `Child`ren in; all of them stopped on the way out."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            child.stop()


@contextlib.contextmanager
def workdir(keep: bool = False) -> Iterator[Path]:
    """A scratch directory traversable by everyone (removed unless `keep`)."""
    path = Path(tempfile.mkdtemp(prefix="tasklog-bench-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        if keep:
            print(f"  (kept {path})")
        else:
            subprocess.run(["rm", "-rf", str(path)], check=False)


def python() -> str:
    return sys.executable


def solo_worker(queue: str) -> list[str]:
    """The argv of a solo Celery worker of `bench.celery_app` consuming `queue` only."""
    celery = [python(), "-m", "celery", "-A", "bench.celery_app", "worker"]
    quiet = ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    return [*celery, "-P", "solo", "-l", "info", "-Q", queue, *quiet, "-n", f"{queue}@%h"]
