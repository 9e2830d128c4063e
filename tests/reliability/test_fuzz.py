"""Case 5 of issue 5: fuzzing the parsers and the verification entry point with hypothesis.

The property everywhere: nothing but the documented outcome. A parser returns its value or
raises `RefusedError`, and what it accepts meets its contract (only certificate blocks,
every one parsed; one key of a type a server signs with, RSA of 2048 bits or more);
`split_pem` gives an installed file back as the lineage's files, and what it makes of a
damaged one verifies as the original or is refused; `read_lineage` returns a snapshot of
one archive version or raises `RefusedError`/`NotSettledError`, promptly; `verify_bundle`
returns a `VerifiedBundle` or raises `RefusedError`, and what it accepts from a mutated
bundle is still the original leaf with its own key. Any other exception (ValueError,
DuplicateExtension, UnsupportedAlgorithm, ...) would reach the CLI as an internal error:
a failure here.

Bounded for CI: a fixed number of examples per target, no per-example deadline (the first
call pays for imports), derandomized so that CI runs are repeatable; about 30 s in all.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pftls_hook.errors import NotSettledError, RefusedError
from pftls_hook.lineage import LineageSnapshot, read_lineage, renewed_lineage
from pftls_hook.pem import CERT_BLOCK, SourceFiles, anchors_for, split_pem
from pftls_hook.verify import (
    VerifiedBundle,
    load_anchors,
    parse_certificates,
    parse_private_key,
    verify_bundle,
)
from tests.support import lineage as fake
from tests.support import tamper
from tests.support.pki import CA, Leaf, key_to_pem, make_key
from tests.support.scorecard import Scorecard

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
HOST = "mail.example.com"
NAME = HOST
KINDS = ("cert", "chain", "fullchain", "privkey")
# Examples per target: about 30 s in all on a CI machine.
PARSER_EXAMPLES, VERIFY_EXAMPLES, LINEAGE_EXAMPLES = 2000, 3000, 800
SPLIT_EXAMPLES = 1000  # each one verifies what it split, as a rollback does
# A read that takes longer than this would be a hang in certbot's hook.
READ_BOUND = 2.0


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# What fuzzing found, and where it is now refused (docs/reliability.md lists these).
FINDINGS = (
    "a certificate with a duplicated extension raised DuplicateExtension (internal error, "
    "exit 1) from `leaf.extensions`: now `cert.pem: certificate 1 has malformed extensions`",
    "a certificate whose public key algorithm is unknown raised UnsupportedAlgorithm from "
    "`public_key()`: now `... has an unsupported public key`",
    "a subjectAltName that is not a host name (`exa mple`) raised ValueError building the "
    "verifier: now `cert.pem: subjectAltName ... is not a valid host name`",
    "links of one lineage into two archive dirs (fullchain.pem from another lineage, all on "
    "version 1) were read as one version: now `links lead into different archive directories`",
    "a bit flip in a certificate's issuer name (invalid UTF-8 in a UTF8String) raised "
    "ValueError from `issuer` while checking the chain order, found splitting a damaged "
    "installed file for rollback: now `certificate 1 has a malformed name`",
)


# ------------------------------------------------------------------------------ material

CA_VALIDITY = {"not_before": NOW - timedelta(days=365), "not_after": NOW + timedelta(days=3650)}
ROOT = CA.root("fuzz root", **CA_VALIDITY)
UPPER = ROOT.intermediate("fuzz upper", path_length=1, **CA_VALIDITY)
LOWER = UPPER.intermediate("fuzz lower", **CA_VALIDITY)
LEAF_VALIDITY = {"not_before": NOW - timedelta(hours=1), "not_after": NOW + timedelta(days=60)}
LEAVES = (
    LOWER.issue(HOST, **LEAF_VALIDITY),  # EC key, two intermediates
    ROOT.intermediate("fuzz rsa", **CA_VALIDITY).issue(HOST, key="rsa", **LEAF_VALIDITY),
)


def files_of(leaf: Leaf) -> SourceFiles:
    return SourceFiles(
        cert=leaf.cert_pem, chain=leaf.chain_pem, fullchain=leaf.fullchain_pem,
        privkey=leaf.key_pem(),
    )  # fmt: skip


BLOCK = re.compile(rb"-----BEGIN [A-Z0-9 ]+-----.*?-----END [A-Z0-9 ]+-----\r?\n?", re.S)
# Odd certificates for the block pool, each once a crash: shuffles put them in any file.
ODD = (
    tamper.with_duplicated_san(LOWER.issue(HOST, **LEAF_VALIDITY), LOWER),
    tamper.with_unknown_key_algorithm(LOWER.issue(HOST, **LEAF_VALIDITY), LOWER),
    LOWER.issue("exa mple", **LEAF_VALIDITY),
    LOWER.issue(HOST, is_ca=True, **LEAF_VALIDITY),
    Leaf.self_signed(HOST, **LEAF_VALIDITY),
)
# Keys a TLS server must not be given (DSA, RSA under 2048 bits, X25519 cannot sign), and
# one it may (Ed25519): without them the key checks below would have nothing to catch.
ODD_KEYS = (
    key_to_pem(make_key("dsa", 1024)),
    key_to_pem(make_key("rsa", 1024)),
    x25519.X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ),
    key_to_pem(make_key("ed25519")),
)
# Every PEM block at hand: certificates of both chains, the keys, a root, the odd ones.
REAL_BLOCKS = sorted(
    {
        block
        for leaf in (*LEAVES, *ODD)
        for data in (leaf.fullchain_pem, leaf.key_pem(), leaf.key_pem(traditional=True))
        for block in BLOCK.findall(data)
    }
    | {ROOT.cert_pem, *ODD_KEYS}
)
LABELS = (
    b"CERTIFICATE", b"PRIVATE KEY", b"EC PRIVATE KEY", b"RSA PRIVATE KEY",
    b"ENCRYPTED PRIVATE KEY", b"X509 CRL", b"PUBLIC KEY", b"TRUSTED CERTIFICATE", b"",
)  # fmt: skip


# ---------------------------------------------------------------------------- strategies


@st.composite
def made_up_block(draw: st.DrawFn) -> bytes:
    """A PEM-shaped block: a label, perhaps headers, a base64 body of anything."""
    begin, end = draw(st.sampled_from(LABELS)), draw(st.sampled_from(LABELS))
    body = draw(st.one_of(st.binary(max_size=300), st.sampled_from(REAL_BLOCKS)))
    headers = draw(st.sampled_from([b"", b"Proc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\n"]))
    import base64

    encoded = base64.encodebytes(body)
    if draw(st.booleans()):
        encoded = encoded[: draw(st.integers(0, len(encoded)))]
    return b"-----BEGIN " + begin + b"-----\n" + headers + encoded + b"-----END " + end + b"-----\n"


PIECES = st.one_of(
    st.sampled_from(REAL_BLOCKS),
    made_up_block(),
    st.binary(max_size=48),
    st.sampled_from([b"\n", b"\r\n", b" \t", b"\x00", b"\xff\xfe", b"# comment\n", b"-----"]),
)
PEMISH = st.one_of(st.binary(max_size=1024), st.lists(PIECES, max_size=6).map(b"".join))


def _flip(data: bytes, draw: st.DrawFn) -> bytes:
    if not data:
        return data
    at = draw(st.integers(0, len(data) - 1))
    return data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1 :]


@st.composite
def damage(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with one to three bit flips, cuts or splices of random bytes."""
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["flip", "truncate", "splice"]))
        if how == "flip":
            data = _flip(data, draw)
        elif how == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        else:
            at = draw(st.integers(0, len(data)))
            data = data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    return data


