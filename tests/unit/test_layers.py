"""The `tasklog` package holds the layers the import-linter contracts name, and nothing else.

A module added at `tasklog/` level would fall under no contract: it could import anything and
be imported by anything. It goes into `tasklog.core` (shared by everyone), `tasklog.cli` or
`tasklog.demo` instead.
"""

from __future__ import annotations

import pkgutil
import tomllib
from pathlib import Path

import tasklog

ROOT = Path(__file__).resolve().parents[2]


def test_tasklog_holds_only_its_layers() -> None:
    children = {module.name for module in pkgutil.iter_modules(tasklog.__path__)}
    assert children == {"core", "cli", "demo", "settings_doc", "__main__"}


def test_every_child_of_tasklog_is_in_the_layers_contract() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    named = {name.strip() for layer in layers for name in layer.replace(":", "|").split("|")}
    for module in pkgutil.iter_modules(tasklog.__path__):
        if module.name != "__main__":
            assert f"tasklog.{module.name}" in named, module.name
