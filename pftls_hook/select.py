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

`focus` (the lineage a deploy was asked for: the deploy hook's renewed one, the daemon's
changed one, `install NAME`): while every chain and SNI name has an
installed lineage that still qualifies, the candidates are those and `focus` alone, so a
renewal reads a handful of leaves, not all of live/. The choice is the same as over all
of live/ (installed lineages win, rule 2) except for an algorithm nothing serves yet: only
`focus` can bring it (another new lineage of it waits for its own deploy hook, which
certbot runs when it issues it, or for `install`), even where another would be valid
longer; `install` and the daemon's reconcile, which look at everything, then keep `focus`
(rule 2). When an installed lineage no longer qualifies, the choice falls back to all of
live/.

A lineage certbot is re-pointing right now is a candidate (its cert.pem tells its names;
the deploy waits for it to settle); one left half-renewed by an interrupted certbot is not.

SNI (`sni` names): each name is served the lineages covering it, by the same rule per
algorithm, `installed` being what pftls-hook's SNI table lists for it now. Each leaf is
read once per command, and names are matched through an index of the leaves' names, so a
thousand names cost one pass over live/.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pftls_hook.config import Settings
from pftls_hook.errors import NotSettledError, RefusedError
from pftls_hook.fsutil import attempts
from pftls_hook.lineage import DirChecks, abandoned, list_lineages, read_leaf
from pftls_hook.verify import covers, dns_names, parse_certificates

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
    sni: tuple[tuple[str, tuple[Chain, ...]], ...] = ()  # per SNI name, its chains
    sni_installed: bool = False  # pftls-hook's SNI table lists something now

    @property
    def lineages(self) -> tuple[str, ...]:
        """Every lineage selected: the default chains', then the SNI names'."""
        every = [c.lineage for c in self.chains]
        every += [c.lineage for _, chains in self.sni for c in chains]
        return tuple(dict.fromkeys(every))

    @property
    def several(self) -> bool:
        """Several chains or SNI, now or before: the deploy manages smtpd_tls_chain_files
        (and the SNI table)."""
        return (
            len(self.chains) > 1
            or len(self.installed) > 1
            or bool(self.sni)
            or (self.sni_installed)
        )

    @cached_property
    def _serves(self) -> dict[str, list[tuple[str | None, str]]]:
        """lineage -> (SNI name or None for the default chains, algorithm), built once: a
        thousand SNI names would make every lookup a scan."""
        serves: dict[str, list[tuple[str | None, str]]] = {}
        for sni, chains in [(None, self.chains), *self.sni]:
            for chain in chains:
                serves.setdefault(chain.lineage, []).append((sni, chain.algorithm))
        return serves

    def names_of(self, lineage: str, default: Sequence[str]) -> list[str]:
        """The names a lineage is served for: the `default` hostnames for a default chain,
        and each SNI name it serves."""
        names: list[str] = []
        for sni, _ in self._serves.get(lineage, ()):
            names += default if sni is None else [sni]
        return list(dict.fromkeys(names))

    def algorithms_of(self, lineage: str) -> set[str]:
        return {algorithm for _, algorithm in self._serves.get(lineage, ())}

    def ours(self, name: str) -> bool:
        """Should a renewal of `name` be deployed? When it is one selected; and when no
        lineage qualifies but `name` is one Postfix uses or was configured with: its
        renewal broke it, and the refusal must reach certbot's log, not a silent skip."""
        if self.chains:
            return name in self.lineages
        return name in self.configured or name in self.installed


def leaf_of(
    settings: Settings, name: str, *, wait: bool = True, checks: DirChecks | None = None
) -> x509.Certificate:
    """The leaf of a lineage's cert.pem. certbot re-points a link by unlink + symlink: a
    missing link is retried for a moment (`wait`)."""
    for last in attempts(settings.settle_timeout if wait else 0, 0.05):
        try:
            return parse_certificates(read_leaf(settings.live_dir / name, checks), "cert.pem")[0]
        except NotSettledError:
            if last:
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")


