"""`pftls-hook configure`: the admin's TLS profile in main.cf, never weakening, idempotent,
proven over STARTTLS; and the admin's own acceptance check, automated: a mail sent over
STARTTLS to a private Postfix, whose Received header records the TLS protocol and cipher.

The planning is pure and tested on plain dicts first; the rest runs the real CLI against a
real private Postfix instance and judges main.cf, the maillog and what a client sees.
"""

from __future__ import annotations

import email
import hashlib
import os
import re
import smtplib
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509

from pftls_hook.postfix import Override, PostfixState, Service
from pftls_hook.setup.configure import ENCRYPT_WARNING, Request, plan
from tests.conftest import MakePostfix
from tests.support.net import wait_until
from tests.support.pki import CA
from tests.support.postfix import PostfixInstance
from tests.support.tool import NAME, Tool, assert_exit

HOST = "127.0.0.1"
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
EXIT_OK, EXIT_USAGE = 0, 2


def profile(ca_file: str, client: str = "may") -> dict[str, str]:
    """The TLS profile of the issue, as main.cf must hold it."""
    return {
        "smtpd_tls_security_level": "may",
        "smtpd_tls_loglevel": "1",
        "smtpd_tls_received_header": "yes",
        "smtp_tls_security_level": client,
        "smtp_tls_note_starttls_offer": "yes",
        "smtpd_tls_CAfile": ca_file,
        "smtp_tls_CAfile": ca_file,
    }


# ------------------------------------------------------------------- the pure planning


def state(explicit: dict[str, str], *overrides: Override, chroot: str = "n") -> PostfixState:
    services = (Service("127.0.0.1:25", "inet", "smtpd", chroot),)
    return PostfixState({}, services, overrides)


def planned(explicit: dict[str, str], request: Request | None = None, **kw: str) -> dict[str, str]:
    """The changes for a main.cf whose explicit settings are `explicit` (no defaults)."""
    values = {**explicit, **kw}
    result = plan(values, explicit, state(explicit), request or Request(SYSTEM_BUNDLE))
    return result.values


def test_plan_on_an_empty_main_cf_is_the_whole_profile() -> None:
    assert planned({}) == profile(SYSTEM_BUNDLE)


def test_plan_on_the_profile_is_empty() -> None:
    assert planned(profile(SYSTEM_BUNDLE)) == {}


@pytest.mark.parametrize(
    ("explicit", "kept"),
    [
        ({"smtpd_tls_security_level": "encrypt"}, "smtpd_tls_security_level"),
        ({"smtpd_enforce_tls": "yes"}, "smtpd_tls_security_level"),
        ({"smtp_tls_security_level": "encrypt"}, "smtp_tls_security_level"),
        ({"smtp_tls_security_level": "dane"}, "smtp_tls_security_level"),
        ({"smtp_tls_security_level": "dane-only"}, "smtp_tls_security_level"),
        ({"smtp_tls_security_level": "fingerprint"}, "smtp_tls_security_level"),
        ({"smtp_tls_security_level": "verify"}, "smtp_tls_security_level"),
        ({"smtp_tls_security_level": "secure"}, "smtp_tls_security_level"),
        ({"smtp_enforce_tls": "yes"}, "smtp_tls_security_level"),  # the old `verify`
        ({"smtpd_tls_loglevel": "2"}, "smtpd_tls_loglevel"),
        ({"smtp_tls_CAfile": "/etc/private-ca.pem"}, "smtp_tls_CAfile"),
        ({"smtpd_tls_CApath": "/etc/ssl/certs"}, "smtpd_tls_CAfile"),
    ],
)
def test_plan_never_weakens_and_says_why(explicit: dict[str, str], kept: str) -> None:
    result = plan(explicit, explicit, state(explicit), Request(SYSTEM_BUNDLE))
    assert kept not in result.values
    assert any(note.startswith(f"{kept}:") for note in result.kept), result.kept


def test_plan_strengthens_weaker_levels() -> None:
    assert planned({"smtpd_tls_security_level": "none"})["smtpd_tls_security_level"] == "may"
    assert planned({"smtp_tls_security_level": "none"})["smtp_tls_security_level"] == "may"
    encrypt = Request(SYSTEM_BUNDLE, client_level="encrypt")
    assert planned({"smtp_tls_security_level": "may"}, encrypt)["smtp_tls_security_level"] == (
        "encrypt"
    )


