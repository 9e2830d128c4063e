"""Hostile DNS for the DANE guard, through the real CLI, against real knot + unbound and a
real private Postfix.

Each case serves version 1 of a lineage (installed with DANE off), renews it with a new key,
puts what the case names into DNS at `_25._tcp.<host>.` and runs `pftls-hook install` with
`--dane enforce`. Refused cleanly means: exit 3, every stderr line prefixed, no traceback,
an answer within serving.RUN_TIMEOUT, main.cf byte-identical and Postfix serving the same
certificate. "Accepted by design" cases deploy and are served.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import MakePostfix
from tests.reliability.serving import RUN_TIMEOUT
from tests.support.deployed import LOOPBACK, current, sha256, wait_serves
from tests.support.dns import DnsLab, Zone, dns_lab, tlsa_owner
from tests.support.pki import CA, Leaf
from tests.support.postfix import served_sha256
from tests.support.scorecard import Scorecard
from tests.support.tlsa import record
from tests.support.tool import Tool, assert_exit

ZONE, BOGUS = "hostile.test.", "bogus-hostile.test."
EXIT_OK, EXIT_REFUSED = 0, 3
REFUSED, ACCEPTED = "refused", "accepted by design"  # scorecard groups
HUGE = 400  # records in one RRset: ~27 kB, far past UDP, over TCP
CHAIN = 30  # CNAME hops: past unbound's limit (and dnspython's)


def _zone_records() -> tuple[str, ...]:
    chain = [f"c{i}.chain IN CNAME c{i + 1}.chain" for i in range(CHAIN)]
    return (
        # TLSA rdata of 2 bytes: no matching type, no data (RFC 3597 generic syntax).
        r"_25._tcp.garbage IN TLSA \# 2 0301",
        "_25._tcp.loop IN CNAME a.loop",
        "a.loop IN CNAME _25._tcp.loop",
        "_25._tcp.self IN CNAME _25._tcp.self",
        "_25._tcp.chain IN CNAME c0.chain",
        *chain,
        f"_25._tcp.to-bogus IN CNAME tlsa.{BOGUS}",
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsLab]:
    zones = [
        Zone(ZONE, _zone_records()),
        Zone(BOGUS, ("tlsa IN TLSA 3 1 1 " + "00" * 32,), dnssec="bogus"),
    ]
    with dns_lab(tmp_path_factory.mktemp("dns"), zones) as started:
        yield started


@dataclass
class Case:
    """A Postfix serving version 1 of lineage `host`, version 2 (a new key) waiting."""

    tool: Tool
    host: str
    lab: DnsLab
    first: Leaf
    renewed: Leaf
    card: Scorecard

    @property
    def owner(self) -> str:
        return tlsa_owner(self.host)

    def install(self, resolver: str = "") -> tuple[subprocess.CompletedProcess[str], float]:
        started = time.monotonic()
        result = self.tool.run(
            "--dane", "enforce", "--dns-resolver", resolver or self.lab.resolver.address,
            "install", self.host,
        )  # fmt: skip
        return result, time.monotonic() - started

    def assert_refused_cleanly(self, resolver: str = "") -> str:
        """Refused within RUN_TIMEOUT, nothing changed; returns stderr."""
        with self.card.attempt(self.host, group=REFUSED):
            return self._refused_cleanly(resolver)

    def _refused_cleanly(self, resolver: str) -> str:
        main_cf = self.tool.postfix.main_cf_bytes()
        installed = current(self.tool, self.host).read_bytes()
        result, took = self.install(resolver)
        assert took < RUN_TIMEOUT, f"took {took:.1f} s"
        assert_exit(result, EXIT_REFUSED)
        assert "refused by DANE" in result.stderr
        assert self.tool.postfix.main_cf_bytes() == main_cf
        assert current(self.tool, self.host).read_bytes() == installed
        assert served_sha256(LOOPBACK, self.tool.postfix.port) == sha256(self.first)
        return result.stderr

    def assert_deployed(self) -> str:
        with self.card.attempt(self.host, group=ACCEPTED):
            return self._deployed()

    def _deployed(self) -> str:
        result, took = self.install()
        assert took < RUN_TIMEOUT, f"took {took:.1f} s"
        assert_exit(result, EXIT_OK)
        wait_serves(self.tool, self.renewed)
        return result.stderr


@pytest.fixture(scope="module")
def card() -> Iterator[Scorecard]:
    card = Scorecard("dane-hostile", "Hostile DNS for the DANE guard")
    yield card
    refused, total = card.count(REFUSED)
    accepted, accepted_total = card.count(ACCEPTED)
    card.record(
        f"{refused}/{total} refused cleanly (exit 3, main.cf and the served certificate"
        f" unchanged); {accepted}/{accepted_total} accepted by design and served",
        refused=refused,
        total=total,
        accepted=accepted,
        accepted_total=accepted_total,
    )


@pytest.fixture
def make_case(
    tmp_path: Path, make_postfix: MakePostfix, root: CA, inter: CA, lab: DnsLab, *, card: Scorecard
) -> Callable[[str], Case]:
    def make(label: str) -> Case:
        host = f"{label}.{ZONE.rstrip('.')}"
        ca_file = tmp_path / "root.pem"
        ca_file.write_bytes(root.cert_pem)
        tool = Tool(make_postfix(hostname=host), tmp_path, ca_file)
        first = inter.issue(host)
        tool.lineage(first, name=host)
        path = current(tool, host)
        tool.postfix.postconf("-e", f"smtpd_tls_cert_file = {path}", f"smtpd_tls_key_file = {path}")
        assert_exit(tool.run("install", host), EXIT_OK)  # DANE off (Tool's default)
        wait_serves(tool, first)
        renewed = inter.issue(host)
        tool.lineage(renewed, 2, name=host)
        return Case(tool, host, lab, first, renewed, card)

    return make


def test_garbage_rdata_is_refused(make_case: Callable[[str], Case]) -> None:
    case = make_case("garbage")
    stderr = case.assert_refused_cleanly()
    assert f"{case.owner}: TLSA lookup" in stderr


def test_nonsense_parameters_only_are_unusable_and_accepted_by_design(
    make_case: Callable[[str], Case],
) -> None:
    # RFC 7672 §3.1.3: a sender ignores unusable records; with none usable it delivers
    # without DANE, so there is nothing for the new certificate to match.
    case = make_case("nonsense")
    case.lab.knot.replace(case.owner, "TLSA", "255 255 255 00", "0 1 1 " + "11" * 32)
    stderr = case.assert_deployed()
    assert "none usable for SMTP" in stderr


def test_huge_rrset_without_a_match_is_refused_with_one_record_to_publish(
    make_case: Callable[[str], Case],
) -> None:
    case = make_case("huge")
    case.lab.knot.replace(case.owner, "TLSA", *[f"3 1 2 {i:0128x}" for i in range(HUGE)])
    stderr = case.assert_refused_cleanly()
    assert stderr.count("publish: ") == 1
    assert f"publish: {case.owner} IN TLSA {record(case.renewed.cert)}" in stderr
    assert f"{HUGE} TLSA record(s)" in stderr


def test_huge_rrset_with_the_match_last_deploys(make_case: Callable[[str], Case]) -> None:
    case = make_case("huge-match")
    junk = [f"3 1 2 {i:0128x}" for i in range(HUGE - 1)]
    case.lab.knot.replace(case.owner, "TLSA", *junk, record(case.renewed.cert, 3, 1, 2))
    case.assert_deployed()


@pytest.mark.parametrize("label", ["loop", "self", "chain", "to-bogus"])
def test_cname_loops_long_chains_and_bogus_targets_are_refused(
    make_case: Callable[[str], Case], label: str
) -> None:
    case = make_case(label)
    stderr = case.assert_refused_cleanly()
    assert "SERVFAIL" in stderr or "CNAME chain is too long" in stderr, stderr


def test_an_authoritative_server_as_resolver_is_refused(
    make_case: Callable[[str], Case],
) -> None:
    # knot answers its own zone without recursion (RA=0); a CNAME chain it cuts short
    # would read as "no TLSA records" if taken at its word.
    case = make_case("chain")
    stderr = case.assert_refused_cleanly(resolver=f"{LOOPBACK}:{case.lab.knot.port}")
    assert "does not recurse (RA=0)" in stderr
