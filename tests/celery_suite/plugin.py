"""A pytest plugin for Celery's own integration suite: the shim installed on the app its session
worker runs (``celery_session_app``), as docs (README, celery.contrib.pytest) tell users to.

Loaded with ``-p tests.celery_suite.plugin`` by `tests.celery_suite`; it changes nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import capture_shim


@pytest.fixture(scope="session", autouse=True)
def _tasklog_capture(celery_session_app: Any) -> Iterator[None]:
    capture_shim.install(celery_session_app)
    yield
