"""Which lineage Postfix serves: decided here alone, once per command.

Contract: `choose(settings, hostnames, installed)` returns a `Selection`: the lineage to
serve (or none, with the reason). Every entry point asks it: the deploy hook (`ours()`: is
the renewed lineage Postfix's business?), the daemon, `install`, `verify`, `status`,
`obtain`. It reads only what identifies a candidate, the leaf of `cert.pem` (its names and
dates); the lineage that will be deployed is read whole and verified by the deploy.

The rule, in order:
1. `lineages` configured: those, and only those, are candidates;
2. the lineage main.cf already points at (`installed`) while it still covers every required
   hostname: a stable choice, so a renewal of another lineage for the same names never
   flips what Postfix serves, and a deploy hook for an unrelated lineage (a host that also
   serves websites) decides without reading every lineage in live/;
3. otherwise the candidate covering every required hostname that is valid longest.
A lineage certbot is re-pointing right now is a candidate (its cert.pem tells its names;
the deploy waits for it to settle); one left half-renewed by an interrupted certbot is not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from pftls_hook.config import Settings
from pftls_hook.errors import NotSettledError, RefusedError
from pftls_hook.fsutil import attempts
from pftls_hook.lineage import abandoned, list_lineages, read_leaf
from pftls_hook.verify import covers, parse_certificates

log = logging.getLogger("pftls-hook")


@dataclass(frozen=True)
class Selection:
    lineage: str | None
    why_none: str = ""
    configured: tuple[str, ...] = ()
    installed: str | None = None

    def ours(self, name: str) -> bool:
        """Should a renewal of `name` be deployed? When it is the one selected; and when no
        lineage qualifies but `name` is the one Postfix uses or was configured with: its
        renewal broke it, and the refusal must reach certbot's log, not a silent skip."""
        if self.lineage is not None:
            return name == self.lineage
        return name in self.configured or name == self.installed


def leaf_of(settings: Settings, name: str) -> x509.Certificate:
    """The leaf of a lineage's cert.pem. certbot re-points a link by unlink + symlink: a
    missing link is retried for a moment."""
    for last in attempts(settings.settle_timeout, 0.05):
        try:
            return parse_certificates(read_leaf(settings.live_dir / name), "cert.pem")[0]
        except NotSettledError:
            if last:
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")


def _qualifies(settings: Settings, name: str, hostnames: Sequence[str]) -> x509.Certificate | None:
    if abandoned(settings.live_dir / name, settings.settle_timeout, time.time()):
        log.info("%s: not considered now: left half-renewed by an interrupted certbot", name)
        return None
    try:
        leaf = leaf_of(settings, name)
    except RefusedError as exc:
        log.info("%s: not considered now: %s", name, exc)
        return None
    if settings.lineages or all(covers(leaf, h) for h in hostnames):
        return leaf
    return None


def choose(settings: Settings, hostnames: Sequence[str], installed: str | None) -> Selection:
    configured = settings.lineages
    if (
        installed is not None
        and (not configured or installed in configured)
        and _qualifies(settings, installed, hostnames) is not None
    ):
        return Selection(installed, configured=configured, installed=installed)
    best: tuple[datetime, str] | None = None
    for name in configured or list_lineages(settings.live_dir):
        leaf = _qualifies(settings, name, hostnames)
        if leaf is not None and (best is None or (leaf.not_valid_after_utc, name) > best):
            best = (leaf.not_valid_after_utc, name)
    if best is None:
        wanted = ", ".join(configured or hostnames)
        return Selection(None, f"no lineage to deploy for {wanted}", configured, installed)
    return Selection(best[1], configured=configured, installed=installed)
