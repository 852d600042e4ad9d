"""Shared names have one owner: `tasklog.core.constants`. Nothing else spells them out."""

from __future__ import annotations

import re
from importlib import resources

import pytest
from celery import states as celery_states

from tasklog.core import constants, db
from tasklog.core.constants import ALL_STATES, FINISHED_STATES, SQL_NAMES, STATES

_QUOTED_WORD = re.compile(r"""['"]([A-Z][A-Z_]{3,})['"]""")
_LITERAL = re.compile(r"(:?)'([^']*)'")
_COMMENT = re.compile(r"--[^\n]*")
_STATE_LIST = re.compile(r"IN \(([^)]*)\)")
#: Quoted upper-case words SQL has that are not task states (trigger operations).
_SQL_WORDS = {"INSERT", "UPDATE", "DELETE", "TRUNCATE"}


def _files(package: str, suffix: str) -> dict[str, str]:
    root = resources.files(package)
    return {
        f"{package}/{entry.name}": entry.read_text(encoding="utf-8")
        for entry in root.iterdir()
        if entry.name.endswith(suffix)
    }


def test_every_state_a_celery_task_ends_in_is_known_and_finished() -> None:
    assert set(celery_states.ALL_STATES) | {celery_states.IGNORED} <= ALL_STATES
    ends = {"SUCCESS", "FAILURE", "REVOKED", "IGNORED", "REJECTED"}  # what the shim's end has
    assert ends | {constants.LOST} == FINISHED_STATES
    assert len(STATES) == len(ALL_STATES)


def _queries() -> dict[str, str]:
    """Every ``.sql`` file of named queries (loaded by `tasklog.core.db.queries`)."""
    return {
        **_files("collector.sql", ".sql"),
        **_files("api.sql", ".sql"),
        **_files("tasklog", ".sql"),
        **_files("tasklog.demo", ".sql"),
    }


def test_queries_write_states_and_streams_as_shared_names() -> None:
    """A state or a stream in a query is ``:'NAME'``, filled in from `SQL_NAMES` at load."""
    values = set(SQL_NAMES.values()) | set(SQL_NAMES)
    for name, text in _queries().items():
        code = _COMMENT.sub("", text)
        for colon, word in _LITERAL.findall(code):
            if colon:
                assert word in SQL_NAMES, f"{name}: :'{word}' is not in SQL_NAMES"
            else:
                assert word not in values, f"{name}: '{word}' re-types a shared name"
        package, _, filename = name.partition("/")
        loaded = db.queries(package, filename)
        assert not any(":'" in query for query in loaded.values()), name


def test_loaded_queries_hold_the_values_of_the_shared_names() -> None:
    assert db.render("state = :'LOST' AND stream = :'MARKER' AND x::text = 'y'") == (
        f"state = '{constants.LOST}' AND stream = '{constants.MARKER}' AND x::text = 'y'"
    )
    with pytest.raises(KeyError, match="DONE"):
        db.render("state = :'DONE'")


def test_migrations_name_only_known_states_and_0003_holds_the_finished_set() -> None:
    sql = _files("collector.migrations", ".sql")
    for name, text in sql.items():
        for word in set(_QUOTED_WORD.findall(text)) - _SQL_WORDS:
            assert word in ALL_STATES, f"{name}: {word!r} is not a state of tasklog.core.constants"
        lists = [m for m in _STATE_LIST.findall(text) if set(_QUOTED_WORD.findall(m)) - _SQL_WORDS]
        if name.endswith("0003_task_states.sql"):
            (spelled,) = lists
            assert set(_QUOTED_WORD.findall(spelled)) == FINISHED_STATES
        else:
            assert not lists, f"{name} spells out a set of states: use tasklog_finished(state)"


def test_scripts_and_templates_take_state_names_from_the_page() -> None:
    sources = {**_files("api.static", ".js"), **_files("api.templates", ".html")}
    for name, text in sources.items():
        spelled = set(_QUOTED_WORD.findall(text)) & ALL_STATES
        assert not spelled, f"{name} spells out {spelled}: read window.tasklogConstants"


def test_task_id_limit_is_in_utf8_bytes() -> None:
    limit = constants.MAX_TASK_ID_BYTES
    assert constants.task_id_problem("x" * limit) is None
    assert constants.task_id_problem("é" * (limit // 2)) is None
    assert constants.task_id_problem("é" * (limit // 2) + "x") == (
        f"is {limit + 1} bytes long (at most {limit})"
    )
    assert constants.task_id_problem("") == "is empty"
    assert constants.task_id_problem("a\x00b") == "contains a NUL character"
    assert constants.task_id_problem("\udcff") == "is not valid Unicode"
