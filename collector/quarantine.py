"""Quarantine: spool files Postgres refuses are moved aside, out of the collector's way.

A file lands here when a record of it still fails in Postgres after `collector.fields` made it
storable, or when its name cannot be stored (not UTF-8). It is renamed, not copied: the
quarantine directory must be on the spool's file system (by default `quarantine` inside the
spool directory, which the collector's scans do not enter). The directory is the collector's
own (mode 0700): a worker that could read it would read other tasks' output.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def quarantine(spool_dir: Path, name: str, target: Path) -> str:
    """Move `name` from the spool into `target`; says where it went, or why it stayed."""
    try:
        target.mkdir(mode=0o700, exist_ok=True)
        dst = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        return f"left in place, ignored until restart (cannot use {target}: {exc.strerror})"
    try:
        st = os.fstat(dst)
        if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            # Someone else made it (it could be in the spool, which workers write): moving
            # files there would hand them other tasks' output.
            return (
                f"left in place, ignored until restart ({target} is not the collector's own "
                "directory, or others may write it)"
            )
        src = os.open(spool_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.rename(name, name, src_dir_fd=src, dst_dir_fd=dst)
        except OSError as exc:
            return f"left in place, ignored until restart (cannot move it: {exc.strerror})"
        finally:
            os.close(src)
    finally:
        os.close(dst)
    return f"moved to {target}"