@st.composite
def mutated(draw: st.DrawFn) -> tuple[Leaf, SourceFiles]:
    """A bundle as certbot writes it, for a good leaf or an odd one (the seeds), with up to
    three mutations: bit flips, truncations, blocks shuffled across files, a file swapped
    for another, random bytes spliced in."""
    leaf = draw(st.sampled_from((*LEAVES, *ODD)))
    files = dict(zip(KINDS, (getattr(files_of(leaf), k) for k in KINDS), strict=True))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(KINDS))
        data = files[kind]
        how = draw(st.sampled_from(["flip", "truncate", "shuffle", "swap", "splice"]))
        if how == "flip":
            data = _flip(data, draw)
        elif how == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        elif how == "shuffle":
            pool = [b for v in files.values() for b in BLOCK.findall(v)] + list(REAL_BLOCKS)
            data = b"".join(draw(st.lists(st.sampled_from(pool), max_size=4)))
        elif how == "swap":
            data = files[draw(st.sampled_from(KINDS))]
        else:
            at = draw(st.integers(0, len(data)))
            data = data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
        files[kind] = data
    return leaf, SourceFiles(**files)


# ------------------------------------------------------------------------------ the score


@pytest.fixture(scope="module")
def card() -> Iterator[Scorecard]:
    card = Scorecard("fuzz", "Fuzzing (hypothesis)")
    started = time.monotonic()
    yield card
    passed, total = card.count()
    examples = sum(card.counts.values())
    card.record(
        f"{passed}/{total} targets: nothing but the documented outcome in {examples} examples",
        examples=examples,
        seconds=round(time.monotonic() - started, 1),
        findings=list(FINDINGS),
    )


