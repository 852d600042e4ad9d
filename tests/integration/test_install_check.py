"""`install()` is hard to get wrong (issue 24): a worker whose app nothing captures says so once.

Real workers of small app modules written for each test, and a real pytest run of
``celery.contrib.pytest`` (its ``celery_session_app`` and in-process ``celery_session_worker``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO_ROOT, ProcessFactory

WARNING = "was never given to capture_shim.install()"


def _worker(
    procs: ProcessFactory, module_dir: Path, module: str, redis_url: str, spool: Path
) -> str:
    argv = [sys.executable, "-m", "celery", "-A", module, "worker", "-P", "solo", "-l", "info",
            "--without-gossip", "--without-mingle", "--without-heartbeat"]  # fmt: skip
    env = {
        "PYTHONPATH": os.pathsep.join([str(module_dir), str(REPO_ROOT)]),
        "TASKLOG_REDIS_URL": redis_url,
        "TASKLOG_SPOOL_DIR": str(spool),
    }
    proc = procs.start(
        module, argv, env=env, ready=re.compile(r"\bready\.$", re.M), cwd=module_dir, timeout=60
    )
    return proc.log_text()


_APP = """
import os
from celery import Celery
import capture_shim
url = os.environ["TASKLOG_REDIS_URL"]
app = Celery("{main}", broker=url, backend=url)
other = Celery("other", broker=url, backend=url)
{install}
@app.task
def job():
    print("hello")
"""


def test_a_worker_whose_app_was_never_installed_warns_once(
    procs: ProcessFactory, tmp_path: Path, redis_url: str, spool_dir: Path
) -> None:
    cases = {
        "forgot": "",  # imports capture_shim, never calls install()
        "wrongapp": "capture_shim.install(other)",  # installs another app than the worker's
        "right": "capture_shim.install(app)",
    }
    for main, install in cases.items():
        (tmp_path / f"{main}.py").write_text(_APP.format(main=main, install=install))
    logs = {main: _worker(procs, tmp_path, main, redis_url, spool_dir) for main in cases}
    assert logs["forgot"].count(WARNING) == 1, logs["forgot"]
    assert f"this worker's app 'forgot' {WARNING}" in logs["forgot"]
    assert logs["wrongapp"].count(WARNING) == 1, logs["wrongapp"]
    assert "(installed: 'other')" in logs["wrongapp"]
    assert WARNING not in logs["right"], logs["right"]


_CONFTEST = """
import pytest
import capture_shim

pytest_plugins = ("celery.contrib.pytest",)


@pytest.fixture(scope="session")
def celery_config():
    return {"broker_url": "memory://", "result_backend": "cache+memory://"}


"""

#: What the docs show: the app the session worker runs is `celery_session_app`.
_RIGHT = """
@pytest.fixture(scope="session", autouse=True)
def _tasklog(celery_session_app):
    capture_shim.install(celery_session_app)
"""

#: The mistake: `celery_app` is another app than the one the session worker runs.
_WRONG = """
@pytest.fixture(autouse=True)
def _tasklog(celery_app):
    capture_shim.install(celery_app)
"""

_TEST = """
def test_job(celery_session_app, celery_session_worker):
    @celery_session_app.task(name="t.job")
    def job():
        print("captured from the session worker")
        return 1
    celery_session_worker.reload()
    assert job.delay().get(timeout=30) == 1
"""


def _pytest_run(project: Path, fixture: str, spool: Path) -> tuple[str, list[Path]]:
    project.mkdir()
    spool.mkdir(exist_ok=True)
    (project / "conftest.py").write_text(_CONFTEST + fixture)
    (project / "test_job.py").write_text(_TEST)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TASKLOG_")},
        "PYTHONPATH": str(REPO_ROOT),
        "TASKLOG_SPOOL_DIR": str(spool),
    }
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(project)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout + run.stderr, sorted(spool.glob("*.jsonl"))


def test_celery_contrib_pytest_captures_the_session_app_and_warns_for_another(
    tmp_path: Path,
) -> None:
    """The case the docs show: `install(celery_session_app)`, the app the session worker runs.
    Installing the function-scoped `celery_app` instead captures nothing, and says so once."""
    right, stored = _pytest_run(tmp_path / "right", _RIGHT, tmp_path / "right-spool")
    assert WARNING not in right, right
    # The job's run, and the ping the session worker sends itself when it starts.
    ours = [f for f in stored if b"captured from the session worker" in f.read_bytes()]
    assert len(ours) == 1, stored
    wrong, nothing = _pytest_run(tmp_path / "wrong", _WRONG, tmp_path / "wrong-spool")
    assert wrong.count(WARNING) == 1, wrong
    assert nothing == []
