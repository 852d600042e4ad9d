"""Property tests of the shim's line splitting: any sequence of writes of any text, on stdout
and stderr, comes back from the spool file as the lines that text holds, in order, seq 1..n,
through both a plain JSON reader and the collector's own parser; the shim never raises."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capture_shim import spool
from capture_shim.capture import TaskCapture
from capture_shim.config import ShimConfig
from collector.fields import clean_text
from collector.tail import SpoolDir

STREAMS = (spool.STDOUT, spool.STDERR)

#: Text that stresses the format: newlines, \r, NUL, lone surrogates, JSON's own syntax.
_SPECIAL = st.sampled_from(
    [
        "\n",
        "\r",
        "\r\n",
        "\x00",
        "\udcff",
        "\ud83d",
        "\ude00",
        '"',
        "\\",
        "\x1b[31m",
        "<script>",
        "\u2028",
        "é",
        "🎉",
        "\t",
        "\x7f",
        "}\n{",
    ]
)
_TEXT = st.lists(st.one_of(st.text(max_size=20), _SPECIAL), max_size=8).map("".join)
_WRITES = st.lists(st.tuples(st.sampled_from(STREAMS), _TEXT), max_size=30)


def _config(directory: str, max_line_bytes: int) -> ShimConfig:
    return ShimConfig(
        enabled=True,
        spool_dir=directory,
        max_lines=1000,
        max_line_bytes=max_line_bytes,
        record_args=False,
    )


def _cut(text: str, limit: int) -> str:
    """A line as the shim documents it: at most `limit` UTF-8 bytes, then a marker."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return text
    kept = raw[:limit].decode("utf-8", "ignore")
    return f"{kept} … [line cut: {len(raw) - limit} more bytes]"


def _expected(writes: list[tuple[str, str]], limit: int) -> list[tuple[str, str]]:
    """Each stream split on "\\n" as its lines complete; a partial line longer than the limit
    is let go without its newline (a progress bar must not grow forever); partial lines are
    flushed at the end, streams in the order they were first written to."""
    partial: dict[str, str] = {}
    lines: list[tuple[str, str]] = []
    for stream, text in writes:
        buf = partial.get(stream, "") + text
        if "\n" in buf:
            *done, partial[stream] = buf.split("\n")
            lines += [(stream, _cut(line, limit)) for line in done]
        elif len(buf) > limit:
            partial[stream] = ""
            lines.append((stream, _cut(buf, limit)))
        else:
            partial[stream] = buf
    lines += [(stream, _cut(rest, limit)) for stream, rest in partial.items() if rest]
    return lines


def _utf16(text: str) -> str:
    """JSON reads the escapes of a surrogate pair written as two code points as one character."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


def _run(directory: str, writes: list[tuple[str, str]], limit: int) -> list[dict[str, Any]]:
    cap = TaskCapture(_config(directory, limit), "prop", {"task_id": "prop", "name": "p"})
    for stream, text in writes:
        cap.write(stream, text)
    cap.finish("SUCCESS")
    (path,) = Path(directory).glob("*" + spool.SUFFIX)
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.split(b"\n")[:-1]]


def _check(writes: list[tuple[str, str]], limit: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        records = _run(tmp, writes, limit)
        assert records[0]["k"] == spool.START and records[-1]["k"] == spool.END
        lines = [r for r in records if r["k"] == spool.LINE]
        expected = _expected(writes, limit)
        assert [(r["s"], r["m"]) for r in lines] == [(s, _utf16(m)) for s, m in expected]
        assert [r["n"] for r in lines] == list(range(1, len(lines) + 1))
        assert records[-1]["lines"] == len(lines) and records[-1]["errors"] == 0
        for r in lines:
            assert len(r["m"].encode("utf-8", "surrogatepass")) <= limit + 64
        # The collector's reader sees the same lines, cleaned for Postgres, nothing corrupt.
        reader = SpoolDir(Path(tmp), {})
        reader.scan()
        batch = reader.read_batch(100_000, 1 << 24)
        assert batch.corrupt == 0
        (chunk,) = batch.chunks
        assert chunk.start is not None and chunk.end is not None
        assert [(ln.seq, ln.stream, ln.message) for ln in chunk.lines] == [
            (r["n"], r["s"], clean_text(r["m"])) for r in lines
        ]
        for ln in chunk.lines:
            ln.message.encode("utf-8")  # storable: no lone surrogate left
            assert "\x00" not in ln.message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(writes=_WRITES)
def test_any_writes_come_back_as_their_lines(writes: list[tuple[str, str]]) -> None:
    _check(writes, 16384)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(writes=_WRITES, limit=st.integers(64, 100))
def test_long_lines_are_cut_as_documented(writes: list[tuple[str, str]], limit: int) -> None:
    # Long lines made likely: repeat each write's text a few times.
    _check([(s, t * 5) for s, t in writes], limit)


@settings(max_examples=100, deadline=None)
@given(
    text=st.text(min_size=1, max_size=200).filter(lambda t: "\n" not in t),
    limit=st.integers(64, 128),
)
def test_a_cut_never_splits_a_character(text: str, limit: int) -> None:
    line = (text * 10)[:2000]
    with tempfile.TemporaryDirectory() as tmp:
        records = _run(tmp, [(spool.STDOUT, line + "\n")], limit)
    (message,) = [r["m"] for r in records if r["k"] == spool.LINE]
    assert message == _utf16(_cut(line, limit))
    if len(line.encode("utf-8", "surrogatepass")) > limit:
        kept, _, tail = message.rpartition(" … [line cut: ")
        assert len(kept.encode("utf-8", "surrogatepass")) <= limit
        assert tail.endswith(" more bytes]")


@settings(max_examples=100, deadline=None)
@given(data=st.lists(st.binary(max_size=40), max_size=10))
def test_binary_writes_never_raise_and_keep_valid_utf8(data: list[bytes]) -> None:
    """`sys.stdout.buffer.write` inside a task: valid UTF-8 kept, invalid bytes escaped."""
    from capture_shim.capture import _BinaryRouter

    with tempfile.TemporaryDirectory() as tmp:
        cap = TaskCapture(_config(tmp, 16384), "bin", {"task_id": "bin", "name": "b"})
        router = _BinaryRouter(cap, spool.STDOUT)
        for chunk in data:
            assert router.write(chunk) == len(chunk)
        cap.finish("SUCCESS")
        (path,) = Path(tmp).glob("*" + spool.SUFFIX)
        records = [json.loads(line) for line in path.read_bytes().splitlines()]
    joined = "\n".join(r["m"] for r in records if r["k"] == spool.LINE)
    decoded = "".join(c.decode("utf-8", "backslashreplace") for c in data)
    assert joined == (decoded[:-1] if decoded.endswith("\n") else decoded)
