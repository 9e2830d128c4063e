"""What is live, what is installed, what is served: a read-only report.

Contract: `collect(deployer)` returns a `Report` (dataclasses; `to_json` serialises it);
`render(report)` the text form; `check(report)` the monitoring-plugins verdict (state and
one line with perfdata). It changes nothing and takes no lock: an admin must be able to
look while a deploy runs. The watch daemon's state shown is the one of this configuration.
With several chains (one per key algorithm, SNI names) the report also holds one
`ChainReport` per chain: the names and algorithm it serves, live / installed / served (each
endpoint probed by a client offering only that algorithm, with the SNI name), and
`status --check` judges every chain, the worst one deciding.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

from cryptography import x509

from pftls_hook import probe, tlsa
from pftls_hook.config import Endpoint
from pftls_hook.daemon import state as watchstate
from pftls_hook.deploy import Context, Deployer
from pftls_hook.errors import PftlsError, ProbeError, TlsBrokenError
from pftls_hook.lineage import DirChecks, list_lineages, read_lineage
from pftls_hook.pem import WARN_DAYS
from pftls_hook.postfix import MANAGED
from pftls_hook.select import Chain, leaf_of
from pftls_hook.verify import dns_names, leaf_sha256, parse_certificates


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


@dataclass(frozen=True)
class ChainReport:
    """One chain Postfix serves: a lineage, for one key algorithm, to clients asking for
    `sni` (None: the default chains, for the required hostnames)."""

    lineage: str
    algorithm: str
    sni: str | None
    live: Seen
    installed: Seen
    served: dict[str, Seen]

    @property
    def label(self) -> str:
        return f"{self.lineage} ({self.algorithm}, {f'SNI {self.sni}' if self.sni else 'default'})"


@dataclass
class Report:
    lineages: list[LineageReport]
    installed: Seen
    served: dict[str, Seen]
    main_cf: dict[str, str]
    master_cf_overrides: list[str]
    warnings: list[str]
    watch: watchstate.WatchState | None = field(default=None)
    chains: list[ChainReport] = field(default_factory=list)  # several chains or SNI only
    dane: tlsa.TlsaReport | None = field(default=None)  # None with --dane off


def _live(deployer: Deployer, name: str, now: datetime, checks: DirChecks) -> Seen:
    try:
        # The whole lineage, not cert.pem alone: a broken key or chain link must show here
        # (and in the metrics' read-error gauge), as every deploy of it would be refused.
        snap = read_lineage(deployer.settings.live_dir / name, settle_timeout=1, checks=checks)
        leaf = parse_certificates(snap.files.cert, "cert.pem")[0]
        return Seen(Cert.of(leaf, now), version=snap.version)
    except PftlsError as exc:
        return Seen(error=str(exc))


def _installed(path: str, now: datetime) -> Seen:
    """The certificate in an installed file (the first after the key), or why not."""
    try:
        data = Path(path).read_bytes()
        start = data.find(b"-----BEGIN CERTIFICATE-----")
        if start < 0:
            return Seen(error="no certificate in it", file=path)
        return Seen(Cert.of(parse_certificates(data[start:], path)[0], now), file=path)
    except (OSError, PftlsError) as exc:
        return Seen(error=str(exc), file=path)


def _served(endpoints: Sequence[Endpoint], timeout: float, now: datetime) -> dict[str, Seen]:
    seen = {}
    for endpoint, got in probe.fetch_all(endpoints, timeout=timeout).items():
        if isinstance(got, ProbeError):
            seen[str(endpoint)] = Seen(error=str(got), tls_broken=isinstance(got, TlsBrokenError))
        else:
            seen[str(endpoint)] = Seen(Cert.of(x509.load_der_x509_certificate(got), now))
    return seen


def _chains(
    deployer: Deployer, ctx: Context, live: dict[str, Seen], now: datetime
) -> list[ChainReport]:
    selection = ctx.selection
    targets: list[tuple[str | None, Chain]] = [(None, c) for c in selection.chains]
    targets += [(name, c) for name, chains in selection.sni for c in chains]
    probes = {
        (sni, chain): [replace(e, algorithm=chain.algorithm, servername=sni) for e in ctx.endpoints]
        for sni, chain in targets
    }
    every = [e for endpoints in probes.values() for e in endpoints]
    served = _served(every, deployer.settings.probe_timeout, now)  # all at once, a few at a time
    reports = []
    for sni, chain in targets:
        path = str(deployer.install_dir.path / f"{chain.lineage}.pem")
        listed = ctx.state.pointed_files() if sni is None else ctx.sni_table.get(sni, [])
        installed = _installed(path, now) if path in listed else Seen(error="not deployed yet")
        mine = {str(e): served[str(e)] for e in probes[sni, chain]}
        seen = live.get(chain.lineage, Seen(error="not in the live dir"))
        reports.append(ChainReport(chain.lineage, chain.algorithm, sni, seen, installed, mine))
    return reports


def _chain_warnings(chain: ChainReport) -> list[str]:
    live, installed = chain.live.cert, chain.installed.cert
    warnings = []
    if live and installed and installed.sha256 != live.sha256:
        warnings.append(f"{chain.label}: the installed certificate is not the live one")
    for where, seen in chain.served.items():
        if seen.cert and installed and seen.cert.sha256 != installed.sha256:
            warnings.append(f"{where} serves a certificate other than the installed one")
    return warnings


def collect(deployer: Deployer) -> Report:
    now = deployer.clock()
    ctx = deployer.context()
    warnings = list(ctx.notes)
    chosen = ctx.selection.lineage
    if chosen is None:
        warnings.append(ctx.selection.why_none)
    selected = ctx.selection.lineages
    checks = DirChecks()
    lineages = [
        LineageReport(name, name in selected, _live(deployer, name, now, checks))
        for name in list_lineages(deployer.settings.live_dir)
    ]
    installed = Seen()
    for path in ctx.state.pointed_files():
        installed = _installed(path, now)
    served = _served(ctx.endpoints, deployer.settings.probe_timeout, now)
    chains: list[ChainReport] = []
    if ctx.selection.several:
        chains = _chains(deployer, ctx, {lr.name: lr.live for lr in lineages}, now)
        for chain in chains:
            warnings += _chain_warnings(chain)

    live = next((lr.live.cert for lr in lineages if lr.name == chosen and lr.live.cert), None)
    if chosen is not None and live is None:
        with contextlib.suppress(PftlsError):  # unsettled now: its leaf tells what to serve
            live = Cert.of(leaf_of(deployer.settings, chosen), now)
    if not chains and live and installed.cert and installed.cert.sha256 != live.sha256:
        warnings.append(f"installed certificate is not the live one of {chosen}")
    for where, seen in served.items():
        if (
            not chains
            and seen.cert
            and installed.cert
            and seen.cert.sha256 != installed.cert.sha256
        ):
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
        chains=chains,
        dane=tlsa.status(deployer, ctx),
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
    for chain in report.chains:
        lines.append(f"chain {chain.label}")
        lines.append(f"  live:      {_cert_line(chain.live)}")
        lines.append(f"  installed: {chain.installed.file or '-'}")
        lines.append(f"    {_cert_line(chain.installed)}")
        lines.extend(f"  served {w}: {_cert_line(seen)}" for w, seen in chain.served.items())
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
    lineage, Postfix unreachable, nothing to probe). With several chains each is judged so,
    and the worst decides (CRITICAL, then UNKNOWN, then WARNING). DANE (tlsa.worst) may raise
    it: CRITICAL when no published record matches, WARNING while a renewal is held back."""
    # A renewal DANE holds back: the installed certificate is the one to serve (tlsa.worst
    # says WARNING, with the record to publish), not a CRITICAL "not the live one".
    held = report.dane.held_lineages if report.dane else set()

    def excused(lineage: str, installed: Seen) -> str:
        return installed.cert.sha256 if lineage in held and installed.cert else ""

    if report.chains:
        verdicts = [
            _verdict(
                c.label,
                c.live,
                c.served,
                [],
                warn=warning_days,
                crit=critical_days,
                excused=excused(c.lineage, c.installed),
            )
            for c in report.chains
        ]
        state, text, days = max(verdicts, key=lambda v: _SEVERITY.index(v[0]))
        lows = [v[2] for v in verdicts if v[2] is not None]
        days = min(lows) if lows else None
        if state in ("OK", "WARNING") and days is not None:
            text = f"Postfix serves the live certificate of all {len(verdicts)} chains"
            text += f", {days} days left"
    else:
        lineage = next((e for e in report.lineages if e.serves_postfix), None)
        name, live = (lineage.name, lineage.live) if lineage else ("", None)
        state, text, days = _verdict(
            name,
            live,
            report.served,
            report.warnings,
            warn=warning_days,
            crit=critical_days,
            excused=excused(name, report.installed),
        )
    perf = f"days_left={days};{warning_days}:;{critical_days}:" if days is not None else ""
    state, text, perf = tlsa.worst((state, text, perf), report.dane)
    # `|` starts the perfdata: keep it out of the text.
    line = f"PFTLS-HOOK {state}: {text.replace('|', '/')}"
    return state, f"{line} | {perf}" if perf else line


