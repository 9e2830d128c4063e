"""certbot's deploy hook: a renewal already installed and served ends here, cheaply.

Contract: `run(settings, name)` deploys lineage `name` as the deploy hook does (only if
Postfix serves it: `Deployer.deploy(name, only_if_ours=True)`) and returns its `Outcome`,
or raises what that raises; for a deploy that is neither a dry run (a plan: the deploy's
job) nor counted in a metrics file (metrics.deploy rewrites it every run): the CLI sends
those to the deploy itself. Under the lock it reads Postfix's state once; when that state
shows the renewal is already done (`unchanged`), it answers "unchanged" without importing
cryptography or the deploy (a no-op otherwise spends most of its time importing them); any
other case goes to the full deploy, with the state already read.

Why a no-op may skip verification: the installed files were checked, all of them, when they
were installed, and they are byte for byte the lineage's current key and chain. What could
have changed since is the time, the trust anchors and the required hostnames, and those are
checked again here by a verifying STARTTLS client (probe.checked): the chain to `--ca-file`,
the dates and the sslserver purpose by OpenSSL (its own path building, not cryptography's:
a chain either refuses goes to the full deploy), the names (pem.name_covers, verify.py's
rule) and the minimum days left. The server's handshake proves it holds the matching key.
OpenSSL is handed only the CA file's certificates that issue one of the chain's
(pem.anchors_for): loading the whole system bundle would cost it 35 ms, a quarter of a
no-op. A no-op needs no DNS: it changes nothing a TLSA record could reject. Any doubt (a
probe error, no anchor found, a CA file that cannot be read, an IP address written another
way) means the full deploy, never a different answer.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from pftls_hook import probe, sni
from pftls_hook.config import Endpoint, Settings
from pftls_hook.errors import PftlsError
from pftls_hook.install import install_dir
from pftls_hook.lineage import read_lineage
from pftls_hook.lock import deploy_lock
from pftls_hook.outcome import Outcome
from pftls_hook.pem import WARN_DAYS, SourceFiles, anchors_for, first_leaf_sha256, name_covers
from pftls_hook.postfix import Postfix, Reading, read_instances

log = logging.getLogger("pftls-hook")


def run(settings: Settings, name: str) -> Outcome:
    with deploy_lock(settings.lock_file, settings.lock_timeout):
        reading = read_instances(settings, [Postfix(d) for d in settings.instances])
        return unchanged(settings, name, reading) or _deploy(settings, name, reading)


def _deploy(settings: Settings, name: str, reading: Reading) -> Outcome:
    from pftls_hook.deploy import Deployer  # noqa: PLC0415 - only when there is work

    # The instances the state was read of are the ones it deploys to.
    deployer = Deployer(settings, postfixes=[i.postfix for i in reading.instances])
    return deployer.deploy(name, only_if_ours=True, reading=reading)


def unchanged(settings: Settings, name: str, reading: Reading) -> Outcome | None:
    """ "unchanged" when every instance's main.cf points at `name`'s installed files, those
    hold the lineage's current key and chain, and every endpoint serves that leaf to a
    verifying client, for every required hostname, with the days left a deploy requires
    (and no warning due); None (the full deploy decides) in any other case, and for what
    the shortcut does not cover: several chains, SNI, configured lineages."""
    files = _installed(settings, name, reading)
    if files is None:
        return None
    leaf = first_leaf_sha256(files.cert)
    if leaf is None:
        return None
    anchors = _anchors(settings, files.fullchain)
    hostnames = settings.hostnames or (reading.instances[0].state.myhostname,)
    if not anchors or not all(
        _serves(settings, e, leaf, anchors, hostnames) for e in reading.endpoints
    ):
        return None
    for note in reading.notes:
        log.warning("%s", note)
    log.info("%s: already installed and served: nothing to do", name)
    return Outcome(name, "unchanged", leaf, proven_on=tuple(map(str, reading.endpoints)))


def _installed(settings: Settings, name: str, reading: Reading) -> SourceFiles | None:
    """`name`'s current version if every instance is pointed at files holding exactly its
    key and chain, and nothing else is to be served."""
    layout = install_dir(settings.install_dir, settings.layout)
    if settings.sni or settings.lineages or not reading.endpoints:
        return None
    try:
        layout.check()  # an install dir turned unsafe is refused on every run, no-op or not
        if sni.read(sni.table_path(layout.path)):
            return None
        files = read_lineage(settings.live_dir / name, settle_timeout=0).files
    except PftlsError:
        # An unsettled lineage (certbot still at work: not a no-op, and waiting is the
        # deploy's job), or a refusal: the full deploy reads it again, and waits or says why.
        return None
    for instance in reading.instances:
        if not layout.holds(name, files.privkey, files.fullchain, instance.state.pointed_files()):
            return None
    return files


def _anchors(settings: Settings, chain: bytes) -> str:
    """The CA file's anchors for `chain` ("" if none, or the file cannot be read: the full
    deploy then says why)."""
    try:
        return anchors_for(chain, settings.ca_file.read_bytes())
    except OSError:
        return ""


def _serves(
    settings: Settings, endpoint: Endpoint, leaf: str, anchors: str, hostnames: Sequence[str]
) -> bool:
    try:
        der, peer = probe.checked(endpoint, anchors, timeout=settings.probe_timeout)
    except PftlsError:
        return False
    names = [v for k, v in peer.get("subjectAltName", ()) if k in ("DNS", "IP Address")]
    return (
        hashlib.sha256(der).hexdigest() == leaf
        and all(name_covers(names, h) for h in hostnames)
        and _seconds(peer.get("notAfter", "")) - time.time()
        >= max(settings.min_days, WARN_DAYS) * 86400
    )


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _seconds(when: str) -> float:
    """OpenSSL's `Jun  1 12:00:00 2027 GMT` as a Unix time (0 if it is not that).
    `ssl.cert_time_to_seconds` would load `_strptime`, a tenth of this hook's imports."""
    try:
        month, day, clock, year, _ = when.split()
        hour, minute, second = map(int, clock.split(":"))
        at = datetime(
            int(year), _MONTHS.index(month) + 1, int(day), hour, minute, second, tzinfo=UTC
        )
    except ValueError:
        return 0.0
    return at.timestamp()