def test_plan_encrypt_warns_of_bounces_and_verify_survives_it() -> None:
    explicit = {"smtp_tls_security_level": "verify"}
    result = plan(
        explicit, explicit, state(explicit), Request(SYSTEM_BUNDLE, client_level="encrypt")
    )
    assert result.warnings == (ENCRYPT_WARNING,)
    assert "bounced" in ENCRYPT_WARNING
    assert "smtp_tls_security_level" not in result.values


def test_plan_ca_option_on_the_command_line_replaces_the_admins_anchors() -> None:
    explicit = {"smtp_tls_CAfile": "/etc/private-ca.pem"}
    request = Request("/etc/other.pem", replace_trust=True)
    assert (
        plan(explicit, explicit, state(explicit), request).values["smtp_tls_CAfile"]
        == "/etc/other.pem"
    )


def test_plan_ca_path_and_chroot_note() -> None:
    result = plan({}, {}, state({}, chroot="y"), Request(SYSTEM_BUNDLE, ca_path="/etc/pf-ca"))
    assert result.values["smtpd_tls_CApath"] == "/etc/pf-ca"
    assert result.values["smtp_tls_CApath"] == "/etc/pf-ca"
    assert "smtpd_tls_CAfile" not in result.values
    assert any("chroot" in w for w in result.warnings)


def test_plan_reports_master_cf_overrides_it_leaves_alone() -> None:
    override = Override("submission/inet", "smtpd_tls_security_level", "encrypt")
    result = plan({}, {}, state({}, override), Request(SYSTEM_BUNDLE))
    assert any("submission/inet" in note for note in result.kept)


def test_plan_value_written_through_a_variable_is_not_rewritten() -> None:
    # main.cf says `$config_directory/ca.pem`; Postfix reads the expanded path: no change.
    explicit = {**profile("/etc/postfix/ca.pem"), "smtp_tls_CAfile": "$config_directory/ca.pem"}
    values = {**explicit, "smtp_tls_CAfile": "/etc/postfix/ca.pem"}
    assert plan(values, explicit, state(explicit), Request("/etc/postfix/ca.pem")).values == {}


# --------------------------------------------------------- against a real private Postfix


def explicit_settings(postfix: PostfixInstance) -> dict[str, str]:
    """main.cf as `postconf -n` shows it."""
    values = {}
    for line in postfix.postconf("-n").splitlines():
        name, _, value = line.partition(" = ")
        values[name.strip()] = value.strip()
    return values


def main_cf_fingerprint(postfix: PostfixInstance) -> tuple[bytes, int]:
    """main.cf's bytes and mtime: equal before and after means no write at all."""
    return postfix.main_cf_bytes(), os.stat(postfix.config_dir / "main.cf").st_mtime_ns


def set_up_main_cf(postfix: PostfixInstance, *assignments: str) -> None:
    """The test's own `postconf -e`, back-dated: Postfix makes every reader of a main.cf
    modified in the last second or two wait for it to cool, and that is not under test."""
    postfix.postconf("-e", *assignments)
    past = time.time() - 60
    os.utime(postfix.config_dir / "main.cf", (past, past))


def reload_count(postfix: PostfixInstance) -> int:
    # postfix-script logs this once per `postfix reload`.
    return postfix.log_text().count("refreshing the Postfix mail system")


def tool_for(postfix: PostfixInstance, tmp_path: Path, ca_file: Path | None = None) -> Tool:
    """Without `ca_file`, no --ca-file: the default (the system bundle), not given by hand."""
    return Tool(postfix=postfix, base=tmp_path, ca_file=ca_file)


def test_configure_writes_exactly_the_profile_proves_it_and_is_idempotent(
    postfix: PostfixInstance, tmp_path: Path
) -> None:
    tool = tool_for(postfix, tmp_path)
    before = explicit_settings(postfix)

    first = tool.run("configure")
    assert_exit(first, EXIT_OK)
    # The diff came first, then the proof: EHLO offers STARTTLS and the handshake completes.
    assert "+ smtpd_tls_received_header = yes" in first.stdout
    assert f"{HOST}:{postfix.port}: EHLO offers STARTTLS" in first.stdout
    assert explicit_settings(postfix) == {**before, **profile(SYSTEM_BUNDLE)}

    main_cf = main_cf_fingerprint(postfix)
    reloads = reload_count(postfix)
    second = tool.run("configure")
    assert_exit(second, EXIT_OK)
    assert "nothing to change" in second.stdout
    assert f"{HOST}:{postfix.port}: EHLO offers STARTTLS" in second.stdout
    assert main_cf_fingerprint(postfix) == main_cf  # no postconf -e at all
    assert reload_count(postfix) == reloads


