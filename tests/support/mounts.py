"""Small file systems that fail on purpose: a tmpfs that fills up, a read-only remount, a
read-only bind mount. Needs root. Every mount is undone when its `with` block ends, also
after a failure (lazily, `umount -l`, if something still holds it open).

    with tmpfs(install_dir, size="64k"):
        fill(install_dir, leave=4096)          # ENOSPC after one more page
        remount(install_dir, read_only=True)   # EROFS
    with read_only_bind(config_dir): ...       # the same directory, read-only

`private_hosts(hosts_file, argv)` is the argument list that runs argv in a mount namespace of
its own where hosts_file is bound over /etc/hosts: the names it maps (an API host to a
loopback stand-in) resolve so for that process tree alone.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
TIMEOUT = 30.0


def _run(*argv: str) -> None:
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env={"PATH": PATH, "LANG": "C"},
        timeout=TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")


def _umount(path: Path) -> None:
    try:
        _run("umount", str(path))
    except RuntimeError:
        _run("umount", "-l", str(path))


@contextlib.contextmanager
def tmpfs(path: Path, *, size: str) -> Iterator[Path]:
    """A tmpfs of `size` bytes (mount's syntax: 64k) at `path`, root's, mode 0755."""
    path.mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755,uid=0,gid=0", "tmpfs", str(path))
    try:
        yield path
    finally:
        _umount(path)


def remount(path: Path, *, read_only: bool) -> None:
    """Switch the mount at `path` to read-only or back to read-write."""
    _run("mount", "-o", f"remount,{'ro' if read_only else 'rw'}", str(path))


@contextlib.contextmanager
def read_only_bind(path: Path) -> Iterator[Path]:
    """`path` bound over itself, read-only: writes in it fail with EROFS, reads work."""
    _run("mount", "--bind", str(path), str(path))
    try:
        _run("mount", "-o", "remount,bind,ro", str(path))
        yield path
    finally:
        _umount(path)


def fill(path: Path, *, leave: int, name: str = "filler") -> Path:
    """Write a root-only file in `path` that leaves `leave` bytes free (rounded down to
    whole blocks): the next write larger than that fails with ENOSPC."""
    st = os.statvfs(path)
    size = max(0, st.f_bavail * st.f_frsize - leave)
    filler = path / name
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def private_hosts(hosts_file: Path, argv: list[str]) -> list[str]:
    """argv run by `unshare -m` (private propagation: the bind mount never reaches the
    machine's namespace) after binding hosts_file over /etc/hosts."""
    script = 'mount --bind "$0" /etc/hosts && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
            str(hosts_file), *argv]  # fmt: skip


__all__ = ["fill", "private_hosts", "read_only_bind", "remount", "tmpfs"]
