"""What is live, what is installed, what is served: a read-only report.

Contract: `collect(deployer)` returns a JSON-ready dict; `render(report)` the text form;
`check(report)` the monitoring-plugins verdict (state and one line with perfdata).
It changes nothing and takes no lock: an admin must be able to look while a deploy runs.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from pftls_hook import probe, tlsa
from pftls_hook.deploy import Deployer
from pftls_hook.errors import PftlsError
from pftls_hook.lineage import list_lineages, read_lineage
from pftls_hook.postfix import MANAGED
from pftls_hook.verify import WARN_DAYS, dns_names, leaf_sha256, parse_certificates


def summary(cert: x509.Certificate, now: datetime) -> dict[str, Any]:
    left = cert.not_valid_after_utc - now
    return {
        "subject": cert.subject.rfc4514_string(),
        "names": dns_names(cert),
        "serial": f"{cert.serial_number:x}",
        "not_after": cert.not_valid_after_utc.isoformat(),
        "days_left": left.days,
        "sha256": leaf_sha256(cert),
    }


def collect(deployer: Deployer) -> dict[str, Any]:
    now = deployer.clock()
    ctx = deployer.context()
    warnings = list(ctx.notes)
    chosen = ""
    try:
        chosen = deployer.choose(ctx.hostnames)
    except PftlsError as exc:
        warnings.append(str(exc))
    lineages = []
    for name in list_lineages(deployer.settings.live_dir):
        entry: dict[str, Any] = {"name": name, "serves_postfix": name == chosen}
        try:
            snap = read_lineage(deployer.settings.live_dir / name, settle_timeout=1)
            entry["version"] = snap.version
            entry["live"] = summary(parse_certificates(snap.files.cert, "cert.pem")[0], now)
        except PftlsError as exc:
            entry["error"] = str(exc)
        lineages.append(entry)

    installed: dict[str, Any] = {}
    for path in ctx.state.pointed_files():
        try:
            data = Path(path).read_bytes()
            start = data.find(b"-----BEGIN CERTIFICATE-----")
            if start >= 0:
                leaf = parse_certificates(data[start:], path)[0]
                installed = {"file": path, **summary(leaf, now)}
        except (OSError, PftlsError) as exc:
            installed = {"file": path, "error": str(exc)}

    served: dict[str, Any] = {}
    for endpoint in ctx.endpoints:
        try:
            der = probe.fetch(endpoint, timeout=deployer.settings.probe_timeout)
            served[str(endpoint)] = summary(x509.load_der_x509_certificate(der), now)
        except probe.ProbeError as exc:
            served[str(endpoint)] = {"error": str(exc)}

    live_sha = next(
        (e["live"]["sha256"] for e in lineages if e["serves_postfix"] and "live" in e), ""
    )
    if live_sha and installed.get("sha256") != live_sha:
        warnings.append(f"installed certificate is not the live one of {chosen}")
    for where, seen in served.items():
        if "sha256" in seen and installed.get("sha256") and seen["sha256"] != installed["sha256"]:
            warnings.append(f"{where} serves a certificate other than the installed one")
        if "days_left" in seen and seen["days_left"] < WARN_DAYS:
            warnings.append(f"{where} serves a certificate with {seen['days_left']} days left")
    return {
        "lineages": lineages,
        "installed": installed,
        "served": served,
        "main_cf": {k: ctx.state.effective.get(k, "") for k in MANAGED},
        "master_cf_overrides": [str(o) for o in ctx.state.tls_overrides()],
        "warnings": warnings,
        "dane": tlsa.status(deployer, chosen or None),
    }


def _cert_line(info: dict[str, Any]) -> str:
    if "error" in info:
        return f"ERROR {info['error']}"
    return (
        f"{', '.join(info['names'])}  serial {info['serial']}  not after {info['not_after']}"
        f" ({info['days_left']} days)  sha256 {info['sha256'][:16]}…"
    )


def render(report: dict[str, Any]) -> str:
    lines = []
    for entry in report["lineages"]:
        mark = " (serves Postfix)" if entry["serves_postfix"] else ""
        lines.append(f"lineage {entry['name']}{mark}")
        lines.append(f"  live:      {_cert_line(entry.get('live') or entry)}")
    installed = report["installed"]
    lines.append(f"installed:   {installed.get('file', '-')}")
    if installed:
        lines.append(f"  {_cert_line(installed)}")
    for where, info in report["served"].items():
        lines.append(f"served {where}: {_cert_line(info)}")
    for key, value in report["main_cf"].items():
        lines.append(f"main.cf {key} = {value}")
    lines.extend(report["master_cf_overrides"])
    lines.extend(f"warning: {w}" for w in report["warnings"])
    lines.extend(tlsa.status_lines(report.get("dane")))
    return "\n".join(lines)


# ------------------------------------------------------- status --check (monitoring plugin)

CHECK_STATES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
WARNING_DAYS, CRITICAL_DAYS = 21, 7
# What a ProbeError says when Postfix answered but TLS is broken (probe.py's messages),
# as opposed to Postfix not answering at all, where the check cannot tell.
_TLS_BROKEN = ("454", "STARTTLS not offered", "STARTTLS answered", "SSLError", "no certificate")


def check(
    report: dict[str, Any], *, warning_days: int = WARNING_DAYS, critical_days: int = CRITICAL_DAYS
) -> tuple[str, str]:
    """The monitoring-plugins verdict on a `collect` report: a state from CHECK_STATES and
    one summary line with perfdata. CRITICAL: an endpoint serves a certificate other than
    the live one of the lineage that serves Postfix, or fails TLS, or the served certificate
    has fewer than `critical_days` left; WARNING: fewer than `warning_days`; UNKNOWN: it
    cannot tell (no lineage, Postfix unreachable, nothing to probe). DANE (tlsa.worst)
    may raise it: CRITICAL no published record matches, WARNING a renewal held back."""
    state, text, perf = tlsa.worst(
        _verdict(report, warning_days, critical_days), report.get("dane")
    )
    # `|` starts the perfdata: keep it out of the text.
    line = f"PFTLS-HOOK {state}: {text.replace('|', '/')}"
    return state, f"{line} | {perf}" if perf else line


def _verdict(  # noqa: PLR0911 - one return per state, in order of precedence
    report: dict[str, Any], warn: int, crit: int
) -> tuple[str, str, str]:
    lineage = next((e for e in report["lineages"] if e["serves_postfix"]), None)
    if lineage is None:
        why = "; ".join(report["warnings"]) or "no lineage under the live dir"
        return "UNKNOWN", f"no lineage selected for Postfix: {why}", ""
    name = lineage["name"]
    if "live" not in lineage:
        return "UNKNOWN", f"{name}: {lineage.get('error', 'cannot read')}", ""
    live = lineage["live"]
    if not report["served"]:
        return "UNKNOWN", f"{name}: no endpoint to probe (--no-probe or no TLS service)", ""
    critical: list[str] = []
    unknown: list[str] = []
    days: list[int] = []
    # A renewal DANE holds back: the installed certificate is the one to serve (tlsa.worst
    # says WARNING, with the record to publish).
    held = bool((report.get("dane") or {}).get("held_back"))
    for where, seen in report["served"].items():
        if "error" in seen:
            broken = any(mark in seen["error"] for mark in _TLS_BROKEN)
            (critical if broken else unknown).append(seen["error"])
            continue
        days.append(seen["days_left"])
        excused = held and seen["sha256"] == report["installed"].get("sha256")
        if seen["sha256"] != live["sha256"] and not excused:
            critical.append(
                f"{where} serves sha256 {seen['sha256'][:16]}, not the live certificate of "
                f"{name} (sha256 {live['sha256'][:16]})"
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
