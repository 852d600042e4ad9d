"""Task output made safe to print on a terminal.

A task's output is written by whoever wrote the task, and a terminal obeys what it receives:
OSC 52 writes the clipboard, OSC 0 sets the window title, CSI sequences move the cursor and
erase what was printed before (a fake prompt, a hidden line), DCS reaches terminal-specific
features, `\\r` and backspace overwrite the line's own prefix. `for_terminal` keeps SGR (the
colours and bold that tasks use on purpose) and removes every other escape sequence and
control character; only tab survives among the controls.

The 8-bit C1 forms (U+009B CSI, U+009D OSC, U+0090 DCS, ...) are removed with their whole
sequence too: some terminals act on them even when they arrive UTF-8 encoded.
"""

from __future__ import annotations

import re

# Order matters: SGR first (kept), then the sequences that carry a string up to a terminator,
# then the other CSI and ESC sequences, then any control character left on its own. A string
# sequence without its terminator is not matched whole: its introducer falls to the later
# alternatives and is removed, and the rest shows as plain text rather than vanishing.
_SEQUENCE = re.compile(
    r"""
    (?P<sgr>\x1b\[[0-9;:]*m)
    | (?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)
    | (?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]
    | \x1b[\x20-\x2f]*[\x30-\x7e]
    | [\x00-\x08\x0a-\x1f\x7f-\x9f]
    """,
    re.VERBOSE,
)
# Every character that can start something to remove: text without one is returned as is.
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def _keep_sgr(match: re.Match[str]) -> str:
    return match.group("sgr") or ""


def for_terminal(text: str) -> str:
    """`text` with SGR sequences and tabs kept, every other control and escape removed."""
    if _UNSAFE.search(text) is None:
        return text
    return _SEQUENCE.sub(_keep_sgr, text)


_C1 = re.compile(r"[\x7f-\x9f]")


def json_for_terminal(json_text: str) -> str:
    """JSON text with DEL and the C1 controls written as `\\u00XX` escapes.

    `json.dumps(..., ensure_ascii=False)` escapes the C0 controls but leaves these raw. The
    escaped form decodes to the very same string, so the JSON stays exact.
    """
    return _C1.sub(lambda m: f"\\u{ord(m.group()):04x}", json_text)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escaped(text: str) -> str:
    """`text` for one cell of a table: every control character (C0, DEL, C1, the escape that
    starts a terminal sequence included) shown as a visible ``\\xNN`` escape."""
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
