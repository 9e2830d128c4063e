"""Pure checks on a lineage's bytes: would Postfix serve a correct certificate from them?

Contract: `verify_bundle(files, anchors=..., hostnames=..., now=..., min_days=...)` takes the
four files' bytes as read once from the lineage, and either returns a `VerifiedBundle` (the
very bytes to install, plus facts about the leaf) or raises `RefusedError(file, reason)`
naming the first file that fails and why. No I/O, no clock: `now` is an input.

The checks are the equivalent of
`openssl verify -untrusted chain.pem -purpose sslserver fullchain.pem` plus what openssl
leaves out: openssl only looks at the first certificate of fullchain.pem, never checks the
key, and `load_pem_x509_certificates` silently drops a truncated last certificate.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from pftls_hook.errors import RefusedError
from pftls_hook.pem import CERT_BLOCK, WARN_DAYS, SourceFiles, combined, name_covers

MIN_RSA_BITS = 2048
_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_CERT_BEGIN = b"-----BEGIN CERTIFICATE-----"
_CERT_END = b"-----END CERTIFICATE-----"
# A whole PEM block, its END line naming the same label as its BEGIN line (RFC 7468).
_ANY_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.S)
_SERVER_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)
_SERVER_EKUS = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}


@dataclass(frozen=True)
class VerifiedBundle:
    """A key and chain that passed every check; the bytes are exactly what was checked."""

    leaf: x509.Certificate
    intermediates: tuple[x509.Certificate, ...]
    key_pem: bytes
    fullchain_pem: bytes
    leaf_sha256: str
    not_after: datetime
    warnings: tuple[str, ...]

    def combined_pem(self) -> bytes:
        return combined(self.key_pem, self.fullchain_pem)


def leaf_sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def load_anchors(pem: bytes, source: str) -> tuple[x509.Certificate, ...]:
    """Trust anchors from a CA bundle, loaded one certificate at a time.

    Loading the system bundle as a whole warns (one root has a non-positive serial) and a
    future cryptography will raise: a root that does not load is skipped, not fatal.
    """
    anchors = []
    for match in CERT_BLOCK.finditer(pem):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                anchors.append(x509.load_pem_x509_certificate(match.group(0)))
            except ValueError:
                continue
    if not anchors:
        raise RefusedError(source, "no CA certificate in this file")
    return tuple(anchors)


def _not_pem(data: bytes) -> str:
    if not data.strip():
        return "empty file, not PEM"
    if data[:1] == b"\x30":
        return "not PEM: binary DER (or PKCS#12) data; convert it with openssl to PEM"
    return "not PEM: no -----BEGIN line"


def _require_only_pem(data: bytes, file: str) -> None:
    """Nothing but PEM blocks and whitespace (CRLF line ends included, as RFC 7468 allows).

    The bytes checked are the bytes installed: a stray line before, between or after the
    blocks would be copied into the file Postfix reads, and OpenSSL's PEM reader is more
    lenient than ours about what it skips.
    """
    if not data.isascii():
        raise RefusedError(file, "holds non-ASCII bytes; PEM is ASCII text")
    stray = _ANY_BLOCK.sub(b"", data).strip()
    if stray.startswith(b"-----BEGIN "):
        raise RefusedError(file, "truncated: a PEM block has no matching END line")
    if stray:
        shown = stray.splitlines()[0][:24].decode()
        raise RefusedError(file, f"holds text outside its PEM blocks ({shown!r}...)")


def _readable(cert: x509.Certificate, file: str, position: int) -> x509.Certificate:
    """A certificate whose extensions, public key and names cryptography can read: all are
    parsed lazily, and a duplicated extension, an unknown key algorithm or a malformed
    issuer name raises only on access."""
    which = f"certificate {position}"
    try:
        cert.extensions  # noqa: B018 - parsed here so that a bad extension is a refusal
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise RefusedError(file, f"{which} has malformed extensions: {exc}") from None
    try:
        cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise RefusedError(file, f"{which} has an unsupported public key: {exc}") from None
    try:
        cert.subject, cert.issuer  # noqa: B018 - parsed lazily too: a bad name raises on use
    except ValueError as exc:
        raise RefusedError(file, f"{which} has a malformed name: {exc}") from None
    return cert


def parse_certificates(data: bytes, file: str) -> list[x509.Certificate]:
    """Every certificate of a PEM file, refusing truncation and stray private keys."""
    if not _BEGIN.search(data):
        raise RefusedError(file, _not_pem(data))
    if b"PRIVATE KEY-----" in data:
        # cert and chain files are world-readable by design: a key in them is exposed.
        raise RefusedError(file, "holds a private key; certificate files must not")
    begins, ends = data.count(_CERT_BEGIN), data.count(_CERT_END)
    if begins == 0:
        raise RefusedError(file, "not PEM: no CERTIFICATE block")
    if ends < begins:
        raise RefusedError(file, f"truncated: {begins - ends} of {begins} certificates never end")
    _require_only_pem(data, file)
    kinds = {kind for kind in _BEGIN.findall(data) if kind != b"CERTIFICATE"}
    if kinds:
        found = ", ".join(sorted(k.decode() for k in kinds))
        raise RefusedError(file, f"holds PEM blocks other than CERTIFICATE: {found}")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise RefusedError(file, "damaged: a CERTIFICATE block does not parse") from None
    if len(certs) != begins:
        raise RefusedError(file, f"truncated or damaged: {begins} blocks, {len(certs)} parse")
    return [_readable(cert, file, i) for i, cert in enumerate(certs, start=1)]


def parse_private_key(data: bytes, file: str) -> PrivateKeyTypes:
    """The one unencrypted private key of a PEM file, of a type and size worth serving."""
    kinds = _BEGIN.findall(data)
    if not kinds:
        raise RefusedError(file, _not_pem(data))
    if b"ENCRYPTED PRIVATE KEY" in kinds or b"Proc-Type: 4,ENCRYPTED" in data:
        raise RefusedError(file, "key is encrypted; Postfix needs it without a password")
    keys = [k for k in kinds if k.endswith(b"PRIVATE KEY")]
    if len(keys) != 1 or len(kinds) != 1:
        found = ", ".join(k.decode() for k in kinds)
        raise RefusedError(file, f"must hold exactly one private key, found: {found}")
    _require_only_pem(data, file)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise RefusedError(file, "key is encrypted; Postfix needs it without a password") from None
    except (ValueError, UnsupportedAlgorithm):
        raise RefusedError(file, "not a readable private key") from None
    if isinstance(key, dsa.DSAPrivateKey):
        raise RefusedError(file, "DSA keys are not accepted for TLS servers")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        raise RefusedError(file, f"RSA key of {key.key_size} bits is too weak (minimum 2048)")
    if not isinstance(key, _SERVER_KEY_TYPES):
        raise RefusedError(file, f"{type(key).__name__} cannot sign for a TLS server")
    return key


def _own_subject(leaf: x509.Certificate) -> DNSName | IPAddress:
    """A name the leaf is valid for, so the path check needs no outside hostname."""
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise RefusedError("cert.pem", "has no subjectAltName; TLS clients require one") from None
    for ip in san.get_values_for_type(x509.IPAddress):
        return IPAddress(ip)
    for dns in san.get_values_for_type(x509.DNSName):
        # The verifier takes no wildcard as subject: any concrete label under it matches.
        return DNSName("pftls-check." + dns[2:] if dns.startswith("*.") else dns)
    raise RefusedError("cert.pem", "subjectAltName holds no DNS name or IP address")


def dns_names(leaf: x509.Certificate) -> list[str]:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [
        *san.get_values_for_type(x509.DNSName),
        *map(str, san.get_values_for_type(x509.IPAddress)),
    ]


def covers(leaf: x509.Certificate, hostname: str) -> bool:
    """Does the leaf's subjectAltName cover `hostname` (pem.name_covers)?"""
    return name_covers(dns_names(leaf), hostname)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _check_chain(leaf: x509.Certificate, chain: Sequence[x509.Certificate]) -> None:
    """The leaf is a server's certificate, and each certificate of chain.pem is a CA that
    issued the one before it, as certbot writes it: TLS 1.2 (RFC 5246 7.4.2) requires that
    order, and Postfix sends the file as it is."""
    if _is_ca(leaf):
        raise RefusedError("cert.pem", "is a CA certificate (basicConstraints CA:TRUE)")
    for position, (lower, upper) in enumerate(zip([leaf, *chain], chain, strict=False), 1):
        if not _is_ca(upper):
            raise RefusedError("chain.pem", f"certificate {position} is not a CA certificate")
        if lower.issuer != upper.subject:
            raise RefusedError(
                "chain.pem",
                f"certificate {position} did not issue the one before it "
                "(wrong order, or a stray certificate)",
            )


