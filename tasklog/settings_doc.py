"""The settings table of the README and docs/deploy.md, generated from the settings classes.

``python -m tasklog.settings_doc`` rewrites the table between the markers in those files; a
unit test fails when they drift.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from tasklog.core.settings import ENV_PREFIX, Common

BEGIN = "<!-- BEGIN SETTINGS"
END = "<!-- END SETTINGS -->"
FILES = ("README.md", "docs/deploy.md")


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return "(this host's name)"
    value = field.default
    if value is None or value is PydanticUndefined:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def table() -> str:
    from api.settings import ApiSettings
    from capture_shim.config import DOCUMENTED
    from collector.settings import CollectorSettings

    # variable -> [default, readers, description], in order of first appearance
    rows: dict[str, list[str]] = {
        name: [default, "worker (shim)", text] for name, default, text in DOCUMENTED
    }
    for cls, reader in (
        (Common, "collector, api"),
        (CollectorSettings, "collector"),
        (ApiSettings, "api"),
    ):
        own = (
            cls.model_fields
            if cls is Common
            else {k: v for k, v in cls.model_fields.items() if k not in Common.model_fields}
        )
        for name, field in own.items():
            env = ENV_PREFIX + name.upper()
            if env in rows:
                rows[env][1] += f", {reader}"
            else:
                rows[env] = [_default(field), reader, field.description or ""]
    lines = ["| variable | default | read by | what |", "|---|---|---|---|"]
    lines += [
        f"| `{env}` | {f'`{d}`' if d else ''} | {r} | {t} |" for env, (d, r, t) in rows.items()
    ]
    return "\n".join(lines)


def render(text: str) -> str:
    start = text.index(BEGIN)
    body_start = text.index("-->", start) + 3
    end = text.index(END, body_start)
    return f"{text[:body_start]}\n{table()}\n{text[end:]}"


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    for name in FILES:
        path = root / name
        path.write_text(render(path.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"wrote the settings table into {name}", file=sys.stderr)


if __name__ == "__main__":
    main()
