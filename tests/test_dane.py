"""The DANE guard: no chain that the published TLSA records reject reaches Postfix.

Two tiers. The matcher (pftls_hook.dane.match) on generated certificates, pure. Then the
whole tool as a separate process against real DNS — knot serving a DNSSEC-signed zone
(`dane.test.`), an unsigned one and a bogus one, and a validating unbound in front of it
(tests/support/dns.py) — with a real private Postfix, judged from outside: the exit code,
the record printed, main.cf's bytes and what a STARTTLS client is served. The records the
tests publish are computed by tests/support/tlsa.py (cryptography and hashlib), not by
pftls_hook.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from pftls_hook import dane
from pftls_hook.config import DnsServer, load_settings, parse_dns_server
from pftls_hook.errors import UsageError
from tests.conftest import MakePostfix
from tests.support import sclient
from tests.support.certbot import Certbot
from tests.support.daemon import WatchProcess
from tests.support.deployed import (
    LOOPBACK,
    clean_env,
    combined,
    current,
    first_deploy,
    sha256,
    wait_serves,
)
from tests.support.dns import DnsLab, Zone, dns_lab, tlsa_owner
from tests.support.net import free_port
from tests.support.node_exporter import NodeExporter, value
from tests.support.pebble import Pebble
from tests.support.pki import CA, Leaf
from tests.support.postfix import served_sha256
from tests.support.tlsa import der, record, spki
from tests.support.tool import Tool, assert_exit

SIGNED, PLAIN, BOGUS = "dane.test.", "plain.test.", "bogus.test."
EXIT_OK, EXIT_REFUSED = 0, 3


# --------------------------------------------------------------- independent oracle


def rec_311(cert: x509.Certificate) -> str:
    return record(cert, 3, 1, 1)


def rec_312(cert: x509.Certificate) -> str:
    return record(cert, 3, 1, 2)


def rec_301(cert: x509.Certificate) -> str:
    return record(cert, 3, 0, 1)


def rec_211(cert: x509.Certificate) -> str:
    return record(cert, 2, 1, 1)


def tlsa(text: str) -> dane.Tlsa:
    usage, selector, mtype, data = text.split()
    return dane.Tlsa(int(usage), int(selector), int(mtype), bytes.fromhex(data))


# --------------------------------------------------------------- the pure matcher


@pytest.fixture(scope="module")
def root() -> CA:
    return CA.root("pftls dane-test root")


@pytest.fixture(scope="module")
def inter(root: CA) -> CA:
    return root.intermediate("pftls dane-test intermediate")


def chain_of(leaf: Leaf) -> list[x509.Certificate]:
    return [leaf.cert, *leaf.chain_certs]


def test_match_3_1_1_on_the_leaf_key_only(inter: CA) -> None:
    leaf, other = inter.issue("mail.dane.test"), inter.issue("mail.dane.test")
    record = tlsa(rec_311(leaf.cert))
    assert dane.match(chain_of(leaf), [record]) == record
    assert dane.match(chain_of(other), [record]) is None


def test_match_every_selector_and_matching_type(inter: CA) -> None:
    leaf = inter.issue("mail.dane.test", key="rsa")
    exact_cert = dane.Tlsa(3, 0, 0, der(leaf.cert))
    exact_key = dane.Tlsa(3, 1, 0, spki(leaf.cert))
    for each in (tlsa(rec_301(leaf.cert)), tlsa(rec_312(leaf.cert)), exact_cert, exact_key):
        assert dane.match(chain_of(leaf), [each]) == each, each


def test_usage_2_matches_an_issuer_in_the_chain_never_the_leaf(inter: CA, root: CA) -> None:
    leaf = inter.issue("mail.dane.test")
    on_issuer = tlsa(rec_211(inter.cert))
    assert dane.match(chain_of(leaf), [on_issuer]) == on_issuer
    # The root is not in the served chain (certbot's chain.pem leaves it out).
    assert dane.match(chain_of(leaf), [tlsa(rec_211(root.cert))]) is None
    # A 2 x x record naming the leaf's own key is not a trust anchor.
    assert dane.match(chain_of(leaf), [tlsa(rec_211(leaf.cert))]) is None
    # And a 3 x x record naming the issuer does not match the leaf.
    assert dane.match(chain_of(leaf), [tlsa(rec_311(inter.cert))]) is None


def test_usages_0_and_1_and_malformed_records_are_unusable(inter: CA) -> None:
    leaf = inter.issue("mail.dane.test")
    digest = hashlib.sha256(spki(leaf.cert)).digest()
    unusable = [
        dane.Tlsa(0, 1, 1, digest),
        dane.Tlsa(1, 1, 1, digest),
        dane.Tlsa(3, 2, 1, digest),  # unknown selector
        dane.Tlsa(3, 1, 3, digest),  # unknown matching type
        dane.Tlsa(3, 1, 2, digest),  # a SHA-256 digest under SHA-512
        dane.Tlsa(3, 1, 1, digest[:31]),
    ]
    assert all(not r.usable for r in unusable)
    assert dane.match(chain_of(leaf), unusable) is None
    good = dane.Tlsa(3, 1, 1, digest)
    assert dane.match(chain_of(leaf), [*unusable, good]) == good


def test_records_for_a_chain_are_3_1_1_then_2_1_1_per_issuer(inter: CA) -> None:
    leaf = inter.issue("mail.dane.test")
    records = [str(r) for r in dane.records_for(chain_of(leaf))]
    assert records == [rec_311(leaf.cert), rec_211(inter.cert)]


def test_targets_are_hostnames_times_ports() -> None:
    targets = dane.targets(["Mail.Dane.Test.", "mx2.dane.test"], [25, 465])
    assert [t.owner for t in targets] == [
        "_25._tcp.mail.dane.test.",
        "_465._tcp.mail.dane.test.",
        "_25._tcp.mx2.dane.test.",
        "_465._tcp.mx2.dane.test.",
    ]


@pytest.mark.parametrize(
    ("text", "server"),
    [
        ("127.0.0.1", DnsServer("127.0.0.1", 53)),
        ("127.0.0.1:5353", DnsServer("127.0.0.1", 5353)),
        ("[::1]:53", DnsServer("::1", 53)),
        ("[::1]", DnsServer("::1", 53)),
        ("::1", DnsServer("::1", 53)),
    ],
)
def test_dns_resolver_syntax(text: str, server: DnsServer) -> None:
    assert parse_dns_server(text) == server


@pytest.mark.parametrize("text", ["resolver.example:53", "127.0.0.1:0", "[::1]x", "1.2.3.4:x"])
def test_dns_resolver_syntax_errors_name_the_option(text: str) -> None:
    with pytest.raises(UsageError, match="--dns-resolver"):
        parse_dns_server(text)


def test_dane_settings_from_file_env_and_their_errors(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('dane = "warn"\ndns-resolver = ["127.0.0.1:5353", "[::1]"]\n')
    config.chmod(0o600)
    settings = load_settings({"config": str(config)}, {"PFTLS_HOOK_DANE_PORTS": "25 465"})
    assert settings.dane == "warn"
    assert settings.dns_resolvers == (DnsServer("127.0.0.1", 5353), DnsServer("::1", 53))
    assert settings.dane_ports == (25, 465)
    assert load_settings({"config": str(config), "dane": "off"}, {}).dane == "off"
    for bad in ({"PFTLS_HOOK_DANE": "maybe"}, {"PFTLS_HOOK_DANE_PORTS": "0"}):
        with pytest.raises(UsageError, match="dane"):
            load_settings({"config": str(config)}, bad)
    config.write_text("dane-ports = [25, true]\n")
    with pytest.raises(UsageError, match="dane-ports: invalid value"):
        load_settings({"config": str(config)}, {})


# --------------------------------------------------------------- real DNS, real Postfix


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsLab]:
    zones = [Zone(SIGNED), Zone(PLAIN, dnssec="unsigned"), Zone(BOGUS, dnssec="bogus")]
    with dns_lab(tmp_path_factory.mktemp("dns"), zones) as started:
        yield started


_hosts = itertools.count(1)


@dataclass
class DaneRig:
    tool: Tool
    lab: DnsLab
    host: str

    @property
    def owner(self) -> str:
        return tlsa_owner(self.host)

    def run(
        self, *args: str, dane_mode: str = "enforce", env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The tool with DANE on (Tool's rig turns it off) through the test resolver."""
        return self.tool.run(
            "--dane", dane_mode, "--dns-resolver", self.lab.resolver.address, *args, env=env
        )

    def publish(self, *records: str, owner: str | None = None) -> None:
        self.lab.knot.replace(owner or self.owner, "TLSA", *records)

    def renew(self, leaf: Leaf, version: int = 2) -> None:
        self.tool.lineage(leaf, version, name=self.host)


