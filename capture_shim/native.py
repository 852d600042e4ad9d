"""The compiled part of the shim and the collector (`capture_shim._speedups`), if it is
there and was built from this code.

A C compiler builds it at install. A build left from older code (an editable install not
rebuilt after a pull) may lack a function this code calls, or take other arguments: it is
used only when its `ABI` number is this module's, else the Python code runs, after one
warning saying how to rebuild. Change `ABI` here and in `_speedups.c` together, whenever
what Python calls in C changes.
"""

from __future__ import annotations

import functools
import logging
from types import ModuleType

#: The interface between the Python code and `_speedups.c` (its `SPEEDUPS_ABI`).
ABI = 1


@functools.cache
def speedups() -> ModuleType | None:
    """The compiled module, or None: not built here, or built from other code."""
    try:
        from capture_shim import _speedups
    except ImportError:
        return None
    module: ModuleType = _speedups
    built = getattr(module, "ABI", None)
    if built != ABI:
        logging.getLogger("tasklog").warning(
            "capture_shim._speedups at %s was built from other code (interface %s, this code "
            "needs %d): using the Python code, which is slower. Rebuild it by installing the "
            "package again (pip install -e .).",
            module.__file__,
            built,
            ABI,
        )
        return None
    return module
