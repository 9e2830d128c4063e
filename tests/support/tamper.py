"""Certificates that cryptography's builder will not make, made anyway.

The builder refuses a duplicated extension and knows only real key algorithms; hostile input
has both. `reissue` copies a leaf with extra extensions (an unknown critical one, say), and
`patched` swaps bytes of equal length inside the to-be-signed part, then signs it again
with the issuer's EC key, so the result is a well-signed certificate that only its content
makes wrong: a second subjectAltName, an unknown public key algorithm.

Like the rest of tests/support, nothing here imports pftls_hook.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .pki import CA, Leaf

# DER of the OIDs the tampering swaps: equal lengths, so every enclosing length stays right.
SAN_OID = bytes.fromhex("0603551d11")  # 2.5.29.17 subjectAltName
SPARE_EXTENSION = x509.ObjectIdentifier("2.5.29.99")  # unassigned, same encoded length
SPARE_OID = bytes.fromhex("0603551d63")
EC_PUBLIC_KEY_OID = bytes.fromhex("06072a8648ce3d0201")  # 1.2.840.10045.2.1 id-ecPublicKey
UNKNOWN_KEY_OID = bytes.fromhex("06072a8648ce3d0263")  # 1.2.840.10045.2.99, no such algorithm


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _length(len(content)) + content


def _element_end(der: bytes, offset: int) -> tuple[int, int]:
    """(start of content, end) of the DER element at `offset`."""
    first = der[offset + 1]
    if first < 0x80:
        return offset + 2, offset + 2 + first
    count = first & 0x7F
    start = offset + 2 + count
    return start, start + int.from_bytes(der[offset + 2 : start], "big")


def patched(cert: x509.Certificate, signer: CA, old: bytes, new: bytes) -> x509.Certificate:
    """`cert` with `old` replaced by `new` (same length) in its TBS part, signed by `signer`."""
    tbs = cert.tbs_certificate_bytes
    if len(old) != len(new) or tbs.count(old) != 1:
        raise ValueError("patch needs one occurrence and equal lengths")
    der = cert.public_bytes(serialization.Encoding.DER)
    outer, _ = _element_end(der, 0)
    _, tbs_end = _element_end(der, outer)
    _, algorithm_end = _element_end(der, tbs_end)
    algorithm = der[tbs_end:algorithm_end]
    if not isinstance(signer.key, ec.EllipticCurvePrivateKey):
        raise TypeError("patched() signs with an EC issuer key only")
    new_tbs = tbs.replace(old, new)
    signature = signer.key.sign(new_tbs, ec.ECDSA(hashes.SHA256()))
    body = new_tbs + algorithm + _tlv(0x03, b"\x00" + signature)
    return x509.load_der_x509_certificate(_tlv(0x30, body))


def reissue(leaf: Leaf, issuer: CA, extra: Sequence[tuple[x509.ExtensionType, bool]]) -> Leaf:
    """The same leaf (names, key, validity, extensions) plus `extra` (value, critical)."""
    cert = leaf.cert
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(leaf.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for extension in cert.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    for value, critical in extra:
        builder = builder.add_extension(value, critical)
    return Leaf(cert=builder.sign(issuer.key, hashes.SHA256()), key=leaf.key, issuer=issuer)


def with_duplicated_san(leaf: Leaf, issuer: CA) -> Leaf:
    """A leaf carrying subjectAltName twice (RFC 5280 4.2: at most one of each)."""
    spare = x509.UnrecognizedExtension(
        SPARE_EXTENSION,
        leaf.cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.public_bytes(),
    )
    twice = reissue(leaf, issuer, [(spare, False)])
    return Leaf(cert=patched(twice.cert, issuer, SPARE_OID, SAN_OID), key=leaf.key, issuer=issuer)


def with_unknown_key_algorithm(leaf: Leaf, issuer: CA) -> Leaf:
    """A leaf whose subjectPublicKeyInfo names an algorithm no library knows."""
    cert = patched(leaf.cert, issuer, EC_PUBLIC_KEY_OID, UNKNOWN_KEY_OID)
    return Leaf(cert=cert, key=leaf.key, issuer=issuer)
