"""TLSA lookups through dnspython, for pftls_hook.dane.

Contract: `lookup(target, servers)` asks for the TLSA RRset at `target.owner` (through the
`--dns-resolver` servers, else the nameservers of /etc/resolv.conf), following CNAMEs, and
returns a `dane.Answer` that says whether the resolver validated it (AD). No records
(NXDOMAIN, or no TLSA) is an answer; a failure (timeout, SERVFAIL — what a validating
resolver says for a bogus answer —, no resolver, a server that does not recurse, a reply
that does not parse) raises `DaneLookupError`. Kept apart from dane.py so that only a run
that looks records up pays for importing dnspython.
"""

from __future__ import annotations

from collections.abc import Sequence

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from pftls_hook.config import DnsServer
from pftls_hook.dane import Answer, Target, Tlsa
from pftls_hook.errors import DaneLookupError

LOOKUP_TIMEOUT = 5.0  # seconds for one target, all servers and retries included
EDNS_PAYLOAD = 1232  # the DNS flag day 2020 size: larger answers come over TCP


def _resolver(servers: Sequence[DnsServer]) -> dns.resolver.Resolver:
    try:
        if servers:
            resolver = dns.resolver.Resolver(configure=False)
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(s.address, s.port) for s in servers
            ]
        else:
            resolver = dns.resolver.Resolver()  # /etc/resolv.conf
    except dns.resolver.NoResolverConfiguration:
        raise DaneLookupError(
            "/etc/resolv.conf names no nameserver: give --dns-resolver ADDR[:PORT]"
        ) from None
    resolver.lifetime = LOOKUP_TIMEOUT
    resolver.timeout = LOOKUP_TIMEOUT / 2
    # AD in the query asks the resolver to report validation (RFC 6840 §5.7).
    resolver.flags = dns.flags.RD | dns.flags.AD
    resolver.use_edns(0, 0, EDNS_PAYLOAD)
    return resolver


def _require_recursion(response: dns.message.Message, target: Target, where: str) -> None:
    """An authoritative-only server (RA=0) follows no CNAME out of its zones and may cut a
    chain short: its "no TLSA here" cannot be trusted as an answer."""
    if not response.flags & dns.flags.RA:
        raise DaneLookupError(
            f"{target.owner}: {where} does not recurse (RA=0): give a resolver, "
            "not an authoritative server"
        )


def lookup(target: Target, servers: Sequence[DnsServer]) -> Answer:
    resolver = _resolver(servers)
    where = ", ".join(map(str, servers)) or "the /etc/resolv.conf nameservers"
    try:
        answer = resolver.resolve(
            target.owner, dns.rdatatype.TLSA, search=False, raise_on_no_answer=False
        )
    except dns.resolver.NXDOMAIN as exc:
        replies: dict[dns.name.Name, dns.message.Message] = exc.kwargs.get("responses", {})
        responses = list(replies.values())
        for response in responses:
            _require_recursion(response, target, where)
        validated = bool(responses) and all(r.flags & dns.flags.AD for r in responses)
        return Answer(target, (), validated, target.owner)
    except dns.resolver.NoNameservers:
        raise DaneLookupError(
            f"{target.owner}: TLSA lookup failed at {where}: SERVFAIL or refused "
            "(a validating resolver answers SERVFAIL when the records are bogus)"
        ) from None
    except dns.resolver.LifetimeTimeout:
        raise DaneLookupError(
            f"{target.owner}: TLSA lookup at {where}: no answer within {LOOKUP_TIMEOUT:g} s "
            "(nothing answered, or only replies that do not parse)"
        ) from None
    except dns.exception.DNSException as exc:
        raise DaneLookupError(f"{target.owner}: TLSA lookup at {where} failed: {exc}") from None
    _require_recursion(answer.response, target, where)
    records = tuple(
        Tlsa(rd.usage, rd.selector, rd.mtype, bytes(rd.cert)) for rd in (answer.rrset or ())
    )
    authenticated = bool(answer.response.flags & dns.flags.AD)
    return Answer(target, records, authenticated, answer.canonical_name.to_text())


__all__ = ["LOOKUP_TIMEOUT", "lookup"]
