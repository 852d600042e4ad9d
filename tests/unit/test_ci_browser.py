"""CI runs the browser tests or fails: a missing Chromium is a skip on a laptop, a failure
under `.ci/run` (TASKLOG_REQUIRE_BROWSER=1)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.helpers import REPO_ROOT

#: One browser test; the browser fixture is its first, so nothing else starts before it.
ONE_BROWSER_TEST = "tests/browser/test_hostile.py::test_malformed_ansi_sequences_never_drop_a_line"


def run_browser_test(**env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "TASKLOG_REQUIRE_BROWSER"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", ONE_BROWSER_TEST, "-p", "no:cacheprovider", "-q", "-rs"],
        cwd=REPO_ROOT,
        env={**base, "TASKLOG_TEST_CHROMIUM": "/nonexistent/chromium", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_chromium_a_browser_test_skips_on_a_laptop() -> None:
    result = run_browser_test()
    assert result.returncode == 0, result.stdout[-2000:]
    assert re.search(r"SKIPPED .*no Chromium at /nonexistent/chromium", result.stdout)


def test_without_chromium_a_browser_test_fails_in_ci() -> None:
    result = run_browser_test(TASKLOG_REQUIRE_BROWSER="1")
    assert result.returncode == 1, result.stdout[-2000:]
    assert "no Chromium at /nonexistent/chromium" in result.stdout
    assert "TASKLOG_REQUIRE_BROWSER=1" in result.stdout
    assert "1 error" in result.stdout or "1 failed" in result.stdout


def test_ci_requires_the_browser_tests_before_running_them() -> None:
    script = (REPO_ROOT / ".ci" / "run").read_text()
    required = script.index("export TASKLOG_REQUIRE_BROWSER=1")
    assert required < script.index(".venv/bin/python -m pytest")
