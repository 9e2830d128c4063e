"""`pftls-hook obtain` through certbot-dns-ovh, end to end, as the admin's guide runs it.

Real certbot with its dns-ovh plugin (lexicon underneath) signs its calls to a loopback
stand-in for the OVH API (tests/support/ovh_api.py, the one mock: it checks keys, rights
and signatures as OVH does) and reaches it as `eu.api.ovh.com` through a private /etc/hosts
in its own mount namespace. The stand-in publishes the TXT record into a real Knot DNS
server, and a pebble that resolves through that server alone validates DNS-01 for real.
pftls-hook then deploys to a private Postfix; `certbot renew` through the stored renewal
configuration redeploys; one more name expands the lineage; `--key-type ecdsa,rsa` makes
both chains. Every broken credentials file is refused with the API up and never called.
Names sit under example.net: lexicon finds the zone from the public suffix list, which has
no `.test`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.rcode
import dns.rdatatype
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.conftest import MakePostfix
from tests.support import sclient
from tests.support.certbot import Certbot
from tests.support.dns import KnotServer, Zone, query
from tests.support.mounts import private_hosts
from tests.support.net import LOOPBACK
from tests.support.ovh_api import OvhApi, OvhApiServer
from tests.support.pebble import Pebble
from tests.support.postfix import PostfixInstance, served_sha256
from tests.support.tool import Tool, assert_exit
from tests.test_obtain import BROKEN_CREDENTIALS, BROKEN_CREDENTIALS_IDS, leaf_sha256

ZONE = "example.net"
MAIL = f"mail.{ZONE}"
SMTP = f"smtp.{ZONE}"  # the name an expansion adds
CHALLENGE = f"_acme-challenge.{MAIL}."
EXIT_OK, EXIT_USAGE, EXIT_CANNOT = 0, 2, 6
KEYS = {"application_key": "AK-test", "application_secret": "AS-test", "consumer_key": "CK-test"}


@dataclass
class OvhRig:
    knot: KnotServer
    pebble: Pebble
    api: OvhApi
    server: OvhApiServer
    certbot: Certbot
    postfix: PostfixInstance
    tool: Tool
    credentials: Path
    ca_bundle: Path  # pebble's HTTPS CA and the stand-in's: what certbot trusts

    def in_namespace(self) -> list[str]:
        return private_hosts(self.server.hosts_file, [])

    def obtain(
        self, *extra: str, names: tuple[str, ...] = (MAIL,), credentials: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.tool.run(
            "obtain", *(arg for name in names for arg in ("-d", name)), *extra,
            "-m", f"hostmaster@{ZONE}",
            "--dns-ovh-credentials", str(credentials or self.credentials),
            "--propagation-seconds", "1",
            "--server", self.pebble.directory_url,
            f"--certbot-arg=--work-dir={self.certbot.work_dir}",
            f"--certbot-arg=--logs-dir={self.certbot.logs_dir}",
            env={"REQUESTS_CA_BUNDLE": str(self.ca_bundle)},
            prefix=self.in_namespace(),
        )  # fmt: skip

    def renew(self) -> subprocess.CompletedProcess[str]:
        return self.certbot.run(
            ["renew", "--no-random-sleep-on-renew", "--force-renewal", "--cert-name", MAIL],
            prefix=self.in_namespace(),
            env={"REQUESTS_CA_BUNDLE": str(self.ca_bundle)},
        )

    def txt_in_dns(self) -> list[str]:
        reply = query(CHALLENGE, "TXT", self.knot.port, dnssec=False)
        assert reply.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN), reply
        return [
            b"".join(rdata.strings).decode()
            for rrset in reply.answer
            if rrset.rdtype == dns.rdatatype.TXT
            for rdata in rrset
        ]


@pytest.fixture
def ovh_rig(tmp_path: Path, make_postfix: MakePostfix) -> Iterator[OvhRig]:
    knot = KnotServer(tmp_path / "knot", [Zone(f"{ZONE}.", dnssec="unsigned")])
    knot.start()
    pebble = Pebble(tmp_path / "pebble", dns_server=f"{LOOPBACK}:{knot.port}")
    server = OvhApiServer(tmp_path / "ovh-api", OvhApi(zone=ZONE, knot=knot, **KEYS))
    try:
        pebble.start()
        server.start()
        credentials = tmp_path / "ovh.ini"
        credentials.touch(mode=0o600)
        credentials.write_text(
            "dns_ovh_endpoint = ovh-eu\n"
            + "".join(f"dns_ovh_{key} = {value}\n" for key, value in KEYS.items())
        )
        ca_bundle = tmp_path / "ca-bundle.pem"
        ca_bundle.write_bytes(pebble.tls_ca_file.read_bytes() + server.ca_file.read_bytes())
        certbot = Certbot(tmp_path / "certbot", pebble)
        postfix = make_postfix(hostname=MAIL)
        tool = Tool(
            postfix=postfix,
            base=tmp_path,
            ca_file=pebble.root_file(),
            certbot_config_dir=certbot.config_dir,
        )
        yield OvhRig(
            knot, pebble, server.api, server, certbot, postfix, tool, credentials, ca_bundle
        )
    finally:
        server.stop()
        pebble.stop()
        knot.stop()


def challenge_round_trips(api: OvhApi) -> list[str]:
    """The TXT values the stand-in put into DNS and later took out again, in order."""
    added = [(owner, value) for op, owner, value in api.dns_changes if op == "add"]
    deleted = [(owner, value) for op, owner, value in api.dns_changes if op == "delete"]
    assert all(owner == CHALLENGE for owner, _ in added), api.dns_changes
    assert deleted == added, api.dns_changes  # each one created, then removed
    return [value for _, value in added]


@pytest.mark.slow
def test_obtain_through_dns_ovh_deploys_and_certbot_renew_redeploys(ovh_rig: OvhRig) -> None:
    rig = ovh_rig
    result = rig.obtain()
    assert_exit(result, EXIT_OK)

    # What Postfix serves is the lineage certbot just wrote for the name.
    lineage = rig.certbot.live_dir / MAIL
    first = leaf_sha256(lineage)
    assert served_sha256(LOOPBACK, rig.postfix.port) == first

    # certbot-dns-ovh made the calls a real OVH account would see, all signed and granted.
    calls = [(c.method, c.path.split("?")[0], c.status) for c in rig.api.calls]
    assert all(status == 200 for *_, status in calls), rig.api.calls
    record_path = f"/domain/zone/{ZONE}/record"
    assert ("GET", "/auth/time", 200) in calls
    assert ("GET", "/domain/zone/", 200) in calls
    assert ("GET", f"/domain/zone/{ZONE}/status", 200) in calls
    assert ("POST", record_path, 200) in calls
    assert any(m == "DELETE" and p.startswith(record_path + "/") for m, p, _ in calls)
    assert calls.count(("POST", f"/domain/zone/{ZONE}/refresh", 200)) >= 2
    created = [c for c in rig.api.calls if (c.method, c.path) == ("POST", record_path)]
    assert '"subDomain": "_acme-challenge.mail"' in created[0].body

    # The TXT record reached the DNS server pebble validated against, and is gone again.
    values = challenge_round_trips(rig.api)
    assert len(values) == 1
    assert rig.txt_in_dns() == []
    assert rig.api.records == {}

    # certbot keeps the authenticator, its credentials and our hook for every renewal.
    conf = (rig.certbot.config_dir / "renewal" / f"{MAIL}.conf").read_text()
    settings = dict(line.split(" = ", 1) for line in conf.splitlines() if " = " in line)
    assert settings["authenticator"] == "dns-ovh"
    assert settings["dns_ovh_credentials"] == str(rig.credentials)
    assert settings["dns_ovh_propagation_seconds"] == "1"
    assert settings["renew_hook"].endswith(" deploy-hook")
    assert "-m pftls_hook" in settings["renew_hook"]

    # A renewal through that stored configuration: a new challenge, a new certificate, served.
    rig.renew()
    renewed = leaf_sha256(lineage)
    assert renewed != first
    assert served_sha256(LOOPBACK, rig.postfix.port) == renewed
    values = challenge_round_trips(rig.api)
    assert len(values) == 2 and values[0] != values[1]
    assert rig.txt_in_dns() == []


@pytest.mark.slow
def test_a_wrong_application_secret_is_refused_by_the_api_and_nothing_is_deployed(
    ovh_rig: OvhRig,
) -> None:
    rig = ovh_rig
    rig.credentials.write_text(rig.credentials.read_text().replace("AS-test", "AS-wrong"))
    result = rig.obtain()
    assert_exit(result, EXIT_CANNOT)
    # certbot-dns-ovh's own hint for OVH's 400 on a bad signature.
    assert "Is your Application Secret value correct?" in result.stderr
    assert {c.status for c in rig.api.calls if c.path != "/auth/time"} == {400}
    assert rig.api.dns_changes == []
    assert not (rig.certbot.live_dir / MAIL).exists()


@pytest.mark.slow
def test_pebble_refuses_the_challenge_when_the_record_never_reaches_dns(
    ovh_rig: OvhRig,
) -> None:
    rig = ovh_rig
    rig.api.publish = False  # the API accepts the record; DNS never serves it
    result = rig.obtain()
    assert_exit(result, EXIT_CANNOT)
    assert "Some challenges have failed" in result.stderr
    assert any(c.method == "POST" and c.status == 200 for c in rig.api.calls)
    assert not (rig.certbot.live_dir / MAIL).exists()


@pytest.mark.slow
def test_every_broken_credentials_file_is_refused_before_any_api_call(
    ovh_rig: OvhRig, tmp_path: Path
) -> None:
    """test_obtain.py's refusals again, now with the API up and reachable as certbot would
    reach it: for each file, one line naming the fix, no API call, certbot never run."""
    rig = ovh_rig
    for case, (make, fix) in zip(BROKEN_CREDENTIALS_IDS, BROKEN_CREDENTIALS, strict=True):
        (tmp_path / case).mkdir()
        result = rig.obtain(credentials=make(tmp_path / case))
        assert_exit(result, EXIT_USAGE)
        assert len(result.stderr.splitlines()) == 1, (case, result.stderr)
        assert fix in result.stderr, (case, result.stderr)
        assert rig.api.calls == [], (case, rig.api.calls)
        assert not rig.certbot.logs_dir.exists(), case
        assert not (rig.certbot.config_dir / "renewal").exists(), case
    # The same rig, with the good file, does reach the API: the check above could fail.
    assert_exit(rig.obtain(), EXIT_OK)
    assert rig.api.calls != []


@pytest.mark.slow
def test_obtain_through_dns_ovh_expands_with_a_new_name_and_postfix_serves_it(
    ovh_rig: OvhRig,
) -> None:
    rig = ovh_rig
    assert_exit(rig.obtain(), EXIT_OK)
    lineage = rig.certbot.live_dir / MAIL
    first = leaf_sha256(lineage)

    result = rig.obtain(names=(MAIL, SMTP))

    assert_exit(result, EXIT_OK)
    assert f"certbot writes lineage {MAIL} ({MAIL}) expanded with {SMTP}" in result.stderr
    assert sorted(p.name for p in rig.certbot.live_dir.iterdir() if p.is_dir()) == [MAIL]
    cert = x509.load_pem_x509_certificate((lineage / "cert.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted([MAIL, SMTP])
    expanded = leaf_sha256(lineage)
    assert expanded != first
    assert served_sha256(LOOPBACK, rig.postfix.port) == expanded
    # The new name's challenge went through the API and DNS like the first one's.
    owners = [owner for op, owner, _ in rig.api.dns_changes if op == "add"]
    assert owners.count(f"_acme-challenge.{SMTP}.") == 1, rig.api.dns_changes
    assert rig.api.records == {}


@pytest.mark.slow
def test_obtain_through_dns_ovh_key_types_serves_an_ecdsa_and_an_rsa_chain(
    ovh_rig: OvhRig,
) -> None:
    rig = ovh_rig
    result = rig.obtain("--key-type", "ecdsa,rsa")

    assert_exit(result, EXIT_OK)
    ecdsa_dir = rig.certbot.live_dir / f"{MAIL}-ecdsa"
    rsa_dir = rig.certbot.live_dir / f"{MAIL}-rsa"
    for lineage, kind in ((ecdsa_dir, ec.EllipticCurvePublicKey), (rsa_dir, rsa.RSAPublicKey)):
        cert = x509.load_pem_x509_certificate((lineage / "cert.pem").read_bytes())
        assert isinstance(cert.public_key(), kind), lineage
    port = rig.postfix.port
    assert sclient.served_sha256(LOOPBACK, port, sclient.ECDSA_ONLY) == leaf_sha256(ecdsa_dir)
    assert sclient.served_sha256(LOOPBACK, port, sclient.RSA_ONLY) == leaf_sha256(rsa_dir)
    # Each lineage's challenge was created through the API and removed again.
    owners = [owner for op, owner, _ in rig.api.dns_changes if op == "add"]
    assert owners == [CHALLENGE, CHALLENGE], rig.api.dns_changes
    assert rig.api.records == {}
