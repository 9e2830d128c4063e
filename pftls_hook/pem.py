"""PEM text and host names, without parsing a certificate.

Contract: pure functions on bytes and strings, and the `SourceFiles` record; nothing here
imports cryptography. What the file layouts and the deploy hook's no-op check need lives
here, so that they start without the 60 ms cryptography costs to import (docs/benchmarks.md);
parsing and every check of a certificate stay in verify.py.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

WARN_DAYS = 14  # fewer days left than this: a warning on every deploy, WARNING in status
CERT_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)
_KEY_BLOCK = re.compile(
    rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.+?-----END [A-Z0-9 ]*PRIVATE KEY-----\n?", re.S
)


@dataclass(frozen=True)
class SourceFiles:
    """The four files of a certbot lineage, as bytes read once."""

    cert: bytes
    chain: bytes
    fullchain: bytes
    privkey: bytes


def split_pem(key_data: bytes, cert_data: bytes) -> SourceFiles:
    """The four lineage files again, from an installed key and full chain (for rollback)."""
    blocks = [m.group(0) + b"\n" for m in CERT_BLOCK.finditer(cert_data)]
    key = _KEY_BLOCK.search(key_data)
    return SourceFiles(
        cert=blocks[0] if blocks else cert_data,
        chain=b"".join(blocks[1:]),
        fullchain=b"".join(blocks),
        privkey=key.group(0) if key else key_data,
    )


def combined(key_pem: bytes, fullchain_pem: bytes) -> bytes:
    """Key first, then leaf and chain: the order `smtpd_tls_chain_files` requires."""
    return (key_pem if key_pem.endswith(b"\n") else key_pem + b"\n") + fullchain_pem


def first_leaf_sha256(pem: bytes) -> str | None:
    """SHA-256 (hex) of the DER of the first certificate in `pem` (what a TLS client is
    sent, so what the probe compares); None if there is none or its base64 is broken."""
    found = CERT_BLOCK.search(pem)
    try:
        der = base64.b64decode(b"".join((found.group(1) if found else b"").split()), validate=True)
    except binascii.Error:
        return None
    return hashlib.sha256(der).hexdigest() if der else None


def name_covers(names: Sequence[str], hostname: str) -> bool:
    """RFC 6125 matching as TLS clients do it: exact name or IP, or a wildcard standing
    for exactly one leftmost label (`*.example.com` covers `mail.example.com` only)."""
    host = hostname.lower().rstrip(".")
    label, dot, parent = host.partition(".")
    for name in names:
        pattern = name.lower().rstrip(".")
        if pattern == host or (
            pattern.startswith("*.") and dot and label and parent == pattern[2:]
        ):
            return True
    return False