def fuzzed(card: Scorecard, target: str, test: Callable[[], None]) -> None:
    """Run a hypothesis test as one attempt of the score, counting its examples."""
    with card.attempt(target) as notes:
        test()
        notes.append(f"{card.counts[target]} examples")


def refused_or(kind: type | tuple[type, ...], call: Callable[[], object]) -> object:
    """`call()` returns a `kind` or raises RefusedError; anything else fails the test."""
    try:
        value = call()
    except RefusedError as exc:
        assert "\n" not in str(exc), f"a refusal of more than one line: {exc!r}"
        return exc
    assert isinstance(value, kind), f"{type(value).__name__}, not {kind}"
    return value


# Keys a TLS server can sign with (verify.py's contract, restated here independently).
SERVER_KEYS = (
    ec.EllipticCurvePrivateKey,
    rsa.RSAPrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)


def public_der(key: PrivateKeyTypes) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def accepted_key(data: bytes) -> None:
    """What parse_private_key may accept: one private key block and nothing else, of a type
    a server signs with, RSA of 2048 bits or more."""
    key = refused_or(SERVER_KEYS, lambda: parse_private_key(data, "privkey.pem"))
    if isinstance(key, RefusedError):
        return
    assert data.count(b"-----BEGIN ") == 1, "a key accepted next to another block"
    assert b"PRIVATE KEY-----" in data
    if isinstance(key, rsa.RSAPrivateKey):
        assert key.key_size >= 2048, f"a {key.key_size}-bit RSA key accepted"


def accepted_certificates(data: bytes) -> None:
    """What parse_certificates may accept: only CERTIFICATE blocks, every one of them
    parsed (none dropped), no private key anywhere in the file."""
    certs = refused_or(list, lambda: parse_certificates(data, "cert.pem"))
    if isinstance(certs, RefusedError):
        return
    assert b"PRIVATE KEY" not in data, "a certificate file with a private key accepted"
    assert len(certs) == data.count(b"-----BEGIN CERTIFICATE-----") == data.count(b"-----BEGIN ")
    assert all(isinstance(c, x509.Certificate) for c in certs)


def _parsed_blocks(pem: bytes) -> list[x509.Certificate]:
    """Each certificate block that cryptography reads, one by one, as anchors_for splits
    them (a block whose header cryptography's own PEM reader would not see counts too)."""
    parsed = []
    for block in CERT_BLOCK.finditer(pem):
        with contextlib.suppress(ValueError):
            parsed.append(x509.load_pem_x509_certificate(block.group(0)))
    return parsed


