"""The spool format v1: safe file names and line records that JSON reads back exactly."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capture_shim import spool

_HASHED = re.compile(r"h-[0-9a-f]{32}")


@pytest.mark.parametrize(
    "task_id",
    [
        "d9a0c2a4-5a5e-4f4c-9e6b-2f1f1f2b7a11",  # Celery's uuid4
        "job_42",
        "a.b-c",
        "X",
        "a" * 128,
    ],
)
def test_safe_ids_are_kept(task_id: str) -> None:
    assert spool.safe_name(task_id) == task_id


@pytest.mark.parametrize(
    "task_id",
    [
        "../../etc/passwd",
        "a/b",
        "/abs",
        "..",
        ".hidden",
        "nul\x00byte",
        "x" * 10_000,
        "a" * 129,
        "tâche-é",
        "任务",
        "emoji-🎉",
        "lone-\udcff",
        "",
        "with space",
        "new\nline",
    ],
)
def test_unsafe_ids_are_hashed(task_id: str) -> None:
    name = spool.safe_name(task_id)
    assert _HASHED.fullmatch(name), name
    assert spool.safe_name(task_id) == name  # stable
    file_name = spool.file_name(task_id, 123, 456)
    assert os.sep not in file_name and "\x00" not in file_name
    assert file_name == f"{name}.123.456{spool.SUFFIX}"


def test_distinct_unsafe_ids_get_distinct_names() -> None:
    ids = ["../a", "../b", "a/b", "a/c", "x" * 10_000, "x" * 10_001]
    assert len({spool.safe_name(i) for i in ids}) == len(ids)


def test_spool_file_stays_in_its_directory(tmp_path: Path) -> None:
    inner = tmp_path / "spool"
    inner.mkdir()
    f = spool.SpoolFile(str(inner), "../../escape")
    try:
        f.write(b"x\n")
    finally:
        f.close()
    assert Path(f.path).parent == inner
    assert [p.name for p in tmp_path.iterdir()] == ["spool"]


#: Custom logging level names that would rewrite the record if written unescaped.
HOSTILE_LEVELS = [
    'INFO", "kind": "end',
    'INFO","k":"end","state":"SUCCESS',
    'X"}\n{"k":"end","state":"SUCCESS","t":1}\n{"k":"line","n":9,"t":1,"s":"stdout","m":"',
    "new\nline",
    "cr\rlf",
    "nul\x00",
    "back\\slash\\",
    "lone \udcff",
    "ÉTAPE ✓",
    "",
]


@pytest.mark.parametrize(
    "text",
    [
        "plain",
        "",
        'quotes " and \\ backslash',
        "tab\tcr\rvt\x0bbell\x07",
        "nul \x00 inside",
        "é ü ß — “typographic”",
        "emoji 🎉🚀 and CJK 日本語 中文",
        "lone surrogate \udcff and \ud800",
        "\x1b[31mANSI red\x1b[0m",
        "</script><b>markup</b>",
        "line\u2028separator\u2029",
    ],
)
@pytest.mark.parametrize("level", [None, "WARNING", *HOSTILE_LEVELS])
def test_encode_line_round_trips_through_json(text: str, level: str | None) -> None:
    data = spool.encode_line(7, spool.STDERR, text, level)
    assert data.endswith(b"\n") and data.count(b"\n") == 1  # one record, one line
    data.decode("utf-8")  # always valid UTF-8, whatever the text was
    record = json.loads(data)
    assert record["k"] == spool.LINE
    assert record["n"] == 7
    assert record["s"] == spool.STDERR
    assert record["m"] == text
    assert isinstance(record["t"], float)
    assert record.get("l") == level


@given(st.text(), st.text(), st.integers(1, 2**62))
def test_no_level_name_or_text_makes_more_or_other_than_one_line_record(
    level: str, text: str, seq: int
) -> None:
    data = spool.encode_line(seq, spool.LOG, text, level)
    assert data.count(b"\n") == 1 and data.endswith(b"\n")
    record = json.loads(data)
    assert record == {
        "k": spool.LINE,
        "n": seq,
        "t": record["t"],
        "s": spool.LOG,
        "l": level,
        "m": text,
    }


def test_encode_keeps_unknown_objects_and_bad_unicode_visible() -> None:
    data = spool.encode({"k": spool.END, "state": "FAILURE", "obj": object(), "s": "x\udcffy"})
    data.decode("utf-8")
    record = json.loads(data)
    assert record["obj"].startswith("<object object")
    assert record["s"] == "x\udcffy"


@given(st.text(), st.integers(1, 2**22), st.integers(0, 2**63))
def test_every_file_name_the_shim_writes_parses_back(task_id: str, pid: int, ns: int) -> None:
    name = spool.file_name(task_id, pid, ns)
    assert spool.parse_file_name(name) == (spool.safe_name(task_id), pid, ns)


@pytest.mark.parametrize(
    "name", ["t.jsonl", "t.1.jsonl", "t.x.1.jsonl", ".t.1.1.jsonl", "t.1.1.json", "a/b.1.1.jsonl"]
)
def test_names_the_shim_never_writes_do_not_parse(name: str) -> None:
    assert spool.parse_file_name(name) is None
