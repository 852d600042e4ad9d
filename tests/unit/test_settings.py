"""Settings: a bad value is one line naming the variable; secrets never printed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from collector.settings import CollectorSettings
from tasklog.core.errors import ConfigError
from tasklog.core.settings import load, mask_url


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKLOG_BATCH_LINES", "many")
    with pytest.raises(ConfigError) as info:
        load(CollectorSettings)
    message = str(info.value)
    assert message.startswith("TASKLOG_BATCH_LINES:")
    assert "many" in message and "\n" not in message


def test_out_of_range_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKLOG_RETENTION_DAYS", "0")
    with pytest.raises(ConfigError, match="TASKLOG_RETENTION_DAYS"):
        load(CollectorSettings)


def test_passwords_are_masked() -> None:
    assert mask_url("postgresql://app:s3cret@db:5432/x") == "postgresql://app:********@db:5432/x"
    assert mask_url("redis://cache:6379/0") == "redis://cache:6379/0"


def run_tasklog(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tasklog", *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        timeout=60,
    )


def test_cli_reports_a_bad_setting_without_a_traceback(tmp_path: object) -> None:
    result = run_tasklog(
        "collector",
        env={"TASKLOG_MAX_LINES": "x", "TASKLOG_BATCH_DELAY": "1", "TASKLOG_DEBOUNCE_MS": "-5"},
    )
    assert result.returncode == 2
    assert result.stderr.startswith("tasklog: TASKLOG_DEBOUNCE_MS:")
    assert "Traceback" not in result.stderr


def test_cli_config_masks_secrets() -> None:
    result = run_tasklog("config", env={"TASKLOG_DATABASE_URL": "postgresql://u:hunter2@h/db"})
    assert result.returncode == 0, result.stderr
    assert "TASKLOG_DATABASE_URL=postgresql://u:********@h/db" in result.stdout
    assert "hunter2" not in result.stdout


def test_collector_without_database_url_says_so() -> None:
    result = run_tasklog("collector", env={})
    assert result.returncode == 2
    assert "TASKLOG_DATABASE_URL is not set" in result.stderr
