"""docs/ARCHITECTURE.md's module map names every module of the product, and no module that is
gone: a module added or renamed without a line saying what it owns fails here."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("capture_shim", "collector", "api", "tasklog/core", "tasklog/cli", "tasklog/demo")
#: Modules of the packages above that own nothing worth a line.
UNMAPPED = {"collector/__init__.py", "api/__init__.py", "tasklog/core/__init__.py"}
UNMAPPED |= {"tasklog/demo/__init__.py"}
OUTSIDE = {"tasklog/settings_doc.py"}


def mapped() -> list[str]:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    section = text[text.index("\n## Modules\n") :]
    return re.findall(r"^- `([\w/]+\.py)` — \S", section, flags=re.M)


def modules() -> set[str]:
    found = {
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in (ROOT / package).glob("*.py")
    }
    return found - UNMAPPED


def test_every_module_has_a_line_in_the_map() -> None:
    missing = sorted(modules() - set(mapped()))
    assert not missing, f"add a line to docs/ARCHITECTURE.md's module map for {missing}"


def test_the_map_names_only_modules_that_exist_and_each_once() -> None:
    lines = mapped()
    assert len(lines) == len(set(lines)), "a module has two lines in the map"
    gone = sorted(set(lines) - modules() - OUTSIDE)
    assert not gone, f"docs/ARCHITECTURE.md's module map names modules that are gone: {gone}"
