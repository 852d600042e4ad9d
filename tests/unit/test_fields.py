"""Whatever a spool record holds, what the collector would send Postgres is storable."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from collector.batch import FileChunk, FileState
from collector.copydata import copy_data
from collector.plan import Run, plan, start_params, window
from collector.records import parse_record

BIGINT = 2**63 - 1
INT4 = 2**31 - 1

# Any JSON value, NaN, infinities, lone surrogates, NUL and huge integers included.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
)
#: Values known to break something somewhere (jsonb, bigint, int4, text, the line cap).
NASTY = [
    float("nan"),
    float("inf"),
    -float("inf"),
    2**70,
    -(2**70),
    10**30,
    2**63,
    2**31,
    "\x00",
    "\ud800",
    "a\x00\udfff",
    "x" * 20_000,
    [float("nan"), "\x00"],
    {"\ud800": float("inf")},
]
values = st.recursive(
    st.sampled_from(NASTY) | scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
FIELDS = (
    "name host worker pid parent_id root_id retries max_lines args kwargs t n s m l p msg "
    "state runtime exc_type exc_message traceback errors"
).split()


def records() -> st.SearchStrategy[list[bytes]]:
    def record(kind: str, extra: dict[str, Any]) -> bytes:
        base: dict[str, Any] = {"k": kind}
        if kind == "start":
            base |= {"v": 1, "task_id": "t"}
        if kind == "line":
            base |= {"n": 1, "t": 1.8e9, "s": "log", "m": "x"}
        if kind == "end":
            base |= {"state": "SUCCESS"}
        return json.dumps(base | extra).encode("utf-8", "surrogatepass")

    one = st.builds(
        record,
        st.sampled_from(["start", "line", "progress", "end"]),
        st.dictionaries(st.sampled_from(FIELDS), values, min_size=2, max_size=10),
    )
    return st.lists(one, min_size=1, max_size=6)


def storable(value: object) -> bool:
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return -BIGINT <= value <= BIGINT
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        value.encode("utf-8")  # raises on a lone surrogate
        return "\x00" not in value
    return True


@settings(max_examples=300, deadline=None)
@given(records())
def test_every_value_sent_to_postgres_is_storable(raws: list[bytes]) -> None:
    chunk = FileChunk(state=FileState(name="f.1.1.jsonl", inode=1), end_offset=0)
    for raw in raws:
        parse_record(chunk, raw)
    for line in chunk.lines:
        assert 0 < line.seq <= 2**40 and math.isfinite(line.t)
        assert len(line.message.encode("utf-8")) <= chunk.max_line_bytes + 48
    if chunk.start is None:
        chunk.start = {"task_id": "t"}
    params = start_params(chunk.start)
    for key, value in params.items():
        if key == "args":
            if value is not None:
                # jsonb has no NaN or Infinity and no NUL in text: allow_nan=False proves it.
                text = json.dumps(value.obj, allow_nan=False)
                assert "\\u0000" not in text
                text.encode("utf-8")
            continue
        assert storable(value), (key, value)
    assert params["pid"] is None or 0 < params["pid"] <= INT4
    assert 0 <= params["retries"] <= INT4
    head, tail = window(chunk.start.get("max_lines"))
    assert 1 <= head <= INT4 and 1 <= tail <= INT4
    run = Run(chunk, "t", 0, head, tail, 0)
    rows, trims, advances, ends, markers = plan([run])
    copy_data(rows)  # encodes as UTF-8 or raises
    for statement in (*trims, *advances, *ends, *markers):
        for key, value in statement.items():
            assert storable(value), (key, value)
    for end in ends:
        assert 0 <= end["errors"] <= INT4 and len(end["state"]) <= 32