class _Leaves:
    """Each lineage's leaf, read once per command (None: not usable now)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.seen: dict[str, x509.Certificate | None] = {}
        self.checks = DirChecks()

    def get(self, name: str, *, wait: bool = True) -> x509.Certificate | None:
        if name not in self.seen:
            if abandoned(self.settings.live_dir / name, self.settings.settle_timeout, time.time()):
                log.info(
                    "%s: not considered now: left half-renewed by an interrupted certbot", name
                )
                self.seen[name] = None
                return None
            try:
                self.seen[name] = leaf_of(self.settings, name, wait=wait, checks=self.checks)
            except RefusedError as exc:
                log.info("%s: not considered now: %s", name, exc)
                self.seen[name] = None
        return self.seen[name]


def _best(
    leaves: _Leaves,
    candidates: Sequence[str],
    hostnames: Sequence[str],
    installed: Sequence[str],
    *,
    any_names: bool = False,
) -> tuple[Chain, ...]:
    """The chains for `hostnames`: per algorithm, an installed lineage that still covers
    them (rule 2), else the longest valid (rule 3); `any_names`: configured lineages
    qualify whatever they cover (rule 1)."""

    def qualifies(name: str, wait: bool) -> x509.Certificate | None:
        leaf = leaves.get(name, wait=wait)
        if leaf is not None and (any_names or all(covers(leaf, h) for h in hostnames)):
            return leaf
        return None

    # Per algorithm: (installed, not after, name); the greatest wins.
    best: dict[str, tuple[bool, datetime, str]] = {}
    for name in installed:
        if name in candidates and (leaf := qualifies(name, True)) is not None:
            best.setdefault(algorithm_of(leaf), (True, leaf.not_valid_after_utc, name))
    for name in candidates:
        if name in installed or (leaf := qualifies(name, not best)) is None:
            continue
        candidate = (False, leaf.not_valid_after_utc, name)
        algorithm = algorithm_of(leaf)
        if algorithm not in best or candidate > best[algorithm]:
            best[algorithm] = candidate
    kept = [a for a in ALGORITHMS if a in best] or [a for a in (_OTHER,) if a in best]
    if leaves.settings.layout != "combined":
        # One chain (several need a file each): the installed one while it qualifies (rule
        # 2), not a newer lineage of an algorithm that sorts first.
        kept = sorted(kept, key=lambda a: not best[a][0])[:1]
    return tuple(Chain(a, best[a][2]) for a in kept)


def _sni_chains(
    leaves: _Leaves, candidates: Sequence[str], installed: Mapping[str, Sequence[str]]
) -> tuple[tuple[str, tuple[Chain, ...]], ...]:
    # An index of the names each readable candidate covers (a wildcard under its pattern).
    index: dict[str, list[str]] = {}
    for name in candidates:
        leaf = leaves.get(name, wait=False)
        for covered in dns_names(leaf) if leaf is not None else ():
            index.setdefault(covered.lower().rstrip("."), []).append(name)
    sni = []
    for host in leaves.settings.sni:
        parent = host.partition(".")[2]
        near = dict.fromkeys([*index.get(host, ()), *index.get(f"*.{parent}", ())])
        now = installed.get(host, ())
        sni.append((host, _best(leaves, [*now, *near], [host], now)))
    return tuple(sni)


def choose(
    settings: Settings,
    hostnames: Sequence[str],
    installed: Sequence[str],
    sni_installed: Mapping[str, Sequence[str]] | None = None,
    *,
    focus: str | None = None,
) -> Selection:
    """`sni_installed`: what the SNI table lists now, name -> lineages; `focus`: the
    lineage a deploy hook was called for (module docstring)."""
    configured = settings.lineages
    leaves = _Leaves(settings)
    table = sni_installed or {}
    listed = bool(table)
    candidates = list(configured or list_lineages(settings.live_dir))
    listed_all = all(table.get(host) for host in settings.sni)
    if focus is not None and not configured and installed and listed_all:
        known = set(candidates)
        narrow = [*installed, *(n for names in table.values() for n in names), focus]
        chosen = [n for n in dict.fromkeys(narrow) if n in known]
        chains = _best(leaves, chosen, hostnames, installed)
        sni = _sni_chains(leaves, chosen, table) if settings.sni else ()
        if _keeps(chains, sni, installed, table):
            return Selection(chains[0].lineage, "", (), tuple(installed), chains, sni, listed)
    chains = _best(leaves, candidates, hostnames, installed, any_names=bool(configured))
    sni = _sni_chains(leaves, candidates, table) if settings.sni else ()
    if not chains:
        wanted = ", ".join(configured or hostnames)
        why = f"no lineage to deploy for {wanted}"
        return Selection(None, why, configured, tuple(installed), (), sni, listed)
    return Selection(chains[0].lineage, "", configured, tuple(installed), chains, sni, listed)


def _keeps(
    chains: Sequence[Chain],
    sni: Sequence[tuple[str, Sequence[Chain]]],
    installed: Sequence[str],
    table: Mapping[str, Sequence[str]],
) -> bool:
    """Does a choice keep every installed lineage (each still qualifies where it serves)?"""
    if not {c.lineage for c in chains} >= set(installed):
        return False
    return all({c.lineage for c in chosen} >= set(table.get(host, ())) for host, chosen in sni)
