"""The file-system rules, written once: what root may trust, how a file is replaced, retries.

Contract:
- `untrusted(st)` is the one rule for a file or directory that decides what root deploys
  (config file, lineage dirs and files, install dir, certbot's hooks dir, CA dirs): owned by
  root (or by us, for unprivileged tests) and not writable by group or others, else a reason
  in a few words. Whoever could write it could swap a key between our check and Postfix's
  read. Callers raise their own error class with that reason.
- `atomic_write(path, data, mode)` replaces `path` so that a reader sees the old bytes or
  the new, never a mix, and a crash leaves one of them: a temp file in the same directory,
  created 0600 with O_EXCL (key bytes are never readable by others, not for a moment), owned
  by root, given `mode`, written, fsynced, renamed over `path`, the directory fsynced. On any
  failure the temp file is removed and `path` is untouched. `temp_suffix` ends the temp
  name (`~` for certbot's hooks dir, whose readers skip such names).
- `attempts(timeout, interval)` paces a retry loop until a deadline (lock, settle, probe).
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

TEMP_INFIX = ".tmp."  # temp names: `.<name>.tmp.<pid>`; install.clean_temps removes them


def untrusted(st: os.stat_result) -> str | None:
    if st.st_uid not in (0, os.geteuid()):
        return f"is owned by uid {st.st_uid}, not root"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "is writable by group or others"
    return None


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable: without it a crash may bring back the old name."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path: Path, suffix: str = "") -> Path:
    return path.with_name(f".{path.name}{TEMP_INFIX}{os.getpid()}{suffix}")


def atomic_write(path: Path, data: bytes, mode: int, *, temp_suffix: str = "") -> None:
    tmp = temp_path(path, temp_suffix)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # left by a killed run that had our pid
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            if os.geteuid() == 0:
                os.fchown(fd, 0, 0)
            os.fchmod(fd, mode)  # the umask must not decide a key file's mode
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        # A full disk fails part way through the data: no partial file may stay.
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def attempts(timeout: float, interval: float) -> Iterator[bool]:
    """Yield once per try, `True` for the last one (the deadline has passed); sleep
    `interval` between tries. The first try always happens, even with no time left."""
    deadline = time.monotonic() + timeout
    while True:
        last = time.monotonic() >= deadline
        yield last
        if last:
            return
        time.sleep(interval)
