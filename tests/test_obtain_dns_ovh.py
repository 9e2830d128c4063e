"""`pftls-hook obtain` through certbot-dns-ovh, end to end, as the admin's guide runs it.

Real certbot with its dns-ovh plugin (lexicon underneath) signs its calls to a loopback
stand-in for the OVH API (tests/support/ovh_api.py, the one mock: it checks keys, rights
and signatures as OVH does) and reaches it as `eu.api.ovh.com` through a private /etc/hosts
in its own mount namespace. The stand-in publishes the TXT record into a real Knot DNS
server, and a pebble that resolves through that server alone validates DNS-01 for real.
pftls-hook then deploys to a private Postfix; `certbot renew` through the stored renewal
configuration redeploys. Names sit under example.net: lexicon finds the zone from the
public suffix list, which has no `.test`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.rcode
import dns.rdatatype
import pytest

from tests.conftest import MakePostfix
from tests.support.certbot import Certbot
from tests.support.dns import KnotServer, Zone, query
from tests.support.mounts import private_hosts
from tests.support.net import LOOPBACK
from tests.support.ovh_api import OvhApi, OvhApiServer
from tests.support.pebble import Pebble
from tests.support.postfix import PostfixInstance, served_sha256
from tests.support.tool import Tool, assert_exit
from tests.test_obtain import leaf_sha256

ZONE = "example.net"
MAIL = f"mail.{ZONE}"
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

    def obtain(self) -> subprocess.CompletedProcess[str]:
        return self.tool.run(
            "obtain", "-d", MAIL, "-m", f"hostmaster@{ZONE}",
            "--dns-ovh-credentials", str(self.credentials), "--propagation-seconds", "1",
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
    # A credentials file certbot-dns-ovh could not use: refused before any API call.
    good = rig.credentials.read_text()
    rig.credentials.write_text(good.replace("dns_ovh_consumer_key", "dns_ovh_consumer"))
    refused = rig.obtain()
    assert_exit(refused, EXIT_USAGE)
    assert "lack dns_ovh_consumer_key" in refused.stderr
    assert rig.api.calls == []
    rig.credentials.write_text(good)

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
