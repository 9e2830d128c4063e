"""The TLS profile from the admin's setup page, and `configure`, which puts it in main.cf.

Contract: `plan(values, explicit, state, request)` is pure: from the profile parameters as
Postfix uses them (`values`, `postconf -x`) and main.cf's own settings (`explicit`, `-n`)
it returns a `Plan`: the changes, and notes on what was left alone and why. It never
weakens: a stricter security level, a higher log level, trust anchors the admin already
set stay as they are. `configure(settings, request)` shows the plan as a diff, then (unless
dry run) makes the CA directory's hash links, applies every change in ONE `postconf -e`
(no call at all when main.cf already holds the profile), runs `postfix check`, and when
Postfix runs, reloads it and proves on each endpoint that EHLO offers STARTTLS and the
handshake completes. If anything fails after main.cf changed, the previous values are put
back and `DeployFailedError` is raised, as a failed deploy does.

The profile:
  server  smtpd_tls_security_level = may, smtpd_tls_loglevel = 1,
          smtpd_tls_received_header = yes
  client  smtp_tls_security_level = may (encrypt on request), smtp_tls_note_starttls_offer = yes
  trust   smtpd_tls_CAfile = smtp_tls_CAfile = the CA bundle (`--ca-file`, default the
          system's), or smtpd_tls_CApath = smtp_tls_CApath = a CA directory (`--ca-path`)
"""

from __future__ import annotations

import logging
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from pftls_hook import probe, runner
from pftls_hook.config import Endpoint, Settings
from pftls_hook.deploy import Transaction, roll_back
from pftls_hook.errors import EnvironmentRefusedError, ProbeError, RefusedError, UsageError
from pftls_hook.fsutil import untrusted
from pftls_hook.lock import deploy_lock
from pftls_hook.postfix import Postfix, PostfixState, server_tls_level
from pftls_hook.setup import CLIENT_LEVELS
from pftls_hook.verify import dns_names, leaf_sha256, load_anchors

log = logging.getLogger("pftls-hook")

# The levels this profile sets or replaces, weakest first. Every other level (dane,
# dane-only, fingerprint, verify, secure) authenticates the peer: stricter than the profile,
# or a policy of another kind, so it is never replaced.
_RANK = {"none": 0, "may": 1, "encrypt": 2}
# What `plan` reads: the profile's parameters and the pre-2.3 booleans that still decide the
# level when `*_tls_security_level` is empty.
READ = (
    "smtpd_tls_security_level", "smtpd_use_tls", "smtpd_enforce_tls", "smtpd_tls_loglevel",
    "smtpd_tls_received_header", "smtp_tls_security_level", "smtp_use_tls", "smtp_enforce_tls",
    "smtp_tls_enforce_peername", "smtp_tls_note_starttls_offer",
    "smtpd_tls_CAfile", "smtpd_tls_CApath", "smtp_tls_CAfile", "smtp_tls_CApath",
)  # fmt: skip
_PROFILE_PARAMS = frozenset(
    p
    for p in READ
    if p.startswith(("smtpd_tls_", "smtp_tls_")) and p != "smtp_tls_enforce_peername"
)
_HASH_LINK = re.compile(r"^[0-9a-f]{8}\.r?[0-9]+$")
ENCRYPT_WARNING = (
    "smtp_tls_security_level = encrypt: Postfix will deliver to no server that lacks "
    "STARTTLS; such mail is deferred, then bounced. Many Internet MX hosts still lack it: "
    "on a host that sends to the public Internet, keep may"
)


@dataclass(frozen=True)
class Request:
    """What the admin asked for. `replace_trust`: the CA option was given on this command
    line, so it replaces what main.cf already trusts (otherwise that is left alone)."""

    ca_file: str
    ca_path: str | None = None
    client_level: str = "may"
    replace_trust: bool = False


@dataclass(frozen=True)
class Change:
    name: str
    new: str
    old: str | None  # main.cf's own value; None: main.cf does not set it
    default: str = ""  # what Postfix uses meanwhile (when old is None)

    def diff(self) -> list[str]:
        if self.old is None:
            return [f"+ {self.name} = {self.new}    (not set; default: {self.default or 'empty'})"]
        return [f"- {self.name} = {self.old}", f"+ {self.name} = {self.new}"]


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...]
    kept: tuple[str, ...]  # left alone, and why
    warnings: tuple[str, ...]

    @property
    def values(self) -> dict[str, str]:
        return {c.name: c.new for c in self.changes}

    def render(self) -> list[str]:
        lines = ["main.cf: TLS profile changes:"] if self.changes else []
        for change in self.changes:
            lines.extend(change.diff())
        if not self.changes:
            lines.append("main.cf already holds the TLS profile: nothing to change")
        lines.extend(f"left alone: {note}" for note in self.kept)
        return lines


