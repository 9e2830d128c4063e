"""Versioned, atomic files in the install dir: one object per layout.

Contract: `install_dir(path, layout)` returns a `Combined` or `Separate` object; each one
- `install(name, bundle, chain_files=)` writes the verified bytes and returns an
  `Installed`: the main.cf values that point Postfix at them, the new files, and an
  `undo()` that puts the files back as they were;
- `holds(name, key, fullchain, pointed)`: does main.cf point (`pointed`) at `name`'s files,
  holding exactly these bytes? (The no-op deploy hook asks it without cryptography.)
- `lineage_of(pointed)`: which lineage main.cf points at, if it points into this dir;
  `lineages_of(pointed)`: all of them, when main.cf lists several chains (combined only);
- `previous(name, pointed, chain_files=)`: the version before the current one, as bytes to
  verify again and a switch to it (rollback);
- `plan(name, chain_files=)`: what `install` would write, and the main.cf values (dry run).
Nothing outside the install dir is touched; main.cf is the caller's business (postfix.py).

Layouts:
- combined (default): one file, key then full chain (Postfix >= 3.4 loads a file named as
  both cert and key in one pass, so key and certificate can never mismatch). Each version is
  an immutable file `<name>.<stamp>.pem`; `<name>.pem` is a hard link to the current one,
  switched by rename(2). main.cf names `<name>.pem`, so a routine renewal needs no main.cf
  write (a main.cf write makes Postfix wait ~1-2 s for the file to "cool").
- separate: `<name>.<stamp>.key` (0600) and `<name>.<stamp>.crt` (0644), new files per
  version, switched by the caller's one postconf call (as `postfix tls deploy-server-cert`).

Files are written by `fsutil.atomic_write` (0600 from the first byte). A write that fails
(ENOSPC, EROFS, EIO) or a signal during `install` leaves nothing new behind and `<name>.pem`
as it was; the failure is an `EnvironmentRefusedError`, raised before Postfix was pointed
anywhere. A SIGKILL runs no cleanup: its temp files are removed by the next run
(`clean_temps`), and `<name>.pem` is only ever switched by one rename.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pftls_hook.errors import EnvironmentRefusedError
from pftls_hook.fsutil import TEMP_INFIX, atomic_write, fsync_dir, temp_path, untrusted
from pftls_hook.pem import SourceFiles, combined, split_pem
from pftls_hook.postfix import pointing

if TYPE_CHECKING:  # the no-op deploy hook uses the layouts without cryptography (pem.py)
    from pftls_hook.verify import VerifiedBundle

_TEMP = re.compile(r"^\..+" + re.escape(TEMP_INFIX) + r"[0-9]+$")
_STAMP = r"\.[0-9]{8}T[0-9]{12}Z"
_VERSION = re.compile(r"^(.+)" + _STAMP + r"\.(pem|key|crt)$")  # <lineage>.<stamp>.<kind>


@dataclass(frozen=True)
class Installed:
    params: dict[str, str]  # main.cf values that make Postfix read the new files
    undo: Callable[[], None]  # put the files back as they were before `install`
    files: tuple[Path, ...]
    previous: Path | None = None  # the version this one replaced, kept for rollback


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def _nothing() -> None:
    return None


class InstallDir:
    """What both layouts share: safety, temp files, versions, pruning."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def check(self, *, create: bool = False) -> None:
        """Refuse a directory root cannot trust: a symlink, someone else's, or writable
        by others (who could swap a key file between our write and Postfix's read)."""
        try:
            if create and not os.path.lexists(self.path):
                os.mkdir(self.path, 0o755)
            st = os.lstat(self.path)
        except FileNotFoundError:
            if create:
                raise EnvironmentRefusedError(
                    f"{self.path}: install dir's parent does not exist"
                ) from None
            return
        except OSError as exc:
            raise EnvironmentRefusedError(
                f"{self.path}: cannot create install dir: {exc.strerror}"
            ) from None
        if stat.S_ISLNK(st.st_mode):
            raise EnvironmentRefusedError(f"{self.path}: install dir is a symlink; refusing")
        if not stat.S_ISDIR(st.st_mode):
            raise EnvironmentRefusedError(f"{self.path}: install dir is not a directory")
        if reason := untrusted(st):
            raise EnvironmentRefusedError(f"{self.path}: install dir {reason}; refusing")

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

    def versions(self, name: str, suffix: str = "") -> list[Path]:
        """Versioned files of a lineage (of every kind when no `suffix` is given), oldest
        first (the stamp sorts by time). One listing of the directory, names compared as
        strings first: with a thousand lineages side by side (SNI) this runs per lineage."""
        kinds = re.escape(suffix) if suffix else r"\.(pem|key|crt)"
        pattern = re.compile(re.escape(name) + _STAMP + kinds + "$")
        prefix = f"{name}."
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        return sorted(self.path / n for n in names if n.startswith(prefix) and pattern.match(n))

    def prune(self, names: Sequence[str], keep: set[Path]) -> list[tuple[str, Path]]:
        """Delete every version of `names` not in `keep` (the deploy keeps the new version
        and the one served before it, for rollback), in one listing of the directory (a
        thousand SNI lineages are deployed at once). A version written by a run killed
        before its switch was never served: it goes too, or a later rollback would land on
        it instead of the certificate served before. Returns (lineage, file) removed."""
        wanted = set(names)
        removed = []
        try:
            entries = os.listdir(self.path)
        except FileNotFoundError:
            return []
        for entry in entries:
            found = _VERSION.match(entry)
            path = self.path / entry
            if found and found.group(1) in wanted and path not in keep:
                path.unlink(missing_ok=True)
                removed.append((found.group(1), path))
        return removed

    def _ours(self, pointed: Sequence[str]) -> list[Path]:
        paths = [Path(p) for p in pointed]
        return paths if paths and all(p.parent == self.path for p in paths) else []

    def _write(self, name: str, write: Callable[[], Installed]) -> Installed:
        try:
            return write()
        except OSError as exc:
            # ENOSPC, EROFS, EIO: the machine's problem, not a bug; nothing was switched.
            raise EnvironmentRefusedError(
                f"{self.path}: cannot write {name}'s files: {exc.strerror}"
            ) from None

    @staticmethod
    def _holds(paths: Sequence[Path], expected: Sequence[bytes]) -> bool:
        try:
            return [p.read_bytes() for p in paths] == list(expected)
        except OSError:
            return False


