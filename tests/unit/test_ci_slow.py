"""Where CI runs the slow tests, said the same way by `.ci/run`, the `slow` marker's description
(pyproject.toml) and docs/RELIABILITY.md."""

from __future__ import annotations

import re
import tomllib

from tests.helpers import REPO_ROOT

README_PHASE = "the README's test command"
MACHINE_PHASE = "the Postgres-facing integration tests against the machine's Postgres"
MACHINE_SELECTION = '-m "not slow and not browser"'


def phase_blocks() -> dict[str, str]:
    """Each phase of .ci/run (its name, as `phase "..."` prints it) and the script up to the
    next phase."""
    script = (REPO_ROOT / ".ci" / "run").read_text()
    parts = re.split(r'^phase "([^"]+)"$', script, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_ci_runs_the_slow_tests_in_the_readmes_test_command_alone() -> None:
    phases = phase_blocks()
    (readme,) = [name for name in phases if name.startswith(README_PHASE)]
    # The README's command, word for word: `python -m pytest` selects no marker (its end is
    # checked in test_ci_required), so the slow tests run there.
    assert 'bash -euo pipefail -c "$readme_command"' in phases[readme]
    assert MACHINE_SELECTION in phases[MACHINE_PHASE]
    # No other phase selects or leaves out tests by marker.
    selects = re.compile(r"pytest[^\n]* -m [\"']")
    assert [name for name, block in phases.items() if selects.search(block)] == [MACHINE_PHASE]


def test_the_slow_marker_and_reliability_say_which_ci_phase_runs_them() -> None:
    pytest_options = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    (slow,) = [m for m in pytest_options["ini_options"]["markers"] if m.startswith("slow:")]
    reliability = " ".join((REPO_ROOT / "docs" / "RELIABILITY.md").read_text().split())
    for text in (slow, reliability):
        assert f'phase "{README_PHASE}"' in text
        assert f'phase "{MACHINE_PHASE}" leaves them out' in text
        assert f"(`{MACHINE_SELECTION}`" in text
    assert "second step" not in slow + reliability