def _rig(tmp_path: Path, make_postfix: MakePostfix, root: CA, lab: DnsLab, zone: str) -> DaneRig:
    host = f"mail{next(_hosts)}.{zone.rstrip('.')}"
    ca_file = tmp_path / "root.pem"
    ca_file.write_bytes(root.cert_pem)
    tool = Tool(postfix=make_postfix(hostname=host), base=tmp_path, ca_file=ca_file)
    return DaneRig(tool, lab, host)


def _deploy_first(rig: DaneRig, inter: CA) -> Leaf:
    """Version 1 installed (DANE off for it) and served: the state a renewal meets."""
    leaf = inter.issue(rig.host)
    rig.tool.lineage(leaf, name=rig.host)
    first_deploy_named(rig, leaf)
    return leaf


def first_deploy_named(rig: DaneRig, leaf: Leaf) -> None:
    tool, path = rig.tool, current(rig.tool, rig.host)
    tool.postfix.postconf("-e", f"smtpd_tls_cert_file = {path}", f"smtpd_tls_key_file = {path}")
    assert_exit(tool.run("install", rig.host), EXIT_OK)
    wait_serves(tool, leaf)


@pytest.fixture
def rig(tmp_path: Path, make_postfix: MakePostfix, root: CA, lab: DnsLab) -> DaneRig:
    return _rig(tmp_path, make_postfix, root, lab, SIGNED)


@dataclass(frozen=True)
class Before:
    main_cf: bytes
    installed: bytes
    served: str


def before(rig: DaneRig) -> Before:
    return Before(
        rig.tool.postfix.main_cf_bytes(),
        current(rig.tool, rig.host).read_bytes(),
        served_sha256(LOOPBACK, rig.tool.postfix.port),
    )