def _client_level(values: Mapping[str, str]) -> tuple[str, str]:
    if values.get("smtp_tls_security_level"):
        return values["smtp_tls_security_level"], "smtp_tls_security_level"
    if values.get("smtp_enforce_tls") == "yes":
        # smtp_enforce_tls with smtp_tls_enforce_peername (default yes) is the old `verify`.
        peername = values.get("smtp_tls_enforce_peername", "yes") == "yes"
        return ("verify" if peername else "encrypt"), "smtp_enforce_tls = yes"
    if values.get("smtp_use_tls") == "yes":
        return "may", "smtp_use_tls = yes"
    return "none", "default"


def _level(
    wanted: dict[str, str], kept: list[str], name: str, current: tuple[str, str], target: str
) -> None:
    level, source = current
    shown = level if source == name else f"{level} (from {source})"
    if level not in _RANK:
        kept.append(f"{name}: {shown} is stricter than {target} (or another policy)")
    elif _RANK[level] > _RANK[target]:
        kept.append(f"{name}: {shown} is stricter than {target}")
    else:
        wanted[name] = target


def plan(
    values: Mapping[str, str],
    explicit: Mapping[str, str],
    state: PostfixState,
    request: Request,
) -> Plan:
    wanted: dict[str, str] = {}
    kept: list[str] = []
    warnings: list[str] = []

    _level(wanted, kept, "smtpd_tls_security_level", server_tls_level(values), "may")
    loglevel = values.get("smtpd_tls_loglevel", "0")
    if loglevel.isdigit() and int(loglevel) <= 1:
        wanted["smtpd_tls_loglevel"] = "1"
    else:
        kept.append(f"smtpd_tls_loglevel: {loglevel} logs at least as much as 1")
    wanted["smtpd_tls_received_header"] = "yes"

    if request.client_level not in CLIENT_LEVELS:
        raise UsageError(f"--client-security-level: one of {', '.join(CLIENT_LEVELS)}")
    if request.client_level == "encrypt":
        warnings.append(ENCRYPT_WARNING)
    _level(wanted, kept, "smtp_tls_security_level", _client_level(values), request.client_level)
    wanted["smtp_tls_note_starttls_offer"] = "yes"

    for side in ("smtpd", "smtp"):
        if request.ca_path:
            wanted[f"{side}_tls_CApath"] = request.ca_path
            continue
        name = f"{side}_tls_CAfile"
        trusted = values.get(name) or values.get(f"{side}_tls_CApath", "")
        if trusted and trusted != request.ca_file and not request.replace_trust:
            # The admin's anchors may be what a `verify`/`secure` policy relies on.
            kept.append(f"{name}: main.cf already trusts {trusted} (give --ca-file to replace)")
        else:
            wanted[name] = request.ca_file
    if request.ca_path and any(s.command == "smtpd" and s.chroot == "y" for s in state.services):
        warnings.append(
            f"{request.ca_path}: a chrooted smtpd reads smtpd_tls_CApath at handshake time, "
            "inside its jail: copy the directory there too"
        )

    for override in state.overrides:
        if override.param in _PROFILE_PARAMS:
            kept.append(f"{override} overrides main.cf for that service")

    changes = tuple(
        Change(name, new, explicit.get(name), values.get(name, ""))
        for name, new in wanted.items()
        # Already there: main.cf sets it and Postfix reads exactly this value.
        if not (name in explicit and values.get(name) == new)
    )
    return Plan(changes, tuple(kept), tuple(warnings))


# --------------------------------------------------------------------------- applying it


