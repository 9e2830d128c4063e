"""Real DNS for tests: a Knot DNS authoritative server and an unbound validating resolver.

Both run as private processes on free loopback ports, with their own config,
storage and logs under a directory the test gives; nothing of the machine's
own DNS setup is read or changed (Debian's knot/unbound services stay down).

- `KnotServer` serves the zones a test describes (`Zone`, any names: `x.test.`
  for DANE tests, `example.net.` where a real public suffix is needed). A zone
  is either signed by knot itself (automatic DNSSEC signing, re-signed after
  every change) or plain. Every zone accepts RFC 2136 dynamic updates from
  loopback without TSIG, so a test, or a stand-in for a DNS provider's API, can
  add and remove records while the programs under test run.
- `UnboundResolver` is a validating resolver that sends queries for the test
  zones straight to knot (stub zones) and trusts each signed zone's KSK (its
  DS is the trust anchor): answers from a signed zone carry AD=1. Its cache is
  off, so a dynamic update is visible on the next query.
- A `Zone(dnssec="bogus")` is signed by knot, but unbound is given the DS of a
  key the zone never used as its anchor, so no signature in the zone verifies
  under the anchored key: every answer from it is bogus and the resolver
  returns SERVFAIL, as it would for a zone whose signatures are broken.

Zones must be siblings (e.g. `signed.test.` and `bogus.test.`), not nested:
there is no delegation between them. Names outside the zones are not resolved
(no network here).
"""

from __future__ import annotations

import functools
import socket
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import dns.dnssec
import dns.dnssectypes
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.update
from cryptography.hazmat.primitives.asymmetric import ec

from .net import LOOPBACK, free_port, wait_until
from .process import terminate

KNOTD = "/usr/sbin/knotd"
UNBOUND = "/usr/sbin/unbound"
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
QUERY_TIMEOUT = 2.0
DEFAULT_TTL = 60

Dnssec = Literal["signed", "unsigned", "bogus"]


@dataclass(frozen=True)
class Zone:
    """One zone knot serves.

    name: absolute, e.g. "dane.test." (a trailing dot is added if missing).
    records: zone-file lines, names relative to the zone or absolute, e.g.
      "_25._tcp.mail IN TLSA 3 1 1 ab12...". SOA, NS and the NS host's A
      record are written for you.
    dnssec: "signed" (knot signs it; unbound anchors it, AD=1), "unsigned"
      (plain; unbound answers it as insecure, AD=0) or "bogus" (see the module
      docstring: SERVFAIL from unbound).
    """

    name: str
    records: tuple[str, ...] = ()
    dnssec: Dnssec = "signed"

    @property
    def origin(self) -> dns.name.Name:
        return dns.name.from_text(self.name)

    def zone_file(self) -> str:
        origin = self.origin.to_text()
        lines = [
            f"$ORIGIN {origin}",
            f"$TTL {DEFAULT_TTL}",
            f"@ IN SOA ns1.{origin} hostmaster.{origin} 1 3600 600 86400 {DEFAULT_TTL}",
            f"@ IN NS ns1.{origin}",
            f"ns1 IN A {LOOPBACK}",
            *self.records,
        ]
        return "\n".join(lines) + "\n"


def free_dns_port() -> int:
    """A loopback port free for both TCP and UDP a moment ago (DNS needs both)."""
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind((LOOPBACK, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no loopback port free for both TCP and UDP after 50 tries")


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


class _Process:
    """A foreground daemon with its log in a file; stop() is idempotent."""

    def __init__(self, name: str, log_file: Path) -> None:
        self.name = name
        self.log_file = log_file
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, argv: list[str], cwd: Path) -> None:
        if self._proc is not None:
            raise RuntimeError(f"{self.name} already started")
        self._log = self.log_file.open("ab")
        self._proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env={"PATH": PATH},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self._proc.returncode}:\n{self.log_text()}"
            )

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        terminate(proc, STOP_TIMEOUT)
        if self._log is not None:
            self._log.close()
            self._log = None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return ""


def query(
    name: str,
    rdtype: str,
    port: int,
    *,
    address: str = LOOPBACK,
    dnssec: bool = True,
    tcp: bool = False,
) -> dns.message.Message:
    """One query to address:port (RD set, DO set when dnssec) and its reply."""
    request = dns.message.make_query(name, rdtype, want_dnssec=dnssec)
    if tcp:
        return dns.query.tcp(request, address, port=port, timeout=QUERY_TIMEOUT)
    return dns.query.udp(request, address, port=port, timeout=QUERY_TIMEOUT)