def assert_refused_unchanged(
    rig: DaneRig, was: Before, result: subprocess.CompletedProcess[str]
) -> None:
    """Exit 3 with the DANE reason, and nothing changed: main.cf's bytes, the installed
    file and the certificate Postfix serves are as they were."""
    assert_exit(result, EXIT_REFUSED)
    assert "refused by DANE" in result.stderr, result.stderr
    assert rig.tool.postfix.main_cf_bytes() == was.main_cf, "main.cf changed"
    assert current(rig.tool, rig.host).read_bytes() == was.installed, "installed file changed"
    assert served_sha256(LOOPBACK, rig.tool.postfix.port) == was.served


def assert_held_back(rig: DaneRig, renewed: Leaf) -> None:
    """`status --check` says WARNING: the renewal waits for its record, which it names."""
    held = rig.run("status", "--check")
    assert held.returncode == 1, held.stdout + held.stderr
    assert held.stdout.startswith("PFTLS-HOOK WARNING: DANE: renewal held back"), held.stdout
    assert f"{rig.owner} IN TLSA {rec_311(renewed.cert)}" in held.stdout


def assert_published_line(result: subprocess.CompletedProcess[str], line: str) -> None:
    assert f"publish: {line}" in result.stderr, result.stderr


def test_no_records_nothing_to_guard(rig: DaneRig, inter: CA) -> None:
    first = _deploy_first(rig, inter)
    renewed = inter.issue(rig.host)
    rig.renew(renewed)
    result = rig.run("-v", "install", rig.host)
    assert_exit(result, EXIT_OK)
    assert f"{rig.owner}: no TLSA records: nothing to guard" in result.stderr
    wait_serves(rig.tool, renewed)
    assert sha256(renewed) != sha256(first)


def test_3_1_1_matching_the_new_key_deploys_and_reports_ad(rig: DaneRig, inter: CA) -> None:
    renewed = inter.issue(rig.host)
    rig.publish(rec_311(renewed.cert))
    rig.tool.lineage(renewed, name=rig.host)
    path = current(rig.tool, rig.host)
    rig.tool.postfix.postconf("-e", f"smtpd_tls_cert_file = {path}", f"smtpd_tls_key_file = {path}")
    result = rig.run("install", rig.host)
    assert_exit(result, EXIT_OK)
    assert f"matches TLSA {rec_311(renewed.cert)}" in result.stderr
    assert "DNSSEC-validated" in result.stderr
    wait_serves(rig.tool, renewed)


def test_new_key_with_only_the_old_record_is_refused_and_nothing_changes(
    rig: DaneRig, inter: CA
) -> None:
    first = _deploy_first(rig, inter)
    rig.publish(rec_311(first.cert))
    renewed = inter.issue(rig.host)  # certbot's default: a new key at every renewal
    rig.renew(renewed)
    was = before(rig)

    result = rig.run("install", rig.host)

    assert_refused_unchanged(rig, was, result)
    assert was.served == sha256(first)
    # One line naming the target and the exact record that would let it through.
    (line,) = [x for x in result.stderr.splitlines() if "publish:" in x]
    assert line.endswith(f"publish: {rig.owner} IN TLSA {rec_311(renewed.cert)}"), line


def test_deploy_hook_and_verify_refuse_too(rig: DaneRig, inter: CA) -> None:
    first = _deploy_first(rig, inter)
    rig.publish(rec_311(first.cert))
    rig.renew(inter.issue(rig.host))
    lineage = str(rig.tool.live_dir / rig.host)
    was = before(rig)
    hook = rig.tool.run(
        "--dane", "enforce", "--dns-resolver", rig.lab.resolver.address, "deploy-hook",
        env={"RENEWED_LINEAGE": lineage},
    )  # fmt: skip
    assert_refused_unchanged(rig, was, hook)
    assert_refused_unchanged(rig, was, rig.run("verify", rig.host))
    assert was.served == sha256(first)


def test_current_and_next_published_deploys(rig: DaneRig, inter: CA) -> None:
    first = _deploy_first(rig, inter)
    renewed = inter.issue(rig.host)
    rig.publish(rec_311(first.cert), rec_311(renewed.cert))
    rig.renew(renewed)
    assert_exit(rig.run("install", rig.host), EXIT_OK)
    wait_serves(rig.tool, renewed)


def test_2_1_1_on_the_issuer_lets_a_new_key_through(rig: DaneRig, inter: CA) -> None:
    _deploy_first(rig, inter)
    rig.publish(rec_211(inter.cert))
    renewed = inter.issue(rig.host)
    rig.renew(renewed)
    result = rig.run("install", rig.host)
    assert_exit(result, EXIT_OK)
    assert f"matches TLSA {rec_211(inter.cert)}" in result.stderr
    wait_serves(rig.tool, renewed)


def test_2_1_1_on_another_issuer_is_refused(rig: DaneRig, inter: CA, root: CA) -> None:
    first = _deploy_first(rig, inter)
    rig.publish(rec_211(inter.cert))
    other_inter = root.intermediate("pftls dane-test other intermediate")
    rig.renew(other_inter.issue(rig.host))
    was = before(rig)
    assert_refused_unchanged(rig, was, rig.run("install", rig.host))
    assert was.served == sha256(first)


