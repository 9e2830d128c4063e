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
so a FIFO or device cannot hang certbot, which gives its hooks no timeout. Whoever can
write a directory on the way (config dir, live/, archive/, the lineage's own) could swap
the key: each must be root's and not writable by group or others, as certbot makes them.

`renewed_lineage(RENEWED_LINEAGE, live_dir)` is the deploy hook's door: the name of a
lineage directly under the live dir, or a refusal.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from pftls_hook.errors import NotSettledError, RefusedError
from pftls_hook.fsutil import attempts, untrusted
from pftls_hook.pem import SourceFiles

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


def renewed_lineage(value: str, live_dir: Path) -> str:
    """The lineage named by certbot's RENEWED_LINEAGE: `<live dir>/<name>`, absolute, with
    no `..` and no link leading out of the live dir. Shown with repr(): an odd name must not
    break the one-line log."""
    path = Path(value)
    if not path.is_absolute():
        raise RefusedError(repr(value), "RENEWED_LINEAGE must be an absolute path")
    if ".." in path.parts or not valid_name(path.name):
        raise RefusedError(repr(value), "RENEWED_LINEAGE does not end in a lineage name")
    if Path(os.path.realpath(path.parent)) != Path(os.path.realpath(live_dir)):
        raise RefusedError(repr(value), f"RENEWED_LINEAGE is not a lineage under {live_dir}")
    _require_lineage_dir(path, Path(os.path.realpath(live_dir.parent)), DirChecks())
    return path.name


def read_lineage(
    lineage_dir: Path, *, settle_timeout: float = 5.0, checks: DirChecks | None = None
) -> LineageSnapshot:
    checks = checks or DirChecks()
    config_root = _checked(lineage_dir, checks)
    for last in attempts(settle_timeout, _RETRY_SECONDS):
        try:
            return _read_once(lineage_dir, config_root, checks)
        except NotSettledError:
            if last:
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")


def read_leaf(lineage_dir: Path, checks: DirChecks | None = None) -> bytes:
    """cert.pem alone, by the same rules, settled or not: what identifies a candidate (its
    names and dates) for selection, without reading and verifying the whole lineage.
    `checks`: shared by the reads of one command, so that the directories lineages share
    are checked once."""
    checks = checks or DirChecks()
    path, _ = _Resolver(lineage_dir, _checked(lineage_dir, checks), checks).resolve("cert")
    return _read_file(path, "cert.pem")


def abandoned(lineage_dir: Path, settle_timeout: float, now: float) -> bool:
    """Left half-renewed (an interrupted certbot): `previous_*.pem` links still there, and
    no link re-pointed for longer than `settle_timeout` (each one bumps the dir's mtime).
    Waiting for such a lineage would not help."""
    try:
        if not any(os.path.lexists(lineage_dir / f"previous_{k}.pem") for k in KINDS):
            return False
        return now - os.lstat(lineage_dir).st_mtime > settle_timeout
    except OSError:
        return False


def _checked(lineage_dir: Path, checks: DirChecks) -> Path:
    """The certbot config dir of a lineage dir that passed the name and directory checks."""
    name = lineage_dir.name
    if not valid_name(name):
        raise RefusedError(repr(name), "not a certbot lineage name")
    if ".." in lineage_dir.parts:
        raise RefusedError(repr(str(lineage_dir)), "a lineage path must not climb with `..`")
    config_root = Path(checks.realpath(str(lineage_dir.parent.parent)))
    _require_lineage_dir(lineage_dir, config_root, checks)
    return config_root


def _read_once(lineage_dir: Path, config_root: Path, checks: DirChecks) -> LineageSnapshot:
    _require_no_previous(lineage_dir)
    seen = _Resolver(lineage_dir, config_root, checks)
    targets = {kind: seen.resolve(kind) for kind in KINDS}
    if len({path.parent for path, _ in targets.values()}) != 1:
        # certbot links all four into archive/<name>/: never a mix, not even mid-renewal.
        raise RefusedError(lineage_dir.name, "links lead into different archive directories")
    versions = {version for _, version in targets.values()}
    if len(versions) != 1:
        shown = " ".join(f"{kind}={version}" for kind, (_, version) in targets.items())
        raise NotSettledError(lineage_dir.name, f"not settled: links on different versions {shown}")
    data = {kind: _read_file(path, f"{kind}.pem") for kind, (path, _) in targets.items()}
    # The seqlock's second read: had certbot moved a link meanwhile, the bytes may mix versions.
    _require_no_previous(lineage_dir)
    if {kind: seen.resolve(kind) for kind in KINDS} != targets:
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


class DirChecks:
    """Directories resolved and found safe, remembered for the reads of one command (never
    longer: a directory may change between a daemon's decisions)."""

    def __init__(self) -> None:
        self._real: dict[tuple[str, bool], str] = {}
        self._safe: set[str] = set()

    def realpath(self, path: str, *, strict: bool = False) -> str:
        key = (path, strict)
        if key not in self._real:
            self._real[key] = os.path.realpath(path, strict=strict)
        return self._real[key]

    def require_safe(self, directory: str) -> None:
        if directory not in self._safe:
            _require_safe_dir(Path(directory))
            self._safe.add(directory)


def _require_safe_dir(directory: Path) -> None:
    try:
        st = os.lstat(directory)
    except OSError as exc:
        raise RefusedError(str(directory), f"cannot be checked: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise RefusedError(str(directory), "is not a directory")
    if reason := untrusted(st):
        raise RefusedError(str(directory), reason)


def _require_lineage_dir(lineage_dir: Path, config_root: Path, checks: DirChecks) -> None:
    """live/<name> is a real directory (not a link elsewhere) under safe directories."""
    try:
        st = os.lstat(lineage_dir)
    except FileNotFoundError:
        raise RefusedError(str(lineage_dir), "no such lineage") from None
    if stat.S_ISLNK(st.st_mode):
        raise RefusedError(str(lineage_dir), "is a symlink; certbot's lineages are directories")
    _require_safe_dir(lineage_dir)
    checks.require_safe(checks.realpath(str(lineage_dir.parent)))
    checks.require_safe(str(config_root))


def _require_no_previous(lineage_dir: Path) -> None:
    for kind in KINDS:
        if os.path.lexists(lineage_dir / f"previous_{kind}.pem"):
            raise NotSettledError(
                f"previous_{kind}.pem", "not settled: certbot is mid-renewal (or was interrupted)"
            )


class _Resolver:
    """Where a lineage's links lead, for one read. A link's directory part is resolved (and
    its directories checked) through `DirChecks`, once per command, not once per link: a
    command that reads a thousand lineages would otherwise spend seconds in realpath's
    lstat of every component."""

    def __init__(self, lineage_dir: Path, config_root: Path, checks: DirChecks) -> None:
        self.lineage_dir = lineage_dir
        self.checks = checks
        self.real_dir = checks.realpath(str(lineage_dir))
        self.root = str(config_root)

    def resolve(self, kind: str) -> tuple[Path, int]:
        file = f"{kind}.pem"
        try:
            text = os.readlink(self.lineage_dir / file)
        except FileNotFoundError:
            # certbot unlinks then re-creates each link: a missing link may be transient.
            raise NotSettledError(file, "not settled: link is missing") from None
        except OSError:
            raise RefusedError(file, "is not a symlink into archive/ as certbot makes it") from None
        written, name = os.path.split(os.path.join(self.real_dir, text))
        match = _ARCHIVE_NAME.match(name)
        if match is None or match.group(1) != kind:
            raise RefusedError(file, f"link does not point at an archive {kind}N.pem file")
        directory = self._directory(file, written)
        real = os.path.join(directory, name)
        try:
            st = os.lstat(real)
        except FileNotFoundError:
            raise RefusedError(file, "dangling link: its target does not exist") from None
        except OSError as exc:
            raise RefusedError(file, f"link cannot be resolved: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            # certbot's archive files are regular files; a link to a link is not its work.
            raise RefusedError(file, f"link target {real} is not a regular file")
        return Path(real), int(match.group(2))

    def _directory(self, file: str, written: str) -> str:
        try:
            directory = self.checks.realpath(written, strict=True)
        except FileNotFoundError:
            raise RefusedError(file, "dangling link: its target does not exist") from None
        except OSError as exc:
            raise RefusedError(file, f"link cannot be resolved: {exc.strerror}") from None
        if not directory.startswith(self.root + os.sep):
            raise RefusedError(file, f"link points outside the certbot config dir {self.root}")
        below = directory
        while below != self.root:
            self.checks.require_safe(below)
            below = os.path.dirname(below)
        return directory


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
        if reason := untrusted(st):
            raise RefusedError(file, f"{path} {reason}")
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
