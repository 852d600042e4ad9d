"""CI-style log groups: the lines a block prints, folded under a title in the log view.

``with capture_shim.group("Fetch orders"): ...`` prints ``::group::Fetch orders`` before the
block and ``::endgroup::`` after it (also when it raises), the convention of CI logs (GitHub
Actions): a task may as well print the two markers itself. The markers go through
``sys.stdout``, so they are captured, ordered and stored like any other line.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

GROUP = "::group::"
ENDGROUP = "::endgroup::"


@contextmanager
def group(title: str) -> Iterator[None]:
    """Fold what the block prints under `title` (one line: whitespace runs become a space)."""
    sys.stdout.write(GROUP + " ".join(str(title).split()) + "\n")
    try:
        yield
    finally:
        sys.stdout.write(ENDGROUP + "\n")