def test_3_0_1_pins_the_whole_certificate(rig: DaneRig, inter: CA) -> None:
    _deploy_first(rig, inter)
    renewed = inter.issue(rig.host)
    rig.publish(rec_301(renewed.cert))
    rig.renew(renewed)
    assert_exit(rig.run("install", rig.host), EXIT_OK)
    wait_serves(rig.tool, renewed)
    # Any other certificate, even for the same name, is refused by a 3 0 1.
    rig.renew(inter.issue(rig.host), 3)
    assert_exit(rig.run("install", rig.host), EXIT_REFUSED)


def test_sha512_records_match(rig: DaneRig, inter: CA) -> None:
    _deploy_first(rig, inter)
    renewed = inter.issue(rig.host)
    rig.publish(rec_312(renewed.cert))
    rig.renew(renewed)
    result = rig.run("install", rig.host)
    assert_exit(result, EXIT_OK)
    assert f"matches TLSA {rec_312(renewed.cert)}" in result.stderr
    wait_serves(rig.tool, renewed)


def test_a_cnamed_tlsa_owner_is_followed(rig: DaneRig, inter: CA) -> None:
    first = _deploy_first(rig, inter)
    alias = f"tlsa-{rig.host.split('.')[0]}.{SIGNED}"
    rig.lab.knot.replace(rig.owner, "CNAME", alias)
    rig.publish(rec_311(first.cert), owner=alias)
    renewed = inter.issue(rig.host)
    rig.renew(renewed)
    was = before(rig)
    refused = rig.run("install", rig.host)
    assert_refused_unchanged(rig, was, refused)
    assert f"via CNAME {alias}" in refused.stderr
    # The record to publish names the TLSA owner the sender asks for.
    assert_published_line(refused, f"{rig.owner} IN TLSA {rec_311(renewed.cert)}")
    rig.publish(rec_311(first.cert), rec_311(renewed.cert), owner=alias)
    assert_exit(rig.run("install", rig.host), EXIT_OK)
    wait_serves(rig.tool, renewed)


def test_two_targets_one_missing_names_only_that_one(rig: DaneRig, inter: CA) -> None:
    first = _deploy_first(rig, inter)
    renewed = inter.issue(rig.host)
    owner_465 = tlsa_owner(rig.host, 465)
    rig.publish(rec_311(first.cert), rec_311(renewed.cert))
    rig.publish(rec_311(first.cert), owner=owner_465)
    rig.renew(renewed)
    config = rig.tool.base / "pftls.toml"
    config.write_text("dane-ports = [25, 465]\n")
    config.chmod(0o600)
    was = before(rig)
    result = rig.run("--config", str(config), "install", rig.host)
    assert_refused_unchanged(rig, was, result)
    assert_published_line(result, f"{owner_465} IN TLSA {rec_311(renewed.cert)}")
    assert f"publish: {rig.owner}" not in result.stderr
    assert "refused by DANE (1 target(s)" in result.stderr
    assert was.served == sha256(first)


def test_unreachable_resolver_refuses(rig: DaneRig, inter: CA) -> None:
    first = _deploy_first(rig, inter)
    rig.renew(inter.issue(rig.host))
    silent = f"{LOOPBACK}:{free_port()}"  # nothing listens there
    was = before(rig)
    result = rig.tool.run("--dane", "enforce", "--dns-resolver", silent, "install", rig.host)
    assert_refused_unchanged(rig, was, result)
    assert f"{rig.owner}: TLSA lookup at {silent}" in result.stderr
    assert "not safe to deploy" in result.stderr
    assert was.served == sha256(first)


def test_bogus_answer_servfail_refuses(
    tmp_path: Path, make_postfix: MakePostfix, root: CA, inter: CA, lab: DnsLab
) -> None:
    rig = _rig(tmp_path, make_postfix, root, lab, BOGUS)
    first = _deploy_first(rig, inter)
    renewed = inter.issue(rig.host)
    # Even the right record does not help: the resolver cannot validate it.
    rig.publish(rec_311(first.cert), rec_311(renewed.cert))
    rig.renew(renewed)
    was = before(rig)
    result = rig.run("install", rig.host)
    assert_refused_unchanged(rig, was, result)
    assert "SERVFAIL" in result.stderr
    assert was.served == sha256(first)


def test_unsigned_zone_records_are_enforced_and_reported_without_ad(
    tmp_path: Path, make_postfix: MakePostfix, root: CA, inter: CA, lab: DnsLab
) -> None:
    rig = _rig(tmp_path, make_postfix, root, lab, PLAIN)
    first = _deploy_first(rig, inter)
    rig.publish(rec_311(first.cert))
    rig.renew(inter.issue(rig.host))
    was = before(rig)
    result = rig.run("install", rig.host)
    assert_refused_unchanged(rig, was, result)
    assert "not DNSSEC-validated (no AD)" in result.stderr
    assert was.served == sha256(first)


