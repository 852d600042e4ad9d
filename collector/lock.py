"""One collector per spool directory: a lock file outside the spool says which one.

A second collector on the same spool would store every line twice; `spool_lock` makes it a
one-line error instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from tasklog.core.errors import ConfigError


@contextlib.contextmanager
def spool_lock(spool_dir: Path, lock_dir: Path) -> Iterator[None]:
    """One collector per spool directory: a second one would store every line twice.

    The lock lives outside the spool (whose writers must not be able to take or replace it),
    named from the spool directory's real path: two collectors given one directory under two
    names still exclude each other.
    """
    if not spool_dir.is_dir():
        raise ConfigError(f"TASKLOG_SPOOL_DIR: {spool_dir} is not a directory")
    if not lock_dir.is_dir():
        raise ConfigError(f"TASKLOG_LOCK_DIR: {lock_dir} is not a directory")
    path = lock_dir / lock_name(spool_dir)
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise ConfigError(f"TASKLOG_LOCK_DIR: cannot open {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            # In a shared temp dir, another user could have made it first to hold it.
            raise ConfigError(
                f"TASKLOG_LOCK_DIR: {path} is not a regular file of this user; "
                "remove it or set TASKLOG_LOCK_DIR to a directory of the collector's own"
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise ConfigError(
                f"another collector (pid {other}) already follows {spool_dir}; "
                "run one collector per spool directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def lock_name(spool_dir: Path) -> str:
    """The lock file's name for a spool directory, from its real path."""
    real = os.path.realpath(spool_dir).encode("utf-8", "surrogateescape")
    return f"tasklog-collector-{hashlib.sha256(real).hexdigest()[:24]}.lock"
