"""DANE for SMTP (RFC 7672): the TLSA records published for the names Postfix answers as,
and whether a chain matches them.

A DANE MX publishes TLSA records at `_25._tcp.<host>.`; validating senders refuse to deliver
when none matches the chain Postfix serves, while STARTTLS still looks fine. certbot makes a
new key at every renewal unless `reuse_key = True`, so a routine renewal can take the MX off
the air for them. This module is the deploy stage that prevents it.

Contract:
- `match(chain, records)` is pure: the first usable record the chain (leaf first, then the
  issuers as served) satisfies, or None. Usage 3 (DANE-EE) is checked against the leaf only,
  usage 2 (DANE-TA) against the issuer certificates present in the chain only; selector 0 =
  the whole certificate (DER), 1 = its SubjectPublicKeyInfo; matching type 0 = exact,
  1 = SHA-256, 2 = SHA-512. Usages 0/1 (PKIX-TA/EE), unknown parameters and digests of the
  wrong length are unusable for SMTP (RFC 7672 §3.1.3) and never match.
- `dane_dns.lookup(target, servers)` gets each target's records (`Answer`); a failure is
  a `DaneLookupError`: it is not safe to guess.
- `guard(...)` is the deploy stage: with `dane = enforce` it raises `DaneRefusedError`
  (one error line logged per target, with the exact record to publish) unless the chain
  matches a usable record of every target that has any; with `warn` it only logs that;
  with `off` it looks nothing up. Records are enforced whether or not AD was set.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pftls_hook.config import Settings
from pftls_hook.errors import DaneLookupError, DaneRefusedError, RefusedError
from pftls_hook.verify import VerifiedBundle, parse_certificates

log = logging.getLogger("pftls-hook")

DANE_TA, DANE_EE = 2, 3
SELECTORS = (0, 1)  # 0: the certificate, 1: its SubjectPublicKeyInfo
DIGEST_SIZES = {0: None, 1: 32, 2: 64}  # matching type -> digest length (0: exact data)
# certbot writes `reuse_key = True` under [renewalparams] of renewal/<name>.conf.
_REUSE_KEY = re.compile(r"^\s*reuse_key\s*=\s*true\s*$", re.I | re.M)


@dataclass(frozen=True)
class Tlsa:
    usage: int
    selector: int
    mtype: int
    data: bytes

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"

    @property
    def usable(self) -> bool:
        """RFC 7672 §3.1.3: only DANE-TA(2) and DANE-EE(3) apply to SMTP."""
        if self.usage not in (DANE_TA, DANE_EE) or self.selector not in SELECTORS:
            return False
        if self.mtype not in DIGEST_SIZES:
            return False
        size = DIGEST_SIZES[self.mtype]
        return size is None or len(self.data) == size


@dataclass(frozen=True)
class Target:
    """A TCP service a DANE sender connects to: `_<port>._tcp.<host>.`."""

    host: str
    port: int

    @property
    def owner(self) -> str:
        return f"_{self.port}._tcp.{self.host}."

    def record(self, tlsa: Tlsa) -> str:
        """The zone-file line to publish."""
        return f"{self.owner} IN TLSA {tlsa}"


@dataclass(frozen=True)
class Answer:
    target: Target
    records: tuple[Tlsa, ...]
    authenticated: bool  # the resolver set AD: it validated the answer with DNSSEC
    canonical: str  # the owner after following CNAMEs

    @property
    def usable(self) -> tuple[Tlsa, ...]:
        return tuple(r for r in self.records if r.usable)

    def describe(self) -> str:
        via = f" via CNAME {self.canonical}" if self.canonical != self.target.owner else ""
        ad = "DNSSEC-validated" if self.authenticated else "not DNSSEC-validated (no AD)"
        return f"{len(self.records)} TLSA record(s){via}, {ad}"


# ------------------------------------------------------------------------- the pure part


def targets(hostnames: Iterable[str], ports: Iterable[int]) -> tuple[Target, ...]:
    ports = tuple(ports)
    return tuple(dict.fromkeys(Target(h.rstrip(".").lower(), p) for h in hostnames for p in ports))


def _selected(cert: x509.Certificate, selector: int) -> bytes:
    if selector == 0:
        return cert.public_bytes(serialization.Encoding.DER)
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def association(cert: x509.Certificate, selector: int, mtype: int) -> bytes:
    """The certificate association data of a (selector, matching type) for one certificate."""
    data = _selected(cert, selector)
    if mtype == 1:
        return hashlib.sha256(data).digest()
    if mtype == 2:
        return hashlib.sha512(data).digest()
    return data


def match(chain: Sequence[x509.Certificate], records: Iterable[Tlsa]) -> Tlsa | None:
    """The first usable record that `chain` (leaf first, then issuers) satisfies, or None."""
    if not chain:
        return None
    leaf, issuers = chain[0], chain[1:]
    for record in records:
        if not record.usable:
            continue
        candidates = (leaf,) if record.usage == DANE_EE else issuers
        for cert in candidates:
            if association(cert, record.selector, record.mtype) == record.data:
                return record
    return None


def records_for(chain: Sequence[x509.Certificate]) -> tuple[Tlsa, ...]:
    """What to publish for a chain: `3 1 1` for the leaf's key, `2 1 1` for each issuer."""
    if not chain:
        return ()
    leaf = (Tlsa(DANE_EE, 1, 1, association(chain[0], 1, 1)),)
    return leaf + tuple(Tlsa(DANE_TA, 1, 1, association(c, 1, 1)) for c in chain[1:])