def test_configure_keeps_stricter_values_and_says_so(
    make_postfix: MakePostfix, tmp_path: Path
) -> None:
    postfix = make_postfix(start=False)
    private_ca = tmp_path / "private-ca.pem"
    private_ca.write_bytes(CA.root("admin's private CA").cert_pem)
    set_up_main_cf(
        postfix,
        "smtpd_tls_security_level = encrypt",
        "smtp_tls_security_level = dane",
        "smtpd_tls_loglevel = 2",
        f"smtp_tls_CAfile = {private_ca}",
    )
    result = tool_for(postfix, tmp_path).run("configure", "--client-security-level", "encrypt")
    assert_exit(result, EXIT_OK)
    assert "bounced" in result.stderr  # the encrypt warning, even though dane stays

    after = explicit_settings(postfix)
    assert after["smtpd_tls_security_level"] == "encrypt"
    assert after["smtp_tls_security_level"] == "dane"
    assert after["smtpd_tls_loglevel"] == "2"
    assert after["smtp_tls_CAfile"] == str(private_ca)
    # What is not stricter was still applied.
    assert after["smtpd_tls_received_header"] == "yes"
    assert after["smtp_tls_note_starttls_offer"] == "yes"
    assert after["smtpd_tls_CAfile"] == SYSTEM_BUNDLE
    for name in ("smtpd_tls_security_level", "smtp_tls_security_level", "smtp_tls_CAfile"):
        assert f"left alone: {name}:" in result.stdout
    assert "Postfix is not running" in result.stdout


def test_configure_dry_run_changes_nothing(postfix: PostfixInstance, tmp_path: Path) -> None:
    main_cf = main_cf_fingerprint(postfix)
    reloads = reload_count(postfix)
    result = tool_for(postfix, tmp_path).run(
        "configure", "--dry-run", "--client-security-level", "encrypt"
    )
    assert_exit(result, EXIT_OK)
    assert "+ smtp_tls_security_level = encrypt" in result.stdout
    assert "bounced" in result.stderr
    assert main_cf_fingerprint(postfix) == main_cf
    assert reload_count(postfix) == reloads


