"""What is live, what is installed, what is served: a read-only report.

Contract: `collect(deployer)` returns a `Report` (dataclasses; `to_json` serialises it);
`render(report)` the text form; `check(report)` the monitoring-plugins verdict (state and
one line with perfdata). It changes nothing and takes no lock: an admin must be able to
look while a deploy runs. The watch daemon's state shown is the one of this configuration.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509

from pftls_hook import probe, tlsa
from pftls_hook.daemon import state as watchstate
from pftls_hook.deploy import Deployer
from pftls_hook.errors import PftlsError, ProbeError, TlsBrokenError
from pftls_hook.lineage import list_lineages, read_lineage
from pftls_hook.postfix import MANAGED
from pftls_hook.select import leaf_of
from pftls_hook.verify import WARN_DAYS, dns_names, leaf_sha256, parse_certificates


@dataclass(frozen=True)
class Cert:
    subject: str
    names: list[str]
    serial: str
    not_after: str
    days_left: int
    sha256: str

    @classmethod
    def of(cls, cert: x509.Certificate, now: datetime) -> Cert:
        return cls(
            subject=cert.subject.rfc4514_string(),
            names=dns_names(cert),
            serial=f"{cert.serial_number:x}",
            not_after=cert.not_valid_after_utc.isoformat(),
            days_left=(cert.not_valid_after_utc - now).days,
            sha256=leaf_sha256(cert),
        )


@dataclass(frozen=True)
class Seen:
    """A certificate as seen somewhere (live, installed, served), or why it was not."""

    cert: Cert | None = None
    error: str = ""
    tls_broken: bool = False  # served only: Postfix answered but TLS failed (clients see it)
    version: int | None = None  # live only: the archive version the links point at
    file: str = ""  # installed only


@dataclass(frozen=True)
class LineageReport:
    name: str
    serves_postfix: bool
    live: Seen


@dataclass
class Report:
    lineages: list[LineageReport]
    installed: Seen
    served: dict[str, Seen]
    main_cf: dict[str, str]
    master_cf_overrides: list[str]
    warnings: list[str]
    watch: watchstate.WatchState | None = field(default=None)
    dane: tlsa.TlsaReport | None = field(default=None)  # None with --dane off


def _live(deployer: Deployer, name: str, now: datetime) -> Seen:
    try:
        snap = read_lineage(deployer.settings.live_dir / name, settle_timeout=1)
        leaf = parse_certificates(snap.files.cert, "cert.pem")[0]
        return Seen(Cert.of(leaf, now), version=snap.version)
    except PftlsError as exc:
        return Seen(error=str(exc))


def collect(deployer: Deployer) -> Report:
    now = deployer.clock()
    ctx = deployer.context()
    warnings = list(ctx.notes)
    chosen = ctx.selection.lineage
    if chosen is None:
        warnings.append(ctx.selection.why_none)
    lineages = [
        LineageReport(name, name == chosen, _live(deployer, name, now))
        for name in list_lineages(deployer.settings.live_dir)
    ]
    installed = Seen()
    for path in ctx.state.pointed_files():
        try:
            data = Path(path).read_bytes()
            start = data.find(b"-----BEGIN CERTIFICATE-----")
            if start >= 0:
                leaf = parse_certificates(data[start:], path)[0]
                installed = Seen(Cert.of(leaf, now), file=path)
        except (OSError, PftlsError) as exc:
            installed = Seen(error=str(exc), file=path)
    served = {}
    for endpoint in ctx.endpoints:
        try:
            der = probe.fetch(endpoint, timeout=deployer.settings.probe_timeout)
            served[str(endpoint)] = Seen(Cert.of(x509.load_der_x509_certificate(der), now))
        except ProbeError as exc:
            served[str(endpoint)] = Seen(error=str(exc), tls_broken=isinstance(exc, TlsBrokenError))

    live = next((lr.live.cert for lr in lineages if lr.serves_postfix and lr.live.cert), None)
    if chosen is not None and live is None:
        with contextlib.suppress(PftlsError):  # unsettled now: its leaf tells what to serve
            live = Cert.of(leaf_of(deployer.settings, chosen), now)
    if live and installed.cert and installed.cert.sha256 != live.sha256:
        warnings.append(f"installed certificate is not the live one of {chosen}")
    for where, seen in served.items():
        if seen.cert and installed.cert and seen.cert.sha256 != installed.cert.sha256:
            warnings.append(f"{where} serves a certificate other than the installed one")
        if seen.cert and seen.cert.days_left < WARN_DAYS:
            warnings.append(f"{where} serves a certificate with {seen.cert.days_left} days left")
    return Report(
        lineages=lineages,
        installed=installed,
        served=served,
        main_cf={k: ctx.state.effective.get(k, "") for k in MANAGED},
        master_cf_overrides=[str(o) for o in ctx.state.tls_overrides()],
        warnings=warnings,
        watch=watchstate.read(watchstate.state_file(deployer.settings)),
        dane=tlsa.status(deployer, chosen),
    )


def to_json(report: Report) -> str:
    data = asdict(report)
    data["dane"] = tlsa.as_json(report.dane) if report.dane else None
    return json.dumps(data, indent=2)


def _cert_line(seen: Seen) -> str:
    cert = seen.cert
    if cert is None:
        return f"ERROR {seen.error}"
    return (
        f"{', '.join(cert.names)}  serial {cert.serial}  not after {cert.not_after}"
        f" ({cert.days_left} days)  sha256 {cert.sha256[:16]}…"
    )


def render(report: Report) -> str:
    lines = []
    for entry in report.lineages:
        mark = " (serves Postfix)" if entry.serves_postfix else ""
        lines.append(f"lineage {entry.name}{mark}")
        lines.append(f"  live:      {_cert_line(entry.live)}")
    lines.append(f"installed:   {report.installed.file or '-'}")
    if report.installed.file:
        lines.append(f"  {_cert_line(report.installed)}")
    for where, seen in report.served.items():
        lines.append(f"served {where}: {_cert_line(seen)}")
    for key, value in report.main_cf.items():
        lines.append(f"main.cf {key} = {value}")
    lines.extend(report.master_cf_overrides)
    lines.extend(f"warning: {w}" for w in report.warnings)
    lines.extend(tlsa.status_lines(report.dane))
    lines.extend(watchstate.render(report.watch))
    return "\n".join(lines)


# ------------------------------------------------------- status --check (monitoring plugin)

CHECK_STATES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
WARNING_DAYS, CRITICAL_DAYS = 21, 7


def check(
    report: Report, *, warning_days: int = WARNING_DAYS, critical_days: int = CRITICAL_DAYS
) -> tuple[str, str]:
    """The monitoring-plugins verdict on a report: a state from CHECK_STATES and one summary
    line with perfdata. CRITICAL: an endpoint serves a certificate other than the live one of
    the lineage that serves Postfix, or fails TLS, or the served certificate has fewer than
    `critical_days` left; WARNING: fewer than `warning_days`; UNKNOWN: it cannot tell (no
    lineage, Postfix unreachable, nothing to probe). DANE (tlsa.worst) may raise it:
    CRITICAL when no published record matches, WARNING while a renewal is held back."""
    state, text, perf = tlsa.worst(_verdict(report, warning_days, critical_days), report.dane)
    # `|` starts the perfdata: keep it out of the text.
    line = f"PFTLS-HOOK {state}: {text.replace('|', '/')}"
    return state, f"{line} | {perf}" if perf else line


def _verdict(  # noqa: PLR0911 - one return per state, in order of precedence
    report: Report, warn: int, crit: int
) -> tuple[str, str, str]:
    lineage = next((e for e in report.lineages if e.serves_postfix), None)
    if lineage is None:
        why = "; ".join(report.warnings) or "no lineage under the live dir"
        return "UNKNOWN", f"no lineage selected for Postfix: {why}", ""
    name, live = lineage.name, lineage.live.cert
    if live is None:
        return "UNKNOWN", f"{name}: {lineage.live.error or 'cannot read'}", ""
    if not report.served:
        return "UNKNOWN", f"{name}: no endpoint to probe (--no-probe or no TLS service)", ""
    critical: list[str] = []
    unknown: list[str] = []
    days: list[int] = []
    # A renewal DANE holds back: the installed certificate is the one to serve (tlsa.worst
    # says WARNING, with the record to publish).
    held = bool(report.dane and report.dane.held_back)
    installed_sha = report.installed.cert.sha256 if report.installed.cert else ""
    for where, seen in report.served.items():
        if seen.cert is None:
            (critical if seen.tls_broken else unknown).append(seen.error)
            continue
        days.append(seen.cert.days_left)
        excused = held and seen.cert.sha256 == installed_sha
        if seen.cert.sha256 != live.sha256 and not excused:
            critical.append(
                f"{where} serves sha256 {seen.cert.sha256[:16]}, not the live certificate of "
                f"{name} (sha256 {live.sha256[:16]})"
            )
    # The nagios range `N:` alerts below N, matching the states below.
    perf = f"days_left={min(days)};{warn}:;{crit}:" if days else ""
    if critical:
        return "CRITICAL", "; ".join(critical), perf
    if days and min(days) < crit:
        return "CRITICAL", f"{name}: the served certificate expires in {min(days)} days", perf
    if unknown:
        return "UNKNOWN", f"cannot reach Postfix: {'; '.join(unknown)}", perf
    served = f"Postfix serves the live certificate of {name} on {len(days)} endpoint(s)"
    if min(days) < warn:
        return "WARNING", f"{served}, {min(days)} days left", perf
    return "OK", f"{served}, {min(days)} days left", perf
