"""TLSA records computed for tests, independently of pftls_hook (cryptography + hashlib)."""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization


def spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def record(cert: x509.Certificate, usage: int = 3, selector: int = 1, mtype: int = 1) -> str:
    """The rdata text, e.g. "3 1 1 <hex>": selector 0 the certificate, 1 its key; matching
    type 0 exact, 1 SHA-256, 2 SHA-512."""
    data = der(cert) if selector == 0 else spki(cert)
    digest = {0: data, 1: hashlib.sha256(data).digest(), 2: hashlib.sha512(data).digest()}
    return f"{usage} {selector} {mtype} {digest[mtype].hex()}"


__all__ = ["der", "record", "spki"]
