"""`tasklog.core.terminal`: what a task prints reaches the terminal with its colours and nothing
that a terminal would act on."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasklog.core.terminal import for_terminal, json_for_terminal

ESC = "\x1b"
SGR = re.compile(r"\x1b\[[0-9;:]*m")


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        # Colours stay, malformed ones included (the terminal ignores what it cannot parse).
        ("\x1b[31mred\x1b[0m", "\x1b[31mred\x1b[0m"),
        ("\x1b[1;38;5;208mx\x1b[m", "\x1b[1;38;5;208mx\x1b[m"),
        ("\x1b[38:2::255:0:0mtrue\x1b[0m", "\x1b[38:2::255:0:0mtrue\x1b[0m"),
        ("\x1b[38;5mhalf", "\x1b[38;5mhalf"),
        ("tab\tstays", "tab\tstays"),
        # OSC 52 (clipboard) and OSC 0 (title), BEL- and ST-terminated.
        ("a\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\x07b", "ab"),
        ("a\x1b]0;owned\x1b\\b", "ab"),
        ("a\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\b", "alinkb"),
        # DCS (DECRQSS, tmux passthrough), SOS, PM, APC.
        ("a\x1bP$qm\x1b\\b", "ab"),
        ("a\x1bPtmux;\x1b\x1b]52;c;eA==\x07\x1b\\b", "atmux;b"),
        ("a\x1bXsos\x1b\\b\x1b^pm\x1b\\c\x1b_apc\x1b\\d", "abcd"),
        # CSI that moves the cursor, erases, scrolls, asks the terminal to answer.
        ("done\x1b[2K\x1b[1Afake prompt$ ", "donefake prompt$ "),
        ("\x1b[H\x1b[2Jcleared", "cleared"),
        ("\x1b[6n\x1b[c\x1b[>0c\x1b[?1049h\x1b[?25l", ""),
        ("\x1b[?1m\x1b[>4;2m", ""),  # private parameters ending in m are not colours
        ("\x1b[31 m", ""),  # an intermediate byte: not SGR either
        # Plain ESC sequences: reset, save/restore cursor, charsets, line drawing.
        ("\x1bcreset\x1b7\x1b8\x1b(0q\x1b(B\x1b#8", "resetq"),
        # The 8-bit C1 forms, whole sequences and lone.
        ("a\x9b2Jb", "ab"),
        ("a\x9d0;title\x9cb", "ab"),
        ("a\x90$qm\x9cb", "ab"),
        ("a\x85\x8d\x9c\x9fb", "ab"),
        # Characters that overwrite the line's own prefix, and the other C0 controls.
        ("12:00:00 ok\rHACKED", "12:00:00 okHACKED"),
        ("password: hunter2\x08\x08\x08\x08\x08\x08\x08*******", "password: hunter2*******"),
        ("bell\x07 vt\x0b ff\x0c nul\x00 del\x7f nl\n.", "bell vt ff nul del nl."),
        # Truncated sequences lose their introducer; what follows stays visible, inert.
        ("cut \x1b[12", "cut 12"),
        ("cut \x1b]0;no terminator", "cut 0;no terminator"),
        ("lone \x1b", "lone "),
        ("nested \x1b\x1b[31mred", "nested \x1b[31mred"),
        ("\x1b\x00[31mx", "[31mx"),
        # Text without controls comes back as the very same object.
        ("plain ünïcödé 🎉 \u202e", "plain ünïcödé 🎉 \u202e"),
    ],
)
def test_for_terminal(raw: str, shown: str) -> None:
    assert for_terminal(raw) == shown


def test_text_without_controls_is_not_copied() -> None:
    text = "nothing to do " * 100
    assert for_terminal(text) is text


def _only_sgr_and_tab(text: str) -> bool:
    rest = SGR.sub("", text)
    return not any((ord(c) < 0x20 and c != "\t") or 0x7F <= ord(c) <= 0x9F for c in rest)


# Text built from the pieces attackers use, so the property meets real sequences often.
_pieces = st.sampled_from([*ESC + "[]P\\\x07\x9b\x9c\x9d\x90;05mH?\r\b\t\n\x00\x7fa é"])


@given(st.lists(_pieces | st.characters(), max_size=60).map("".join))
def test_nothing_but_sgr_and_tab_survives(text: str) -> None:
    shown = for_terminal(text)
    assert _only_sgr_and_tab(shown), repr(shown)
    # Idempotent: filtering what was shown changes nothing.
    assert for_terminal(shown) == shown


@given(st.text())
def test_json_for_terminal_is_the_same_json(text: str) -> None:
    dumped = json.dumps({"message": text}, ensure_ascii=False)
    safe = json_for_terminal(dumped)
    assert json.loads(safe) == {"message": text}
    assert not any(0x7F <= ord(c) <= 0x9F or ord(c) < 0x20 for c in safe)
