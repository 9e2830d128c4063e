"""An in-memory certificate factory for tests: roots, intermediates and leaves on demand.

Everything is built with `cryptography` in memory; bytes leave only through the `*_pem`
properties. The defaults produce what a WebPKI CA such as Let's Encrypt issues, because
`cryptography.x509.verification` applies the CA/B Forum profile and refuses less: a CA needs
basicConstraints and keyUsage(keyCertSign), a leaf needs an authorityKeyIdentifier and a
subjectAltName. Every default can be switched off or bent to build the broken certificates
that pftls-hook must refuse.

    root = CA.root()
    inter = root.intermediate()
    leaf = inter.issue("mail.example.com")
    leaf.cert_pem, leaf.chain_pem, leaf.fullchain_pem, leaf.key_pem()
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyKind = Literal["ec", "rsa", "dsa", "ed25519"]
PrivateKey = (
    ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | dsa.DSAPrivateKey | ed25519.Ed25519PrivateKey
)

SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
# Let's Encrypt's intermediates (R10, E5, ...) carry both; so do ours by default.
CA_EKU: tuple[x509.ObjectIdentifier, ...] = (SERVER_AUTH, CLIENT_AUTH)
LEAF_EKU: tuple[x509.ObjectIdentifier, ...] = (SERVER_AUTH,)


def make_key(kind: KeyKind = "ec", bits: int | None = None) -> PrivateKey:
    """A fresh private key. `bits` is the RSA/DSA size (default 2048); EC is always P-256."""
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=bits or 2048)
    if kind == "dsa":
        return dsa.generate_private_key(key_size=bits or 2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key kind: {kind!r}")


def key_to_pem(
    key: PrivateKey, *, encrypted_with: bytes | None = None, traditional: bool = False
) -> bytes:
    """PEM of a private key: PKCS#8 by default, or the traditional `BEGIN EC/RSA ...` form.

    An encrypted PKCS#8 key is `BEGIN ENCRYPTED PRIVATE KEY`; an encrypted traditional key
    keeps its `BEGIN RSA PRIVATE KEY` line and says `Proc-Type: 4,ENCRYPTED` in a header,
    which is the form a reader is likelier to miss.
    """
    fmt = (
        serialization.PrivateFormat.TraditionalOpenSSL
        if traditional
        else serialization.PrivateFormat.PKCS8
    )
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(encrypted_with)
        if encrypted_with is not None
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption)


def certs_pem(*certs: x509.Certificate) -> bytes:
    """Concatenated PEM blocks, in the order given (the layout of chain.pem, fullchain.pem)."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _default_validity(
    not_before: datetime | None, not_after: datetime | None, lifetime: timedelta
) -> tuple[datetime, datetime]:
    # Backdated by an hour, as real CAs do, so a freshly issued certificate is valid "now"
    # even with a little clock skew between the test and the checks.
    start = not_before or datetime.now(UTC) - timedelta(hours=1)
    return start, not_after or start + lifetime


