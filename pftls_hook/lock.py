"""One deploy at a time, across the deploy hook, the daemon and manual commands.

Contract: `with deploy_lock(path, timeout):` holds an exclusive `flock` on `path` or raises
`EnvironmentRefusedError` after `timeout` seconds. The kernel drops a flock when its holder
dies, so a SIGKILLed run never leaves a stale lock. This is our own lock file: certbot's
`.certbot.lock` is never taken (a certbot starting meanwhile would die).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from pftls_hook.errors import EnvironmentRefusedError
from pftls_hook.fsutil import attempts

_POLL_SECONDS = 0.05


@contextlib.contextmanager
def deploy_lock(path: Path, timeout: float) -> Iterator[None]:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise EnvironmentRefusedError(f"{path}: cannot open lock file: {exc.strerror}") from None
    try:
        for last in attempts(timeout, _POLL_SECONDS):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if last:
                    raise EnvironmentRefusedError(
                        f"{path}: another deploy still holds the lock after {timeout:g} s"
                    ) from None
        yield
    finally:
        os.close(fd)
