"""The compiled line writer (`capture_shim._speedups`) against its reference in Python
(`capture_shim.lines`): the same calls give the same records, byte for byte, the same
sequence numbers and the same lines handed to the fallback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capture_shim import capture, lines, spool
from tasklog.core.constants import cut_note

ROOT = Path(__file__).resolve().parents[2]

try:
    from capture_shim import _speedups
except ImportError:  # built with no C compiler (.ci/run has one: there the skip fails)
    _speedups = None

needs_speedups = pytest.mark.skipif(
    _speedups is None,
    reason="capture_shim._speedups was not compiled (no C compiler at install)",
)

STREAMS = (spool.STDOUT, spool.STDERR, spool.LOG)
_SPECIAL = st.sampled_from(
    ["\n", "\r", "\x00", "\x1f", "\x7f", "\udcff", "\ud83d", '"', "\\", "\b\f\t", "é", "€", "🎉"]
)
_TEXT = st.lists(st.one_of(st.text(max_size=30), _SPECIAL), max_size=6).map("".join)
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.sampled_from(STREAMS), _TEXT),
        st.tuples(st.just("write"), st.sampled_from(STREAMS), st.just("\n")),
        st.tuples(st.just("feed"), st.sampled_from(STREAMS), _TEXT),
        st.tuples(st.just("emit"), st.sampled_from(STREAMS), _TEXT, st.none() | _TEXT),
        st.tuples(st.just("flush_partials")),
    ),
    max_size=40,
)
_TIME = re.compile(rb'"t":[0-9]+e-6')


def _recording(base: type) -> type:
    class Recording(base):  # type: ignore[misc]
        """A `Lines` whose fallback is a list."""

        def __init__(self, max_line_bytes: int) -> None:
            super().__init__(max_line_bytes)
            self.unwritten: list[tuple[str, str, bytes | None, int, str | None]] = []

        def _unwritten(
            self, stream: str, text: str, data: bytes | None, written: int, error: Any
        ) -> None:
            self.unwritten.append((stream, text, data, written, type(error).__name__))

    return Recording


def _run(base: type, ops: list[tuple[Any, ...]], max_line_bytes: int, fd: int) -> Any:
    target = _recording(base)(max_line_bytes)
    target._fd = fd
    for op in ops:
        getattr(target, op[0])(*op[1:])
    target.flush_partials()
    return target


def _records(path: str) -> bytes:
    with open(path, "rb") as f:
        return _TIME.sub(b'"t":0e-6', f.read())


@needs_speedups
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS, max_line_bytes=st.sampled_from([64, 100, 16384]))
def test_the_same_calls_write_the_same_records(
    ops: list[tuple[Any, ...]], max_line_bytes: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        written = {}
        for name, base in (("python", lines.Lines), ("c", _speedups.Lines)):
            path = os.path.join(tmp, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            try:
                target = _run(base, ops, max_line_bytes, fd)
            finally:
                os.close(fd)
            written[name] = (_records(path), target._seq, target.unwritten)
    assert written["c"] == written["python"]


@needs_speedups
@settings(max_examples=100, deadline=None)
@given(ops=_OPS)
def test_without_a_spool_the_same_lines_go_to_the_fallback(ops: list[tuple[Any, ...]]) -> None:
    python = _run(lines.Lines, ops, 100, -1)
    c = _run(_speedups.Lines, ops, 100, -1)
    assert c.unwritten == python.unwritten
    assert c._seq == python._seq


@needs_speedups
@pytest.mark.parametrize("base", [lines.Lines, "c"], ids=["python", "c"])
def test_a_write_the_spool_refuses_hands_the_record_and_the_error_over(
    base: Any, tmp_path: Path
) -> None:
    base = _speedups.Lines if base == "c" else base
    target = _recording(base)(100)
    read_only = os.open(tmp_path / "file", os.O_RDONLY | os.O_CREAT)
    target._fd = read_only  # write(2) fails with EBADF
    try:
        target.write("stdout", "refused\n")
    finally:
        os.close(read_only)
    ((stream, text, data, written, error),) = target.unwritten
    assert (stream, text, written, error) == ("stdout", "refused", 0, "OSError")
    assert data is not None and b'"m":"refused"' in data and data.endswith(b"}\n")


@needs_speedups
@pytest.mark.optional  # skips in the run with TASKLOG_SHIM_SPEEDUPS=false, by choice
def test_the_routers_and_captures_in_use_are_the_compiled_ones() -> None:
    """What a worker runs by default: `TASKLOG_SHIM_SPEEDUPS` unset or true."""
    if os.environ.get("TASKLOG_SHIM_SPEEDUPS", "true").lower() in {"0", "false", "no", "off"}:
        pytest.skip("TASKLOG_SHIM_SPEEDUPS is off in this run")
    assert capture.SPEEDUPS
    assert issubclass(capture.TaskCapture, _speedups.Lines)
    assert issubclass(capture.StreamRouter, _speedups.RouterBase)


def test_the_shims_tests_pass_on_the_python_line_writer() -> None:
    """`TASKLOG_SHIM_SPEEDUPS=false` (and any host without a compiler) runs `lines.Lines`:
    the shim's own unit tests, fd capture's included, pass on it too."""
    env = {**os.environ, "TASKLOG_SHIM_SPEEDUPS": "false"}
    check = "from capture_shim import capture; assert not capture.SPEEDUPS"
    subprocess.run([sys.executable, "-c", check], env=env, check=True, cwd=ROOT)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/unit/test_shim.py",
            "tests/unit/test_shim_properties.py",
            "tests/unit/test_fdcapture.py",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


@needs_speedups
def test_the_compiled_writer_cuts_a_long_line_with_the_constants_note() -> None:
    """`_speedups.c` writes the cut note as a literal of its own: it must be `CUT_NOTE`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cut.jsonl")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            _run(_speedups.Lines, [("write", spool.STDOUT, "é" * 100 + "\n")], 64, fd)
        finally:
            os.close(fd)
        with open(path, "rb") as f:
            (record,) = f.read().splitlines()
    assert json.loads(record)["m"] == "é" * 32 + cut_note(200 - 64)
