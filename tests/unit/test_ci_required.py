"""CI runs every group of tests or fails: a missing tool (Chromium, kubectl, ...) is a skip on
a laptop, a failure under `.ci/run` (TASKLOG_REQUIRE_BROWSER=1, TASKLOG_REQUIRE_TOOLS=1; "1"
means on, any other value off)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.helpers import REPO_ROOT

#: One browser test; the browser fixture is its first, so nothing else starts before it.
ONE_BROWSER_TEST = "tests/browser/test_hostile.py::test_malformed_ansi_sequences_never_drop_a_line"


def run_browser_test(**env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TASKLOG_REQUIRE_")}
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


def test_ci_requires_every_group_before_running_the_readmes_test_command() -> None:
    script = (REPO_ROOT / ".ci" / "run").read_text()
    required = script.index("export TASKLOG_REQUIRE_BROWSER=1 TASKLOG_REQUIRE_TOOLS=1")
    assert required < script.index('bash -euo pipefail -c "$readme_command"')
    # .ci/run takes the README's command from the line after this heading, word for word.
    readme = (REPO_ROOT / "README.md").read_text().splitlines()
    command = readme[
        readme.index(
            "# 2. the test suite (real Postgres, Redis and Celery workers;"
            " embedded unless told otherwise)"
        )
        + 1
    ]
    assert command.startswith("python3 -m venv .venv && ")
    assert command.endswith(" && .venv/bin/python -m pytest")


#: A test that skips when kubectl is not on the PATH.
KUBECTL_TEST = "tests/unit/test_kubernetes.py::test_kubectl_kustomize_renders_the_same_objects"


def run_without_kubectl(**env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TASKLOG_REQUIRE_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", KUBECTL_TEST, "-p", "no:cacheprovider", "-q", "-rs"],
        cwd=REPO_ROOT,
        env={**base, "PATH": os.path.dirname(sys.executable), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_a_tool_a_test_skips_on_a_laptop() -> None:
    for value in (None, "0", "true", "yes"):  # only "1" means on
        result = run_without_kubectl(**({} if value is None else {"TASKLOG_REQUIRE_TOOLS": value}))
        assert result.returncode == 0, (value, result.stdout[-2000:])
        assert "1 skipped" in result.stdout and "kubectl is not installed" in result.stdout


def test_without_a_tool_a_test_fails_in_ci() -> None:
    result = run_without_kubectl(TASKLOG_REQUIRE_TOOLS="1")
    assert result.returncode == 1, result.stdout[-2000:]
    assert "skipped (kubectl is not installed), and TASKLOG_REQUIRE_TOOLS=1" in result.stdout
    assert "1 error" in result.stdout or "1 failed" in result.stdout
