"""celery-tasklog: per-task stdout/stderr capture for Celery, stored in Postgres, streamed live.

This package holds what the three programs share: the `tasklog` command, the names that cross
process boundaries (`constants`), the settings base and the embedded servers used by the demo
and the test suite.
"""

from __future__ import annotations

__version__ = "0.1.0"