def accepted_anchors(data: bytes) -> None:
    """load_anchors: at least one certificate, never more than the file has blocks; and
    the no-op's anchors_for, with `data` as the bundle and as the chain: never raises,
    returns whole certificate blocks of the bundle, in its order, and (where cryptography
    reads them) only certificates whose subject issues one of the chain's blocks."""
    for chain, bundle in ((LEAVES[0].fullchain_pem, data), (data, data)):
        picked = anchors_for(chain, bundle)
        rest = picked
        for block in CERT_BLOCK.finditer(bundle):
            rest = rest.removeprefix(block.group(0).decode("ascii", errors="replace") + "\n")
        assert rest == "", f"not whole blocks of the bundle: {picked[:80]!r}"
        chosen = _parsed_blocks(picked.encode())
        issuers = {c.issuer for c in _parsed_blocks(chain)}
        assert all(c.subject in issuers for c in chosen)
    anchors = refused_or(tuple, lambda: load_anchors(data, "ca.pem"))
    if isinstance(anchors, RefusedError):
        return
    assert 0 < len(anchors) <= data.count(b"-----BEGIN CERTIFICATE-----")
    assert all(isinstance(c, x509.Certificate) for c in anchors)


# -------------------------------------------------------------------------------- PEM


def test_pem_parsers(card: Scorecard) -> None:
    @fuzz(PARSER_EXAMPLES)
    @given(PEMISH)
    def parsers(data: bytes) -> None:
        card.counts["pem parsers"] += 1
        accepted_certificates(data)
        accepted_key(data)
        accepted_anchors(data)

    fuzzed(card, "pem parsers", parsers)


def test_the_odd_keys_are_refused() -> None:
    """The pool's odd keys are refused as such, so the fuzzing above meets real refusals."""
    reasons = ("DSA keys are not accepted", "1024 bits is too weak", "cannot sign for a TLS")
    for key, reason in zip(ODD_KEYS, reasons, strict=False):
        with pytest.raises(RefusedError, match=reason):
            parse_private_key(key, "privkey.pem")
    assert isinstance(parse_private_key(ODD_KEYS[-1], "privkey.pem"), ed25519.Ed25519PrivateKey)


def test_a_certificate_with_a_malformed_issuer_name_is_refused() -> None:
    """What the split_pem target found: cryptography parses names lazily too."""
    der = LEAVES[0].cert_der
    at = der.index(b"fuzz lower")  # the issuer's CN: the issuer comes before the subject
    bent = der[:at] + b"f\x85zz lower" + der[at + len(b"fuzz lower") :]
    pem = x509.load_der_x509_certificate(bent).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(RefusedError, match="certificate 1 has a malformed name"):
        parse_certificates(pem, "cert.pem")


def test_split_pem_gives_back_what_verifies(card: Scorecard) -> None:
    """Rollback re-reads installed files with split_pem and verifies what it gets. An
    installed file as written (combined: key then full chain; separate: key, full chain)
    splits into the lineage's files byte for byte; a damaged one splits into something
    verify_bundle refuses, or into the very leaf and key it was."""
    for leaf in LEAVES:
        key, chain = leaf.key_pem(), leaf.fullchain_pem
        assert split_pem(key, chain) == files_of(leaf)
        assert split_pem(key + chain, key + chain) == files_of(leaf)

    @fuzz(SPLIT_EXAMPLES)
    @given(st.sampled_from(LEAVES), st.booleans(), st.data())
    def split(leaf: Leaf, one_file: bool, data: st.DataObject) -> None:
        card.counts["split_pem"] += 1
        key, chain = leaf.key_pem(), leaf.fullchain_pem
        damaged = data.draw(damage(key + chain if one_file else chain))
        files = split_pem(damaged, damaged) if one_file else split_pem(key, damaged)
        outcome = refused_or(
            VerifiedBundle,
            lambda: verify_bundle(files, anchors=[ROOT.cert], hostnames=(HOST,), now=NOW),
        )
        if isinstance(outcome, VerifiedBundle):
            assert outcome.leaf == leaf.cert
            assert public_der(parse_private_key(outcome.key_pem, "k")) == public_der(leaf.key)

    fuzzed(card, "split_pem", split)


