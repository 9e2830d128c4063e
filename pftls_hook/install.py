"""Versioned, atomic files in the install dir; switch, undo, prune.

Contract: `InstallDir(path, layout).install(name, bundle, chain_files=...)` writes the
verified bytes and returns an `Installed`: the main.cf values that point Postfix at them
and an `undo()` that restores the files as they were. Nothing outside the install dir is
touched; main.cf is the caller's business (postfix.py).

Layouts:
- combined (default): one file, key then full chain (Postfix >= 3.4 loads a file named as
  both cert and key in one pass, so key and certificate can never mismatch). Each version is
  an immutable file `<name>.<stamp>.pem`; `<name>.pem` is a hard link to the current one,
  switched by rename(2). main.cf names `<name>.pem`, so a routine renewal needs no main.cf
  write (a main.cf write makes Postfix wait ~1-2 s for the file to "cool").
- separate: `<name>.<stamp>.key` (0600) and `<name>.<stamp>.crt` (0644), new files per
  version, switched by the caller's one postconf call (as `postfix tls deploy-server-cert`).

Key bytes are never readable by anyone but root: files are created 0600 with O_EXCL in the
install dir itself, written, fsynced, renamed into place, and the directory fsynced.

A write that fails (ENOSPC part way through a file, EROFS, EIO) or a signal during
`install` leaves nothing new behind and `<name>.pem` as it was; the failure is an
`EnvironmentRefusedError` naming the install dir and the reason, raised before Postfix was
pointed anywhere. A SIGKILL runs no cleanup: its temp files are removed by the next run
(`clean_temps`), and `<name>.pem` is only ever switched by one rename.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pftls_hook.errors import EnvironmentRefusedError
from pftls_hook.postfix import pointing
from pftls_hook.verify import VerifiedBundle

_TEMP = re.compile(r"^\..+\.tmp\.[0-9]+$")


@dataclass(frozen=True)
class Installed:
    params: dict[str, str]  # main.cf values that make Postfix read the new files
    undo: Callable[[], None]  # put the files back as they were before `install`
    files: tuple[Path, ...]
    previous: Path | None = None  # the version this one replaced, kept for rollback


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable: without it a crash may bring back the old name."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data`: a temp file beside it (created 0600, so key bytes are
    never readable by others), root-owned, `mode` set, fsynced, renamed. The caller fsyncs
    the directory (fsync_dir) once it has renamed everything it needs to."""
    tmp = path.parent / f".{path.name}.tmp.{os.getpid()}"
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


