"""`pftls-hook tlsa`: the TLSA records an admin should publish, compared with DNS.

Contract: `collect(deployer, name)` returns a `TlsaReport` (read-only: no lock, no change);
`render(report)` its zone-file form; `as_json(report)` its JSON form. For each
DANE target (required hostnames x dane-ports) it lists the `3 1 1` record of each key
Postfix serves, the `3 1 1` of each selected lineage's live key that Postfix does not serve
yet (the "next" record, to publish a few TTLs before that renewal can be deployed; with
ECDSA and RSA chains, one per lineage) and `2 1 1` for each issuer in those chains, each
marked published or missing; and any published record that matches no key or issuer we
serve or hold, marked stale. `held_back` (with the lineages it holds) and `broken` are what
`status --check` judges.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography import x509

from pftls_hook import dane
from pftls_hook.config import Settings
from pftls_hook.dane_dns import lookup
from pftls_hook.deploy import Context, Deployer
from pftls_hook.errors import DaneLookupError, PftlsError
from pftls_hook.lineage import read_lineage
from pftls_hook.verify import parse_certificates


@dataclass(frozen=True)
class RecordState:
    line: str  # the zone-file line
    role: str  # served key | next key | served issuer | next issuer
    state: str  # published | missing | unknown (the lookup failed)


@dataclass(frozen=True)
class TargetReport:
    owner: str
    canonical: str = ""
    authenticated: bool = False
    error: str = ""
    records: tuple[RecordState, ...] = ()
    stale: tuple[str, ...] = ()
    usable_published: int = 0
    pins_key: bool = False  # 3 1 x records are published: a new key breaks them
    served_matches: str = ""  # the published record the served chain matches, if any
    unmatched_chains: int = 0  # other chains served (ECDSA beside RSA) that match none
    # (lineage, its next 3 1 1 line) for each live chain not served yet that no usable
    # record matches: the deploy guard refuses it until that line is published
    held: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TlsaReport:
    lineage: str  # the lineages looked at, comma-separated
    targets: tuple[TargetReport, ...]
    next_differs: bool  # a live key or chain is not what Postfix serves
    warnings: tuple[str, ...] = field(default=())

    @property
    def broken(self) -> list[str]:
        """Targets whose usable records a served chain does not match: DANE senders
        (those given that chain) cannot deliver now."""
        return [
            t.owner
            for t in self.targets
            if not t.error and t.usable_published and (not t.served_matches or t.unmatched_chains)
        ]

    @property
    def held_back(self) -> list[str]:
        """Zone-file lines to publish before the live certificates can be deployed."""
        return [line for t in self.targets for _, line in t.held]

    @property
    def held_lineages(self) -> set[str]:
        """The lineages whose renewal waits for a record (their installed version stays)."""
        return {name for t in self.targets for name, _ in t.held}


def _chain(data: bytes, file: str) -> list[x509.Certificate]:
    try:
        return parse_certificates(data, file)
    except PftlsError:
        return []


def _target(
    target: dane.Target,
    chains: list[list[x509.Certificate]],
    nexts: dict[str, list[x509.Certificate]],
    settings: Settings,
) -> TargetReport:
    served = chains[0] if chains else []
    next_records = {name: dane.records_for(chain) for name, chain in nexts.items()}
    ours: list[tuple[str, dane.Tlsa]] = []
    roles = [
        *(("served", dane.records_for(c)) for c in chains),
        *(("next", records) for records in next_records.values()),
    ]
    for role, records in roles:
        for i, record in enumerate(records):
            ours.append((f"{role} {'key' if i == 0 else 'issuer'}", record))
    try:
        answer = lookup(target, settings.dns_resolvers)
    except DaneLookupError as exc:
        states = tuple(RecordState(target.record(r), role, "unknown") for role, r in ours)
        return TargetReport(target.owner, error=str(exc), records=states)
    published = set(answer.records)
    held = [*chains, *nexts.values()]
    return TargetReport(
        owner=target.owner,
        canonical=answer.canonical,
        authenticated=answer.authenticated,
        records=tuple(
            RecordState(target.record(r), role, "published" if r in published else "missing")
            for role, r in ours
        ),
        stale=tuple(
            target.record(r) for r in answer.usable if not any(dane.match(c, [r]) for c in held)
        ),
        usable_published=len(answer.usable),
        pins_key=any(r.usage == dane.DANE_EE and r.selector == 1 for r in answer.usable),
        served_matches=str(dane.match(served, answer.usable) or ""),
        unmatched_chains=sum(1 for c in chains[1:] if not dane.match(c, answer.usable)),
        held=tuple(
            (name, target.record(next_records[name][0]))
            for name, chain in nexts.items()
            if answer.usable and not dane.match(chain, answer.usable)
        ),
    )


def collect(deployer: Deployer, name: str | None = None, ctx: Context | None = None) -> TlsaReport:
    ctx = ctx or deployer.context()  # `status` hands in the state it has read already
    settings = deployer.settings
    warnings: list[str] = []
    names = [name] if name else [c.lineage for c in ctx.selection.chains]
    if not names:
        warnings.append(ctx.selection.why_none)
    lives: dict[str, list[x509.Certificate]] = {}
    for lineage in names:  # the default chains: the ones DANE senders are given
        try:
            source = read_lineage(settings.live_dir / lineage, settle_timeout=1).files
            lives[lineage] = _chain(
                source.fullchain, str(settings.live_dir / lineage / "fullchain.pem")
            )
        except PftlsError as exc:
            warnings.append(str(exc))
    files = ctx.state.pointed_files()
    if not ctx.state.uses_chain_files:
        # Legacy parameters: an ECDSA (or DSA) certificate beside the RSA one is served
        # to the clients that prefer it; DANE senders must be able to match it too.
        files += [
            ctx.state.effective.get(p, "")
            for p in ("smtpd_tls_eccert_file", "smtpd_tls_dcert_file")
        ]
    chains = dane.served_chains(f for f in files if f)
    served = chains[0] if chains else []
    if not served:
        warnings.append("main.cf points at no certificate pftls-hook can read: nothing served")
    nexts = {n: live for n, live in lives.items() if live and live not in chains}
    targets = tuple(
        _target(t, chains, nexts, settings)
        for t in dane.targets(ctx.hostnames, settings.dane_ports)
    )
    pinned = any(t.pins_key for t in targets)
    advice = [dane.reuse_key_advice(settings, n, pinned) for n in names]
    return TlsaReport(
        lineage=", ".join(names),
        targets=targets,
        next_differs=bool(nexts),
        warnings=(*warnings, *filter(None, advice)),
    )


def as_json(report: TlsaReport) -> dict[str, Any]:
    return {**asdict(report), "broken": report.broken, "held_back": report.held_back}


def render(report: TlsaReport) -> str:
    """Zone-file lines, with what each is in a comment (`;`), ready to paste."""
    lines = []
    for t in report.targets:
        if t.error:
            lines.append(f"; {t.owner} lookup failed: {t.error}")
        else:
            via = f" via CNAME {t.canonical}" if t.canonical != t.owner else ""
            ad = "DNSSEC-validated" if t.authenticated else "not DNSSEC-validated (no AD)"
            lines.append(f"; {t.owner}{via}: {t.usable_published} usable record(s), {ad}")
        for r in t.records:
            todo = " - publish before deploying" if r.role == "next key" else ""
            state = f"{r.state}{todo if r.state == 'missing' else ''}"
            lines.append(f"{r.line}  ; {r.role}: {state}")
        for stale in t.stale:
            lines.append(f"; stale (matches no key or issuer served or held): {stale}")
    lines.extend(f"; warning: {w}" for w in report.warnings)
    return "\n".join(lines)


__all__ = ["RecordState", "TargetReport", "TlsaReport", "as_json", "collect", "render"]


# ------------------------------------------------- in `status` and `status --check`

_RANK = {"OK": 0, "WARNING": 1, "UNKNOWN": 2, "CRITICAL": 3}


def status(deployer: Deployer, ctx: Context) -> TlsaReport | None:
    """The DANE part of `status` (None with --dane off: nothing is looked up)."""
    if deployer.settings.dane == "off":
        return None
    return collect(deployer, None, ctx)  # every default chain's lineage


def status_lines(report: TlsaReport | None) -> list[str]:
    """The DANE part of `status` (None: --dane off)."""
    if report is None:
        return []
    lines = []
    for t in report.targets:
        if t.error:
            lines.append(f"DANE {t.owner}: lookup failed: {t.error}")
            continue
        if not t.usable_published:
            lines.append(f"DANE {t.owner}: no usable TLSA records: nothing to match")
            continue
        ad = "DNSSEC-validated" if t.authenticated else "not DNSSEC-validated (no AD)"
        matched = t.served_matches
        verdict = (
            f"the served chain matches {matched[:24]}…"
            if matched
            else "the served chain matches NO published record: DANE senders cannot deliver"
        )
        if t.unmatched_chains:
            verdict += f"; {t.unmatched_chains} other served chain(s) (ECDSA/RSA) match none"
        lines.append(f"DANE {t.owner}: {t.usable_published} record(s), {ad}; {verdict}")
    lines.extend(f"DANE: renewal held back until published: {line}" for line in report.held_back)
    lines.extend(f"warning: {w}" for w in report.warnings)
    return lines


def worst(verdict: tuple[str, str, str], report: TlsaReport | None) -> tuple[str, str, str]:
    """`status --check` with DANE: CRITICAL when the served chain matches no published
    record, WARNING while a renewal waits for its record, UNKNOWN when DNS cannot tell."""
    state, text, perf = verdict
    if report is None:
        return verdict
    findings = []
    if report.broken:
        findings.append(
            (
                "CRITICAL",
                "DANE: the served chain matches no published TLSA record at "
                f"{', '.join(report.broken)}: DANE senders cannot deliver",
            )
        )
    if report.held_back:
        findings.append(
            (
                "WARNING",
                f"DANE: renewal held back until published: {'; '.join(report.held_back)}",
            )
        )
    failed = [t.owner for t in report.targets if t.error]
    if failed:
        findings.append(("UNKNOWN", f"DANE: TLSA lookup failed for {', '.join(failed)}"))
    for found, found_text in findings:
        if _RANK[found] > _RANK[state]:
            state, text = found, f"{found_text}; {text}"
        else:
            text = f"{text}; {found_text}"
    return state, text, perf