def test_dane_warn_deploys_with_a_warning_and_off_looks_nothing_up(rig: DaneRig, inter: CA) -> None:
    first = _deploy_first(rig, inter)
    rig.publish(rec_311(first.cert))
    renewed = inter.issue(rig.host)
    rig.renew(renewed)
    warned = rig.run("install", rig.host, dane_mode="warn")
    assert_exit(warned, EXIT_OK)
    assert "--dane warn: deploying anyway" in warned.stderr
    assert f"{rig.owner} IN TLSA {rec_311(renewed.cert)}" in warned.stderr
    wait_serves(rig.tool, renewed)
    # off: not even a lookup; an unreachable resolver would refuse otherwise.
    third = inter.issue(rig.host)
    rig.renew(third, 3)
    silent = f"{LOOPBACK}:{free_port()}"
    result = rig.tool.run("--dane", "off", "--dns-resolver", silent, "install", rig.host)
    assert_exit(result, EXIT_OK)
    assert "TLSA" not in result.stderr
    wait_serves(rig.tool, third)


def test_rollback_to_a_version_dns_rejects_is_refused(rig: DaneRig, inter: CA) -> None:
    first = _deploy_first(rig, inter)
    renewed = inter.issue(rig.host)
    rig.renew(renewed)
    assert_exit(rig.tool.run("install", rig.host), EXIT_OK)  # DANE off: no records yet
    wait_serves(rig.tool, renewed)
    rig.publish(rec_311(renewed.cert))  # the admin moved DNS to the new key
    was = before(rig)
    result = rig.run("rollback")
    assert_refused_unchanged(rig, was, result)
    assert_published_line(result, f"{rig.owner} IN TLSA {rec_311(first.cert)}")
    assert was.served == sha256(renewed)
    rig.publish(rec_311(renewed.cert), rec_311(first.cert))
    assert_exit(rig.run("rollback"), EXIT_OK)
    wait_serves(rig.tool, first)


# --------------------------------------------------------------- real certbot renewals


@pytest.mark.slow
def test_certbot_renewals_new_key_refused_reuse_key_deployed(
    tmp_path: Path, pebble: Pebble, certbot: Certbot, make_postfix: MakePostfix, lab: DnsLab
) -> None:
    host = f"mail{next(_hosts)}.{SIGNED.rstrip('.')}"
    postfix = make_postfix(hostname=host)
    tool = Tool(
        postfix=postfix,
        base=tmp_path,
        ca_file=pebble.root_file(),
        certbot_config_dir=certbot.config_dir,
    )
    certbot.certonly([host], cert_name=host)
    first_deploy(tool, "--dane", "off")
    lineage = certbot.lineage(host)
    first = x509.load_pem_x509_certificate((lineage / "cert.pem").read_bytes())
    owner = tlsa_owner(host)
    lab.knot.replace(owner, "TLSA", rec_311(first))
    hook = shlex.join(
        [sys.executable, "-m", "pftls_hook", *tool.options(), "--dane", "enforce",
         "--dns-resolver", lab.resolver.address, "deploy-hook"]
    )  # fmt: skip

    renew = ["renew", "--no-random-sleep-on-renew", "--force-renewal", "--cert-name", host]

    # With --reuse-key the key stays and the published 3 1 1 still matches: deployed.
    certbot.run([*renew, "--deploy-hook", hook, "--reuse-key"])
    kept = x509.load_pem_x509_certificate((lineage / "cert.pem").read_bytes())
    assert der(kept) != der(first)
    assert spki(kept) == spki(first)
    assert served_sha256(LOOPBACK, postfix.port) == hashlib.sha256(der(kept)).hexdigest()

    # --new-key (certbot's default without reuse_key): the hook refuses, Postfix keeps it.
    renewal = certbot.run([*renew, "--deploy-hook", hook, "--new-key"], check=False)
    renewed = x509.load_pem_x509_certificate((lineage / "cert.pem").read_bytes())
    assert spki(renewed) != spki(first)
    output = renewal.stderr + renewal.stdout
    assert "refused by DANE" in output, output
    assert f"{owner} IN TLSA {rec_311(renewed)}" in output
    assert served_sha256(LOOPBACK, postfix.port) == hashlib.sha256(der(kept)).hexdigest()


# --------------------------------------------------------------- tlsa, status, advice


def test_tlsa_lists_served_next_issuer_and_stale_against_dns(rig: DaneRig, inter: CA) -> None:
    first = _deploy_first(rig, inter)
    stale = "3 1 1 " + "ab" * 32
    rig.publish(rec_311(first.cert), stale)
    renewed = inter.issue(rig.host)
    rig.renew(renewed)

    result = rig.run("tlsa")

    assert_exit(result, EXIT_OK)
    lines = result.stdout.splitlines()
    owner = rig.owner
    assert f"{owner} IN TLSA {rec_311(first.cert)}  ; served key: published" in lines
    assert (
        f"{owner} IN TLSA {rec_311(renewed.cert)}  ; next key: missing - publish before deploying"
        in lines
    )
    assert f"{owner} IN TLSA {rec_211(inter.cert)}  ; served issuer: missing" in lines
    assert f"; stale (matches no key or issuer served or held): {owner} IN TLSA {stale}" in lines
    assert f"; {owner}: 2 usable record(s), DNSSEC-validated" in lines

    report = json.loads(rig.run("tlsa", "--json").stdout)
    assert report["lineage"] == rig.host
    assert report["held_back"] == [f"{owner} IN TLSA {rec_311(renewed.cert)}"]
    assert report["broken"] == []
    (target,) = report["targets"]
    assert target["authenticated"] is True
    assert target["served_matches"] == rec_311(first.cert)


