"""import-linter contract types of our own (`[tool.importlinter] contract_types`).

`allow_list`: the modules of `source_modules` import nothing but each other, the standard
library and `allowed_modules` (a package allows its submodules). The capture shim runs inside
every Celery worker: what it may import is a short list, and anything new fails CI until it
is added to that list on purpose. A deny-list would let a new dependency in silently.
"""

from __future__ import annotations

import sys
from typing import Any

import grimp
from importlinter import Contract, ContractCheck, fields, output


def _within(module: str, packages: set[str]) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)


class AllowListContract(Contract):
    type_name = "allow_list"

    source_modules = fields.ListField(subfield=fields.ModuleField())
    allowed_modules = fields.ListField(subfield=fields.ModuleField())

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        sources = {module.name for module in self.source_modules}  # type: ignore[attr-defined]
        allowed = {module.name for module in self.allowed_modules}  # type: ignore[attr-defined]
        importers = set(sources)
        for source in sources:
            importers |= graph.find_descendants(source)
        violations: list[dict[str, Any]] = []
        for importer in sorted(importers):
            for imported in sorted(graph.find_modules_directly_imported_by(importer)):
                if _within(imported, sources) or _within(imported, allowed):
                    continue
                if imported.split(".")[0] in sys.stdlib_module_names:
                    continue
                details = graph.get_import_details(importer=importer, imported=imported)
                lines = ", ".join(str(detail["line_number"]) for detail in details) or "?"
                violations.append({"importer": importer, "imported": imported, "lines": lines})
        return ContractCheck(kept=not violations, metadata={"violations": violations})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for violation in check.metadata["violations"]:
            output.print_error(
                f"{violation['importer']} imports {violation['imported']} "
                f"(l.{violation['lines']}), which is not on the allow list",
                bold=False,
            )
            output.new_line()
