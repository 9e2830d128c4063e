"""What Postfix is pointed at, judged from outside: main.cf's TLS file parameters, the files
they name, and whether those files form a key and chain that belong together.

Independent of pftls_hook (like the rest of tests/support): the parameters are read with
`postconf`, the files parsed here with `cryptography`.

    pair = pointed_pair(postfix)        # raises AssertionError naming what is wrong
    pair.leaf_sha256, pair.files
    stale_temps(install_dir)            # temp files a finished run must not leave
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from .postfix import PostfixInstance

_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.S)
# pftls-hook's temp files in the install dir: `.<final name>.tmp.<pid>`.
TEMP = re.compile(r"^\..+\.tmp\.[0-9]+$")


@dataclass(frozen=True)
class PointedPair:
    files: tuple[Path, ...]  # as main.cf names them: key file first
    key: PrivateKeyTypes
    chain: tuple[x509.Certificate, ...]  # leaf first

    @property
    def leaf_sha256(self) -> str:
        der = self.chain[0].public_bytes(serialization.Encoding.DER)
        return hashlib.sha256(der).hexdigest()


def pointed_files(postfix: PostfixInstance) -> tuple[Path, ...]:
    """The files smtpd loads its key and chain from, in loading order. When
    smtpd_tls_chain_files is set, the legacy cert/key parameters are ignored."""
    out = postfix.postconf(
        "-x", "-h", "smtpd_tls_chain_files", "smtpd_tls_key_file", "smtpd_tls_cert_file"
    )
    chain_files, key_file, cert_file = (line.strip() for line in out.splitlines())
    if chain_files:
        return tuple(Path(f) for f in chain_files.replace(",", " ").split())
    return (Path(key_file),) if key_file == cert_file else (Path(key_file), Path(cert_file))


def pointed_pair(postfix: PostfixInstance) -> PointedPair:
    """Parse what main.cf points at: exactly one private key, at least one certificate,
    and the first certificate (the leaf) for that key."""
    return _pair(pointed_files(postfix))


def pointed_chains(postfix: PostfixInstance) -> list[PointedPair]:
    """Each file smtpd_tls_chain_files lists, parsed as its own pair (several chains, one
    per key algorithm, each file key first then its chain)."""
    return [_pair((path,)) for path in pointed_files(postfix)]


def file_pair(path: Path) -> PointedPair:
    """One combined file (key, then its chain) parsed as a pair: an SNI table's entry."""
    return _pair((path,))


def _pair(files: tuple[Path, ...]) -> PointedPair:
    blocks: list[tuple[str, bytes]] = []
    for path in files:
        assert path.is_file(), f"main.cf names {path}, which is not a file"
        blocks += [(m.group(1).decode(), m.group(0)) for m in _BLOCK.finditer(path.read_bytes())]
    keys = [pem for label, pem in blocks if label.endswith("PRIVATE KEY")]
    certs = [pem for label, pem in blocks if label == "CERTIFICATE"]
    assert len(keys) == 1, f"{files}: {len(keys)} private keys"
    assert certs, f"{files}: no certificate"
    key = serialization.load_pem_private_key(keys[0], password=None)
    chain = tuple(x509.load_pem_x509_certificate(pem) for pem in certs)
    assert chain[0].public_key() == key.public_key(), f"{files}: key does not match the leaf"
    return PointedPair(files, key, chain)


def stale_temps(install_dir: Path) -> list[str]:
    return sorted(p.name for p in install_dir.iterdir() if TEMP.match(p.name))


__all__ = [
    "TEMP",
    "PointedPair",
    "file_pair",
    "pointed_chains",
    "pointed_files",
    "pointed_pair",
    "stale_temps",
]
