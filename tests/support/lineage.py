"""A fake certbot lineage on disk, laid out exactly as certbot's `storage.py` lays it out.

    <config>/archive/<name>/{cert,chain,fullchain,privkey}N.pem   real files, never rewritten
    <config>/live/<name>/{cert,chain,fullchain,privkey}.pem       relative symlinks
                                                                  ../../archive/<name>/<kind>N.pem
    <config>/live/README, <config>/live/<name>/README             plain files
    <config>/renewal/<name>.conf                                  absolute paths to the links

live/, archive/ and renewal/ are 0700 and private keys 0600 (`new_lineage`), the rest 0644.
Besides the settled states, the helpers build what a reader can meet while certbot renews
(`update_all_links_to`: `previous_*.pem` absolute links, then unlink+symlink per kind in
the order cert, privkey, chain, fullchain) and states certbot never makes: a link out of
the config dir, a FIFO or other bytes where an archive file should be.

Nothing here imports pftls_hook: this is the independent picture of certbot's layout.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

# certbot's ALL_FOUR (storage.py), in the order update_all_links_to re-points them.
KINDS = ("cert", "privkey", "chain", "fullchain")


def live_dir(config_dir: Path, name: str) -> Path:
    return config_dir / "live" / name


def archive_dir(config_dir: Path, name: str) -> Path:
    return config_dir / "archive" / name


def link_path(config_dir: Path, name: str, kind: str) -> Path:
    """live/<name>/<kind>.pem"""
    return live_dir(config_dir, name) / f"{kind}.pem"


def archive_path(config_dir: Path, name: str, kind: str, n: int) -> Path:
    """archive/<name>/<kind><n>.pem"""
    return archive_dir(config_dir, name) / f"{kind}{n}.pem"


def _relative_target(kind: str, name: str, n: int) -> str:
    # What certbot's _relpath_from_file yields from live/<name>/ to archive/<name>/.
    return f"../../archive/{name}/{kind}{n}.pem"


def _make_dirs(config_dir: Path, name: str) -> None:
    for top in ("live", "archive", "renewal"):
        (config_dir / top).mkdir(parents=True, exist_ok=True)
        # Explicit chmod: mkdir's mode is filtered by the umask, certbot's is not.
        (config_dir / top).chmod(0o700)
    for lineage in (live_dir(config_dir, name), archive_dir(config_dir, name)):
        lineage.mkdir(exist_ok=True)
        lineage.chmod(0o755)


def _write(path: Path, data: bytes, mode: int) -> None:
    path.write_bytes(data)
    path.chmod(mode)


def write_version(
    config_dir: Path,
    name: str,
    n: int,
    *,
    cert_pem: bytes,
    chain_pem: bytes,
    privkey_pem: bytes,
    fullchain_pem: bytes | None = None,
) -> None:
    """Write archive/<name>/*<n>.pem (certbot's save_successor); the links are not touched.

    fullchain defaults to cert followed by chain, byte for byte, as certbot writes it.
    """
    _make_dirs(config_dir, name)
    files = {
        "cert": cert_pem,
        "chain": chain_pem,
        "fullchain": cert_pem + chain_pem if fullchain_pem is None else fullchain_pem,
        "privkey": privkey_pem,
    }
    for kind, data in files.items():
        _write(archive_path(config_dir, name, kind, n), data, 0o600 if kind == "privkey" else 0o644)


def point_links(
    config_dir: Path, name: str, versions: int | Mapping[str, int], *, atomic: bool = False
) -> None:
    """Point live/<name>/<kind>.pem at archive version N, as relative links.

    `versions` is one N for all four kinds, or {kind: N} for only some of them (a
    half-renewed lineage: `{"cert": 2}` leaves the key on its old version).
    By default each link is replaced as certbot does it, unlink then symlink, so for a moment
    the link is missing. `atomic=True` renames a new link over the old one instead, for
    tests that must not race with that moment.
    """
    wanted = dict.fromkeys(KINDS, versions) if isinstance(versions, int) else dict(versions)
    for kind in KINDS:
        if kind in wanted:
            set_link(config_dir, name, kind, _relative_target(kind, name, wanted[kind]), atomic)


def set_link(
    config_dir: Path, name: str, kind: str, target: str | Path, atomic: bool = False
) -> None:
    """Make live/<name>/<kind>.pem a symlink to `target`, verbatim: any path, inside the
    config dir or not, existing or not. The raw tool for links certbot never makes."""
    link = link_path(config_dir, name, kind)
    if atomic:
        temp = link.with_name(f".{link.name}.new")
        os.symlink(target, temp)
        os.replace(temp, link)
        return
    link.unlink(missing_ok=True)
    os.symlink(target, link)


def add_previous_links(config_dir: Path, name: str) -> None:
    """Create live/<name>/previous_<kind>.pem for every kind, as certbot does before it
    re-points anything: absolute links to where each link points now."""
    for kind in KINDS:
        link = link_path(config_dir, name, kind)
        os.symlink(link.resolve(), link.with_name(f"previous_{kind}.pem"))


def remove_previous_links(config_dir: Path, name: str) -> None:
    """The last step of certbot's update_all_links_to."""
    for kind in KINDS:
        link_path(config_dir, name, kind).with_name(f"previous_{kind}.pem").unlink()


def replace_archive_file(config_dir: Path, name: str, kind: str, n: int, data: bytes) -> None:
    """Overwrite archive/<name>/<kind><n>.pem with arbitrary bytes (certbot never rewrites
    archive files; damaged or hand-edited ones are exactly what the reader must catch)."""
    path = archive_path(config_dir, name, kind, n)
    _write(path, data, path.stat().st_mode & 0o777)


def replace_archive_with_fifo(config_dir: Path, name: str, kind: str, n: int) -> Path:
    """Put a FIFO where archive/<name>/<kind><n>.pem was: opening it for reading blocks
    until a writer appears, so a reader that opens before checking the type hangs."""
    path = archive_path(config_dir, name, kind, n)
    path.unlink()
    os.mkfifo(path, 0o600)
    return path


def renewal_conf_path(config_dir: Path, name: str) -> Path:
    return config_dir / "renewal" / f"{name}.conf"


def _write_renewal_conf(config_dir: Path, name: str) -> None:
    # The top section of storage.make_renewal_configobj; certbot finds lineages by these.
    lines = [
        "# renew_before_expiry = 30 days",
        "version = 5.8.0",
        f"archive_dir = {archive_dir(config_dir, name)}",
        *(f"{kind} = {link_path(config_dir, name, kind)}" for kind in KINDS),
        "",
        "[renewalparams]",
        "authenticator = standalone",
        "server = https://acme.invalid/directory",
        "key_type = ecdsa",
        "",
    ]
    _write(renewal_conf_path(config_dir, name), "\n".join(lines).encode(), 0o644)


def new_lineage(
    config_dir: Path,
    name: str,
    *,
    cert_pem: bytes,
    chain_pem: bytes,
    privkey_pem: bytes,
    fullchain_pem: bytes | None = None,
    version: int = 1,
) -> Path:
    """A settled lineage as `certbot certonly` leaves it; returns live/<name>."""
    write_version(
        config_dir,
        name,
        version,
        cert_pem=cert_pem,
        chain_pem=chain_pem,
        privkey_pem=privkey_pem,
        fullchain_pem=fullchain_pem,
    )
    point_links(config_dir, name, version)
    for readme in (config_dir / "live" / "README", live_dir(config_dir, name) / "README"):
        _write(readme, b"This directory contains your keys and certificates.\n", 0o644)
    _write_renewal_conf(config_dir, name)
    return live_dir(config_dir, name)


def renew(
    config_dir: Path,
    name: str,
    n: int,
    *,
    cert_pem: bytes,
    chain_pem: bytes,
    privkey_pem: bytes,
    fullchain_pem: bytes | None = None,
) -> None:
    """A completed renewal to version n: archive files, previous_* links, the four links
    one by one, previous_* removed (certbot's renew_cert without the hook)."""
    write_version(
        config_dir,
        name,
        n,
        cert_pem=cert_pem,
        chain_pem=chain_pem,
        privkey_pem=privkey_pem,
        fullchain_pem=fullchain_pem,
    )
    add_previous_links(config_dir, name)
    point_links(config_dir, name, n)
    remove_previous_links(config_dir, name)