def check_trust(request: Request) -> None:
    """A CA file Postfix cannot load disables its TLS (smtpd answers STARTTLS with 454):
    refuse a bundle without certificates, or a CA directory others can write to."""
    if request.ca_path:
        path = Path(request.ca_path)
        try:
            st = path.stat()
        except OSError as exc:
            raise UsageError(f"{path}: cannot use as CA directory: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{path}: --ca-path must be a directory")
        if reason := untrusted(st):
            raise UsageError(f"{path}: CA directory {reason}")
        return
    try:
        load_anchors(Path(request.ca_file).read_bytes(), request.ca_file)
    except OSError as exc:
        raise UsageError(f"{request.ca_file}: cannot read CA file: {exc.strerror}") from None
    except RefusedError as exc:
        raise UsageError(str(exc)) from None


def rehash(directory: Path) -> int:
    """The c_rehash step: `openssl rehash` makes the `<subject hash>.N` links OpenSSL looks
    CA certificates up by. Returns how many links the directory holds."""
    runner.run(["openssl", "rehash", str(directory)], timeout=60).check()
    links = sum(1 for p in directory.iterdir() if _HASH_LINK.match(p.name))
    if not links:
        raise UsageError(f"{directory}: no CA certificate found (openssl rehash made no link)")
    return links


def configure(
    settings: Settings,
    request: Request,
    *,
    postfix: Postfix | None = None,
    echo: Callable[[str], None] = print,
) -> str:
    """Apply the profile; returns a one-line outcome. See the module docstring."""
    postfix = postfix or Postfix(settings.postfix_config_dir)
    check_trust(request)
    before = postfix.state()
    the_plan = plan(postfix.parameters(*READ), postfix.explicit(*READ), before, request)
    for warning in the_plan.warnings:
        log.warning("%s", warning)
    for line in the_plan.render():
        echo(line)
    if settings.dry_run:
        if request.ca_path:
            echo(f"would run openssl rehash {request.ca_path}")
        if the_plan.changes:
            echo("would run postconf -e with the changes above, postfix check, reload, probe")
        return "dry run: nothing changed"

    changed = the_plan.values
    with deploy_lock(settings.lock_file, settings.lock_timeout):
        if request.ca_path:
            links = rehash(Path(request.ca_path))
            echo(f"{request.ca_path}: {links} hash links (openssl rehash)")
        txn = Transaction(postfix)
        try:
            # Every change in one call: each `postconf -e` leaves main.cf "hot" for ~2 s.
            txn.set_main_cf(changed)
            postfix.check()
            running = postfix.reload() if changed or request.ca_path else postfix.is_running()
            if not running:
                echo("Postfix is not running: checked, not reloaded; STARTTLS not proven")
                return "configured (Postfix not running)" if changed else "unchanged"
            _prove(postfix, settings, echo)
        except BaseException as exc:
            if changed:
                roll_back(txn, {}, settings.probe_timeout, reason=exc, what="configure")
            elif isinstance(exc, ProbeError):
                raise EnvironmentRefusedError(
                    f"main.cf needed no change, but TLS does not work: {exc}"
                ) from None
            raise
    return "configured" if changed else "unchanged"


def _prove(postfix: Postfix, settings: Settings, echo: Callable[[str], None]) -> None:
    """EHLO offers STARTTLS and the handshake completes, on every endpoint."""
    if settings.no_probe:
        echo("--no-probe: STARTTLS not proven")
        return
    state = postfix.state()
    cert_params = ("smtpd_tls_chain_files", "smtpd_tls_cert_file", "smtpd_tls_eccert_file")
    if not any(state.effective.get(p, "").strip() for p in cert_params):
        # With no certificate smtpd offers no STARTTLS at all: nothing to prove yet.
        echo("no server certificate in main.cf yet: run `pftls-hook install` (or obtain)")
        return
    endpoints: list[Endpoint] = list(settings.probes)
    if not endpoints:
        endpoints, notes = state.probe_endpoints()
        for note in notes:
            echo(note)
    # `postfix reload` is asynchronous: an smtpd of the old configuration may answer first.
    probe.wait_for(endpoints, None, timeout=settings.probe_timeout)
    for endpoint in endpoints:
        leaf = x509.load_der_x509_certificate(probe.fetch(endpoint, timeout=settings.probe_timeout))
        echo(
            f"{endpoint}: EHLO offers STARTTLS, TLS handshake completed; serves "
            f"{', '.join(dns_names(leaf)) or leaf.subject.rfc4514_string()} "
            f"(sha256 {leaf_sha256(leaf)[:16]}…)"
        )