def _check_leaf_eku(leaf: x509.Certificate) -> None:
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return  # no EKU means any purpose, as for openssl's sslserver check
    if not _SERVER_EKUS & set(eku):
        raise RefusedError("cert.pem", "extended key usage lacks serverAuth (TLS server)")


def _verify_path(
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    store: Store,
    subject: DNSName | IPAddress,
    now: datetime,
) -> None:
    # A fresh verifier per check: its validation time is fixed when it is built.
    try:
        verifier = PolicyBuilder().store(store).time(now).build_server_verifier(subject)
    except ValueError:
        raise RefusedError(
            "cert.pem", f"subjectAltName {subject.value!s} is not a valid host name"
        ) from None
    verifier.verify(leaf, intermediates)


def verify_bundle(
    files: SourceFiles,
    *,
    anchors: Sequence[x509.Certificate],
    hostnames: Sequence[str],
    now: datetime,
    min_days: int = 1,
) -> VerifiedBundle:
    """Run every check, in the order an admin would want to read the first failure."""
    (leaf, *extra) = parse_certificates(files.cert, "cert.pem")
    if extra:
        raise RefusedError("cert.pem", f"holds {1 + len(extra)} certificates; expected one")
    chain = parse_certificates(files.chain, "chain.pem")
    fullchain = parse_certificates(files.fullchain, "fullchain.pem")
    key = parse_private_key(files.privkey, "privkey.pem")

    if leaf.public_key() != key.public_key():
        raise RefusedError("privkey.pem", "key does not match the certificate in cert.pem")
    if fullchain != [leaf, *chain]:
        raise RefusedError(
            "fullchain.pem",
            f"is not cert.pem followed by chain.pem ({len(fullchain)} certificates, "
            f"expected {1 + len(chain)} in that order)",
        )
    _check_chain(leaf, chain)

    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    if now < not_before:
        raise RefusedError("cert.pem", f"not yet valid: valid from {not_before:%Y-%m-%d %H:%M} UTC")
    if now >= not_after:
        raise RefusedError("cert.pem", f"expired on {not_after:%Y-%m-%d %H:%M} UTC")
    left = not_after - now
    if left < timedelta(days=min_days):
        raise RefusedError(
            "cert.pem", f"only {left.days} days left (minimum {min_days}): renew it first"
        )
    _check_leaf_eku(leaf)

    store = Store(list(anchors))
    try:
        _verify_path(leaf, chain, store, _own_subject(leaf), now)
    except VerificationError as exc:
        raise _path_refusal(str(exc)) from None

    for hostname in hostnames:
        if not covers(leaf, hostname):
            names = ", ".join(dns_names(leaf))
            raise RefusedError("cert.pem", f"does not cover {hostname} (names: {names})")

    notes = []
    if left < timedelta(days=WARN_DAYS):
        notes.append(f"cert.pem: only {left.days} days left; is renewal working?")
    return VerifiedBundle(
        leaf=leaf,
        intermediates=tuple(chain),
        key_pem=files.privkey,
        fullchain_pem=files.fullchain,
        leaf_sha256=leaf_sha256(leaf),
        not_after=not_after,
        warnings=tuple(notes),
    )


def _path_refusal(message: str) -> RefusedError:
    """Name the file an admin must look at for a path-building failure."""
    # cryptography appends the whole certificate's repr: the reason is enough.
    message = message.partition(" (encountered processing")[0]
    lowered = message.lower()
    if "eku" in lowered:
        return RefusedError("chain.pem", "an intermediate's extended key usage lacks serverAuth")
    if "validation time" in lowered:
        return RefusedError("chain.pem", "an intermediate is expired or not yet valid")
    return RefusedError(
        "fullchain.pem", f"no path to a trust anchor (untrusted or incomplete chain: {message})"
    )
