"""celery-tasklog: per-task stdout/stderr capture for Celery, stored in Postgres, streamed live.

Three layers, dependencies pointing down (the contracts are in pyproject.toml):

- `tasklog.cli` (the `tasklog` command), `tasklog.demo` (the local dev stack: demo app,
  embedded servers) and `tasklog.settings_doc` on top;
- the components `capture_shim`, `collector` and `api` in the middle;
- `tasklog.core` at the bottom: constants, errors, settings base, the Postgres and Redis
  boundaries.

Nothing else lives at this level (a test says so), so every module falls under a contract.
"""

from __future__ import annotations

from tasklog.core import __version__

__all__ = ["__version__"]
