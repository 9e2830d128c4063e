"""Which lineages Postfix serves, and as what: decided here alone, once per command.

Contract: `choose(settings, hostnames, installed)` returns a `Selection`: the chains to
serve, at most one lineage per key algorithm (or none, with the reason); `lineage` is the
first of them (the only one for an admin with one lineage). Every entry point asks it: the
deploy hook (`ours()`: is the renewed lineage Postfix's business?), the daemon, `install`,
`verify`, `status`, `obtain`. It reads only what identifies a candidate, the leaf of
`cert.pem` (its names, dates and key); the lineage that will be deployed is read whole
and verified by the deploy.

The rule, in order:
1. `lineages` configured: those, and only those, are candidates;
2. the lineage main.cf already points at (`installed`) while it still covers every required
   hostname: a stable choice, so a renewal of another lineage for the same names never
   flips what Postfix serves, and a deploy hook for an unrelated lineage (a host that also
   serves websites) decides without reading every lineage in live/;
3. otherwise the candidate covering every required hostname that is valid longest.
The rule is applied per key algorithm (`ALGORITHMS`): Postfix serves one chain per
algorithm side by side (`smtpd_tls_chain_files`) and picks by the client's signature
algorithms, so an ECDSA and an RSA lineage for the same names are both served. Only RSA
and ECDSA take part: they are what ACME CAs issue and what the probe can tell apart; a
lineage with another key (Ed25519) is a candidate only when no RSA or ECDSA one is. When
an installed lineage decides its algorithm, the others are read without waiting for
certbot (a half-renewed unrelated lineage must not stall every deploy hook).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pftls_hook.config import Settings
from pftls_hook.errors import NotSettledError, RefusedError
from pftls_hook.fsutil import attempts
from pftls_hook.lineage import list_lineages, read_leaf
from pftls_hook.verify import covers, parse_certificates

log = logging.getLogger("pftls-hook")


# Served side by side, in this order in smtpd_tls_chain_files.
ALGORITHMS = ("ecdsa", "rsa")
_OTHER = "other"


def algorithm_of(cert: x509.Certificate) -> str:
    """The key algorithm a chain is served for: "ecdsa", "rsa", or "other"."""
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ecdsa"
    return "rsa" if isinstance(key, rsa.RSAPublicKey) else _OTHER


@dataclass(frozen=True)
class Chain:
    """One chain Postfix serves: the lineage, for clients of that key algorithm."""

    algorithm: str
    lineage: str


@dataclass(frozen=True)
class Selection:
    lineage: str | None
    why_none: str = ""
    configured: tuple[str, ...] = ()
    installed: tuple[str, ...] = ()  # the lineages main.cf points at now
    chains: tuple[Chain, ...] = ()  # ALGORITHMS order; () when `lineage` is None

    @property
    def lineages(self) -> tuple[str, ...]:
        return tuple(c.lineage for c in self.chains)

    @property
    def several(self) -> bool:
        """Several chains, now or before: the deploy manages smtpd_tls_chain_files."""
        return len(self.chains) > 1 or len(self.installed) > 1

    def algorithm(self, name: str) -> str | None:
        return next((c.algorithm for c in self.chains if c.lineage == name), None)

    def ours(self, name: str) -> bool:
        """Should a renewal of `name` be deployed? When it is one selected; and when no
        lineage qualifies but `name` is one Postfix uses or was configured with: its
        renewal broke it, and the refusal must reach certbot's log, not a silent skip."""
        if self.chains:
            return name in self.lineages
        return name in self.configured or name in self.installed


def leaf_of(settings: Settings, name: str, *, wait: bool = True) -> x509.Certificate:
    """The leaf of a lineage's cert.pem. certbot re-points a link by unlink + symlink: a
    missing link is retried for a moment (`wait`)."""
    for last in attempts(settings.settle_timeout if wait else 0, 0.05):
        try:
            return parse_certificates(read_leaf(settings.live_dir / name), "cert.pem")[0]
        except NotSettledError:
            if last:
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")


def _qualifies(
    settings: Settings, name: str, hostnames: Sequence[str], *, wait: bool = True
) -> x509.Certificate | None:
    try:
        leaf = leaf_of(settings, name, wait=wait)
    except RefusedError as exc:
        log.info("%s: not considered now: %s", name, exc)
        return None
    if settings.lineages or all(covers(leaf, h) for h in hostnames):
        return leaf
    return None


def choose(settings: Settings, hostnames: Sequence[str], installed: Sequence[str]) -> Selection:
    configured = settings.lineages
    # Per algorithm: (installed, not after, name); the greatest wins, so an installed lineage
    # that still qualifies beats a longer-valid one (rule 2), then the longest valid (rule 3).
    best: dict[str, tuple[bool, datetime, str]] = {}
    for name in installed:
        if not configured or name in configured:
            leaf = _qualifies(settings, name, hostnames)
            if leaf is not None:
                best.setdefault(algorithm_of(leaf), (True, leaf.not_valid_after_utc, name))
    for name in configured or list_lineages(settings.live_dir):
        if name in installed:
            continue
        leaf = _qualifies(settings, name, hostnames, wait=not best)
        if leaf is None:
            continue
        candidate = (False, leaf.not_valid_after_utc, name)
        algorithm = algorithm_of(leaf)
        if algorithm not in best or candidate > best[algorithm]:
            best[algorithm] = candidate
    kept = [a for a in ALGORITHMS if a in best] or [a for a in (_OTHER,) if a in best]
    if settings.layout != "combined":
        kept = kept[:1]  # several chains need the combined layout (one file per chain)
    chains = tuple(Chain(a, best[a][2]) for a in kept)
    if not chains:
        wanted = ", ".join(configured or hostnames)
        return Selection(None, f"no lineage to deploy for {wanted}", configured, tuple(installed))
    return Selection(chains[0].lineage, "", configured, tuple(installed), chains)
