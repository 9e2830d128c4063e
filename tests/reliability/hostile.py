"""The generator of hostile and broken lineages (issue 5, case 4).

`cases()` yields named `Case`s; each builds, in an empty certbot config dir, one way a
lineage can be broken or bent against the tool, and says how to run the CLI on it and which
file, path or name the one-line refusal must name. One thing is wrong per case; everything
else is what certbot would have written.

`accepted=True` marks the cases that are fine by design (CRLF line ends: RFC 7468 allows
them): those must deploy and be served, and are counted apart from the refusals.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.support import lineage as fake
from tests.support import tamper
from tests.support.pki import CA, CLIENT_AUTH, Leaf, certs_pem, key_to_pem, make_key
from tests.support.tool import NAME

BIG_FILE_BYTES = 50 * 1024 * 1024
# certbot waits for its hook with no timeout; a half-renewed lineage must not hold it long.
SHORT_SETTLE = (("PFTLS_HOOK_SETTLE_TIMEOUT", "1"),)


@dataclass(frozen=True)
class Run:
    """One CLI invocation: its arguments after the global options, and extra environment."""

    args: tuple[str, ...] = ("install", NAME)
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Attack:
    """What a case built: the runs that must each be refused, naming `named`; for a case
    accepted by design, the leaf that must end up served."""

    named: str
    runs: tuple[Run, ...] = (Run(),)
    serves: Leaf | None = None


@dataclass(frozen=True)
class Kit:
    """What a case builds with: its own empty certbot config dir, a dir outside it, the
    trusted issuing CA (its root is --ca-file) and an intermediate of an untrusted root."""

    config: Path
    outside: Path
    inter: CA
    stranger: CA

    @property
    def live(self) -> Path:
        return self.config / "live"

    def good(self, **options: object) -> Leaf:
        return self.inter.issue(NAME, **options)  # type: ignore[arg-type]

    def lineage(self, leaf: Leaf | None = None, config: Path | None = None, **files: bytes) -> Leaf:
        """Version 1 of lineage NAME for `leaf` (a fresh good one by default) in this case's
        config dir (or `config`), with any of cert_pem, chain_pem, fullchain_pem, privkey_pem
        replaced by `files`."""
        leaf = leaf or self.good()
        pems = {
            "cert_pem": leaf.cert_pem,
            "chain_pem": leaf.chain_pem,
            "privkey_pem": leaf.key_pem(),
        }
        fake.new_lineage(config or self.config, NAME, **(pems | files))
        return leaf

    def archive(self, kind: str) -> Path:
        return fake.archive_path(self.config, NAME, kind, 1)

    def hook(self, lineage: str) -> Run:
        """certbot's deploy hook for RENEWED_LINEAGE=`lineage`."""
        return Run(("deploy-hook",), (("RENEWED_LINEAGE", lineage),))


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    build: Callable[[Kit], Attack]
    accepted: bool = False


# ------------------------------------------------------------------------ byte helpers


def crlf(pem: bytes) -> bytes:
    return pem.replace(b"\n", b"\r\n")


def cut(pem: bytes) -> bytes:
    """Up to the middle of the last PEM block: a copy that stopped early."""
    last = pem.rindex(b"-----BEGIN ")
    return pem[: last + (len(pem) - last) // 2]


def der_key(leaf: Leaf) -> bytes:
    return leaf.key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def pkcs12_bundle(leaf: Leaf) -> bytes:
    return pkcs12.serialize_key_and_certificates(
        b"mail", leaf.key, leaf.cert, list(leaf.chain_certs), serialization.NoEncryption()
    )


def days_from_now(days: float) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


# -------------------------------------------------------------------- case builders


def _file(kind: str, data: Callable[[Leaf], bytes]) -> Callable[[Kit], Attack]:
    """A good lineage whose `kind` file holds `data(leaf)` instead (fullchain kept as
    cert + chain of the good leaf, unless `kind` is fullchain itself)."""

    def build(kit: Kit) -> Attack:
        leaf = kit.lineage()
        fake.replace_archive_file(kit.config, NAME, kind, 1, data(leaf))
        return Attack(f"{kind}.pem")

    return build


def _leaf(make: Callable[[Kit], Leaf], named: str = "cert.pem") -> Callable[[Kit], Attack]:
    """A lineage certbot could have written, for a leaf that must not be served."""

    def build(kit: Kit) -> Attack:
        kit.lineage(make(kit))
        return Attack(named)

    return build


def _bent(bend: Callable[[Kit], str]) -> Callable[[Kit], Attack]:
    """A good lineage, then bent on disk; `bend` returns what the refusal must name."""

    def build(kit: Kit) -> Attack:
        kit.lineage()
        return Attack(bend(kit))

    return build


def _outside_file(kit: Kit, kind: str) -> Path:
    """A copy of the good archive file, outside the config dir."""
    target = kit.outside / f"{kind}1.pem"
    shutil.copy(kit.archive(kind), target)
    return target


def _mknod_zero(kit: Kit) -> str:
    # A character device with /dev/zero's numbers, inside the archive dir: an endless read.
    path = kit.archive("privkey")
    path.unlink()
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))
    return "privkey.pem"