def test_status_check_warns_while_held_back_and_is_critical_when_nothing_matches(
    rig: DaneRig, inter: CA
) -> None:
    first = _deploy_first(rig, inter)
    rig.publish(rec_311(first.cert))
    assert_exit(rig.run("status", "--check"), 0)

    renewed = inter.issue(rig.host)
    rig.renew(renewed)
    assert_held_back(rig, renewed)

    rig.publish("3 1 1 " + "cd" * 32)  # the admin published a wrong record
    broken = rig.run("status", "--check")
    assert broken.returncode == 2, broken.stdout + broken.stderr
    assert broken.stdout.startswith("PFTLS-HOOK CRITICAL: DANE: the served chain matches no")
    text = rig.run("status")
    assert "the served chain matches NO published record" in text.stdout


def test_reuse_key_advice_when_3_1_1_is_published_without_reuse_key(
    rig: DaneRig, inter: CA
) -> None:
    first = _deploy_first(rig, inter)
    rig.publish(rec_311(first.cert))
    advice = "no reuse_key = True while 3 1 x TLSA records are published"
    assert advice in rig.run("tlsa").stdout
    assert advice in rig.run("status").stdout
    renewed = inter.issue(rig.host)
    rig.renew(renewed)
    rig.publish(rec_311(first.cert), rec_311(renewed.cert))
    deployed = rig.run("install", rig.host)
    assert_exit(deployed, EXIT_OK)
    assert advice in deployed.stderr
    conf = rig.tool.config_dir / "renewal" / f"{rig.host}.conf"
    conf.write_text(conf.read_text() + "\n[renewalparams]\nreuse_key = True\n")
    assert advice not in rig.run("tlsa").stdout
    # Only a 2 1 1: the key may change, nothing to advise.
    rig.publish(rec_211(inter.cert))
    conf.write_text(conf.read_text().replace("reuse_key = True", ""))
    assert advice not in rig.run("tlsa").stdout


@pytest.mark.slow
def test_daemon_deploys_on_its_own_once_the_record_is_published(rig: DaneRig, inter: CA) -> None:
    first = _deploy_first(rig, inter)
    rig.publish(rec_311(first.cert))
    renewed = inter.issue(rig.host)
    rig.renew(renewed)
    record = f"{rig.owner} IN TLSA {rec_311(renewed.cert)}"
    options = [
        *rig.tool.options(), "--dane", "enforce", "--dns-resolver", rig.lab.resolver.address,
        "--debounce", "0.2",
    ]  # fmt: skip
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    daemon = WatchProcess(options, env, rig.tool.base / "daemon.log", rig.tool.base).start()
    try:
        daemon.wait_output("refused by DANE", timeout=30)
        assert f"publish: {record}" in daemon.output_text()
        status = rig.run("status")
        assert f"waiting for DNS: {record}" in status.stdout, status.stdout
        assert served_sha256(LOOPBACK, rig.tool.postfix.port) == sha256(first)

        rig.lab.knot.add(rig.owner, "TLSA", rec_311(renewed.cert))  # the admin publishes
        wait_serves(rig.tool, renewed, timeout=60)
        daemon.wait_output(f"matches TLSA {rec_311(renewed.cert)}", timeout=10)
    finally:
        code, _ = daemon.stop()
    assert code == 0, daemon.output_text()


def test_resolver_on_ipv6_loopback(rig: DaneRig, inter: CA) -> None:
    if not rig.lab.resolver.ipv6:
        pytest.fail("no ::1 here: the IPv6 resolver form cannot be exercised")
    first = _deploy_first(rig, inter)
    rig.publish(rec_311(first.cert))
    renewed = inter.issue(rig.host)
    rig.renew(renewed)
    resolver = f"[::1]:{rig.lab.resolver.port}"
    was = before(rig)
    refused = rig.tool.run("--dane", "enforce", "--dns-resolver", resolver, "install", rig.host)
    assert_refused_unchanged(rig, was, refused)
    rig.publish(rec_311(first.cert), rec_311(renewed.cert))
    deployed = rig.tool.run("--dane", "enforce", "--dns-resolver", resolver, "install", rig.host)
    assert_exit(deployed, EXIT_OK)
    wait_serves(rig.tool, renewed)


def test_default_resolver_is_etc_resolv_conf(rig: DaneRig, inter: CA, tmp_path: Path) -> None:
    """Without --dns-resolver the nameservers of /etc/resolv.conf are asked. Shown in a
    private mount namespace where /etc/resolv.conf names none: the tool refuses, saying so
    (the machine's own resolver is never queried by the tests)."""
    first = _deploy_first(rig, inter)
    rig.renew(inter.issue(rig.host))
    empty = tmp_path / "resolv.conf"
    empty.write_text("# no nameserver\n")
    was = before(rig)
    result = subprocess.run(
        ["/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
         '/usr/bin/mount --bind "$0" /etc/resolv.conf && exec "$@"', str(empty),
         sys.executable, "-m", "pftls_hook", *rig.tool.options(), "--dane", "enforce",
         "install", rig.host],
        capture_output=True, text=True, timeout=120, check=False, env=clean_env(),
    )  # fmt: skip
    assert_refused_unchanged(rig, was, result)
    assert "/etc/resolv.conf names no nameserver: give --dns-resolver" in result.stderr
    assert was.served == sha256(first)