# --------------------------------------------------------------------------- verify_bundle


def test_verify_bundle_on_mutated_bundles(card: Scorecard) -> None:
    @fuzz(VERIFY_EXAMPLES)
    @given(mutated(), st.sampled_from([(), (HOST,), ("other.example.com",), ("*",)]))
    def verify(sample: tuple[Leaf, SourceFiles], hostnames: tuple[str, ...]) -> None:
        card.counts["verify_bundle"] += 1
        leaf, files = sample
        outcome = refused_or(
            VerifiedBundle,
            lambda: verify_bundle(files, anchors=[ROOT.cert], hostnames=hostnames, now=NOW),
        )
        if isinstance(outcome, VerifiedBundle):
            # Whatever survived the mutation is the very certificate and key it started as.
            assert outcome.leaf == leaf.cert
            assert outcome.key_pem == files.privkey
            key = parse_private_key(files.privkey, "privkey.pem")
            assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
            assert key.private_numbers() == leaf.key.private_numbers()  # type: ignore[union-attr]

    fuzzed(card, "verify_bundle", verify)


# ------------------------------------------------------------------------------ lineage

TARGETS = (
    "version-2", "other-kind", "outside", "outside-relative",
    "missing-target", "itself", "loop", "directory", "fifo", "plain-file", "no-link",
    "dev-null", "other-lineage",
)  # fmt: skip
CONTENTS = ("valid", "valid", "valid", "random", "empty")
MODES = (0o644, 0o600, 0o644, 0o600, 0o640, 0o666, 0o620)


@st.composite
def layouts(draw: st.DrawFn) -> dict[str, object]:
    return {
        # Half the links good, so that one bent link among good ones is common.
        "targets": {
            kind: draw(st.one_of(st.just("good"), st.sampled_from(TARGETS))) for kind in KINDS
        },
        "contents": {kind: draw(st.sampled_from(CONTENTS)) for kind in KINDS},
        "modes": {kind: draw(st.sampled_from(MODES)) for kind in KINDS},
        "random": draw(st.binary(max_size=256)),
        "previous": draw(st.booleans()) and draw(st.booleans()),
        "dir_mode": draw(st.sampled_from((0o755, 0o700, 0o755, 0o775))),
    }


def _point(config: Path, outside: Path, kind: str, target: str) -> None:
    link = fake.link_path(config, NAME, kind)
    archive = fake.archive_dir(config, NAME)
    if target == "no-link":
        link.unlink()
        return
    if target == "plain-file":
        link.unlink()
        link.write_bytes(b"not a link\n")
        return
    destination: str | Path = {
        "good": f"../../archive/{NAME}/{kind}1.pem",
        "version-2": f"../../archive/{NAME}/{kind}2.pem",
        "other-kind": f"../../archive/{NAME}/{'chain' if kind != 'chain' else 'cert'}1.pem",
        "outside": outside / f"{kind}1.pem",
        "outside-relative": f"../../../outside/{kind}1.pem",
        "missing-target": f"../../archive/{NAME}/{kind}9.pem",
        "itself": f"{kind}.pem",
        "loop": f"../../archive/{NAME}/{kind}7.pem",
        "directory": f"../../archive/{NAME}/{kind}5.pem",
        "fifo": f"../../archive/{NAME}/{kind}6.pem",
        "dev-null": "/dev/null",
        "other-lineage": f"../../archive/other/{kind}1.pem",
    }[target]
    if target == "loop":
        os.symlink(f"../../live/{NAME}/{kind}.pem", archive / f"{kind}7.pem")
    elif target == "directory":
        (archive / f"{kind}5.pem").mkdir()
    elif target == "fifo":
        os.mkfifo(archive / f"{kind}6.pem", 0o600)
    fake.set_link(config, NAME, kind, destination)


