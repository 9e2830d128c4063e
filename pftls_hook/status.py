"""What is live, what is installed, what is served: a read-only report.

Contract: `collect(deployer)` returns a JSON-ready dict; `render(report)` the text form.
It changes nothing and takes no lock: an admin must be able to look while a deploy runs.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from pftls_hook import probe
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


def _installed_files(deployer: Deployer, effective: dict[str, str]) -> list[str]:
    if effective.get("smtpd_tls_chain_files", "").strip():
        return effective["smtpd_tls_chain_files"].replace(",", " ").split()
    return [f for f in (effective.get("smtpd_tls_cert_file", ""),) if f]


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
    for path in _installed_files(deployer, dict(ctx.state.effective)):
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
    return "\n".join(lines)
