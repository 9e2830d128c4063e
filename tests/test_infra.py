"""The test infrastructure itself, on real programs: private Postfix, pebble, certbot.

If these fail, every end-to-end test of pftls_hook would fail for reasons
that have nothing to do with pftls_hook.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store

from tests.conftest import MakePostfix
from tests.support.certbot import Certbot
from tests.support.pebble import Pebble
from tests.support.pki import Leaf
from tests.support.postfix import (
    PostfixInstance,
    served_certificate,
    served_sha256,
    wait_for_served_sha256,
)

HOST = "127.0.0.1"
NAME = "mail.test.example"
LINKS = ("cert", "chain", "fullchain", "privkey")


def _initial_cert(instance: PostfixInstance) -> x509.Certificate:
    certs = x509.load_pem_x509_certificates(instance.initial_cert_file.read_bytes())
    assert len(certs) == 1
    return certs[0]


def _der_sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _write_combined(path: Path, key_pem: bytes, chain_pem: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_pem + chain_pem)


def _point_at(instance: PostfixInstance, combined: Path) -> None:
    # One postconf call: each further call on a hot main.cf costs ~1-2 s.
    instance.postconf("-e", f"smtpd_tls_cert_file = {combined}", f"smtpd_tls_key_file = {combined}")


# ------------------------------------------------------------------ Postfix


def test_private_postfix_serves_initial_certificate(postfix: PostfixInstance) -> None:
    assert postfix.is_running()
    data = postfix.initial_cert_file.read_bytes()
    # Key first, then the certificate, in one root-only file.
    assert data.lstrip().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert stat.S_IMODE(postfix.initial_cert_file.stat().st_mode) == 0o600
    cert = _initial_cert(postfix)
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == NAME

    assert served_sha256(HOST, postfix.port) == _der_sha256(cert)
    assert served_certificate(HOST, postfix.port) == cert.public_bytes(serialization.Encoding.DER)


def test_private_postfix_config_is_its_own(postfix: PostfixInstance) -> None:
    postfix.check()
    assert postfix.postconf("-h", "config_directory").strip() == str(postfix.config_dir)
    assert postfix.postconf("-h", "queue_directory").strip() == str(postfix.queue_dir)
    assert postfix.postconf("-h", "smtpd_tls_cert_file").strip() == str(postfix.initial_cert_file)
    assert b"smtpd_tls_security_level = may" in postfix.main_cf_bytes()
    services = postfix.postconf("-M")
    assert f"{HOST}:{postfix.port}" in services
    assert "postscreen" not in services
    # No chroot anywhere (column 5).
    assert all(line.split()[4] == "n" for line in services.splitlines() if line.strip())
    assert "daemon started" in postfix.log_text()


def test_stop_is_idempotent_and_restart_works(postfix: PostfixInstance) -> None:
    postfix.stop()
    assert not postfix.is_running()
    postfix.stop()
    with pytest.raises(OSError):
        served_sha256(HOST, postfix.port, timeout=2.0)
    postfix.start()
    assert served_sha256(HOST, postfix.port) == _der_sha256(_initial_cert(postfix))


def test_reload_serves_a_new_certificate(postfix: PostfixInstance, tmp_path: Path) -> None:
    fresh = Leaf.self_signed(NAME)
    combined = tmp_path / "fresh.pem"
    _write_combined(combined, fresh.key_pem(), fresh.cert_pem)
    _point_at(postfix, combined)
    postfix.reload()
    wait_for_served_sha256(HOST, postfix.port, hashlib.sha256(fresh.cert_der).hexdigest())
    assert "reload" in postfix.log_text()


def test_two_instances_run_at_once(make_postfix: MakePostfix) -> None:
    first = make_postfix()
    second = make_postfix(hostname="mx2.test.example")
    assert first.port != second.port
    assert served_sha256(HOST, first.port) == _der_sha256(_initial_cert(first))
    assert served_sha256(HOST, second.port) == _der_sha256(_initial_cert(second))
    first.stop()
    assert second.is_running()
    assert served_sha256(HOST, second.port) == _der_sha256(_initial_cert(second))


def test_too_deep_base_dir_is_refused_up_front(tmp_path: Path) -> None:
    # Past 107 bytes for queue/public/postlog, `postfix start` fails silently.
    with pytest.raises(ValueError, match="Unix socket path"):
        PostfixInstance(tmp_path / ("x" * 120), 2525)


# ------------------------------------------------------- pebble + certbot


def _link_targets(lineage: Path) -> dict[str, str]:
    return {name: os.readlink(lineage / f"{name}.pem") for name in LINKS}


def _verify_chain(pebble: Pebble, lineage: Path) -> list[x509.Certificate]:
    root = x509.load_pem_x509_certificate(pebble.roots_pem())
    leaf = x509.load_pem_x509_certificate((lineage / "cert.pem").read_bytes())
    intermediates = x509.load_pem_x509_certificates((lineage / "chain.pem").read_bytes())
    verifier = PolicyBuilder().store(Store([root])).build_server_verifier(x509.DNSName(NAME))
    return verifier.verify(leaf, intermediates)


@pytest.mark.slow
def test_certbot_issues_from_pebble(certbot: Certbot, pebble: Pebble) -> None:
    certbot.certonly([NAME])
    lineage = certbot.lineage(NAME)
    assert lineage == certbot.live_dir / NAME
    targets = _link_targets(lineage)
    for name, target in targets.items():
        assert (lineage / f"{name}.pem").is_symlink()
        assert target == f"../../archive/{NAME}/{name}1.pem"
    fullchain = (lineage / "fullchain.pem").read_bytes()
    assert fullchain == (lineage / "cert.pem").read_bytes() + (lineage / "chain.pem").read_bytes()
    key_mode = stat.S_IMODE((lineage / "privkey.pem").stat().st_mode)
    assert key_mode == 0o600
    # The pebble root really is the anchor of what certbot got.
    path = _verify_chain(pebble, lineage)
    assert len(path) == 3
    assert pebble.root_file().read_bytes() == pebble.roots_pem()


@pytest.mark.slow
def test_forced_renew_changes_live_cert_and_runs_deploy_hook(
    certbot: Certbot, pebble: Pebble, tmp_path: Path
) -> None:
    certbot.certonly([NAME])
    lineage = certbot.lineage(NAME)
    before = (lineage / "cert.pem").read_bytes()
    hook_out = tmp_path / "hook.out"

    certbot.renew(cert_name=NAME, deploy_hook=f"printenv RENEWED_LINEAGE > {hook_out}")

    after = (lineage / "cert.pem").read_bytes()
    assert after != before
    assert set(_link_targets(lineage).values()) == {
        f"../../archive/{NAME}/{name}2.pem" for name in LINKS
    }
    assert not list(lineage.glob("previous_*"))
    assert hook_out.read_text().strip() == str(lineage)
    _verify_chain(pebble, lineage)


@pytest.mark.slow
def test_certbot_lineage_loads_in_private_postfix(
    certbot: Certbot, postfix: PostfixInstance, tmp_path: Path
) -> None:
    """By hand, what pftls_hook automates: certbot's key + fullchain, one file, served."""
    certbot.certonly([NAME])
    lineage = certbot.lineage(NAME)
    combined = tmp_path / "deployed.pem"
    _write_combined(
        combined, (lineage / "privkey.pem").read_bytes(), (lineage / "fullchain.pem").read_bytes()
    )
    _point_at(postfix, combined)
    postfix.reload()
    leaf = x509.load_pem_x509_certificate((lineage / "cert.pem").read_bytes())
    wait_for_served_sha256(HOST, postfix.port, _der_sha256(leaf))
