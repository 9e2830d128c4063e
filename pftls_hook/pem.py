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
    der = _der(found.group(1)) if found else b""
    return hashlib.sha256(der).hexdigest() if der else None


def anchors_for(chain_pem: bytes, bundle_pem: bytes) -> str:
    """The PEM text of the certificates in `bundle_pem` whose subject is the issuer of a
    certificate in `chain_pem`: the anchors a verifier needs for a chain that reaches a root
    of the bundle in one step (as a served chain does), without OpenSSL loading every root
    of the system bundle (35 ms here). Always a part of the bundle, so a verifier given it
    accepts no chain the whole bundle would not; it may miss an anchor (a name encoded
    otherwise, a path through two bundle certificates), and the caller then decides by the
    whole bundle. Malformed input counts as no certificate."""
    issuers = {
        names[0]
        for block in CERT_BLOCK.finditer(chain_pem)
        if (names := _issuer_subject(_der(block.group(1))))
    }
    return "".join(
        block.group(0).decode("ascii", errors="replace") + "\n"
        for block in CERT_BLOCK.finditer(bundle_pem)
        if (names := _issuer_subject(_der(block.group(1)))) and names[1] in issuers
    )


def _der(base64_text: bytes) -> bytes:
    try:
        return base64.b64decode(b"".join(base64_text.split()), validate=True)
    except binascii.Error:
        return b""


def _issuer_subject(der: bytes) -> tuple[bytes, bytes] | None:
    """The issuer and subject Names of a DER certificate (RFC 5280 4.1: Certificate ::=
    SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber, signature,
    issuer, validity, subject, ... } ... }), as their encoded bytes; None if it is not that."""

    def element(at: int) -> tuple[int, int]:  # (start of the content, end of the element)
        size, at = der[at + 1], at + 2
        if size & 0x80:
            count = size & 0x7F
            if not 0 < count <= 4:
                raise IndexError("unsupported length")
            size, at = int.from_bytes(der[at : at + count], "big"), at + count
        if at + size > len(der):
            raise IndexError("truncated")
        return at, at + size

    try:
        if der[0] != 0x30:
            return None
        tbs, _ = element(0)
        if der[tbs] != 0x30:
            return None
        at, tbs_end = element(tbs)
        fields: list[bytes] = []
        while len(fields) < 6:
            _, end = element(at)
            if end > tbs_end:
                raise IndexError("a field runs past the tbsCertificate")
            fields.append(der[at:end])
            at = end
    except IndexError:
        return None
    if fields[0][:1] == b"\xa0":  # the optional version: the others come one later
        fields = fields[1:]
    issuer, subject = fields[2], fields[4]
    return (issuer, subject) if issuer[:1] == subject[:1] == b"\x30" else None


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
