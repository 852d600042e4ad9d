"""The compiled line writer (`capture_shim._speedups`) against its reference in Python
(`capture_shim.lines`): the same calls give the same records, byte for byte, the same
sequence numbers and the same lines handed to the fallback."""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import select
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import capture_shim
from capture_shim import capture, lines, native, spool
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

#: More streams than the compiled class keeps in slots (three), and "stdout" twice: the
#: constant and an equal string that is another object.
STREAMS = (spool.STDOUT, spool.STDERR, spool.LOG, spool.MARKER, "".join(("std", "out")))
_SPECIAL = st.sampled_from(
    ["\n", "\r", "\x00", "\x1f", "\x7f", "\udcff", "\ud83d", '"', "\\", "\b\f\t", "é", "€", "🎉"]
)
#: ASCII runs too: the compiled writer copies ASCII text eight bytes at a time.
_ASCII = st.text(st.characters(max_codepoint=127), max_size=40)
_TEXT = st.lists(st.one_of(st.text(max_size=30), _ASCII, _SPECIAL), max_size=6).map("".join)
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.sampled_from(STREAMS), _TEXT),
        st.tuples(st.just("write"), st.sampled_from(STREAMS), st.just("\n")),
        st.tuples(st.just("feed"), st.sampled_from(STREAMS), _TEXT),
        st.tuples(st.just("emit"), st.sampled_from(STREAMS), _TEXT, st.none() | _TEXT),
        st.tuples(st.just("flush_partials")),
        st.tuples(st.just("gate"), st.booleans()),
    ),
    max_size=40,
)
_TIME = re.compile(rb'"t":[0-9]+e-6')


class _Gate:
    """A gate whose pipe always has output waiting: the writer asks it to take in at each new
    Python-level line, and it counts the times."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.write(self._write, b"x")
        self.probe = select.epoll()
        self.probe.register(self._read, select.EPOLLIN)
        self.probe_fd = self.probe.fileno()
        self.ready = functools.partial(self.probe.poll, 0)
        self.read_ends = (self._read,)
        self.taken = 0

    def take_in(self) -> None:
        self.taken += 1

    def close(self) -> None:
        self.probe.close()
        os.close(self._read)
        os.close(self._write)


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
    gate = _Gate()
    try:
        for op in ops:
            if op[0] == "gate":
                target.order_with(gate if op[1] else None)
            else:
                getattr(target, op[0])(*op[1:])
        target.flush_partials()
    finally:
        gate.close()
    target.taken = gate.taken  # where a new Python-level line began: the same in both
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
            written[name] = (_records(path), target._seq, target.unwritten, target.taken)
    assert written["c"] == written["python"]


@needs_speedups
@settings(max_examples=100, deadline=None)
@given(ops=_OPS)
def test_without_a_spool_the_same_lines_go_to_the_fallback(ops: list[tuple[Any, ...]]) -> None:
    python = _run(lines.Lines, ops, 100, -1)
    c = _run(_speedups.Lines, ops, 100, -1)
    assert c.unwritten == python.unwritten
    assert c._seq == python._seq
    assert c.taken == python.taken


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
def test_ascii_text_to_escape_at_any_place_is_written_alike() -> None:
    """ASCII text is copied eight bytes at a time in C: a quote, a backslash or a control
    character at each place of those eight comes out escaped as the reference does, and DEL
    as it is (the reference escapes ASCII text with json's ensure_ascii escaper, but DEL)."""
    texts = [
        "a" * i + special + "b" * (17 - i)
        for i in range(17)
        for special in ('"', "\\", "\t", "\x01", "\x1f", "\x7f")
    ]
    ops = [("write", spool.STDOUT, text + "\n") for text in texts]
    with tempfile.TemporaryDirectory() as tmp:
        written = {}
        for name, base in (("python", lines.Lines), ("c", _speedups.Lines)):
            path = os.path.join(tmp, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            try:
                _run(base, ops, 16384, fd)
            finally:
                os.close(fd)
            written[name] = _records(path)
    assert written["c"] == written["python"]
    assert [json.loads(r)["m"] for r in written["c"].splitlines()] == texts


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


@needs_speedups
@pytest.mark.parametrize("seq", [0, 9, 99, 12_345_678_900])
def test_the_compiled_writer_writes_the_number_and_the_time_in_full(
    seq: int, tmp_path: Path
) -> None:
    """Numbers are written two digits at a time in C: an odd and an even count of digits."""
    path = tmp_path / "numbers.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    target = _recording(_speedups.Lines)(100)
    target._fd = fd
    target._seq = seq
    try:
        before = time.time_ns() // 1000
        target.write(spool.STDOUT, "a line\n")
        after = time.time_ns() // 1000
    finally:
        os.close(fd)
    record = path.read_bytes()
    micros = int(re.fullmatch(rb'.*"t":([0-9]+)e-6.*\n', record).group(1))  # type: ignore[union-attr]
    assert before <= micros <= after
    assert json.loads(record)["n"] == seq + 1


@needs_speedups
def test_the_compiled_module_is_used_when_it_was_built_from_this_code() -> None:
    assert native.speedups() is _speedups
    assert capture.SPEEDUPS


def test_a_build_from_other_code_is_left_for_the_python_code_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An editable install not rebuilt after a pull keeps a `_speedups` of older code: its
    functions may take other arguments, so it is not used, and the warning says why."""
    stale = types.ModuleType("capture_shim._speedups")
    stale.__file__ = "/srv/app/capture_shim/_speedups.so"
    stale.ABI = native.ABI - 1  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "capture_shim._speedups", stale)
    monkeypatch.setattr(capture_shim, "_speedups", stale, raising=False)
    native.speedups.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="tasklog"):
            assert native.speedups() is None
    finally:
        native.speedups.cache_clear()
    (record,) = caplog.records
    assert "/srv/app/capture_shim/_speedups.so was built from other code" in record.message
    assert "pip install -e ." in record.message
