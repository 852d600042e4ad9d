"""The bottom layer: what every component and the CLI share.

Constants that cross process boundaries, the project's errors, the settings base, the two
boundaries (`db` for Postgres, `live` for Redis and its message shapes in `messages`), text made
safe for a terminal, and small process helpers. Nothing here imports a component
(`capture_shim`, `collector`, `api`) or the CLI; `capture_shim` may import the modules that need
only the standard library (`constants`, `errors`, `process`).
"""

from __future__ import annotations

__version__ = "0.1.0"