class Combined(InstallDir):
    def current_path(self, name: str) -> Path:
        return self.path / f"{name}.pem"

    def current_version(self, name: str) -> Path | None:
        current = self.current_path(name)
        if not current.exists():
            return None
        return next(
            (v for v in reversed(self.versions(name, ".pem")) if os.path.samefile(v, current)),
            None,
        )

    def lineages_of(self, pointed: Sequence[str]) -> list[str]:
        ours = self._ours(pointed)
        if all(p.suffix == ".pem" and not re.search(_STAMP, p.name) for p in ours):
            return [p.name.removesuffix(".pem") for p in ours]
        return []

    def lineage_of(self, pointed: Sequence[str]) -> str | None:
        names = self.lineages_of(pointed)
        return names[0] if len(names) == 1 else None

    def holds(self, name: str, key: bytes, fullchain: bytes, pointed: Sequence[str]) -> bool:
        """Does main.cf point (`pointed`) at `name`'s files holding exactly this key and
        chain? In both layouts."""
        path = self.current_path(name)
        return list(pointed) == [str(path)] and self._holds([path], [combined(key, fullchain)])

    def holds_file(self, name: str, bundle: VerifiedBundle) -> bool:
        """Does `<name>.pem` hold exactly these bytes (whatever main.cf says)?"""
        return self._holds([self.current_path(name)], [bundle.combined_pem()])

    def plan(self, name: str, *, chain_files: bool) -> tuple[list[str], dict[str, str]]:
        target = str(self.current_path(name))
        return [
            f"{self.path}/{name}.<stamp>.pem (0600, key + full chain)",
            f"{target} -> the new version (hard link, renamed into place)",
        ], pointing(target, target, chain_files=chain_files)

    def _switch(self, name: str, version: Path) -> None:
        tmp = temp_path(self.current_path(name))
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
        return self._write(name, lambda: self._install(name, bundle, chain_files))

    def _install(self, name: str, bundle: VerifiedBundle, chain_files: bool) -> Installed:
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
                self._switch(name, before)
            else:
                current.unlink(missing_ok=True)
            new.unlink(missing_ok=True)
            fsync_dir(self.path)

        try:
            atomic_write(new, bundle.combined_pem(), 0o600)
            self._switch(name, new)
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
        return Installed(
            pointing(path, path, chain_files=chain_files), undo, (new, current), before
        )

    def previous(
        self, name: str, pointed: Sequence[str], *, chain_files: bool
    ) -> tuple[SourceFiles, Callable[[], Installed]]:
        current = self.current_version(name)
        older = [v for v in self.versions(name, ".pem") if v != current]
        if not older:
            raise EnvironmentRefusedError(f"{name}: no previous version to roll back to")
        target = older[-1]
        data = target.read_bytes()
        path = str(self.current_path(name))

        def switch() -> Installed:
            before = self.current_version(name)
            try:
                self._switch(name, target)
            except OSError as exc:
                raise EnvironmentRefusedError(
                    f"{self.path}: cannot switch {name} back: {exc.strerror}"
                ) from None
            undo = (lambda: self._switch(name, before)) if before is not None else _nothing
            return Installed(pointing(path, path, chain_files=chain_files), undo, (target,))

        return split_pem(data, data), switch


