"""The settings tables in the docs are the ones the settings classes generate."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasklog import settings_doc

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", settings_doc.FILES)
def test_settings_table_is_up_to_date(name: str) -> None:
    text = (ROOT / name).read_text(encoding="utf-8")
    assert settings_doc.render(text) == text, (
        f"{name} is out of date: run `python -m tasklog.settings_doc`"
    )


def test_every_setting_is_in_the_table() -> None:
    from api.settings import ApiSettings
    from collector.settings import CollectorSettings

    table = settings_doc.table()
    for cls in (CollectorSettings, ApiSettings):
        for name in cls.model_fields:
            assert f"`TASKLOG_{name.upper()}`" in table
