"""The SNI table pftls-hook owns: `<install dir>/sni.map`, a `texthash:` table.

Contract: `table_path(install_dir)` names it; `render(entries)` is its bytes for
name -> chain files; `read(path)` parses what is there now ({} when absent); `switch(path,
data)` replaces it atomically and returns an `Installed` whose `undo()` puts the previous
bytes back; `pointing(path, current)` is the main.cf value of `tls_server_sni_maps` that
names it (the admin's own tables kept, after ours), or None when main.cf names it already.

Why texthash, not an indexed table built with `postmap -F`: `postmap -F` copies the files'
contents, private keys included, into the table, so a renewal changes nothing Postfix
serves until the table is rebuilt (the "expired certificate served after renewal"
reports), and the table holds keys. A texthash value is the list of files itself, loaded
when smtpd opens the table as it starts (Postfix >= 3.4 for tls_server_sni_maps; texthash
values were fixed to act like `postmap -F` in the 2021-06 snapshots, before Postfix 3.7):
the table holds only file names, and a renewal, which switches `<lineage>.pem` in place,
is served after the reload every deploy does. Measured on Postfix 3.7 (tests/test_sni.py).
The table is still written 0600 from the first byte (fsutil.atomic_write): smtpd reads it
as root, and the names it lists are nobody else's business.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from pftls_hook.errors import EnvironmentRefusedError
from pftls_hook.fsutil import atomic_write, fsync_dir
from pftls_hook.install import Installed

PARAM = "tls_server_sni_maps"
_HEADER = b"# Written by pftls-hook: SNI name -> chain files (key first). Do not edit.\n"


def table_path(install_dir: Path) -> Path:
    return install_dir / "sni.map"


def map_name(path: Path) -> str:
    return f"texthash:{path}"


def render(entries: Mapping[str, Sequence[str]]) -> bytes:
    lines = [f"{name} {', '.join(files)}\n" for name, files in entries.items() if files]
    return _HEADER + "".join(lines).encode()


def parse(data: bytes) -> dict[str, list[str]]:
    entries = {}
    for line in data.decode(errors="replace").splitlines():
        fields = line.replace(",", " ").split()
        if fields and not fields[0].startswith("#"):
            entries[fields[0]] = fields[1:]
    return entries


def read(path: Path) -> dict[str, list[str]]:
    try:
        return parse(path.read_bytes())
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise EnvironmentRefusedError(f"{path}: cannot read SNI table: {exc.strerror}") from None


def current_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def switch(path: Path, data: bytes) -> Installed:
    """Replace the table (one rename); `undo()` puts the previous bytes back, or removes it."""
    before = current_bytes(path)

    def undo() -> None:
        if before is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            fsync_dir(path.parent)
        else:
            atomic_write(path, before, 0o600)

    try:
        atomic_write(path, data, 0o600)
    except OSError as exc:
        raise EnvironmentRefusedError(f"{path}: cannot write SNI table: {exc.strerror}") from None
    return Installed({}, undo, (path,))


def pointing(path: Path, current: str) -> str | None:
    """tls_server_sni_maps naming our table: None when it already does; else ours first
    (our names decide), then whatever tables the admin listed."""
    ours = map_name(path)
    tables = current.replace(",", " ").split()
    if ours in tables:
        return None
    return ", ".join([ours, *tables])