class Separate(InstallDir):
    def lineages_of(self, pointed: Sequence[str]) -> list[str]:
        name = self.lineage_of(pointed)
        return [name] if name is not None else []

    def lineage_of(self, pointed: Sequence[str]) -> str | None:
        ours = self._ours(pointed)
        if len(ours) != 2:
            return None
        # `<name>.<stamp>.key`: lineage names hold dots (mail.example.com), the stamp none.
        names = {
            p.name.rsplit(".", 2)[0] for p in ours if re.search(_STAMP + r"\.(key|crt)$", p.name)
        }
        return names.pop() if len(names) == 1 else None

    def holds(self, name: str, key: bytes, fullchain: bytes, pointed: Sequence[str]) -> bool:
        ours = self._ours(pointed)
        return self.lineage_of(pointed) == name and self._holds(ours, [key, fullchain])

    def plan(self, name: str, *, chain_files: bool) -> tuple[list[str], dict[str, str]]:
        key, crt = (f"{self.path}/{name}.<stamp>.{s}" for s in ("key", "crt"))
        return [f"{key} (0600)", f"{crt} (0644, full chain)"], pointing(
            key, crt, chain_files=chain_files
        )

    def install(self, name: str, bundle: VerifiedBundle, *, chain_files: bool) -> Installed:
        return self._write(name, lambda: self._install(name, bundle, chain_files))

    def _install(self, name: str, bundle: VerifiedBundle, chain_files: bool) -> Installed:
        stamp = _stamp()
        key = self.path / f"{name}.{stamp}.key"
        crt = self.path / f"{name}.{stamp}.crt"

        def undo() -> None:
            key.unlink(missing_ok=True)
            crt.unlink(missing_ok=True)
            fsync_dir(self.path)

        try:
            atomic_write(key, bundle.key_pem, 0o600)
            atomic_write(crt, bundle.fullchain_pem, 0o644)
        except BaseException:
            # A key without its certificate is no use to anyone: remove both.
            with contextlib.suppress(OSError):
                undo()
            raise
        return Installed(pointing(str(key), str(crt), chain_files=chain_files), undo, (key, crt))

    def previous(
        self, name: str, pointed: Sequence[str], *, chain_files: bool
    ) -> tuple[SourceFiles, Callable[[], Installed]]:
        ours = set(self._ours(pointed))
        stems = [p.name.removesuffix(".crt") for p in self.versions(name, ".crt")]
        older = [
            st
            for st in stems
            if (self.path / f"{st}.key").exists() and self.path / f"{st}.crt" not in ours
        ]
        if not older:
            raise EnvironmentRefusedError(f"{name}: no previous version to roll back to")
        key, crt = (self.path / f"{older[-1]}{s}" for s in (".key", ".crt"))
        params = pointing(str(key), str(crt), chain_files=chain_files)
        # Both files exist already; main.cf (set by the caller) is the switch.
        return split_pem(key.read_bytes(), crt.read_bytes()), lambda: Installed(
            params, _nothing, (crt, key)
        )


Layout = Combined | Separate


def install_dir(path: Path, layout: str) -> Layout:
    return Separate(path) if layout == "separate" else Combined(path)