# ------------------------------------------------------------------------- the deploy stage


@dataclass(frozen=True)
class Verdict:
    """One target judged against one chain."""

    target: Target
    answer: Answer | None  # None: the lookup failed (`error`)
    matched: Tlsa | None = None
    error: str = ""

    @property
    def guarded(self) -> bool:
        """Are there usable records (or an unknown answer) that the chain must satisfy?"""
        return self.answer is None or bool(self.answer.usable)

    @property
    def pins_key(self) -> bool:
        """Published 3 1 x records: only this key matches them, a new one will not."""
        usable = self.answer.usable if self.answer else ()
        return any(r.usage == DANE_EE and r.selector == 1 for r in usable)

    @property
    def refuses(self) -> bool:
        return self.guarded and self.matched is None


def judge(
    chain: Sequence[x509.Certificate], hostnames: Iterable[str], settings: Settings
) -> list[Verdict]:
    """Each target's records looked up and matched against `chain`."""
    # Imported here: dnspython takes 50-100 ms to import, which a deploy hook run that
    # skips the lineage, or runs with --dane off, need not pay.
    from pftls_hook.dane_dns import lookup  # noqa: PLC0415

    verdicts = []
    for target in targets(hostnames, settings.dane_ports):
        try:
            answer = lookup(target, settings.dns_resolvers)
        except DaneLookupError as exc:
            verdicts.append(Verdict(target, None, error=str(exc)))
            continue
        verdicts.append(Verdict(target, answer, match(chain, answer.usable)))
    return verdicts


def _problem(verdict: Verdict, chain: Sequence[x509.Certificate]) -> tuple[str, str]:
    """(the one line about a refusing target, the record to publish or "")."""
    if verdict.answer is None:
        return f"{verdict.error}: not safe to deploy", ""
    publish = verdict.target.record(records_for(chain)[0])
    published = ", ".join(str(r) for r in verdict.answer.usable)
    return (
        f"{verdict.target.owner}: no published TLSA record matches the new certificate "
        f"({verdict.answer.describe()}: {published}); publish: {publish}",
        publish,
    )