def test_refusal_warns_when_the_served_certificate_is_about_to_expire(
    rig: DaneRig, inter: CA
) -> None:
    ends = datetime.now(UTC) + timedelta(days=1, hours=12)
    first = inter.issue(rig.host, not_after=ends)
    rig.tool.lineage(first, name=rig.host)
    first_deploy_named(rig, first)
    rig.publish(rec_311(first.cert))
    rig.renew(inter.issue(rig.host))
    was = before(rig)
    result = rig.run("--min-days", "2", "install", rig.host)
    assert_refused_unchanged(rig, was, result)
    assert f"the served certificate expires {ends:%Y-%m-%d %H:%M} UTC" in result.stderr
    # With days to spare, no such warning.
    quiet = rig.run("--min-days", "1", "install", rig.host)
    assert_exit(quiet, EXIT_REFUSED)
    assert "the served certificate expires" not in quiet.stderr


def test_each_served_chain_must_match_rsa_and_ecdsa(rig: DaneRig, inter: CA) -> None:
    """main.cf serves an ECDSA certificate (smtpd_tls_eccert_file) beside the RSA one
    pftls-hook installed: a DANE sender may be given either, so both must match."""
    rsa = inter.issue(rig.host, key="rsa")
    rig.tool.lineage(rsa, name=rig.host)
    first_deploy_named(rig, rsa)
    ecdsa = inter.issue(rig.host, key="ec")
    ec_cert, ec_key = rig.tool.base / "ec-cert.pem", rig.tool.base / "ec-key.pem"
    ec_cert.write_bytes(ecdsa.fullchain_pem)
    ec_key.write_bytes(ecdsa.key_pem())
    ec_key.chmod(0o600)
    rig.tool.postfix.postconf(
        "-e", f"smtpd_tls_eccert_file = {ec_cert}", f"smtpd_tls_eckey_file = {ec_key}"
    )
    rig.publish(rec_311(rsa.cert))
    report = json.loads(rig.run("tlsa", "--json").stdout)
    (target,) = report["targets"]
    assert target["served_matches"] == rec_311(rsa.cert)
    assert target["unmatched_chains"] == 1
    assert report["broken"] == [rig.owner]
    listed = rig.run("tlsa").stdout
    assert f"{rig.owner} IN TLSA {rec_311(ecdsa.cert)}  ; served key: missing" in listed

    rig.publish(rec_311(rsa.cert), rec_311(ecdsa.cert))
    report = json.loads(rig.run("tlsa", "--json").stdout)
    assert report["broken"] == []


def test_dual_chains_a_renewal_the_records_reject_is_refused_the_other_deploys(
    rig: DaneRig, inter: CA
) -> None:
    """Two managed lineages, ECDSA and RSA, both renewed with new keys; only the new RSA
    key is published. The ECDSA renewal is refused (its old chain stays served, still
    matching), the RSA one deploys, and install exits with the refusal."""
    names = {"ec": f"{rig.host}-ecdsa", "rsa": f"{rig.host}-rsa"}
    first = {key: inter.issue(rig.host, key=key) for key in names}
    for key, name in names.items():
        rig.tool.lineage(first[key], name=name)
    assert_exit(rig.tool.run("install"), EXIT_OK)  # DANE off for version 1
    rig.publish(*(rec_311(leaf.cert) for leaf in first.values()))
    renewed = {key: inter.issue(rig.host, key=key) for key in names}
    for key, name in names.items():
        rig.tool.lineage(renewed[key], 2, name=name)
    rig.publish(*(rec_311(leaf.cert) for leaf in first.values()), rec_311(renewed["rsa"].cert))
    main_cf = rig.tool.postfix.main_cf_bytes()

    hook = rig.run("deploy-hook", env={"RENEWED_LINEAGE": str(rig.tool.live_dir / names["ec"])})
    assert_exit(hook, EXIT_REFUSED)
    assert "refused by DANE" in hook.stderr
    result = rig.run("install")

    assert_exit(result, EXIT_REFUSED)
    assert f"{names['ec']}: refused" in result.stderr, result.stderr
    assert f"{names['rsa']}: deployed" in result.stderr, result.stderr
    port = rig.tool.postfix.port
    assert sclient.served_sha256(LOOPBACK, port, sclient.ECDSA_ONLY) == sha256(first["ec"])
    assert sclient.served_sha256(LOOPBACK, port, sclient.RSA_ONLY) == sha256(renewed["rsa"])
    assert rig.tool.postfix.main_cf_bytes() == main_cf
    report = json.loads(rig.run("tlsa", "--json").stdout)
    assert report["broken"] == []  # every chain still served matches a record
    assert_held_back(rig, renewed["ec"])

    # The other way round: the ECDSA key is published at last, the RSA lineage renews
    # with a key that is not.
    again = inter.issue(rig.host, key="rsa")
    rig.tool.lineage(again, 3, name=names["rsa"])
    rig.publish(*(rec_311(leaf.cert) for leaf in (*first.values(), *renewed.values())))
    result = rig.run("install")
    assert_exit(result, EXIT_REFUSED)
    assert f"{names['ec']}: deployed" in result.stderr, result.stderr
    assert f"{names['rsa']}: refused" in result.stderr, result.stderr
    assert sclient.served_sha256(LOOPBACK, port, sclient.ECDSA_ONLY) == sha256(renewed["ec"])
    assert sclient.served_sha256(LOOPBACK, port, sclient.RSA_ONLY) == sha256(renewed["rsa"])
    assert_held_back(rig, again)


