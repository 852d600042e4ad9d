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
    assert mask_url("postgresql://db/x") == "postgresql://db/x"
    assert mask_url("redis://:s3cret@cache:6379/0") == "redis://:********@cache:6379/0"
    assert mask_url("postgresql://app@db/x") == "postgresql://app@db/x"  # no password: none shown


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        # query-string form, which libpq and redis-py both read
        ("postgresql://u@h/db?password=s3cret", "postgresql://u@h/db?password=********"),
        ("redis://h:6379/0?password=s3cret", "redis://h:6379/0?password=********"),
        (
            "postgresql://u@h/db?sslmode=require&PassWord=s3cret&application_name=x",
            "postgresql://u@h/db?sslmode=require&PassWord=********&application_name=x",
        ),
        ("postgresql://u@h/db?pass%77ord=s3cret", "postgresql://u@h/db?pass%77ord=********"),
        ("postgresql://u@h/db?sslpassword=s3cret", "postgresql://u@h/db?sslpassword=********"),
        (
            "postgresql:///db?host=/run/pg&password=s3cret#x",
            "postgresql:///db?host=/run/pg&password=********",
        ),
        # libpq keyword form
        ("host=h dbname=x password=s3cret", "host=h dbname=x password=********"),
        ("host=h password = 's3 cret' user=u", "host=h password=******** user=u"),
        # passwords holding what ends a URL's parts
        ("postgresql://u:s3@cret@h/db", "postgresql://u:********@h/db"),
        ("postgresql://u:s3/cret@h/db", "postgresql://u:********@h/db"),
        ("postgresql://u:s3?cret@h/db", "postgresql://u:********@h/db"),
        # not a connection string: hidden whole (a token, or garbage)
        ("s3cret-token-s3cret", "********"),
        ("s3cret==", "********"),
        ("user=u s3cret", "********"),
    ],
)
def test_url_passwords_are_masked_in_every_form(given: str, shown: str) -> None:
    assert mask_url(given) == shown
    assert "s3" not in mask_url(given)


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


def test_cli_config_masks_query_string_passwords() -> None:
    result = run_tasklog(
        "config",
        "api",
        env={
            "TASKLOG_DATABASE_URL": "postgresql://u@h/db?password=hunter2",
            "TASKLOG_REDIS_URL": "redis://h:6379/0?password=hunter3",
        },
    )
    assert result.returncode == 0, result.stderr
    assert "TASKLOG_DATABASE_URL=postgresql://u@h/db?password=********" in result.stdout
    assert "TASKLOG_REDIS_URL=redis://h:6379/0?password=********" in result.stdout
    assert "hunter" not in result.stdout


def test_cli_config_masks_secrets() -> None:
    result = run_tasklog("config", env={"TASKLOG_DATABASE_URL": "postgresql://u:hunter2@h/db"})
    assert result.returncode == 0, result.stderr
    assert "TASKLOG_DATABASE_URL=postgresql://u:********@h/db" in result.stdout
    assert "hunter2" not in result.stdout


def test_collector_without_database_url_says_so() -> None:
    result = run_tasklog("collector", env={})
    assert result.returncode == 2
    assert "TASKLOG_DATABASE_URL is not set" in result.stderr