_SEVERITY = ("OK", "WARNING", "UNKNOWN", "CRITICAL")


def _verdict(  # noqa: PLR0911 - one return per state, in order of precedence
    name: str,
    lineage: Seen | None,
    served: dict[str, Seen],
    warnings: list[str],
    *,
    warn: int,
    crit: int,
    excused: str = "",  # a served sha256 that is right although not the live one (DANE)
) -> tuple[str, str, int | None]:
    """One lineage (`lineage`: its live certificate; None: none selected) against what
    its endpoints serve: the state, the text, and the fewest days left served."""
    if lineage is None:
        why = "; ".join(warnings) or "no lineage under the live dir"
        return "UNKNOWN", f"no lineage selected for Postfix: {why}", None
    live = lineage.cert
    if live is None:
        return "UNKNOWN", f"{name}: {lineage.error or 'cannot read'}", None
    if not served:
        return "UNKNOWN", f"{name}: no endpoint to probe (--no-probe or no TLS service)", None
    critical: list[str] = []
    unknown: list[str] = []
    days: list[int] = []
    for where, seen in served.items():
        if seen.cert is None:
            (critical if seen.tls_broken else unknown).append(seen.error)
            continue
        days.append(seen.cert.days_left)
        if seen.cert.sha256 not in (live.sha256, excused):
            critical.append(
                f"{where} serves sha256 {seen.cert.sha256[:16]}, not the live certificate of "
                f"{name} (sha256 {live.sha256[:16]})"
            )
    # The nagios range `N:` alerts below N, matching the states below.
    least = min(days) if days else None
    if critical:
        return "CRITICAL", "; ".join(critical), least
    if least is not None and least < crit:
        return "CRITICAL", f"{name}: the served certificate expires in {least} days", least
    if unknown or least is None:
        return "UNKNOWN", f"cannot reach Postfix: {'; '.join(unknown)}", least
    text = f"Postfix serves the live certificate of {name} on {len(days)} endpoint(s)"
    if least < warn:
        return "WARNING", f"{text}, {least} days left", least
    return "OK", f"{text}, {least} days left", least