def reuse_key_advice(settings: Settings, name: str, published_3_1: bool) -> str:
    """A warning when 3 1 x records pin the key and certbot will change it next time."""
    if not published_3_1:
        return ""
    conf = settings.certbot_config_dir / "renewal" / f"{name}.conf"
    try:
        if _REUSE_KEY.search(conf.read_text(errors="replace")):
            return ""
    except OSError:
        return ""  # not a lineage certbot renews (or unreadable): nothing to advise
    return (
        f"{conf}: no reuse_key = True while 3 1 x TLSA records are published: certbot's next "
        f"renewal makes a new key that they reject; keep the key with `certbot reconfigure "
        f"--cert-name {name} --reuse-key` (certbot >= 2.3) or renew once with --reuse-key"
    )


def served_chains(files: Iterable[str]) -> list[list[x509.Certificate]]:
    """The chains in the files smtpd loads, one per file holding certificates (a combined
    key + chain file, a cert file, an ECDSA cert file...), each once; unreadable ones left
    out. Several key + chain sequences inside one file are read as one chain."""
    chains: list[list[x509.Certificate]] = []
    for path in dict.fromkeys(files):
        try:
            data = Path(path).read_bytes()
            start = data.find(b"-----BEGIN CERTIFICATE-----")
            chain = parse_certificates(data[start:], path) if start >= 0 else []
        except (OSError, RefusedError):
            continue
        if chain and chain not in chains:
            chains.append(chain)
    return chains


def installed_chain(files: Iterable[str]) -> list[x509.Certificate]:
    """The first chain in the files main.cf points at: the one pftls-hook installed."""
    chains = served_chains(files)
    return chains[0] if chains else []


def guard(
    settings: Settings,
    source: str,
    bundle: VerifiedBundle,
    *,
    hostnames: Sequence[str],
    served_files: Sequence[str],
    now: datetime,
) -> None:
    """Refuse (`DaneRefusedError`) a chain the published TLSA records of a target reject."""
    if settings.dane == "off":
        return
    chain = [bundle.leaf, *bundle.intermediates]
    problems: list[tuple[str, str]] = []
    verdicts = judge(chain, hostnames, settings)
    advice = reuse_key_advice(settings, source, any(v.pins_key for v in verdicts))
    if advice:
        log.warning("%s", advice)
    for verdict in verdicts:
        if verdict.refuses:
            problems.append(_problem(verdict, chain))
        elif verdict.answer is not None and verdict.matched is not None:
            log.info(
                "%s: the new certificate matches TLSA %s (%s)",
                verdict.target.owner,
                verdict.matched,
                verdict.answer.describe(),
            )
        elif verdict.answer is not None and verdict.answer.records:
            log.info(
                "%s: %s, none usable for SMTP (only usages 2 and 3 are): nothing to guard",
                verdict.target.owner,
                verdict.answer.describe(),
            )
        else:
            log.debug("%s: no TLSA records: nothing to guard", verdict.target.owner)
    if not problems:
        return
    if settings.dane == "warn":
        for line, _ in problems:
            log.warning("%s (--dane warn: deploying anyway)", line)
        return
    for line, _ in problems:
        log.error("%s", line)
    _warn_expiry(installed_chain(served_files), settings.min_days, now)
    publish = tuple(record for _, record in problems if record)
    raise DaneRefusedError(
        source,
        f"refused by DANE ({len(problems)} target(s), above): nothing changed, Postfix keeps "
        "serving its current certificate",
        publish=publish,
    )


def _warn_expiry(served: Sequence[x509.Certificate], min_days: int, now: datetime) -> None:
    """DANE-EE senders ignore the served certificate's expiry (RFC 7672 §3.1); clients
    that check names (MUAs on 465/587) do not, and this renewal is being held back."""
    if not served:
        return
    expires = served[0].not_valid_after_utc
    if (expires - now).days < min_days:
        log.warning(
            "the served certificate expires %s (fewer than --min-days %d days left): "
            "clients that check names will refuse it then; publish the record to let the "
            "renewal through",
            f"{expires:%Y-%m-%d %H:%M} UTC",
            min_days,
        )


__all__ = [
    "Answer",
    "Target",
    "Tlsa",
    "Verdict",
    "association",
    "guard",
    "installed_chain",
    "judge",
    "match",
    "records_for",
    "targets",
]
