"""requirements/dev.lock, the dev and test set the README's commands install, matches
pyproject.toml: every requirement of every extra is pinned there, within its range."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers import REPO_ROOT

LOCK = REPO_ROOT / "requirements" / "dev.lock"
REFRESH = "uv pip compile --universal --python-version 3.11 --extra dev -o requirements/dev.lock"


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        pinned = re.match(r"^([A-Za-z0-9._-]+)==([^\s;]+)", line)
        if pinned:
            found[canonicalize_name(pinned[1])] = pinned[2]
    return found


def test_every_requirement_is_pinned_within_its_range() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    requirements = [Requirement(r) for r in project["dependencies"]]
    requirements += [Requirement(r) for extra in extras for r in extra]
    locked = pins()
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if name == "celery-tasklog":  # the extras' references to each other
            continue
        assert name in locked, f"{name} is not in {LOCK.name}: refresh it ({REFRESH})"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"{LOCK.name} pins {name}=={locked[name]}, outside {requirement}: refresh it"
        )


def test_the_readme_installs_from_the_lock_and_says_how_to_refresh_it() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert "pip install -q -r requirements/dev.lock -e . && .venv/bin/python -m pytest" in readme
    assert REFRESH in readme
    assert LOCK.read_text().count("==") > 50
