"""Read a certbot lineage consistently, without leaving the certbot config dir.

Contract: `read_lineage(<config>/live/<name>)` returns a `LineageSnapshot` whose four files
all come from one archive version, or raises `NotSettledError` (certbot is still moving the
links, after `settle_timeout`) or `RefusedError` (a link or file that must not be read).

Why the care: certbot renews by `unlink` + `symlink` of each link in turn (cert, privkey,
chain, fullchain), with `previous_*.pem` links present meanwhile, so a reader can see a new
certificate with an old key. Settled means no `previous_*.pem` and all four links on the
same version N; the links are read again after the files, and the read is retried if they
moved (a seqlock). Links are resolved and must stay inside the certbot config dir (the
parent of the live dir); files are opened without following links and without blocking,
so a FIFO or device cannot hang certbot, which gives its hooks no timeout.
"""

from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from pftls_hook.errors import NotSettledError, RefusedError
from pftls_hook.verify import SourceFiles

KINDS = ("cert", "chain", "fullchain", "privkey")
# A real lineage file is a few KB; this bounds what a hostile file can make us read.
MAX_FILE_BYTES = 1 << 20
_ARCHIVE_NAME = re.compile(r"^(cert|chain|fullchain|privkey)([0-9]+)\.pem$")
_LINEAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_RETRY_SECONDS = 0.05


@dataclass(frozen=True)
class LineageSnapshot:
    name: str
    version: int
    files: SourceFiles


def valid_name(name: str) -> bool:
    return bool(_LINEAGE_NAME.match(name)) and ".." not in name


def list_lineages(live_root: Path) -> list[str]:
    """Names of the lineage directories under the live dir (certbot's README skipped)."""
    try:
        entries = list(os.scandir(live_root))
    except FileNotFoundError:
        return []
    return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False) and valid_name(e.name))


def read_lineage(lineage_dir: Path, *, settle_timeout: float = 5.0) -> LineageSnapshot:
    name = lineage_dir.name
    if not valid_name(name):
        raise RefusedError(repr(name), "not a certbot lineage name")
    config_root = Path(os.path.realpath(lineage_dir.parent.parent))
    deadline = time.monotonic() + settle_timeout
    while True:
        try:
            return _read_once(lineage_dir, config_root)
        except NotSettledError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(_RETRY_SECONDS)


def _read_once(lineage_dir: Path, config_root: Path) -> LineageSnapshot:
    _require_no_previous(lineage_dir)
    targets = {kind: _resolve(lineage_dir, kind, config_root) for kind in KINDS}
    versions = {version for _, version in targets.values()}
    if len(versions) != 1:
        shown = " ".join(f"{kind}={version}" for kind, (_, version) in targets.items())
        raise NotSettledError(lineage_dir.name, f"not settled: links on different versions {shown}")
    data = {kind: _read_file(path, f"{kind}.pem") for kind, (path, _) in targets.items()}
    # The seqlock's second read: had certbot moved a link meanwhile, the bytes may mix versions.
    _require_no_previous(lineage_dir)
    if {kind: _resolve(lineage_dir, kind, config_root) for kind in KINDS} != targets:
        raise NotSettledError(lineage_dir.name, "not settled: links moved while reading")
    return LineageSnapshot(
        name=lineage_dir.name,
        version=versions.pop(),
        files=SourceFiles(
            cert=data["cert"],
            chain=data["chain"],
            fullchain=data["fullchain"],
            privkey=data["privkey"],
        ),
    )


def _require_no_previous(lineage_dir: Path) -> None:
    for kind in KINDS:
        if os.path.lexists(lineage_dir / f"previous_{kind}.pem"):
            raise NotSettledError(
                f"previous_{kind}.pem", "not settled: certbot is mid-renewal (or was interrupted)"
            )


def _resolve(lineage_dir: Path, kind: str, config_root: Path) -> tuple[Path, int]:
    file = f"{kind}.pem"
    link = lineage_dir / file
    try:
        st = os.lstat(link)
    except FileNotFoundError:
        # certbot unlinks then re-creates each link: a missing link may be transient.
        raise NotSettledError(file, "not settled: link is missing") from None
    if not stat.S_ISLNK(st.st_mode):
        raise RefusedError(file, "is not a symlink into archive/ as certbot makes it")
    try:
        real = Path(os.path.realpath(link, strict=True))
    except FileNotFoundError:
        raise RefusedError(file, "dangling link: its target does not exist") from None
    except OSError as exc:
        raise RefusedError(file, f"link cannot be resolved: {exc.strerror}") from None
    if not real.is_relative_to(config_root):
        raise RefusedError(file, f"link points outside the certbot config dir {config_root}")
    match = _ARCHIVE_NAME.match(real.name)
    if match is None or match.group(1) != kind:
        raise RefusedError(file, f"link does not point at an archive {kind}N.pem file")
    return real, int(match.group(2))


def _read_file(path: Path, file: str) -> bytes:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise RefusedError(file, f"cannot open {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RefusedError(file, f"{path} is not a regular file")
        if st.st_uid not in (0, os.geteuid()):
            raise RefusedError(file, f"{path} is owned by uid {st.st_uid}, not root")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise RefusedError(file, f"{path} is writable by group or others")
        if st.st_size > MAX_FILE_BYTES:
            raise RefusedError(file, f"{path} is {st.st_size} bytes, too large for a PEM file")
        chunks = []
        remaining = MAX_FILE_BYTES + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > MAX_FILE_BYTES:
            raise RefusedError(file, f"{path} grew while read, too large for a PEM file")
        return data
    finally:
        os.close(fd)