def _socket(kit: Kit) -> str:
    path = kit.archive("cert")
    path.unlink()
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
    return "cert.pem"


def _directory(kit: Kit) -> str:
    path = kit.archive("chain")
    path.unlink()
    path.mkdir()
    return "chain.pem"


def _loop_through_archive(kit: Kit) -> str:
    kit.archive("cert").unlink()
    os.symlink(f"../../live/{NAME}/cert.pem", kit.archive("cert"))
    return "cert.pem"


def _link(kind: str, target: Callable[[Kit], str | Path]) -> Callable[[Kit], str]:
    """live/<name>/<kind>.pem re-pointed, verbatim, at `target(kit)`."""

    def bend(kit: Kit) -> str:
        fake.set_link(kit.config, NAME, kind, target(kit))
        return f"{kind}.pem"

    return bend


def _fifo(kit: Kit) -> str:
    fake.replace_archive_with_fifo(kit.config, NAME, "chain", 1)
    return "chain.pem"


def _chmod(kind: str, mode: int) -> Callable[[Kit], str]:
    def bend(kit: Kit) -> str:
        kit.archive(kind).chmod(mode)
        return f"{kind}.pem"

    return bend


def _chown_nobody(kit: Kit) -> str:
    os.chown(kit.archive("privkey"), 65534, 65534)
    return "privkey.pem"


def _chmod_dir(where: Callable[[Kit], Path]) -> Callable[[Kit], str]:
    def bend(kit: Kit) -> str:
        directory = where(kit)
        directory.chmod(0o777)
        return str(directory)

    return bend


def _plain_file_link(kit: Kit) -> str:
    link = fake.link_path(kit.config, NAME, "cert")
    link.unlink()
    link.write_bytes(kit.archive("cert").read_bytes())
    return "cert.pem"


def _previous_links_left(kit: Kit) -> Attack:
    kit.lineage()
    fake.add_previous_links(kit.config, NAME)  # certbot killed mid-renewal
    return Attack("previous_cert.pem", (Run(env=SHORT_SETTLE),))


def _mixed_versions(kit: Kit) -> Attack:
    kit.lineage()
    renewed = kit.good()
    fake.write_version(
        kit.config,
        NAME,
        2,
        cert_pem=renewed.cert_pem,
        chain_pem=renewed.chain_pem,
        privkey_pem=renewed.key_pem(),
    )
    fake.point_links(kit.config, NAME, {"cert": 2})  # a new certificate, the old key
    return Attack(NAME, (Run(env=SHORT_SETTLE),))


def _lineage_dir_symlinked(kit: Kit) -> Attack:
    # The same good lineage in another config dir; live/NAME here is a link to it.
    elsewhere = kit.outside / "letsencrypt"
    kit.lineage(kit.lineage(), config=elsewhere)
    shutil.rmtree(fake.live_dir(kit.config, NAME))
    fake.live_dir(kit.config, NAME).symlink_to(fake.live_dir(elsewhere, NAME))
    lineage = str(fake.live_dir(kit.config, NAME))
    return Attack(lineage, (Run(), kit.hook(lineage)))


def _odd_name(name: str) -> Callable[[Kit], Attack]:
    """A good lineage under a name certbot never gives, via install and the deploy hook."""

    def build(kit: Kit) -> Attack:
        kit.lineage()
        if "/" not in name and name not in (".", ".."):
            # live/<odd> is a renamed lineage dir; its links still lead into archive/NAME.
            fake.live_dir(kit.config, NAME).rename(kit.live / name)
        return Attack(repr(name)[1:-1], (Run(("install", name)), kit.hook(f"{kit.live}/{name}")))

    return build


def _no_such_lineage(kit: Kit) -> Attack:
    kit.lineage()
    return Attack("nosuch.example", (Run(("install", "nosuch.example")),))


def _two_intermediates(kit: Kit) -> tuple[CA, CA]:
    upper = kit.inter.parent or kit.inter
    top = upper.intermediate("hostile upper", path_length=1)
    return top, top.intermediate("hostile lower")


