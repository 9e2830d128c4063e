"""End to end with the real programs: pebble issues, certbot renews and calls our deploy
hook, a private Postfix serves the result to a real STARTTLS client."""

from __future__ import annotations

import hashlib
import os
import shlex
import stat
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.support.certbot import Certbot
from tests.support.pebble import Pebble
from tests.support.postfix import PostfixInstance, served_sha256, wait_for_served_sha256

pytestmark = pytest.mark.slow


def leaf_sha256(lineage: Path) -> str:
    cert = x509.load_pem_x509_certificate((lineage / "cert.pem").read_bytes())
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def tool_args(certbot: Certbot, postfix: PostfixInstance, pebble: Pebble, tmp: Path) -> list[str]:
    return [
        "--live-dir", str(certbot.live_dir),
        "--postfix-config-dir", str(postfix.config_dir),
        "--install-dir", str(tmp / "tls"),
        "--ca-file", str(pebble.root_file()),
        "--lock-file", str(tmp / "run" / "deploy.lock"),
        # No TLSA lookup: the machine's resolver is not on loopback (tests/test_dane.py).
        "--dane", "off",
    ]  # fmt: skip


def assert_root_only(path: Path) -> None:
    st = os.stat(path)
    assert st.st_uid == 0
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)


def test_certbot_renewal_through_deploy_hook_reaches_postfix(
    tmp_path: Path, pebble: Pebble, certbot: Certbot, postfix: PostfixInstance
) -> None:
    certbot.certonly([postfix.hostname], cert_name="mail")
    lineage = certbot.lineage("mail")
    first = leaf_sha256(lineage)
    initial = served_sha256("127.0.0.1", postfix.port)
    assert initial != first  # the instance starts with its own self-signed certificate

    hook = shlex.join(
        [sys.executable, "-m", "pftls_hook", *tool_args(certbot, postfix, pebble, tmp_path),
         "deploy-hook"]
    )  # fmt: skip
    certbot.renew(force=True, cert_name="mail", deploy_hook=hook)

    renewed = leaf_sha256(lineage)
    assert renewed != first
    # The hook ran to completion inside certbot: Postfix already serves the renewal.
    assert served_sha256("127.0.0.1", postfix.port) == renewed

    installed = tmp_path / "tls" / "mail.pem"
    assert postfix.postconf("-h", "smtpd_tls_cert_file").strip() == str(installed)
    assert postfix.postconf("-h", "smtpd_tls_key_file").strip() == str(installed)
    assert_root_only(installed)
    assert installed.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")

    # The hook is stored in the renewal conf: the next renewal needs no flag, and no main.cf
    # write (the combined file keeps its name), just the reload.
    main_cf = postfix.main_cf_bytes()
    certbot.renew(force=True, cert_name="mail")
    again = leaf_sha256(lineage)
    assert again != renewed
    wait_for_served_sha256("127.0.0.1", postfix.port, again, timeout=5)
    assert postfix.main_cf_bytes() == main_cf
    assert_root_only(installed)
