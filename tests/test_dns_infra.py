"""The test DNS (tests/support/dns.py) does what other tests rely on.

knot answers authoritatively and takes dynamic updates; unbound validates the
signed zone (AD=1), answers the unsigned one as insecure (AD=0) and returns
SERVFAIL for the bogus one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from tests.support.dns import DnsLab, KnotServer, Zone, dns_lab, query, tlsa_owner

SIGNED = "signed.test."
PLAIN = "example.net."
BOGUS = "bogus.test."
TLSA_OLD = "3 1 1 " + "11" * 32
TLSA_NEW = "3 1 1 " + "22" * 32


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsLab]:
    zones = [
        Zone(SIGNED, ("mail IN A 127.0.0.1", f"_25._tcp.mail IN TLSA {TLSA_OLD}")),
        Zone(PLAIN, ("mail IN A 127.0.0.2",), dnssec="unsigned"),
        Zone(BOGUS, ("mail IN A 127.0.0.3",), dnssec="bogus"),
    ]
    with dns_lab(tmp_path_factory.mktemp("dns"), zones) as started:
        yield started


def _rdatas(reply: dns.message.Message, rdtype: str) -> set[str]:
    wanted = dns.rdatatype.from_text(rdtype)
    return {rd.to_text() for rrset in reply.answer if rrset.rdtype == wanted for rd in rrset}


def _ad(reply: dns.message.Message) -> bool:
    return bool(reply.flags & dns.flags.AD)


def test_knot_answers_authoritatively_with_signatures(lab: DnsLab) -> None:
    reply = query(f"mail.{SIGNED}", "A", lab.knot.port)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert _rdatas(reply, "A") == {"127.0.0.1"}
    assert _rdatas(reply, "RRSIG"), "a signed zone's answer carries an RRSIG"
    plain = query(f"mail.{PLAIN}", "A", lab.knot.port)
    assert _rdatas(plain, "A") == {"127.0.0.2"}
    assert not _rdatas(plain, "RRSIG")


def test_unbound_validates_the_signed_zone(lab: DnsLab) -> None:
    reply = query(tlsa_owner(f"mail.{SIGNED}"), "TLSA", lab.resolver.port)
    assert reply.rcode() == dns.rcode.NOERROR
    assert _ad(reply)
    assert _rdatas(reply, "TLSA") == {TLSA_OLD}


def test_unbound_answers_the_unsigned_zone_without_ad(lab: DnsLab) -> None:
    reply = query(f"mail.{PLAIN}", "A", lab.resolver.port)
    assert reply.rcode() == dns.rcode.NOERROR
    assert not _ad(reply)
    assert _rdatas(reply, "A") == {"127.0.0.2"}


def test_unbound_servfails_the_bogus_zone(lab: DnsLab) -> None:
    # knot itself serves the data; only validation fails.
    direct = query(f"mail.{BOGUS}", "A", lab.knot.port)
    assert _rdatas(direct, "A") == {"127.0.0.3"}
    reply = query(f"mail.{BOGUS}", "A", lab.resolver.port)
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert not reply.answer


def test_unbound_answers_on_ipv6_loopback(lab: DnsLab) -> None:
    if not lab.resolver.ipv6:
        pytest.fail("no ::1 on this machine: the resolver cannot listen on IPv6 loopback")
    reply = query(f"mail.{SIGNED}", "A", lab.resolver.port, address="::1")
    assert _ad(reply)
    assert _rdatas(reply, "A") == {"127.0.0.1"}


def test_dynamic_update_is_seen_signed_through_the_resolver(lab: DnsLab) -> None:
    owner = tlsa_owner(f"mail.{SIGNED}")
    lab.knot.add(owner, "TLSA", TLSA_NEW)
    try:
        reply = query(owner, "TLSA", lab.resolver.port)
        assert _ad(reply)
        assert _rdatas(reply, "TLSA") == {TLSA_OLD, TLSA_NEW}
        lab.knot.delete(owner, "TLSA", TLSA_OLD)
        reply = query(owner, "TLSA", lab.resolver.port)
        assert _ad(reply)
        assert _rdatas(reply, "TLSA") == {TLSA_NEW}
    finally:
        lab.knot.replace(owner, "TLSA", TLSA_OLD)
    assert _rdatas(query(owner, "TLSA", lab.resolver.port), "TLSA") == {TLSA_OLD}


def test_dynamic_update_in_an_unsigned_zone_and_a_new_name(lab: DnsLab) -> None:
    name = f"_acme-challenge.{PLAIN}"
    assert query(name, "TXT", lab.resolver.port).rcode() == dns.rcode.NXDOMAIN
    lab.knot.add(name, "TXT", '"token-1"')
    try:
        assert _rdatas(query(name, "TXT", lab.knot.port), "TXT") == {'"token-1"'}
        assert _rdatas(query(name, "TXT", lab.resolver.port), "TXT") == {'"token-1"'}
    finally:
        lab.knot.delete(name)
    assert query(name, "TXT", lab.resolver.port).rcode() == dns.rcode.NXDOMAIN


def test_a_signed_zone_answers_nxdomain_validated(lab: DnsLab) -> None:
    reply = query(f"nothing-here.{SIGNED}", "TLSA", lab.resolver.port)
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert _ad(reply), "the denial is proven by NSEC records the resolver validated"


def test_updates_outside_the_zones_are_refused_by_the_helper(lab: DnsLab) -> None:
    with pytest.raises(ValueError, match="none of the zones"):
        lab.knot.add("mail.elsewhere.test.", "A", "127.0.0.9")


def test_nested_zones_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nested"):
        KnotServer(tmp_path, [Zone("a.test."), Zone("b.a.test.")])