class InstallDir:
    def __init__(self, path: Path, layout: str = "combined") -> None:
        self.path = path
        self.layout = layout

    # -- safety ---------------------------------------------------------------------------
    def check(self, *, create: bool = False) -> None:
        """Refuse a directory root cannot trust: a symlink, someone else's, or writable
        by others (who could swap a key file between our write and Postfix's read)."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            if not create:
                return
            if not self.path.parent.is_dir():
                raise EnvironmentRefusedError(
                    f"{self.path}: install dir's parent does not exist"
                ) from None
            try:
                os.mkdir(self.path, 0o755)
            except OSError as exc:
                raise EnvironmentRefusedError(
                    f"{self.path}: cannot create install dir: {exc.strerror}"
                ) from None
            st = os.lstat(self.path)
        if stat.S_ISLNK(st.st_mode):
            raise EnvironmentRefusedError(f"{self.path}: install dir is a symlink; refusing")
        if not stat.S_ISDIR(st.st_mode):
            raise EnvironmentRefusedError(f"{self.path}: install dir is not a directory")
        if st.st_uid not in (0, os.geteuid()):
            raise EnvironmentRefusedError(f"{self.path}: install dir is not owned by root")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise EnvironmentRefusedError(
                f"{self.path}: install dir is writable by group or others; refusing"
            )

    def clean_temps(self) -> None:
        """Remove temp files a killed run left behind (they never were in use)."""
        try:
            for entry in os.scandir(self.path):
                if _TEMP.match(entry.name) and entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
        except FileNotFoundError:
            pass
        except OSError as exc:  # a read-only install dir holding a dead run's temp file
            raise EnvironmentRefusedError(
                f"{self.path}: cannot remove a stale temp file: {exc.strerror}"
            ) from None

    # -- reading --------------------------------------------------------------------------
    def current_path(self, name: str) -> Path:
        return self.path / f"{name}.pem"

    def versions(self, name: str, suffix: str = ".pem") -> list[Path]:
        """Versioned files of a lineage, oldest first (the stamp sorts by time)."""
        pattern = re.compile(re.escape(name) + r"\.[0-9]{8}T[0-9]{12}Z" + re.escape(suffix) + "$")
        try:
            return sorted(
                self.path / e.name for e in os.scandir(self.path) if pattern.match(e.name)
            )
        except FileNotFoundError:
            return []

    def current_version(self, name: str) -> Path | None:
        current = self.current_path(name)
        if not current.exists():
            return None
        for version in reversed(self.versions(name)):
            if os.path.samefile(version, current):
                return version
        return None

    # -- writing --------------------------------------------------------------------------
    def _write_new(self, path: Path, data: bytes, mode: int) -> None:
        write_atomic(path, data, mode)

    def _link_current(self, name: str, version: Path) -> None:
        tmp = self.path / f".{name}.pem.tmp.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.link(version, tmp)
        try:
            os.replace(tmp, self.current_path(name))  # the one atomic switch
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_dir(self.path)

    def install(self, name: str, bundle: VerifiedBundle, *, chain_files: bool) -> Installed:
        try:
            if self.layout == "separate":
                return self._install_separate(name, bundle, chain_files=chain_files)
            return self._install_combined(name, bundle, chain_files=chain_files)
        except OSError as exc:
            # ENOSPC, EROFS, EIO: the machine's problem, not a bug; nothing was switched.
            raise EnvironmentRefusedError(
                f"{self.path}: cannot write {name}'s files: {exc.strerror}"
            ) from None

    def _install_combined(
        self, name: str, bundle: VerifiedBundle, *, chain_files: bool
    ) -> Installed:
        current = self.current_path(name)
        before = self.current_version(name)
        adopted = None
        if before is None and current.exists():
            # A <name>.pem we did not version (an older install, or copied by hand): keep
            # it as a version so undo and rollback can return to it.
            before = adopted = self.path / f"{name}.{_stamp()}.pem"
            os.link(current, before)
        new = self.path / f"{name}.{_stamp()}.pem"

        def undo() -> None:
            if before is not None:
                self._link_current(name, before)
            else:
                current.unlink(missing_ok=True)
            new.unlink(missing_ok=True)
            fsync_dir(self.path)

        try:
            self._write_new(new, bundle.combined_pem(), 0o600)
            self._link_current(name, new)
        except BaseException:
            # Leave nothing new behind. Switch back only if the rename went through (the
            # directory fsync after it failed); otherwise <name>.pem was never touched.
            with contextlib.suppress(OSError):
                if current.exists() and new.exists() and os.path.samefile(current, new):
                    undo()
                new.unlink(missing_ok=True)
                if adopted is not None:
                    adopted.unlink()
            raise

        path = str(current)
        params = pointing(path, path, chain_files=chain_files)
        return Installed(params, undo, (new, current), before)

    def _install_separate(
        self, name: str, bundle: VerifiedBundle, *, chain_files: bool
    ) -> Installed:
        stamp = _stamp()
        key = self.path / f"{name}.{stamp}.key"
        crt = self.path / f"{name}.{stamp}.crt"

        def undo() -> None:
            key.unlink(missing_ok=True)
            crt.unlink(missing_ok=True)
            fsync_dir(self.path)

        try:
            self._write_new(key, bundle.key_pem, 0o600)
            self._write_new(crt, bundle.fullchain_pem, 0o644)
            fsync_dir(self.path)
        except BaseException:
            # A key without its certificate is no use to anyone: remove both.
            with contextlib.suppress(OSError):
                undo()
            raise

        params = pointing(str(key), str(crt), chain_files=chain_files)
        return Installed(params, undo, (key, crt))

    def switch_to(self, name: str, version: Path) -> Callable[[], None]:
        """Point `<name>.pem` at an existing version (rollback); returns the undo."""
        before = self.current_version(name)
        try:
            self._link_current(name, version)
        except OSError as exc:
            raise EnvironmentRefusedError(
                f"{self.path}: cannot switch {name} back: {exc.strerror}"
            ) from None

        def undo() -> None:
            if before is not None:
                self._link_current(name, before)

        return undo

    def prune(self, name: str, keep: set[Path]) -> list[Path]:
        """Delete every version of `name` not in `keep` (the deploy keeps the new version
        and the one served before it, for rollback). A version written by a run killed
        before its switch was never served: it goes too, or a later rollback would land on
        it instead of the certificate served before."""
        removed = []
        for suffix in (".pem", ".key", ".crt"):
            for path in self.versions(name, suffix):
                if path not in keep:
                    path.unlink(missing_ok=True)
                    removed.append(path)
        return removed