def build_layout(root: Path, layout: dict[str, object]) -> Path:
    """A lineage with versions 1 and 2 (and `other`), links bent as `layout` says."""
    config, outside = root / "letsencrypt", root / "outside"
    outside.mkdir()
    leaf = LEAVES[0]
    pems = {"cert_pem": leaf.cert_pem, "chain_pem": leaf.chain_pem, "privkey_pem": leaf.key_pem()}
    fake.new_lineage(config, NAME, **pems)
    fake.write_version(config, NAME, 2, **pems)
    fake.new_lineage(config, "other", **pems)
    contents, modes = layout["contents"], layout["modes"]
    assert isinstance(contents, dict) and isinstance(modes, dict)
    for kind in KINDS:
        path = fake.archive_path(config, NAME, kind, 1)
        if contents[kind] != "valid":
            random = layout["random"]
            assert isinstance(random, bytes)
            path.write_bytes(random if contents[kind] == "random" else b"")
        path.chmod(modes[kind])
        shutil.copy(path, outside / f"{kind}1.pem")
    if layout["previous"]:
        fake.add_previous_links(config, NAME)
    targets = layout["targets"]
    assert isinstance(targets, dict)
    for kind in KINDS:
        _point(config, outside, kind, targets[kind])
    mode = layout["dir_mode"]
    assert isinstance(mode, int)
    fake.archive_dir(config, NAME).chmod(mode)
    return fake.live_dir(config, NAME)


def assert_one_version(snapshot: LineageSnapshot, live: Path) -> None:
    """A snapshot holds four files of one archive dir and one version, byte for byte, none
    of them writable by group or others."""
    targets = [Path(os.path.realpath(live / f"{kind}.pem")) for kind in KINDS]
    assert len({path.parent for path in targets}) == 1, targets
    for kind, path in zip(KINDS, targets, strict=True):
        assert path.name == f"{kind}{snapshot.version}.pem"
        assert getattr(snapshot.files, kind) == path.read_bytes()
        assert not stat.S_IMODE(path.stat().st_mode) & 0o022


def test_read_lineage_on_bent_layouts(card: Scorecard) -> None:
    @fuzz(LINEAGE_EXAMPLES)
    @given(layouts())
    def read(layout: dict[str, object]) -> None:
        card.counts["read_lineage"] += 1
        root = Path(tempfile.mkdtemp(prefix="pftls-fuzz-"))
        try:
            live = build_layout(root, layout)
            started = time.monotonic()
            try:
                snapshot = read_lineage(live, settle_timeout=0)
            except (RefusedError, NotSettledError) as exc:
                assert "\n" not in str(exc)
            else:
                assert_one_version(snapshot, live)
            assert time.monotonic() - started < READ_BOUND
        finally:
            shutil.rmtree(root)

    fuzzed(card, "read_lineage", read)


def test_renewed_lineage_names(card: Scorecard, tmp_path: Path) -> None:
    live = tmp_path / "letsencrypt" / "live"
    leaf = LEAVES[0]
    fake.new_lineage(
        live.parent, NAME, cert_pem=leaf.cert_pem, chain_pem=leaf.chain_pem,
        privkey_pem=leaf.key_pem(),
    )  # fmt: skip
    names = st.one_of(
        st.text(max_size=40),
        st.lists(
            st.sampled_from(["..", ".", "", NAME, "live", "x", "\udcff", "\n"]), max_size=4
        ).map("/".join),
    )

    @fuzz(PARSER_EXAMPLES)
    @given(st.sampled_from([str(live) + "/", "", "/", "relative/"]), names)
    def hook(prefix: str, name: str) -> None:
        card.counts["RENEWED_LINEAGE"] += 1
        value = prefix + name
        if "\x00" in value:
            return  # the environment cannot carry a NUL byte
        outcome = refused_or(str, lambda: renewed_lineage(value, live))
        if isinstance(outcome, str):
            assert (live / outcome).resolve() == (live / NAME).resolve()

    fuzzed(card, "RENEWED_LINEAGE", hook)