@pytest.mark.slow
def test_tlsa_match_metric_as_node_exporter_serves_it(
    rig: DaneRig, inter: CA, tmp_path: Path
) -> None:
    first = _deploy_first(rig, inter)
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    metrics_file = str(textfile / "pftls-hook.prom")
    exporter = NodeExporter(textfile, tmp_path / "node-exporter.log")
    try:
        assert_exit(rig.run("status", "--metrics-file", metrics_file), EXIT_OK)
        assert not [k for k in exporter.scrape() if k[0] == "pftls_dane_tlsa_match"]

        rig.publish(rec_311(first.cert))  # seen by the next lookup (no cache, no NSEC reuse)
        assert_exit(rig.run("status", "--metrics-file", metrics_file), EXIT_OK)
        assert value(exporter.scrape(), "pftls_dane_tlsa_match", target=rig.owner) == 1

        rig.publish("3 1 1 " + "cd" * 32)  # a record no served key matches
        assert_exit(rig.run("status", "--metrics-file", metrics_file), EXIT_OK)
        assert value(exporter.scrape(), "pftls_dane_tlsa_match", target=rig.owner) == 0

        rig.publish()  # no records: nothing to match, no sample
        assert_exit(rig.run("status", "--metrics-file", metrics_file), EXIT_OK)
        samples = exporter.scrape()
        assert (
            value(
                samples,
                "pftls_served_matches_installed",
                endpoint=f"{LOOPBACK}:{rig.tool.postfix.port}",
            )
            == 1
        )
        assert not [k for k in samples if k[0] == "pftls_dane_tlsa_match"]
    finally:
        exporter.stop()


def test_tlsa_and_status_when_dns_cannot_answer(rig: DaneRig, inter: CA) -> None:
    first = _deploy_first(rig, inter)
    silent = f"{LOOPBACK}:{free_port()}"
    listed = rig.tool.run("--dane", "enforce", "--dns-resolver", silent, "tlsa")
    assert_exit(listed, EXIT_OK)
    assert f"; {rig.owner} lookup failed: {rig.owner}: TLSA lookup at {silent}" in listed.stdout
    assert f"{rig.owner} IN TLSA {rec_311(first.cert)}  ; served key: unknown" in listed.stdout
    check = rig.tool.run("--dane", "enforce", "--dns-resolver", silent, "status", "--check")
    assert check.returncode == 3, check.stdout
    assert f"DANE: TLSA lookup failed for {rig.owner}" in check.stdout
    # A dry run refuses as the deploy would, and says nothing would be written.
    rig.publish(rec_311(first.cert))
    rig.renew(inter.issue(rig.host))
    was = before(rig)
    dry = rig.run("--dry-run", "install", rig.host)
    assert_refused_unchanged(rig, was, dry)
    assert "would write" not in dry.stdout


def test_a_version_in_place_not_served_is_reloaded_only_once_dns_agrees(
    rig: DaneRig, inter: CA
) -> None:
    """A deploy killed between its switch and its reload leaves the new files in place
    while Postfix serves the old ones (an smtpd started before the switch, idle). The next
    run only reloads, and only once the TLSA records accept what the reload would serve."""
    first = _deploy_first(rig, inter)
    rig.publish(rec_311(first.cert))
    renewed = inter.issue(rig.host)
    rig.renew(renewed)
    installed = current(rig.tool, rig.host)
    assert served_sha256(LOOPBACK, rig.tool.postfix.port) == sha256(first)  # its smtpd idles
    installed.write_bytes(combined(renewed))  # what the killed deploy switched in
    was = before(rig)
    assert was.served == sha256(first), "the idle smtpd should still serve version 1"
    reloads = rig.tool.postfix.reloads()
    hook = ("deploy-hook",)
    env = {"RENEWED_LINEAGE": str(rig.tool.live_dir / rig.host)}

    refused = rig.run(*hook, env=env)

    assert_refused_unchanged(rig, was, refused)
    assert_published_line(refused, f"{rig.owner} IN TLSA {rec_311(renewed.cert)}")
    assert rig.tool.postfix.reloads() == reloads, "reloaded what DNS rejects"

    rig.publish(rec_311(first.cert), rec_311(renewed.cert))
    inode = installed.stat().st_ino
    reloaded = rig.run(*hook, env=env)

    assert_exit(reloaded, EXIT_OK)
    assert f"{rig.host}: reloaded" in reloaded.stderr, reloaded.stderr
    assert installed.stat().st_ino == inode, "the files in place were switched again"
    assert rig.tool.postfix.main_cf_bytes() == was.main_cf
    wait_serves(rig.tool, renewed)
