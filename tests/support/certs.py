"""Small certificate factory for test fixtures (never used by pftls_hook itself)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class KeyAndCert:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def key_pem(self) -> bytes:
        # Traditional "EC PRIVATE KEY" PEM: one of the types Postfix's loader accepts.
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


def _now() -> dt.datetime:
    # Back-date a little so a clock step between processes cannot make the
    # certificate "not yet valid".
    return dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _leaf_builder(
    names: list[str], public_key: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    start = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(_san(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def self_signed(hostname: str, *, days: int = 30) -> KeyAndCert:
    """A self-signed ECDSA P-256 server certificate for hostname."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _leaf_builder([hostname], key.public_key(), days)
        .issuer_name(_name(hostname))
        .sign(key, hashes.SHA256())
    )
    return KeyAndCert(key, cert)


def make_ca(common_name: str, *, days: int = 365) -> KeyAndCert:
    """A self-signed CA that can sign server certificates."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyAndCert(key, cert)


def issue_leaf(ca: KeyAndCert, names: list[str], *, days: int = 30) -> KeyAndCert:
    """A server certificate for names (DNS names or IP addresses) signed by ca."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _leaf_builder(names, key.public_key(), days)
        .issuer_name(ca.cert.subject)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return KeyAndCert(key, cert)
