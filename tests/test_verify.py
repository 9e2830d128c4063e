"""Pure tests of verify_bundle: generated certificates in, a bundle or one refusal out.

Each refusal test breaks exactly one thing in an otherwise valid lineage and checks that
the admin is told which file to look at and why (DESIGN invariant 7: one line naming the
file and the check).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TypedDict

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pftls_hook.errors import PftlsError, RefusedError
from pftls_hook.pem import SourceFiles, anchors_for
from pftls_hook.verify import VerifiedBundle, load_anchors, verify_bundle
from tests.support import tamper
from tests.support.pki import CA, CLIENT_AUTH, KeyKind, Leaf, certs_pem

# One fixed instant for the whole module: validity is checked against `now`, never the clock.
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
HOST = "mail.example.com"


class Validity(TypedDict):
    not_before: datetime
    not_after: datetime


def valid_for(days: float) -> Validity:
    """Validity window of a leaf issued an hour before NOW with `days` left after NOW."""
    return {"not_before": NOW - timedelta(hours=1), "not_after": NOW + timedelta(days=days)}


CA_VALIDITY: Validity = {
    "not_before": NOW - timedelta(days=365),
    "not_after": NOW + timedelta(days=3650),
}


@pytest.fixture(scope="module")
def root() -> CA:
    return CA.root(**CA_VALIDITY)


@pytest.fixture(scope="module")
def inter(root: CA) -> CA:
    return root.intermediate(**CA_VALIDITY)


@pytest.fixture(scope="module")
def leaf(inter: CA) -> Leaf:
    return inter.issue(HOST, **valid_for(60))


def source_files(leaf: Leaf) -> SourceFiles:
    """The four files certbot writes for `leaf`: cert, chain, cert+chain, key."""
    return SourceFiles(
        cert=leaf.cert_pem,
        chain=leaf.chain_pem,
        fullchain=leaf.fullchain_pem,
        privkey=leaf.key_pem(),
    )


def verify(
    files: SourceFiles, root: CA, *, hostnames: tuple[str, ...] = (HOST,), min_days: int = 1
) -> VerifiedBundle:
    return verify_bundle(
        files, anchors=[root.cert], hostnames=hostnames, now=NOW, min_days=min_days
    )


def assert_refused(
    files: SourceFiles,
    root: CA,
    *,
    file: str,
    keyword: str,
    hostnames: tuple[str, ...] = (HOST,),
    min_days: int = 1,
) -> RefusedError:
    """verify_bundle refuses, naming `file`, with `keyword` in the reason."""
    with pytest.raises(RefusedError) as caught:
        verify(files, root, hostnames=hostnames, min_days=min_days)
    error = caught.value
    assert (error.file, str(error)) == (file, f"{file}: {error.reason}"), str(error)
    assert keyword in error.reason, str(error)
    return error


def cut_inside_last_certificate(pem: bytes) -> bytes:
    """The bytes up to the middle of the last PEM block: a copy or write that stopped early."""
    last = pem.rindex(b"-----BEGIN CERTIFICATE-----")
    return pem[: last + (len(pem) - last) // 2]


# ---------------------------------------------------------------- what passes


def test_valid_chain_passes_and_bundle_holds_what_was_checked(leaf: Leaf, root: CA) -> None:
    files = source_files(leaf)
    bundle = verify(files, root)
    assert bundle.leaf == leaf.cert
    assert bundle.intermediates == leaf.chain_certs
    # The bytes installed are the bytes read, not a re-serialisation (STYLE principle 2).
    assert bundle.key_pem == files.privkey
    assert bundle.fullchain_pem == files.fullchain
    assert bundle.combined_pem() == files.privkey + files.fullchain
    assert bundle.leaf_sha256 == hashlib.sha256(leaf.cert_der).hexdigest()
    assert bundle.not_after == leaf.cert.not_valid_after_utc
    assert bundle.not_after.utcoffset() == timedelta(0)
    assert bundle.warnings == ()


def test_chain_of_two_intermediates_passes(root: CA) -> None:
    upper = root.intermediate("upper", path_length=1, **CA_VALIDITY)
    leaf = upper.intermediate("lower", **CA_VALIDITY).issue(HOST, **valid_for(60))
    assert len(verify(source_files(leaf), root).intermediates) == 2


@pytest.mark.parametrize("key", ["rsa", "ed25519"])
def test_other_server_key_types_pass(inter: CA, root: CA, key: KeyKind) -> None:
    leaf = inter.issue(HOST, key=key, **valid_for(60))
    assert verify(source_files(leaf), root).leaf == leaf.cert


def test_traditional_key_format_passes(leaf: Leaf, root: CA) -> None:
    # certbot writes `BEGIN EC PRIVATE KEY` / `BEGIN RSA PRIVATE KEY`, not PKCS#8.
    files = replace(source_files(leaf), privkey=leaf.key_pem(traditional=True))
    assert verify(files, root).key_pem == files.privkey


def test_fewer_than_14_days_left_passes_with_a_warning(inter: CA, root: CA) -> None:
    leaf = inter.issue(HOST, **valid_for(10))
    assert verify(source_files(leaf), root).warnings != ()


def test_wildcard_san_covers_one_label(inter: CA, root: CA) -> None:
    leaf = inter.issue("*.example.com", **valid_for(60))
    assert verify(source_files(leaf), root, hostnames=("mail.example.com",)).leaf == leaf.cert


def test_leaf_without_eku_passes_as_openssl_sslserver_does(inter: CA, root: CA) -> None:
    leaf = inter.issue(HOST, eku=None, **valid_for(60))
    assert verify(source_files(leaf), root).leaf == leaf.cert


def test_no_hostname_required_checks_the_leaf_against_its_own_names(inter: CA, root: CA) -> None:
    leaf = inter.issue("*.example.org", **valid_for(60))
    assert verify(source_files(leaf), root, hostnames=()).leaf == leaf.cert


def test_several_hostnames_all_covered(inter: CA, root: CA) -> None:
    leaf = inter.issue("mx1.example.com", "mx2.example.com", **valid_for(60))
    hosts = ("mx1.example.com", "mx2.example.com")
    assert verify(source_files(leaf), root, hostnames=hosts).leaf == leaf.cert


# ---------------------------------------------------------------- unreadable files


def test_garbage_cert_is_not_pem(leaf: Leaf, root: CA) -> None:
    files = replace(source_files(leaf), cert=b"this is not a certificate\n")
    assert_refused(files, root, file="cert.pem", keyword="not PEM")


def test_der_cert_is_named_der(leaf: Leaf, root: CA) -> None:
    files = replace(source_files(leaf), cert=leaf.cert_der)
    assert_refused(files, root, file="cert.pem", keyword="DER")


def test_fullchain_truncated_in_its_last_certificate(leaf: Leaf, root: CA) -> None:
    files = source_files(leaf)
    files = replace(files, fullchain=cut_inside_last_certificate(files.fullchain))
    assert_refused(files, root, file="fullchain.pem", keyword="truncated")


def test_chain_truncated_in_its_last_certificate(root: CA) -> None:
    # Two intermediates, so that the cut chain still parses to one good certificate:
    # load_pem_x509_certificates returns it and drops the cut one without a word.
    upper = root.intermediate("upper", path_length=1, **CA_VALIDITY)
    leaf = upper.intermediate("lower", **CA_VALIDITY).issue(HOST, **valid_for(60))
    files = source_files(leaf)
    files = replace(files, chain=cut_inside_last_certificate(files.chain))
    assert_refused(files, root, file="chain.pem", keyword="truncated")


def test_encrypted_key(leaf: Leaf, root: CA) -> None:
    files = replace(source_files(leaf), privkey=leaf.key_pem(encrypted_with=b"secret"))
    assert_refused(files, root, file="privkey.pem", keyword="encrypted")


def test_encrypted_traditional_key(leaf: Leaf, root: CA) -> None:
    # `BEGIN EC PRIVATE KEY` with a Proc-Type header: encrypted although the BEGIN line
    # does not say so.
    privkey = leaf.key_pem(encrypted_with=b"secret", traditional=True)
    files = replace(source_files(leaf), privkey=privkey)
    assert_refused(files, root, file="privkey.pem", keyword="encrypted")


def test_empty_key_is_not_pem(leaf: Leaf, root: CA) -> None:
    files = replace(source_files(leaf), privkey=b"")
    assert_refused(files, root, file="privkey.pem", keyword="not PEM")


# ---------------------------------------------------------------- key


def test_key_of_another_certificate(leaf: Leaf, inter: CA, root: CA) -> None:
    other = inter.issue(HOST, **valid_for(60))
    files = replace(source_files(leaf), privkey=other.key_pem())
    assert_refused(files, root, file="privkey.pem", keyword="does not match")


def test_rsa_1024_leaf_key(inter: CA, root: CA) -> None:
    leaf = inter.issue(HOST, key="rsa", bits=1024, **valid_for(60))
    assert_refused(source_files(leaf), root, file="privkey.pem", keyword="1024")


def test_dsa_leaf_key(inter: CA, root: CA) -> None:
    leaf = inter.issue(HOST, key="dsa", **valid_for(60))
    assert_refused(source_files(leaf), root, file="privkey.pem", keyword="DSA")


# ---------------------------------------------------------------- validity


def test_expired_leaf(inter: CA, root: CA) -> None:
    leaf = inter.issue(
        HOST, not_before=NOW - timedelta(days=90), not_after=NOW - timedelta(seconds=1)
    )
    assert_refused(source_files(leaf), root, file="cert.pem", keyword="expired")


def test_not_yet_valid_leaf(inter: CA, root: CA) -> None:
    leaf = inter.issue(
        HOST, not_before=NOW + timedelta(hours=1), not_after=NOW + timedelta(days=90)
    )
    assert_refused(source_files(leaf), root, file="cert.pem", keyword="not yet valid")


def test_fewer_days_left_than_min_days(inter: CA, root: CA) -> None:
    leaf = inter.issue(HOST, **valid_for(5))
    assert_refused(source_files(leaf), root, file="cert.pem", keyword="days left", min_days=7)


# ---------------------------------------------------------------- purpose and trust


def test_client_auth_only_leaf(inter: CA, root: CA) -> None:
    leaf = inter.issue(HOST, eku=[CLIENT_AUTH], **valid_for(60))
    assert_refused(source_files(leaf), root, file="cert.pem", keyword="serverAuth")


def test_client_auth_only_intermediate(root: CA) -> None:
    client_ca = root.intermediate("client CA", eku=[CLIENT_AUTH], **CA_VALIDITY)
    leaf = client_ca.issue(HOST, **valid_for(60))
    assert_refused(source_files(leaf), root, file="chain.pem", keyword="serverAuth")


def test_chain_to_a_root_not_among_anchors(leaf: Leaf) -> None:
    stranger = CA.root("some other root", **CA_VALIDITY)
    assert_refused(source_files(leaf), stranger, file="fullchain.pem", keyword="trust anchor")


def test_self_signed_leaf_is_refused(root: CA) -> None:
    # Its chain.pem is empty (certbot never writes one so) and its fullchain leads to no
    # anchor: either refusal keeps a snakeoil certificate away from Postfix.
    leaf = Leaf.self_signed(HOST, **valid_for(60))
    with pytest.raises(RefusedError) as caught:
        verify(source_files(leaf), root)
    assert caught.value.file in {"chain.pem", "fullchain.pem"}, str(caught.value)


def test_chain_of_another_intermediate(leaf: Leaf, root: CA) -> None:
    # fullchain.pem is right; chain.pem holds a sibling intermediate. openssl verify with
    # -untrusted chain.pem would still pass on fullchain's first certificate.
    sibling = root.intermediate("sibling", **CA_VALIDITY)
    files = replace(source_files(leaf), chain=sibling.cert_pem)
    assert_refused(files, root, file="fullchain.pem", keyword="cert.pem followed by chain.pem")


def test_fullchain_missing_the_intermediate(leaf: Leaf, root: CA) -> None:
    files = replace(source_files(leaf), fullchain=leaf.cert_pem)
    assert_refused(files, root, file="fullchain.pem", keyword="cert.pem followed by chain.pem")


def test_fullchain_of_another_leaf(leaf: Leaf, inter: CA, root: CA) -> None:
    other = inter.issue(HOST, **valid_for(60))
    files = replace(source_files(leaf), fullchain=other.fullchain_pem)
    assert_refused(files, root, file="fullchain.pem", keyword="cert.pem followed by chain.pem")


def test_hostname_not_covered(leaf: Leaf, root: CA) -> None:
    assert_refused(
        source_files(leaf),
        root,
        file="cert.pem",
        keyword="does not cover",
        hostnames=("smtp.example.net",),
    )


@pytest.mark.parametrize("host", ["example.com", "a.mail.example.com"])
def test_wildcard_covers_exactly_one_label(inter: CA, root: CA, host: str) -> None:
    leaf = inter.issue("*.example.com", **valid_for(60))
    assert_refused(
        source_files(leaf), root, file="cert.pem", keyword="does not cover", hostnames=(host,)
    )


# ---------------------------------------------------------------- only PEM, as installed


def crlf(pem: bytes) -> bytes:
    return pem.replace(b"\n", b"\r\n")


def test_crlf_line_ends_pass_and_are_installed_as_read(leaf: Leaf, root: CA) -> None:
    # RFC 7468 allows CRLF; OpenSSL (and so Postfix) reads it.
    files = SourceFiles(
        cert=crlf(leaf.cert_pem),
        chain=crlf(leaf.chain_pem),
        fullchain=crlf(leaf.fullchain_pem),
        privkey=crlf(leaf.key_pem()),
    )
    assert verify(files, root).combined_pem() == files.privkey + files.fullchain


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("cert", b"garbage\n"),
        ("chain", b"Bag Attributes\n"),
        ("privkey", b"# trailing comment\n"),
        ("fullchain", b"\x00\x00"),
    ],
)
def test_text_outside_the_pem_blocks_is_refused(
    leaf: Leaf, root: CA, kind: str, extra: bytes
) -> None:
    # Whatever passes is installed byte for byte: nothing but PEM blocks may pass.
    files = source_files(leaf)
    files = replace(files, **{kind: getattr(files, kind) + extra})
    assert_refused(files, root, file=f"{kind}.pem", keyword="outside its PEM blocks")


def test_non_ascii_bytes_are_refused(leaf: Leaf, root: CA) -> None:
    files = replace(source_files(leaf), cert=b"# \xff\xfe\n" + leaf.cert_pem)
    assert_refused(files, root, file="cert.pem", keyword="non-ASCII")


def test_another_pem_block_in_a_certificate_file_is_refused(leaf: Leaf, root: CA) -> None:
    crl = b"-----BEGIN X509 CRL-----\nMAA=\n-----END X509 CRL-----\n"
    files = replace(source_files(leaf), chain=leaf.chain_pem + crl)
    assert_refused(files, root, file="chain.pem", keyword="X509 CRL")


# ---------------------------------------------------------------- odd certificates


def test_duplicated_extension_is_a_refusal(leaf: Leaf, inter: CA, root: CA) -> None:
    odd = tamper.with_duplicated_san(leaf, inter)
    assert_refused(source_files(odd), root, file="cert.pem", keyword="malformed extensions")


def test_unknown_public_key_algorithm_is_a_refusal(leaf: Leaf, inter: CA, root: CA) -> None:
    odd = tamper.with_unknown_key_algorithm(leaf, inter)
    assert_refused(source_files(odd), root, file="cert.pem", keyword="unsupported public key")


def test_san_that_is_no_host_name_is_a_refusal(inter: CA, root: CA) -> None:
    odd = inter.issue("exa mple", **valid_for(60))
    assert_refused(source_files(odd), root, file="cert.pem", keyword="not a valid host name")


def test_ca_certificate_as_leaf(inter: CA, root: CA) -> None:
    odd = inter.issue(HOST, is_ca=True, **valid_for(60))
    assert_refused(source_files(odd), root, file="cert.pem", keyword="CA certificate")


def test_intermediate_that_is_not_a_ca(inter: CA, root: CA) -> None:
    impostor = inter.issue("impostor.example.com", **valid_for(60))
    odd = CA(cert=impostor.cert, key=impostor.key, parent=inter).issue(HOST, **valid_for(60))
    assert_refused(source_files(odd), root, file="chain.pem", keyword="not a CA")


def test_chain_in_the_wrong_order(root: CA) -> None:
    # The path verifier treats intermediates as a pool; TLS 1.2 clients need the order.
    upper = root.intermediate("upper", path_length=1, **CA_VALIDITY)
    lower = upper.intermediate("lower", **CA_VALIDITY)
    leaf = lower.issue(HOST, **valid_for(60))
    backwards = certs_pem(upper.cert, lower.cert)
    files = SourceFiles(
        cert=leaf.cert_pem,
        chain=backwards,
        fullchain=leaf.cert_pem + backwards,
        privkey=leaf.key_pem(),
    )
    assert_refused(files, root, file="chain.pem", keyword="did not issue the one before it")


# ---------------------------------------------------------------- anchors


def test_load_anchors_reads_every_certificate(root: CA) -> None:
    other = CA.root("second root", **CA_VALIDITY)
    # System bundles carry comments between the blocks.
    bundle = b"# first\n" + root.cert_pem + b"\n# second\n" + other.cert_pem
    assert load_anchors(bundle, "ca-certificates.crt") == (root.cert, other.cert)


@pytest.mark.parametrize("data", [b"", b"no certificates here\n"])
def test_load_anchors_refuses_a_file_without_certificates(data: bytes) -> None:
    with pytest.raises(RefusedError) as caught:
        load_anchors(data, "anchors.pem")
    assert caught.value.file == "anchors.pem"


def test_refused_error_is_a_pftls_error(leaf: Leaf, root: CA) -> None:
    # The CLI maps PftlsError to an exit code and a one-line message; a refusal must be one.
    files = replace(source_files(leaf), cert=b"")
    with pytest.raises(PftlsError):
        verify(files, root)


def test_pem_helpers_agree_with_cryptography(leaf: Leaf) -> None:
    # The fixture itself: certbot's fullchain.pem is cert.pem then chain.pem, byte for byte.
    loaded = x509.load_pem_x509_certificates(leaf.fullchain_pem)
    assert loaded == [leaf.cert, *leaf.chain_certs]
    assert leaf.fullchain_pem == certs_pem(leaf.cert, *leaf.chain_certs)
    key = serialization.load_pem_private_key(leaf.key_pem(), password=None)
    assert key.public_key() == leaf.cert.public_key()


def test_anchors_for_a_chain_are_the_bundle_certificates_issuing_one_of_its_own(
    leaf: Leaf, inter: CA, root: CA
) -> None:
    """The no-op's verifying client gets only these (hook.py): each bundle certificate whose
    subject is the issuer of a chain certificate, as cryptography reads the names."""
    others = [CA.root(f"unrelated root {i}") for i in range(3)]
    bundle = [*others, root, inter, others[0].intermediate("unrelated intermediate")]
    chain = x509.load_pem_x509_certificates(leaf.fullchain_pem)
    issuers = {c.issuer for c in chain}
    expected = [c for c in bundle if c.cert.subject in issuers]
    assert [c.cert for c in expected] == [root.cert, inter.cert]  # the test's own premise

    got = anchors_for(leaf.fullchain_pem, b"".join(c.cert_pem for c in bundle))

    assert x509.load_pem_x509_certificates(got.encode()) == [c.cert for c in expected]
    assert anchors_for(leaf.fullchain_pem, b"".join(c.cert_pem for c in others)) == ""
    assert anchors_for(leaf.fullchain_pem, b"not a certificate\n") == ""


def _der_element(data: bytes, at: int) -> tuple[int, int]:
    """(start of the content, end) of the DER element at `at` (definite lengths)."""
    size, at = data[at + 1], at + 2
    if size & 0x80:
        count = size & 0x7F
        size, at = int.from_bytes(data[at : at + count], "big"), at + count
    return at, at + size


def _der_sequence(content: bytes) -> bytes:
    size = len(content)
    length = bytes([size]) if size < 0x80 else bytes([0x82]) + size.to_bytes(2, "big")
    return b"\x30" + length + content


def _without_version(der: bytes) -> bytes:
    """The certificate as a version-1 one writes it: the tbsCertificate without its
    optional [0] version field (the signature no longer matches; only names are read)."""
    tbs, _ = _der_element(der, 0)
    start, end = _der_element(der, tbs)
    _, version_end = _der_element(der, start)
    assert der[start] == 0xA0, "the test needs a certificate with a version field"
    body = _der_sequence(der[version_end:end])
    _, cert_end = _der_element(der, 0)
    return _der_sequence(body + der[end:cert_end])


def test_anchors_for_reads_a_certificate_without_a_version_field(
    leaf: Leaf, inter: CA, root: CA
) -> None:
    v1_root = _without_version(root.cert_der)
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(v1_root)
    pem += b"-----END CERTIFICATE-----\n"

    got = anchors_for(leaf.fullchain_pem, pem)

    assert got.encode() == pem  # its subject, read from where a version-1 one has it