def _signing_hash(key: PrivateKey) -> hashes.SHA256 | None:
    # Ed25519 signs the message itself; passing a hash to sign() is an error for it.
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _key_usage(*, ca: bool, key: PrivateKey) -> x509.KeyUsage:
    # RSA leaves also get keyEncipherment (RSA key exchange), as certbot's RSA certificates do.
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not ca and isinstance(key, rsa.RSAPrivateKey),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class _Issued:
    """A certificate together with the private key of its subject."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def cert_pem(self) -> bytes:
        return certs_pem(self.cert)

    @property
    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def key_pem(self, encrypted_with: bytes | None = None, *, traditional: bool = False) -> bytes:
        return key_to_pem(self.key, encrypted_with=encrypted_with, traditional=traditional)


@dataclass(frozen=True)
class CA(_Issued):
    """A certificate authority: a self-signed root, or an intermediate under `parent`."""

    parent: CA | None = None

    @classmethod
    def root(
        cls,
        name: str = "pftls test root",
        *,
        key: KeyKind = "ec",
        bits: int | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> CA:
        """A self-signed trust anchor with basicConstraints CA:TRUE and keyUsage keyCertSign."""
        private = make_key(key, bits)
        start, end = _default_validity(not_before, not_after, timedelta(days=3650))
        subject = _name(name)
        ski = x509.SubjectKeyIdentifier.from_public_key(private.public_key())
        builder = (
            _base(subject, subject, private, start, end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(ca=True, key=private), critical=True)
            .add_extension(ski, critical=False)
        )
        return cls(cert=builder.sign(private, _signing_hash(private)), key=private)

    @property
    def is_root(self) -> bool:
        return self.parent is None

    @property
    def path(self) -> tuple[CA, ...]:
        """This CA, then its parents up to and including the root."""
        return (self, *(self.parent.path if self.parent else ()))

    @property
    def chain_certs(self) -> tuple[x509.Certificate, ...]:
        """What certbot's chain.pem holds for a leaf issued here: this CA up to, not
        including, the root (a root is never sent; the client must already trust it)."""
        return tuple(ca.cert for ca in self.path if not ca.is_root)

    def intermediate(
        self,
        name: str = "pftls test intermediate",
        *,
        key: KeyKind = "ec",
        bits: int | None = None,
        eku: Sequence[x509.ObjectIdentifier] | None = CA_EKU,
        path_length: int | None = 0,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> CA:
        """A CA signed by this one. `eku=None` leaves the extension out (any purpose)."""
        private = make_key(key, bits)
        start, end = _default_validity(not_before, not_after, timedelta(days=1095))
        builder = (
            _base(_name(name), self.cert.subject, private, start, end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(_key_usage(ca=True, key=private), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(private.public_key()), critical=False
            )
            .add_extension(self._aki(), critical=False)
        )
        if eku is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        return CA(cert=builder.sign(self.key, _signing_hash(self.key)), key=private, parent=self)

    def issue(
        self,
        *names: str,
        key: KeyKind = "ec",
        bits: int | None = None,
        eku: Sequence[x509.ObjectIdentifier] | None = LEAF_EKU,
        is_ca: bool | None = False,
        san: bool = True,
        aki: bool = True,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> Leaf:
        """A leaf for DNS `names` (wildcards such as `*.example.com` allowed).

        `eku=None` leaves EKU out; `is_ca=None` leaves basicConstraints out; `san=False` and
        `aki=False` build the leaves the WebPKI profile refuses.
        """
        return _leaf(
            self,
            names or ("mail.example.com",),
            key=make_key(key, bits),
            eku=eku,
            is_ca=is_ca,
            san=san,
            aki=aki,
            not_before=not_before,
            not_after=not_after,
        )

    def _aki(self) -> x509.AuthorityKeyIdentifier:
        ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


@dataclass(frozen=True)
class Leaf(_Issued):
    """An end-entity certificate, its key, and the CA that issued it (None if self-signed)."""

    issuer: CA | None = None

    @classmethod
    def self_signed(
        cls,
        *names: str,
        key: KeyKind = "ec",
        bits: int | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> Leaf:
        """A leaf signed by its own key, as `openssl req -x509` or snakeoil makes."""
        return _leaf(
            None,
            names or ("mail.example.com",),
            key=make_key(key, bits),
            eku=LEAF_EKU,
            is_ca=False,
            san=True,
            aki=True,
            not_before=not_before,
            not_after=not_after,
        )

    @property
    def chain_certs(self) -> tuple[x509.Certificate, ...]:
        """The intermediates certbot puts in chain.pem: issuer first, root left out."""
        return self.issuer.chain_certs if self.issuer else ()

    @property
    def chain_pem(self) -> bytes:
        return certs_pem(*self.chain_certs)

    @property
    def fullchain_pem(self) -> bytes:
        """cert.pem followed by chain.pem, byte for byte, as certbot writes fullchain.pem."""
        return self.cert_pem + self.chain_pem


def _general_name(name: str) -> x509.GeneralName:
    """An IP address SAN for an address (clients such as requests match 127.0.0.1 there),
    a DNS name otherwise."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pftls-hook tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _base(
    subject: x509.Name,
    issuer: x509.Name,
    key: PrivateKey,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )


def _leaf(
    issuer: CA | None,
    names: Sequence[str],
    *,
    key: PrivateKey,
    eku: Sequence[x509.ObjectIdentifier] | None,
    is_ca: bool | None,
    san: bool,
    aki: bool,
    not_before: datetime | None,
    not_after: datetime | None,
) -> Leaf:
    # 90 days: the Let's Encrypt lifetime that certbot's 30-days-left renewal is built around.
    start, end = _default_validity(not_before, not_after, timedelta(days=90))
    subject = _name(names[0])
    builder = _base(subject, issuer.cert.subject if issuer else subject, key, start, end)
    builder = builder.add_extension(
        x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
    )
    if aki:
        # A self-signed leaf names its own key, as `openssl req -x509` does.
        builder = builder.add_extension(
            issuer._aki()
            if issuer
            else x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
            critical=False,
        )
    if is_ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=is_ca, path_length=None), critical=True
        )
    builder = builder.add_extension(_key_usage(ca=bool(is_ca), key=key), critical=True)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
        )
    signer = issuer.key if issuer else key
    return Leaf(cert=builder.sign(signer, _signing_hash(signer)), key=key, issuer=issuer)