def _chain_wrong_order(kit: Kit) -> Attack:
    top, lower = _two_intermediates(kit)
    leaf = lower.issue(NAME)
    reversed_chain = certs_pem(top.cert, lower.cert)
    kit.lineage(leaf, chain_pem=reversed_chain, fullchain_pem=leaf.cert_pem + reversed_chain)
    return Attack("chain.pem")


def _not_a_ca_intermediate(kit: Kit) -> Leaf:
    # A leaf certificate (CA:FALSE) that signs another leaf, shipped as the chain.
    impostor = kit.inter.issue("impostor.test.example")
    return CA(cert=impostor.cert, key=impostor.key, parent=kit.inter).issue(NAME)


def _expired_intermediate(kit: Kit) -> Leaf:
    root = kit.inter.parent or kit.inter
    old = root.intermediate(
        "expired intermediate", not_before=days_from_now(-400), not_after=days_from_now(-1)
    )
    return old.issue(NAME, not_before=days_from_now(-2), not_after=days_from_now(60))


def _ca_as_leaf(kit: Kit) -> Leaf:
    return kit.good(is_ca=True)


def _unknown_critical_extension(kit: Kit) -> Leaf:
    value = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    return tamper.reissue(kit.good(), kit.inter, [(value, True)])


def _other_pem_block(leaf: Leaf) -> bytes:
    # A block of another kind (as in a bundle exported with its CRL) is not a certificate.
    return leaf.chain_pem + b"-----BEGIN X509 CRL-----\nMAA=\n-----END X509 CRL-----\n"


def _mismatched_labels(leaf: Leaf) -> bytes:
    return leaf.cert_pem.replace(b"END CERTIFICATE", b"END PUBLIC KEY")


def _damaged_base64(leaf: Leaf) -> bytes:
    lines = leaf.cert_pem.splitlines(keepends=True)
    lines[3] = b"!!!!" + lines[3][4:]
    return b"".join(lines)