def subject_hash(cert: Path) -> str:
    """OpenSSL's own name for the hash link, asked independently of pftls-hook."""
    return subprocess.run(
        ["/usr/bin/openssl", "x509", "-noout", "-subject_hash", "-in", str(cert)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()


def test_configure_ca_path_makes_the_hash_links(make_postfix: MakePostfix, tmp_path: Path) -> None:
    postfix = make_postfix(start=False)
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir(mode=0o755)
    certs = []
    for n in (1, 2):
        cert = ca_dir / f"root{n}.pem"
        cert.write_bytes(CA.root(f"pftls test CA {n}").cert_pem)
        certs.append(cert)

    result = tool_for(postfix, tmp_path).run("configure", "--ca-path", str(ca_dir))
    assert_exit(result, EXIT_OK)
    for cert in certs:
        link = ca_dir / f"{subject_hash(cert)}.0"
        assert link.is_symlink(), sorted(p.name for p in ca_dir.iterdir())
        assert link.resolve() == cert.resolve()
    after = explicit_settings(postfix)
    assert after["smtpd_tls_CApath"] == after["smtp_tls_CApath"] == str(ca_dir)
    assert "smtpd_tls_CAfile" not in after


def test_configure_refuses_bad_trust_options_before_any_change(
    make_postfix: MakePostfix, tmp_path: Path
) -> None:
    postfix = make_postfix(start=False)
    main_cf = main_cf_fingerprint(postfix)
    tool = tool_for(postfix, tmp_path)
    not_a_bundle = tmp_path / "empty.pem"
    not_a_bundle.write_text("no certificate here\n")
    world_writable = tmp_path / "open-ca"
    world_writable.mkdir()
    world_writable.chmod(0o777)
    for args, reason in (
        (["--ca-file", str(not_a_bundle)], "no CA certificate"),
        (["--ca-file", str(tmp_path / "missing.pem")], "cannot read CA file"),
        (["--ca-path", str(world_writable)], "writable by group or others"),
        (["--ca-file", SYSTEM_BUNDLE, "--ca-path", str(tmp_path)], "not both"),
    ):
        result = tool.run("configure", *args)
        assert_exit(result, EXIT_USAGE)
        assert reason in result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
    assert main_cf_fingerprint(postfix) == main_cf


# ------------------------------------------------------------- the admin's acceptance check

VIRTUAL_DOMAIN = "virtual.test.example"
MAILBOX = f"user@{VIRTUAL_DOMAIN}"
NOBODY = 65534  # virtual(8) delivers as this uid: no system user needed


def deliver_to_maildir(postfix: PostfixInstance) -> Path:
    """Virtual mailbox delivery for MAILBOX into a maildir under the instance's base dir."""
    base = postfix.base / "vmail"
    base.mkdir(mode=0o700)
    os.chown(base, NOBODY, NOBODY)
    set_up_main_cf(
        postfix,
        f"virtual_mailbox_domains = {VIRTUAL_DOMAIN}",
        f"virtual_mailbox_base = {base}",
        # A trailing slash: a maildir, which virtual(8) creates itself.
        f"virtual_mailbox_maps = inline:{{{MAILBOX}={VIRTUAL_DOMAIN}/user/}}",
        f"virtual_uid_maps = static:{NOBODY}",
        f"virtual_gid_maps = static:{NOBODY}",
    )
    return base / VIRTUAL_DOMAIN / "user" / "new"


def test_a_mail_over_starttls_is_received_with_tls_recorded(
    make_postfix: MakePostfix, tmp_path: Path
) -> None:
    postfix = make_postfix(start=False)
    maildir_new = deliver_to_maildir(postfix)
    root = CA.root("pftls acceptance root")
    leaf = root.intermediate("pftls acceptance intermediate").issue(NAME)
    ca_file = tmp_path / "root.pem"
    ca_file.write_bytes(root.cert_pem)
    tool = tool_for(postfix, tmp_path, ca_file)
    tool.lineage(leaf)

    # The admin's page, in order: the certificate installed, then the TLS profile.
    assert_exit(tool.run("install"), EXIT_OK)
    assert_exit(tool.run("configure"), EXIT_OK)
    postfix.start()

    # A mail client that trusts only our test root: the chain Postfix sends must verify.
    context = ssl.create_default_context(cafile=str(ca_file))
    context.check_hostname = False  # we connect to 127.0.0.1; the name is checked below
    with smtplib.SMTP(HOST, postfix.port, local_hostname="client.test.example", timeout=10) as c:
        c.ehlo()
        assert c.has_extn("starttls")
        c.starttls(context=context)
        sock = c.sock
        assert isinstance(sock, ssl.SSLSocket)
        served = sock.getpeercert(binary_form=True)
        assert served is not None
        assert hashlib.sha256(served).hexdigest() == hashlib.sha256(leaf.cert_der).hexdigest()
        san = x509.load_der_x509_certificate(served).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
        assert NAME in san.value.get_values_for_type(x509.DNSName)
        protocol, negotiated = sock.version(), sock.cipher()
        assert protocol is not None and negotiated is not None
        cipher = negotiated[0]
        c.ehlo()
        c.sendmail(
            "admin@test.example",
            [MAILBOX],
            f"From: admin@test.example\r\nTo: {MAILBOX}\r\nSubject: TLS check\r\n\r\nhello\r\n",
        )

    wait_until(
        lambda: maildir_new.is_dir() and any(maildir_new.iterdir()),
        timeout=15,
        what=f"delivery into {maildir_new}",
        on_timeout=postfix.log_text,
    )
    message = email.message_from_bytes(next(maildir_new.iterdir()).read_bytes())
    received = " ".join(message.get_all("Received", [])[0].split())
    match = re.search(r"\(using (TLSv[0-9.]+) with cipher (\S+)", received)
    assert match, received
    assert match.groups() == (protocol, cipher)
    assert "ESMTPS" in received

    # smtpd_tls_loglevel = 1 logs the handshake. postlogd writes asynchronously.
    wait_until(
        lambda: (
            re.search(
                rf"TLS connection established from \S+\[127\.0\.0\.1\]: {re.escape(protocol)} "
                rf"with cipher {re.escape(cipher)}",
                postfix.log_text(),
            )
            is not None
        ),
        timeout=10,
        what="'TLS connection established' in the maillog",
        on_timeout=postfix.log_text,
    )