class KnotServer:
    """A private knotd authoritative for the given zones, with dynamic updates from loopback."""

    def __init__(self, base: Path, zones: Iterable[Zone]) -> None:
        self.base: Path = base.resolve()
        self.zones: tuple[Zone, ...] = tuple(zones)
        if not self.zones:
            raise ValueError("KnotServer needs at least one zone")
        names = [z.origin for z in self.zones]
        for a in names:
            for b in names:
                if a != b and a.is_subdomain(b):
                    raise ValueError(f"zones must not be nested: {a} is under {b}")
        self.port: int = free_dns_port()
        self.config_file: Path = self.base / "knot.conf"
        self._process = _Process("knotd", self.base / "knot.log")

    def _config(self) -> str:
        base = self.base
        zones = []
        for zone in self.zones:
            signing = "on" if zone.dnssec != "unsigned" else "off"
            zones.append(
                f"  - domain: {zone.origin.to_text()}\n"
                f"    dnssec-signing: {signing}\n"
                + ("    dnssec-policy: autosign\n" if signing == "on" else "")
                + "    acl: loopback_update\n"
            )
        return (
            "server:\n"
            f'    rundir: "{base}/run"\n'
            f'    pidfile: "{base}/run/knot.pid"\n'
            f"    listen: {LOOPBACK}@{self.port}\n"
            "    udp-workers: 1\n"
            "    tcp-workers: 1\n"
            "    background-workers: 1\n"
            "control:\n"
            f'    listen: "{base}/run/knot.sock"\n'
            "database:\n"
            f'    storage: "{base}/db"\n'
            # LMDB maps these sizes; the defaults (gigabytes) are for real servers.
            "    journal-db-max-size: 64M\n"
            "    kasp-db-max-size: 16M\n"
            "    timer-db-max-size: 16M\n"
            "    catalog-db-max-size: 16M\n"
            "log:\n"
            "  - target: stderr\n"
            "    any: info\n"
            "acl:\n"
            "  - id: loopback_update\n"
            f"    address: [{LOOPBACK}, ::1]\n"
            "    action: update\n"
            "policy:\n"
            "  - id: autosign\n"
            "    algorithm: ecdsap256sha256\n"
            "    nsec3: off\n"
            "template:\n"
            "  - id: default\n"
            f'    storage: "{base}/zones"\n'
            '    file: "%s.zone"\n'
            # Changes live in the journal; the zone files are never rewritten.
            "    zonefile-sync: -1\n"
            "    zonefile-load: whole\n"
            "    journal-content: changes\n"
            "zone:\n" + "".join(zones)
        )

    def start(self) -> None:
        """Start knotd; return once every zone answers (signed zones: with their DNSKEY)."""
        for sub in ("run", "db", "zones"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        for zone in self.zones:
            (self.base / "zones" / f"{zone.origin.to_text(omit_final_dot=True)}.zone").write_text(
                zone.zone_file()
            )
        self.config_file.write_text(self._config())
        self._process.start([KNOTD, "-c", str(self.config_file)], cwd=self.base)
        try:
            for zone in self.zones:
                wait_until(
                    functools.partial(self._zone_ready, zone),
                    timeout=START_TIMEOUT,
                    what=f"knotd to serve {zone.name}",
                    interval=0.1,
                    on_timeout=self._process.log_text,
                )
        except BaseException:
            self.stop()
            raise

    def _zone_ready(self, zone: Zone) -> bool:
        self._process.check_alive()
        rdtype = "SOA" if zone.dnssec == "unsigned" else "DNSKEY"
        try:
            reply = query(zone.origin.to_text(), rdtype, self.port)
        except (dns.exception.DNSException, OSError):
            return False
        if reply.rcode() != dns.rcode.NOERROR:
            return False
        types = {rrset.rdtype for rrset in reply.answer}
        if zone.dnssec == "unsigned":
            return dns.rdatatype.SOA in types
        return {dns.rdatatype.DNSKEY, dns.rdatatype.RRSIG} <= types

    def stop(self) -> None:
        self._process.stop()

    def is_running(self) -> bool:
        return self._process.is_running()

    def log_text(self) -> str:
        return self._process.log_text()

    def zone_for(self, name: str) -> Zone:
        """The zone a name belongs to (ValueError when none of ours)."""
        qname = dns.name.from_text(name)
        for zone in self.zones:
            if qname.is_subdomain(zone.origin):
                return zone
        raise ValueError(f"{name} is in none of the zones {[z.name for z in self.zones]}")

    def ksk(self, zone: Zone) -> dns.rrset.RRset:
        """The zone's DNSKEY RRset as knot serves it (only the KSKs, flags 257)."""
        reply = query(zone.origin.to_text(), "DNSKEY", self.port, tcp=True)
        for rrset in reply.answer:
            if rrset.rdtype == dns.rdatatype.DNSKEY:
                ksks = [rd for rd in rrset if rd.flags & 0x0001]
                return dns.rrset.from_rdata_list(zone.origin, rrset.ttl, ksks)
        raise RuntimeError(f"knotd serves no DNSKEY for {zone.name}:\n{self.log_text()}")

    def ds_lines(self, zone: Zone) -> list[str]:
        """DS records (SHA-256) of the zone's KSKs, as "<zone> DS ..." text."""
        return [
            f"{zone.origin.to_text()} DS {dns.dnssec.make_ds(zone.origin, key, 'SHA256')}"
            for key in self.ksk(zone)
        ]

    # -- RFC 2136 dynamic updates ------------------------------------------------

    def update(self, message: dns.update.UpdateMessage) -> None:
        """Send a prepared UPDATE to knotd over TCP; raise unless it answers NOERROR."""
        reply = dns.query.tcp(message, LOOPBACK, port=self.port, timeout=QUERY_TIMEOUT * 5)
        if reply.rcode() != dns.rcode.NOERROR:
            raise RuntimeError(
                f"knotd refused the update: {dns.rcode.to_text(reply.rcode())}\n{self.log_text()}"
            )

    def add(self, name: str, rdtype: str, *rdatas: str, ttl: int = DEFAULT_TTL) -> None:
        """Add records (text rdata, e.g. "3 1 1 ab12...") at an absolute name."""
        zone = self.zone_for(name)
        message = dns.update.UpdateMessage(zone.origin)
        for rdata in rdatas:
            message.add(dns.name.from_text(name), ttl, rdtype, rdata)
        self.update(message)

    def delete(self, name: str, rdtype: str | None = None, *rdatas: str) -> None:
        """Delete records at an absolute name: all of them, all of a type, or the given ones."""
        zone = self.zone_for(name)
        message = dns.update.UpdateMessage(zone.origin)
        owner = dns.name.from_text(name)
        if rdtype is None:
            message.delete(owner)
        elif not rdatas:
            message.delete(owner, rdtype)
        else:
            for rdata in rdatas:
                message.delete(owner, rdtype, rdata)
        self.update(message)

    def replace(self, name: str, rdtype: str, *rdatas: str, ttl: int = DEFAULT_TTL) -> None:
        """Make rdatas the whole RRset of that type at name, in one update."""
        zone = self.zone_for(name)
        message = dns.update.UpdateMessage(zone.origin)
        owner = dns.name.from_text(name)
        message.delete(owner, rdtype)
        for rdata in rdatas:
            message.add(owner, ttl, rdtype, rdata)
        self.update(message)

    def __repr__(self) -> str:
        return f"KnotServer(port={self.port}, zones={[z.name for z in self.zones]!r})"


def _unrelated_ds(zone: Zone) -> str:
    """The DS of a fresh KSK that the zone does not use: an anchor nothing validates under."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    dnskey = dns.dnssec.make_dnskey(key, dns.dnssectypes.Algorithm.ECDSAP256SHA256, flags=257)
    return f"{zone.origin.to_text()} DS {dns.dnssec.make_ds(zone.origin, dnskey, 'SHA256')}"


class UnboundResolver:
    """A private validating unbound that resolves knot's zones (stub zones, no cache)."""

    def __init__(self, base: Path, knot: KnotServer) -> None:
        self.base: Path = base.resolve()
        self.knot = knot
        self.port: int = free_dns_port()
        self.ipv6: bool = _has_ipv6_loopback()
        self.config_file: Path = self.base / "unbound.conf"
        self._process = _Process("unbound", self.base / "unbound.log")

    @property
    def address(self) -> str:
        """ADDR:PORT form for the IPv4 listener, e.g. for --dns-resolver."""
        return f"{LOOPBACK}:{self.port}"

    def _anchors(self) -> list[str]:
        anchors: list[str] = []
        for zone in self.knot.zones:
            if zone.dnssec == "signed":
                anchors.extend(self.knot.ds_lines(zone))
            elif zone.dnssec == "bogus":
                anchors.append(_unrelated_ds(zone))
        return anchors

    def _config(self) -> str:
        base = self.base
        interfaces = [f"    interface: {LOOPBACK}@{self.port}\n"]
        if self.ipv6:
            interfaces.append(f"    interface: ::1@{self.port}\n")
        local_zones = []
        stubs = []
        for zone in self.knot.zones:
            origin = zone.origin.to_text()
            # Debian's unbound answers every name under test. (and other
            # special-use names) from a built-in empty local zone otherwise.
            if zone.origin.is_subdomain(dns.name.from_text("test.")):
                local_zones.append('    local-zone: "test." nodefault\n')
            stubs.append(
                f'stub-zone:\n    name: "{origin}"\n    stub-addr: {LOOPBACK}@{self.knot.port}\n'
            )
        anchors = [f'    trust-anchor: "{line}"\n' for line in self._anchors()]
        server = [
            *interfaces,
            f"    port: {self.port}\n",
            "    do-daemonize: no\n",
            '    username: ""\n',
            '    chroot: ""\n',
            f'    directory: "{base}"\n',
            f'    pidfile: "{base}/unbound.pid"\n',
            '    logfile: ""\n',
            "    use-syslog: no\n",
            "    verbosity: 1\n",
            "    val-log-level: 2\n",
            "    log-servfail: yes\n",
            "    num-threads: 1\n",
            "    do-ip6: yes\n",
            "    access-control: 127.0.0.0/8 allow\n",
            "    access-control: ::1 allow\n",
            # knot listens on loopback, which unbound refuses to query by default.
            "    do-not-query-localhost: no\n",
            '    module-config: "validator iterator"\n',
            # No cache: a dynamic update in knot is seen by the next query. Aggressive NSEC
            # (RFC 8198, on by default) would answer from the validator's own negative cache,
            # which these caps do not reach: a record published after a NODATA went unseen.
            "    cache-max-ttl: 0\n",
            "    cache-max-negative-ttl: 0\n",
            "    aggressive-nsec: no\n",
            "    prefetch: no\n",
            "    serve-expired: no\n",
            *dict.fromkeys(local_zones),
            *anchors,
        ]
        control = ["remote-control:\n", "    control-enable: no\n"]
        return "server:\n" + "".join(server) + "".join(control) + "".join(stubs)

    def start(self) -> None:
        """Start unbound (knot must be serving); return once it resolves every zone's SOA."""
        if not self.knot.is_running():
            raise RuntimeError("start knot before unbound (the trust anchors come from it)")
        self.base.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self._config())
        check = subprocess.run(
            ["/usr/sbin/unbound-checkconf", str(self.config_file)],
            capture_output=True,
            text=True,
            env={"PATH": PATH},
            timeout=30,
            check=False,
        )
        if check.returncode != 0:
            raise RuntimeError(f"unbound-checkconf: {check.stdout}{check.stderr}")
        self._process.start([UNBOUND, "-d", "-c", str(self.config_file)], cwd=self.base)

        def answers(zone: Zone) -> bool:
            self._process.check_alive()
            try:
                reply = query(zone.origin.to_text(), "SOA", self.port)
            except (dns.exception.DNSException, OSError):
                return False
            if zone.dnssec == "bogus":
                return reply.rcode() == dns.rcode.SERVFAIL
            return reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)

        try:
            for zone in self.knot.zones:
                wait_until(
                    functools.partial(answers, zone),
                    timeout=START_TIMEOUT,
                    what=f"unbound to resolve {zone.name}",
                    interval=0.1,
                    on_timeout=self._process.log_text,
                )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self._process.stop()

    def is_running(self) -> bool:
        return self._process.is_running()

    def log_text(self) -> str:
        return self._process.log_text()

    def __repr__(self) -> str:
        return f"UnboundResolver(address={self.address!r}, knot={self.knot!r})"


@dataclass
class DnsLab:
    """knot + unbound together; `resolver` is what programs under test are pointed at."""

    knot: KnotServer
    resolver: UnboundResolver
    zones: dict[str, Zone] = field(default_factory=dict)

    def zone(self, name: str) -> Zone:
        return self.zones[dns.name.from_text(name).to_text()]


@contextmanager
def dns_lab(base: Path, zones: Iterable[Zone]) -> Iterator[DnsLab]:
    """Start knot for the zones, then unbound trusting the signed ones; stop both after."""
    knot = KnotServer(base / "knot", zones)
    knot.start()
    try:
        resolver = UnboundResolver(base / "unbound", knot)
        resolver.start()
        try:
            yield DnsLab(knot, resolver, {z.origin.to_text(): z for z in knot.zones})
        finally:
            resolver.stop()
    finally:
        knot.stop()


def tlsa_owner(host: str, port: int = 25) -> str:
    """The TLSA owner name for a TCP service, e.g. "_25._tcp.mail.dane.test."."""
    return f"_{port}._tcp.{dns.name.from_text(host).to_text()}"
