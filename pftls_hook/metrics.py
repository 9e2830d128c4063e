"""Prometheus metrics in a file, for node_exporter's textfile collector.

Contract: with `metrics_file` set, `deploy(deployer, name)` runs `deployer.deploy(name)`,
counts the attempt by result and rewrites the file; `refresh(deployer, report)` rewrites it
without counting (`status`, a daemon reconcile that found nothing to deploy). Neither ever
fails the caller: a metrics file that cannot be written is logged as a warning. `render`
is pure: typed inputs in, the text exposition format out.

Why each part:
- The file is replaced atomically (fsutil.atomic_write: temp file in the same directory,
  fsync, mode 0644, rename): node_exporter reads `*.prom` whenever it is scraped and must
  never see half a file; the temp name does not end in `.prom`, so it is never read.
- Counters (deploys by result, the last attempt and each lineage's last success) live in a
  small JSON file beside the metrics file, `.<metrics file name>.counters.json`. Every entry
  point deploys (certbot's hook, the daemon, `install`), so the daemon's state file in
  /run would lose the hook's counts and everything at reboot; beside the metrics file they
  survive both, and the unit needs no other writable path. A flock on the directory keeps
  two writers (hook and daemon) from losing an increment.
- Names follow x509-certificate-exporter and cert-manager: absolute timestamps in seconds
  (compute time left in PromQL), `_total` for counters, labels of low cardinality: lineage,
  source (live | installed | served), probe endpoint, result. No serials, no fingerprints.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pftls_hook import __version__
from pftls_hook.deploy import Deployer
from pftls_hook.errors import (
    DeployFailedError,
    NotSettledError,
    PftlsError,
    RefusedError,
    RollbackFailedError,
)
from pftls_hook.fsutil import atomic_write
from pftls_hook.outcome import Outcome

if TYPE_CHECKING:
    from pftls_hook.status import Report

log = logging.getLogger("pftls-hook")

# Every result a deploy attempt can have; all are exported from the start, at 0, so that
# `increase()` sees the first one.
RESULTS = (
    "deployed",
    "unchanged",
    "reloaded",
    "installed_not_running",
    "not_settled",
    "refused",
    "rolled_back",
    "rollback_failed",
    "failed",
)
SOURCES = ("live", "installed", "served")


@dataclass(frozen=True)
class CertificateExpiry:
    lineage: str
    source: str  # one of SOURCES
    endpoint: str  # the probe endpoint for "served", "" otherwise
    not_after: float  # seconds since the epoch


@dataclass(frozen=True)
class EndpointCheck:
    endpoint: str
    serves_installed: bool  # False too when the probe failed: the alert is the same


@dataclass
class Counters:
    """What outlives a process: deploys by result, the last attempt, last successes."""

    deploys: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESULTS, 0))
    last_attempt: float = 0.0
    last_success: dict[str, float] = field(default_factory=dict)  # lineage -> time


@dataclass(frozen=True)
class Snapshot:
    certificates: tuple[CertificateExpiry, ...]
    endpoints: tuple[EndpointCheck, ...]
    unreadable: tuple[str, ...]  # lineages whose live certificate cannot be read
    counters: Counters
    # DANE target (`_25._tcp.host.`) -> 1 the served chains match its published TLSA records,
    # 0 they match none (DANE senders cannot deliver); targets without records or whose
    # lookup failed are left out: nothing to say about them.
    tlsa: tuple[tuple[str, bool], ...] = ()


# ------------------------------------------------------------------------- pure rendering


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _sample(name: str, labels: Mapping[str, str], value: float) -> str:
    inner = ",".join(f'{key}="{_escape(text)}"' for key, text in labels.items())
    number = repr(float(value)) if value != int(value) else str(int(value))
    return f"{name}{{{inner}}} {number}" if inner else f"{name} {number}"


def _family(name: str, kind: str, help_text: str, samples: list[str]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]


def render(snapshot: Snapshot) -> str:
    c = snapshot.counters
    lines = [
        *_family(
            "pftls_certificate_not_after_timestamp_seconds",
            "gauge",
            "Not-after time of a certificate: live (certbot's lineage), installed (the file"
            " Postfix is pointed at), served (what a probe endpoint answers with).",
            [
                _sample(
                    "pftls_certificate_not_after_timestamp_seconds",
                    {"lineage": e.lineage, "source": e.source, "endpoint": e.endpoint},
                    e.not_after,
                )
                for e in snapshot.certificates
            ],
        ),
        *_family(
            "pftls_served_matches_installed",
            "gauge",
            "1 if the probe endpoint serves the installed certificate, 0 if it serves another"
            " one or cannot be probed.",
            [
                _sample(
                    "pftls_served_matches_installed",
                    {"endpoint": e.endpoint},
                    int(e.serves_installed),
                )
                for e in snapshot.endpoints
            ],
        ),
        *_family(
            "pftls_lineage_read_error",
            "gauge",
            "1 if the lineage's live certificate cannot be read or is refused.",
            [_sample("pftls_lineage_read_error", {"lineage": n}, 1) for n in snapshot.unreadable],
        ),
        *_family(
            "pftls_dane_tlsa_match",
            "gauge",
            "1 if every chain Postfix serves matches a published TLSA record of the DANE"
            " target, 0 if not (DANE-validating senders cannot deliver).",
            [_sample("pftls_dane_tlsa_match", {"target": t}, int(ok)) for t, ok in snapshot.tlsa],
        ),
        *_family(
            "pftls_deploys_total",
            "counter",
            "Deploy attempts by result, from every entry point (hook, daemon, install).",
            [_sample("pftls_deploys_total", {"result": r}, n) for r, n in c.deploys.items()],
        ),
        *_family(
            "pftls_deploy_last_attempt_timestamp_seconds",
            "gauge",
            "When the last deploy attempt ended (0: none yet).",
            [_sample("pftls_deploy_last_attempt_timestamp_seconds", {}, c.last_attempt)],
        ),
        *_family(
            "pftls_deploy_last_success_timestamp_seconds",
            "gauge",
            "When a deploy of the lineage last ended with its certificate installed and served.",
            [
                _sample("pftls_deploy_last_success_timestamp_seconds", {"lineage": n}, at)
                for n, at in sorted(c.last_success.items())
            ],
        ),
        *_family(
            "pftls_build_info",
            "gauge",
            "The pftls-hook version that wrote this file.",
            [_sample("pftls_build_info", {"version": __version__}, 1)],
        ),
    ]
    return "\n".join(lines) + "\n"


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def from_report(report: Report, counters: Counters) -> Snapshot:
    """The metrics of a `status.collect` report: one reading of live, installed, served."""
    certificates: list[CertificateExpiry] = []
    unreadable: list[str] = []
    chosen = ""
    for entry in report.lineages:
        if entry.serves_postfix:
            chosen = entry.name
        if entry.live.cert:
            certificates.append(
                CertificateExpiry(entry.name, "live", "", _epoch(entry.live.cert.not_after))
            )
        else:
            unreadable.append(entry.name)
    # What each chain has installed and serves: with several chains (ECDSA and RSA, SNI
    # names) the probes offering each chain's algorithm and name, so that each endpoint is
    # compared with its own chain's file, not with another algorithm's.
    per_chain = [(c.lineage, c.installed, c.served) for c in report.chains]
    if not per_chain:
        installed = report.installed
        # The installed file is named after its lineage (`<name>.pem`, `<name>.<stamp>.crt`):
        # that names it even when no lineage qualifies now (a refused renewal of it).
        installed_name = Path(installed.file).name
        owners = [e.name for e in report.lineages if installed_name.startswith(f"{e.name}.")]
        per_chain = [(max(owners, key=len, default=chosen), installed, report.served)]
    endpoints: list[EndpointCheck] = []
    counted: set[str] = set()  # a lineage serving several SNI names has one installed file
    for owner, installed, served in per_chain:
        if installed.cert and owner not in counted:
            counted.add(owner)
            certificates.append(
                CertificateExpiry(owner, "installed", "", _epoch(installed.cert.not_after))
            )
        for where, seen in served.items():
            if seen.cert:
                certificates.append(
                    CertificateExpiry(owner, "served", where, _epoch(seen.cert.not_after))
                )
            matches = bool(
                seen.cert and installed.cert and seen.cert.sha256 == installed.cert.sha256
            )
            endpoints.append(EndpointCheck(where, matches))
    tlsa = tuple(
        (t.owner, bool(t.served_matches) and not t.unmatched_chains)
        for t in (report.dane.targets if report.dane else ())
        if not t.error and t.usable_published
    )
    return Snapshot(tuple(certificates), tuple(endpoints), tuple(unreadable), counters, tlsa)


# --------------------------------------------------------------------------- the files


def counters_file(metrics_file: Path) -> Path:
    return metrics_file.with_name(f".{metrics_file.name}.counters.json")


def _read_counters(path: Path) -> Counters:
    counters = Counters()
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return counters
    except (OSError, ValueError) as exc:
        # Counters restart at 0: Prometheus's rate() and increase() handle a reset.
        log.warning("%s: unreadable, counters start again at 0: %s", path, exc)
        return counters
    if not isinstance(raw, dict):
        log.warning("%s: not a JSON object, counters start again at 0", path)
        return counters
    # Entries of the wrong type are dropped one by one: the file is ours, but a hand edit
    # or a bad disk must not cost every other count.
    deploys, successes = raw.get("deploys"), raw.get("last_success")
    for result, count in deploys.items() if isinstance(deploys, dict) else ():
        if result in counters.deploys and isinstance(count, int) and count >= 0:
            counters.deploys[result] = count
    if isinstance(raw.get("last_attempt"), int | float):
        counters.last_attempt = float(raw["last_attempt"])
    for name, at in successes.items() if isinstance(successes, dict) else ():
        if isinstance(name, str) and isinstance(at, int | float):
            counters.last_success[name] = float(at)
    return counters


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise writers of one metrics directory (flock on the directory itself)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _result(outcome: Outcome | None, error: BaseException | None) -> str:
    if outcome is not None:
        action = outcome.action.replace("-", "_")
        return action if action in RESULTS else "deployed"
    if isinstance(error, NotSettledError):
        return "not_settled"
    if isinstance(error, RefusedError):
        return "refused"
    if isinstance(error, DeployFailedError):
        return "rolled_back"
    if isinstance(error, RollbackFailedError):
        return "rollback_failed"
    return "failed"


def _update(
    deployer: Deployer,
    report: Report | None,
    attempts: Sequence[tuple[str, str]],  # (lineage, result) of each deploy attempt to count
) -> None:
    path = deployer.settings.metrics_file
    if path is None:
        return
    try:
        if report is None:
            from pftls_hook import status  # noqa: PLC0415 - status imports the deploy core

            report = status.collect(deployer)
        with _locked(path.parent):
            store = counters_file(path)
            counters = _read_counters(store)
            now = time.time()
            for lineage, result in attempts:
                counters.deploys[result] += 1
                counters.last_attempt = now
                if result in ("deployed", "unchanged", "reloaded"):
                    counters.last_success[lineage] = now
            if attempts:
                payload = {
                    "deploys": counters.deploys,
                    "last_attempt": counters.last_attempt,
                    "last_success": counters.last_success,
                }
                atomic_write(store, json.dumps(payload, sort_keys=True).encode() + b"\n", 0o644)
            atomic_write(path, render(from_report(report, counters)).encode(), 0o644)
    except (OSError, PftlsError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        log.warning("%s: metrics not written: %s", path, reason)


def deploy(deployer: Deployer, name: str | None, *, only_if_ours: bool = False) -> Outcome:
    """`deployer.deploy(...)`; with a metrics file, the attempt is counted and reported. A
    lineage skipped as none of Postfix's business is no attempt: nothing is counted."""
    if deployer.settings.metrics_file is None or deployer.settings.dry_run:
        return deployer.deploy(name, only_if_ours=only_if_ours)
    try:
        outcome = deployer.deploy(name, only_if_ours=only_if_ours)
    except (PftlsError, OSError) as exc:
        _update(deployer, None, [(name or "", _result(None, exc))])
        raise
    if outcome.action != "skipped":
        _update(deployer, None, [(outcome.lineage, _result(outcome, None))])
    return outcome


def deploy_all(deployer: Deployer) -> list[Outcome]:
    """`deployer.deploy_all()` (every selected chain), each lineage's attempt counted."""
    if deployer.settings.metrics_file is None or deployer.settings.dry_run:
        return deployer.deploy_all()
    try:
        outcomes = deployer.deploy_all()
    except (PftlsError, OSError) as exc:
        _update(deployer, None, [("", _result(None, exc))])
        raise
    _update(deployer, None, [(o.lineage, _result(o, o.error)) for o in outcomes])
    return outcomes


def refresh(deployer: Deployer, report: Report | None = None) -> None:
    """Rewrite the metrics file from `report` (or a fresh look), counting nothing."""
    _update(deployer, report, [])