def cases() -> Iterator[Case]:
    """Every hostile case, in a fixed order."""
    # fmt: off
    # -- what the core refuses
    yield Case("garbage-cert", "cert.pem is not a certificate at all",
               _file("cert", lambda leaf: b"this is not a certificate\n"))
    yield Case("der-cert", "cert.pem in DER, not PEM", _file("cert", lambda leaf: leaf.cert_der))
    yield Case("truncated-chain", "chain.pem cut inside its certificate",
               _file("chain", lambda leaf: cut(leaf.chain_pem)))
    yield Case("truncated-fullchain", "fullchain.pem cut inside its last certificate",
               _file("fullchain", lambda leaf: cut(leaf.fullchain_pem)))
    yield Case("encrypted-key", "privkey.pem encrypted (PKCS#8)",
               _file("privkey", lambda leaf: leaf.key_pem(encrypted_with=b"secret")))
    yield Case("encrypted-traditional-key", "privkey.pem encrypted (Proc-Type header)",
               _file("privkey", lambda leaf: leaf.key_pem(b"secret", traditional=True)))
    yield Case("mismatched-key", "privkey.pem belongs to another certificate",
               _file("privkey", lambda leaf: key_to_pem(make_key())))
    yield Case("expired", "the leaf has expired",
               _leaf(lambda kit: kit.good(not_before=days_from_now(-100),
                                          not_after=days_from_now(-10))))
    yield Case("not-yet-valid", "the leaf is not valid yet",
               _leaf(lambda kit: kit.good(not_before=days_from_now(10),
                                          not_after=days_from_now(100))))
    yield Case("client-auth-only", "the leaf's EKU is clientAuth only",
               _leaf(lambda kit: kit.good(eku=[CLIENT_AUTH])))
    yield Case("untrusted-root", "the chain leads to a root not in --ca-file",
               _leaf(lambda kit: kit.stranger.issue(NAME), "fullchain.pem"))
    yield Case("fullchain-mismatch", "fullchain.pem is not cert.pem + chain.pem",
               _file("fullchain", lambda leaf: leaf.cert_pem))
    yield Case("hostname-not-covered", "the leaf does not cover Postfix's myhostname",
               _leaf(lambda kit: kit.inter.issue("www.test.example")))
    yield Case("link-outside-absolute", "cert.pem links to a file outside the certbot dir",
               _bent(_link("cert", lambda kit: _outside_file(kit, "cert"))))
    # -- formats and framing
    yield Case("der-key", "privkey.pem in DER", _file("privkey", der_key))
    yield Case("pkcs12-key", "privkey.pem is a PKCS#12 bundle", _file("privkey", pkcs12_bundle))
    yield Case("pkcs12-cert", "cert.pem is a PKCS#12 bundle", _file("cert", pkcs12_bundle))
    yield Case("two-keys", "privkey.pem holds two keys",
               _file("privkey", lambda leaf: leaf.key_pem() + key_to_pem(make_key())))
    yield Case("key-after-certificates", "privkey.pem holds the certificates, then the key",
               _file("privkey", lambda leaf: leaf.fullchain_pem + leaf.key_pem()))
    yield Case("key-in-fullchain", "fullchain.pem ends with the private key",
               _file("fullchain", lambda leaf: leaf.fullchain_pem + leaf.key_pem()))
    yield Case("crlf", "all four files with CRLF line ends (RFC 7468 allows them)",
               _crlf_lineage, accepted=True)
    yield Case("crlf-trailing-garbage", "CRLF cert.pem with a line of text after the block",
               _file("cert", lambda leaf: crlf(leaf.cert_pem) + b"garbage\r\n"))
    yield Case("trailing-garbage-key", "privkey.pem with text after its block",
               _file("privkey", lambda leaf: leaf.key_pem() + b"# rm -rf /\n"))
    yield Case("leading-text-chain", "chain.pem with text before its block (pkcs12 dump)",
               _file("chain", lambda leaf: b"Bag Attributes\n    friendlyName: x\n"
                     + leaf.chain_pem))
    yield Case("non-ascii-cert", "cert.pem with non-UTF-8 bytes before the block",
               _file("cert", lambda leaf: b"# \xff\xfe\x80\n" + leaf.cert_pem))
    yield Case("nul-bytes-key", "privkey.pem with NUL bytes after the block",
               _file("privkey", lambda leaf: leaf.key_pem() + b"\x00" * 64))
    yield Case("other-pem-block", "chain.pem with an X509 CRL block",
               _file("chain", _other_pem_block))
    yield Case("mismatched-pem-labels", "cert.pem BEGIN CERTIFICATE ... END PUBLIC KEY",
               _file("cert", _mismatched_labels))
    yield Case("damaged-base64", "cert.pem with a damaged base64 line",
               _file("cert", _damaged_base64))
    yield Case("two-certs-in-cert", "cert.pem holds the leaf and the intermediate",
               _file("cert", lambda leaf: leaf.fullchain_pem))
    yield Case("thousand-intermediates", "chain.pem repeats the intermediate 1,000 times",
               _thousand_intermediates)
    yield Case("huge-file", "fullchain.pem is 50 MB", _file("fullchain", _fifty_megabytes))
    yield Case("empty-cert", "cert.pem is empty", _file("cert", lambda leaf: b""))
    yield Case("empty-key", "privkey.pem is empty", _file("privkey", lambda leaf: b""))
    # -- lineage names (install NAME, and certbot's RENEWED_LINEAGE)
    yield Case("name-dotdot", "lineage name `..`", _odd_name(".."))
    yield Case("name-dotdot-path", "lineage name `../live/<name>`", _odd_name(f"../live/{NAME}"))
    yield Case("name-non-utf8", "lineage name with non-UTF-8 bytes",
               _odd_name(os.fsdecode(b"mail\xff.test.example")))
    yield Case("name-newline", "lineage name with a newline (a forged log line)",
               _odd_name("mail\npftls-hook: deployed"))
    yield Case("no-such-lineage", "install of a lineage that does not exist", _no_such_lineage)
    yield Case("lineage-dir-symlink", "live/<name> is a link to a lineage elsewhere",
               _lineage_dir_symlinked)
    # -- links and file types
    yield Case("symlink-to-itself", "cert.pem links to itself",
               _bent(_link("cert", lambda kit: "cert.pem")))
    yield Case("symlink-loop", "cert.pem -> archive -> cert.pem", _bent(_loop_through_archive))
    yield Case("fifo", "a FIFO in place of chain1.pem",
               _bent(_fifo))
    yield Case("device", "a character device (/dev/zero's numbers) in place of privkey1.pem",
               _bent(_mknod_zero))
    yield Case("socket", "a Unix socket in place of cert1.pem", _bent(_socket))
    yield Case("directory", "a directory in place of chain1.pem", _bent(_directory))
    yield Case("link-outside-relative", "privkey.pem links out through ../../..",
               _bent(_link("privkey", lambda kit: os.path.relpath(
                   _outside_file(kit, "privkey"), fake.live_dir(kit.config, NAME)))))
    yield Case("link-to-dev-zero", "privkey.pem links to /dev/zero",
               _bent(_link("privkey", lambda kit: "/dev/zero")))
    yield Case("link-to-system-file", "cert.pem links to /etc/passwd",
               _bent(_link("cert", lambda kit: "/etc/passwd")))
    yield Case("link-to-other-kind", "cert.pem links to the archive's privkey1.pem",
               _bent(_link("cert", lambda kit: f"../../archive/{NAME}/privkey1.pem")))
    yield Case("dangling-link", "chain.pem links to a file that does not exist",
               _bent(_link("chain", lambda kit: f"../../archive/{NAME}/chain9.pem")))
    yield Case("plain-file-not-link", "live/<name>/cert.pem is a file, not a link",
               _bent(_plain_file_link))
    yield Case("previous-links-left", "certbot killed mid-renewal (previous_*.pem left)",
               _previous_links_left)
    yield Case("mixed-versions", "cert.pem on version 2, the key on version 1", _mixed_versions)
    # -- permissions
    yield Case("world-writable-cert", "cert1.pem mode 0666", _bent(_chmod("cert", 0o666)))
    yield Case("group-writable-key", "privkey1.pem mode 0660", _bent(_chmod("privkey", 0o660)))
    yield Case("foreign-owner-key", "privkey1.pem owned by nobody", _bent(_chown_nobody))
    yield Case("world-writable-archive-dir", "archive/<name>/ mode 0777",
               _bent(_chmod_dir(lambda kit: fake.archive_dir(kit.config, NAME))))
    yield Case("world-writable-live-dir", "live/ mode 0777",
               _bent(_chmod_dir(lambda kit: kit.live)))
    yield Case("world-writable-config-dir", "the certbot config dir mode 0777",
               _bent(_chmod_dir(lambda kit: kit.config)))
    # -- certificates and keys that must not be served
    yield Case("rsa-1024", "an RSA 1024-bit key", _leaf(lambda kit: kit.good(key="rsa", bits=1024),
                                                       "privkey.pem"))
    yield Case("dsa", "a DSA key", _leaf(lambda kit: kit.good(key="dsa"), "privkey.pem"))
    yield Case("ca-as-leaf", "a CA certificate (CA:TRUE) as the leaf", _leaf(_ca_as_leaf))
    yield Case("self-signed", "a self-signed leaf, empty chain.pem",
               _leaf(lambda kit: Leaf.self_signed(NAME), "chain.pem"))
    yield Case("duplicated-extension", "the leaf carries subjectAltName twice",
               _leaf(lambda kit: tamper.with_duplicated_san(kit.good(), kit.inter)))
    yield Case("unknown-critical-extension", "the leaf has an unknown critical extension",
               _leaf(_unknown_critical_extension, "fullchain.pem"))
    yield Case("unsupported-key-algorithm", "the leaf's public key algorithm is unknown",
               _leaf(lambda kit: tamper.with_unknown_key_algorithm(kit.good(), kit.inter)))
    yield Case("no-san", "the leaf has no subjectAltName", _leaf(lambda kit: kit.good(san=False)))
    yield Case("invalid-dns-name", "the leaf's SAN is not a host name (`exa mple`)",
               _leaf(lambda kit: kit.inter.issue("exa mple")))
    yield Case("intermediate-not-ca", "the intermediate is a CA:FALSE leaf",
               _leaf(_not_a_ca_intermediate, "chain.pem"))
    yield Case("chain-wrong-order", "chain.pem lists the intermediates root-first",
               _chain_wrong_order)
    yield Case("expired-intermediate", "the intermediate has expired",
               _leaf(_expired_intermediate, "chain.pem"))
    yield Case("no-authority-key-id", "the leaf lacks authorityKeyIdentifier (WebPKI)",
               _leaf(lambda kit: kit.good(aki=False), "fullchain.pem"))
    # fmt: on


def _crlf_lineage(kit: Kit) -> Attack:
    leaf = kit.good()
    kit.lineage(
        leaf,
        cert_pem=crlf(leaf.cert_pem),
        chain_pem=crlf(leaf.chain_pem),
        privkey_pem=crlf(leaf.key_pem()),
    )
    return Attack("", serves=leaf)


def _thousand_intermediates(kit: Kit) -> Attack:
    leaf = kit.good()
    chain = leaf.chain_pem * 1000
    kit.lineage(leaf, chain_pem=chain, fullchain_pem=leaf.cert_pem + chain)
    return Attack("chain.pem")


def _fifty_megabytes(leaf: Leaf) -> bytes:
    return leaf.fullchain_pem + b"\n" * (BIG_FILE_BYTES - len(leaf.fullchain_pem))


__all__ = ["Attack", "Case", "Kit", "Run", "cases"]
