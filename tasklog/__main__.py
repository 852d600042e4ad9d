from __future__ import annotations

from tasklog.cli import main

main()
