"""Commands and options; the only place that picks exit codes. No logic of its own.

Exit codes (documented in the README):
  0 done (or nothing to do)        3 certificate refused: nothing changed
  1 internal error (a bug)         4 deploy failed and was rolled back
  2 usage or configuration error   5 rollback failed: an admin must look now
  6 cannot proceed (unsafe install dir, lock held, Postfix command failed): nothing changed
`status --check` alone follows the monitoring-plugins convention instead: 0 OK, 1 WARNING,
2 CRITICAL, 3 UNKNOWN, and nothing else (a usage error or a failure of its own is UNKNOWN).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from pftls_hook.config import Settings, load_settings
from pftls_hook.errors import (
    CommandError,
    DeployFailedError,
    EnvironmentRefusedError,
    PftlsError,
    ProbeError,
    RefusedError,
    RollbackFailedError,
    UsageError,
)
from pftls_hook.setup import AUTHENTICATORS, CLIENT_LEVELS, OBTAIN_EPILOG, PROPAGATION_HELP

if TYPE_CHECKING:
    from pftls_hook.deploy import Deployer
    from pftls_hook.outcome import Outcome
    from pftls_hook.status import Report

EXIT_OK, EXIT_BUG, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3
EXIT_ROLLED_BACK, EXIT_ROLLBACK_FAILED, EXIT_CANNOT = 4, 5, 6
_EXIT_CODES: tuple[tuple[type[PftlsError], int], ...] = (
    (UsageError, EXIT_USAGE),
    (RefusedError, EXIT_REFUSED),
    (DeployFailedError, EXIT_ROLLED_BACK),
    (RollbackFailedError, EXIT_ROLLBACK_FAILED),
    (EnvironmentRefusedError, EXIT_CANNOT),
    (CommandError, EXIT_CANNOT),
    # Only outside a rollback (which turns it into a DeployFailedError): a reload of files
    # already installed did not make Postfix serve them. Nothing of ours changed.
    (ProbeError, EXIT_CANNOT),
)
log = logging.getLogger("pftls-hook")


# Global options: (flags, keyword arguments, help). Defaults live in config.Settings alone.
_GLOBAL_OPTIONS: tuple[tuple[tuple[str, ...], dict[str, Any], str], ...] = (
    (("--config",), {"metavar": "FILE"}, "TOML config file (default /etc/pftls-hook/config.toml)"),
    (("--live-dir",), {"metavar": "DIR"}, "certbot's live dir (default /etc/letsencrypt/live)"),
    (("--postfix-config-dir",), {"metavar": "DIR", "action": "append"},
     "Postfix instance (default /etc/postfix; repeatable: each gets the same deploy)"),
    (("--install-dir",), {"metavar": "DIR"}, "where keys and chains go (default /etc/postfix/tls)"),
    (("--ca-file",), {"metavar": "FILE"},
     "trust anchors the chain must lead to (default the system bundle)"),
    (("--lock-file",), {"metavar": "FILE"},
     "lock shared by every entry point (default /run/pftls-hook/deploy.lock)"),
    (("--hostname",), {"metavar": "NAME", "action": "append"},
     "a name the certificate must cover (repeatable; default Postfix's myhostname)"),
    (("--sni",), {"metavar": "NAME", "action": "append"},
     "serve NAME, by SNI, the lineages covering it (repeatable; a table pftls-hook owns)"),
    (("--probe",), {"metavar": "HOST:PORT", "action": "append"},
     "prove here instead of master.cf's TLS services (repeatable; /tls for port 465)"),
    (("--no-probe",), {"action": "store_const", "const": True},
     "do not prove over STARTTLS (the deploy is then unproven)"),
    (("--probe-timeout",), {"metavar": "SECONDS"},
     "how long Postfix has to serve the new certificate (default 10)"),
    (("--layout",), {"choices": ("combined", "separate")},
     "combined: one file, key then chain (default); separate: .key and .crt"),
    (("--min-days",), {"metavar": "N"}, "refuse a certificate with fewer days left (default 1)"),
    (("--debounce",), {"metavar": "SECONDS"},
     "watch: wait this long for a lineage that never settles (default 0.5)"),
    (("--reconcile-interval",), {"metavar": "SECONDS"},
     "watch: look at every lineage this often (default 600)"),
    (("--metrics-file",), {"metavar": "FILE"},
     "write Prometheus metrics here after each deploy attempt and status (e.g. in "
     "node_exporter's textfile directory)"),
    (("--dry-run",), {"action": "store_const", "const": True},
     "say what would change; change nothing"),
    (("--dane",), {"choices": ("enforce", "warn", "off")},
     "refuse (default), or only warn about, a certificate the published TLSA records of "
     "_25._tcp.<hostname> reject; off: no lookup"),
    (("--dns-resolver",), {"metavar": "ADDR[:PORT]", "action": "append"},
     "resolver for TLSA lookups (repeatable; IPv6 as [::1]:53); default: the nameservers "
     "of /etc/resolv.conf"),
    (("-v", "--verbose"), {"action": "count"}, "more detail (-v); tracebacks of internal errors"),
    (("-q", "--quiet"), {"action": "store_const", "const": True}, "warnings and errors only"),
)  # fmt: skip


def _common(default: Any) -> argparse.ArgumentParser:
    """Global options, accepted before the command and after it."""
    p = argparse.ArgumentParser(add_help=False)
    for flags, kwargs, text in _GLOBAL_OPTIONS:
        p.add_argument(*flags, default=default, help=text, **kwargs)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pftls-hook",
        parents=[_common(None)],
        description="Verify certbot's certificate, install it for Postfix, reload, prove it.",
    )
    after = _common(argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "deploy-hook", parents=[after], help="certbot --deploy-hook: deploy $RENEWED_LINEAGE"
    )
    install = sub.add_parser("install", parents=[after], help="verify and deploy now")
    lineage_help = "certbot lineage name (default: the one selected for Postfix)"
    install.add_argument("name", nargs="?", metavar="NAME", help=lineage_help)
    verify = sub.add_parser("verify", parents=[after], help="run every check, change nothing")
    verify.add_argument("name", nargs="?", metavar="NAME", help=lineage_help)
    status = sub.add_parser("status", parents=[after], help="live, installed, served")
    status.add_argument("--json", action="store_true", help="the report as JSON")
    status.add_argument("--check", action="store_true", help="monitoring plugin: exit 0-3")
    status.add_argument("--warning-days", metavar="N", type=int, default=21,
                        help="--check: WARNING under N days left (default 21)")  # fmt: skip
    status.add_argument("--critical-days", metavar="N", type=int, default=7,
                        help="--check: CRITICAL under N days left (default 7)")  # fmt: skip
    sub.add_parser("rollback", parents=[after], help="restore the previous version")
    tlsa = sub.add_parser(
        "tlsa", parents=[after], help="DANE: the TLSA records to publish, compared with DNS"
    )
    tlsa.add_argument("name", nargs="?", metavar="NAME", help=lineage_help)
    tlsa.add_argument("--json", action="store_true", help="the records as JSON")
    _add_setup_commands(sub, after)
    sub.add_parser(
        "watch", parents=[after], help="daemon (systemd): deploy every change certbot makes"
    )
    return parser


_FLAG_KEYS = (
    "config", "live_dir", "postfix_config_dir", "install_dir", "ca_file", "lock_file",
    "hostname", "sni", "probe", "no_probe", "probe_timeout", "layout", "min_days", "dry_run",
    "debounce", "reconcile_interval", "dane", "dns_resolver", "metrics_file",
)  # fmt: skip


def _settings(ns: argparse.Namespace) -> Settings:
    flags = {key: getattr(ns, key, None) for key in _FLAG_KEYS}
    return load_settings(flags, os.environ)


def _setup_logging(ns: argparse.Namespace) -> None:
    level = logging.INFO
    if getattr(ns, "quiet", None):
        level = logging.WARNING
    if getattr(ns, "verbose", None):
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("pftls-hook: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into an exception so a deploy in progress rolls back on the way out.
    raise SystemExit(128 + signum)


def _deploy_hook(settings: Settings) -> Outcome:
    # The core, here and below, is imported by the commands that use it: `--help` and a
    # usage error start without it (or cryptography, which a no-op skips: hook.py).
    from pftls_hook import hook  # noqa: PLC0415
    from pftls_hook.lineage import renewed_lineage  # noqa: PLC0415

    lineage = os.environ.get("RENEWED_LINEAGE", "")
    if not lineage:
        raise UsageError("deploy-hook: RENEWED_LINEAGE is not set (run it from certbot)")
    # Only a lineage directly under our live dir: certbot's own layout, nothing else.
    name = renewed_lineage(lineage, settings.live_dir)
    if settings.dry_run or settings.metrics_file is not None:
        from pftls_hook.deploy import Deployer  # noqa: PLC0415

        return _deploy(Deployer(settings), name, only_if_ours=True)
    return hook.run(settings, name)


def _deploy(deployer: Deployer, name: str | None, *, only_if_ours: bool = False) -> Outcome:
    if deployer.settings.metrics_file is None:
        return deployer.deploy(name, only_if_ours=only_if_ours)
    from pftls_hook import metrics  # noqa: PLC0415 - only with a metrics file

    return metrics.deploy(deployer, name, only_if_ours=only_if_ours)


def _refresh_metrics(deployer: Deployer, report: Report) -> None:
    if deployer.settings.metrics_file is not None:
        from pftls_hook import metrics  # noqa: PLC0415 - only with a metrics file

        metrics.refresh(deployer, report)


def _render(outcome: Outcome) -> None:
    """One line per outcome on stderr (certbot's log keeps it); a plan on stdout."""
    for line in outcome.detail if outcome.action == "dry-run" else ():
        print(line)
    if outcome.action == "skipped":
        log.info("%s renewed, not selected for Postfix (%s): skipped", outcome.lineage,
                 "; ".join(outcome.detail))  # fmt: skip
    elif outcome.error is not None:
        log.error("%s: %s: %s", outcome.lineage, outcome.action, outcome.error)
    elif outcome.action in ("deployed", "reloaded", "rolled-back") and not outcome.proven_on:
        log.warning(
            "%s: %s, but NOT proven: no TLS endpoint to probe (no smtpd service with TLS "
            "in master.cf, or --no-probe). Enable TLS with `pftls-hook configure`, or name "
            "an endpoint with --probe HOST:PORT",
            outcome.lineage,
            outcome.action,
        )
    else:
        log.info("%s", outcome)


def _run(ns: argparse.Namespace, settings: Settings) -> int:
    if ns.command == "deploy-hook":
        _render(_deploy_hook(settings))
        return EXIT_OK
    if ns.command == "watch":
        # Imported here: only the daemon needs watchdog; the deploy hook starts lean.
        from pftls_hook.daemon import watch  # noqa: PLC0415

        watch.run(settings, reload_settings=lambda: _settings(ns))
        return EXIT_OK
    from pftls_hook.deploy import Deployer  # noqa: PLC0415
    from pftls_hook.outcome import worst  # noqa: PLC0415

    deployer = Deployer(settings)
    if ns.command == "install":
        if ns.name:
            outcomes = [_deploy(deployer, ns.name)]
        elif settings.metrics_file is None:
            outcomes = deployer.deploy_all()
        else:
            from pftls_hook import metrics  # noqa: PLC0415 - only with a metrics file

            outcomes = metrics.deploy_all(deployer)
        for outcome in outcomes:
            _render(outcome)
        error = worst(outcomes)  # several chains: each reported, the worst decides
        if error is not None:
            raise error
        return EXIT_OK
    if ns.command == "verify":
        ctx = deployer.context()
        snapshot, bundle = deployer.read_and_verify(ns.name, ctx)
        deployer.dane_guard(snapshot.name, bundle, ctx)
        deployer.install_dir.check()
        for note in ctx.notes:
            log.warning("%s", note)
        print(
            f"{snapshot.name}: version {snapshot.version} deployable, "
            f"leaf sha256 {bundle.leaf_sha256}"
        )
        return EXIT_OK
    if ns.command == "status":
        from pftls_hook import status  # noqa: PLC0415

        report = status.collect(deployer)
        _refresh_metrics(deployer, report)
        print(status.to_json(report) if ns.json else status.render(report))
        return EXIT_OK
    if ns.command == "rollback":
        _render(deployer.rollback())
        return EXIT_OK
    raise UsageError(f"unknown command {ns.command}")


def _tlsa(ns: argparse.Namespace, settings: Settings) -> int:
    from pftls_hook import tlsa  # noqa: PLC0415
    from pftls_hook.deploy import Deployer  # noqa: PLC0415

    records = tlsa.collect(Deployer(settings), ns.name)
    if ns.json:
        import json  # noqa: PLC0415 - only for --json: the deploy hook starts without it

        print(json.dumps(tlsa.as_json(records), indent=2))
    else:
        print(tlsa.render(records))
    return EXIT_OK


# ---------------------------------------------- setup commands: configure, obtain, register

_SETUP_COMMANDS = ("configure", "obtain", "register", "unregister")
# status --check follows the monitoring-plugins convention: these are its only exit codes.
_CHECK_EXIT = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}


def _add_setup_commands(sub: Any, after: argparse.ArgumentParser) -> None:
    configure = sub.add_parser("configure", parents=[after], help="apply the TLS profile")
    configure.add_argument(
        "--client-security-level",
        choices=CLIENT_LEVELS,
        default="may",
        help="outgoing TLS: may (default) or encrypt (bounces without TLS)",
    )
    # --ca-file is the global option (the trust anchors deploy verifies with): one bundle
    # for both; --ca-path is configure's alternative, a hashed CA directory.
    configure.add_argument(
        "--ca-path", metavar="DIR", help="a hashed CA directory instead of --ca-file"
    )
    obtain = sub.add_parser(
        "obtain",
        parents=[after],
        help="certbot certonly, then deploy",
        epilog=OBTAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    obtain.add_argument("-d", "--domain", metavar="NAME", action="append", required=True,
                        help="a name the certificate covers (repeatable)")  # fmt: skip
    obtain.add_argument("-m", "--email", metavar="ADDR", required=True,
                        help="the ACME account's contact address")  # fmt: skip
    obtain.add_argument("--authenticator", choices=AUTHENTICATORS, default="dns-ovh",
                        help="how certbot proves the names (default dns-ovh)")  # fmt: skip
    obtain.add_argument(
        "--key-type",
        metavar="TYPES",
        help="e.g. ecdsa,rsa: one lineage per key type (<first name>-ecdsa, <first name>-rsa),"
        " served side by side; default: certbot's own (one lineage)",
    )
    obtain.add_argument("--dns-ovh-credentials", metavar="FILE", help="OVH API keys (see below)")
    obtain.add_argument(
        "--propagation-seconds", metavar="N", type=int, default=60, help=PROPAGATION_HELP
    )
    obtain.add_argument("--server", metavar="URL", help="ACME directory (default Let's Encrypt)")
    obtain.add_argument("--webroot-path", metavar="DIR", help="with --authenticator webroot")
    obtain.add_argument("--certbot-arg", metavar="ARG", action="append", default=[],
                        help="passed to certbot as it is (repeatable)")  # fmt: skip
    sub.add_parser("register", parents=[after], help="install certbot's deploy hook file")
    sub.add_parser("unregister", parents=[after], help="remove certbot's deploy hook file")


def _setup_command(ns: argparse.Namespace, settings: Settings) -> int:
    # Imported here: the deploy hook, run inside every certbot renewal, never loads them.
    from pftls_hook.setup import configure as profile  # noqa: PLC0415
    from pftls_hook.setup import obtain as certbot_ops  # noqa: PLC0415

    if ns.command == "configure":
        if ns.ca_path and ns.ca_file is not None:
            raise UsageError("configure: give --ca-file or --ca-path, not both")
        request = profile.Request(
            ca_file=str(settings.ca_file.absolute()),
            ca_path=str(Path(ns.ca_path).absolute()) if ns.ca_path else None,
            client_level=ns.client_security_level,
            replace_trust=ns.ca_file is not None or bool(ns.ca_path),
        )
        log.info("%s", profile.configure(settings, request))
    elif ns.command == "obtain":
        outcome = certbot_ops.obtain(
            settings,
            certbot_ops.ObtainRequest(
                domains=tuple(ns.domain),
                email=ns.email,
                authenticator=ns.authenticator,
                credentials=Path(ns.dns_ovh_credentials) if ns.dns_ovh_credentials else None,
                propagation_seconds=ns.propagation_seconds,
                server=ns.server,
                webroot_path=Path(ns.webroot_path) if ns.webroot_path else None,
                certbot_args=tuple(ns.certbot_arg),
                key_types=tuple(t for t in (ns.key_type or "").split(",") if t),
            ),
        )
        if outcome is not None:
            log.info("%s", outcome)
    elif ns.command == "register":
        log.info("%s", certbot_ops.register(settings))
    else:
        log.info("%s", certbot_ops.unregister(settings))
    return EXIT_OK


def _status_check(ns: argparse.Namespace) -> int:
    """status --check: one line on stdout, and exit 0-3 whatever happens."""
    from pftls_hook import status  # noqa: PLC0415
    from pftls_hook.deploy import Deployer  # noqa: PLC0415

    try:
        deployer = Deployer(_settings(ns))
        report = status.collect(deployer)
        _refresh_metrics(deployer, report)
        state, line = status.check(
            report, warning_days=ns.warning_days, critical_days=ns.critical_days
        )
    except Exception as exc:  # a check that cannot look cannot tell: UNKNOWN, never a 1 or 2
        state, line = "UNKNOWN", f"PFTLS-HOOK UNKNOWN: {exc}"
    print(line)
    return _CHECK_EXIT[state]


def _is_check(argv: Sequence[str] | None) -> bool:
    args = sys.argv[1:] if argv is None else list(argv)
    return "status" in args and "--check" in args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed its one-line reason
        code = EXIT_USAGE if exc.code else EXIT_OK
        return _CHECK_EXIT["UNKNOWN"] if code and _is_check(argv) else code
    _setup_logging(ns)
    signal.signal(signal.SIGTERM, _terminate)
    if ns.command == "status" and ns.check:
        return _status_check(ns)
    try:
        command = _setup_command if ns.command in _SETUP_COMMANDS else _run
        command = _tlsa if ns.command == "tlsa" else command
        return command(ns, _settings(ns))
    except PftlsError as exc:
        log.error("%s", exc)
        return next((code for cls, code in _EXIT_CODES if isinstance(exc, cls)), EXIT_BUG)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except Exception as exc:
        # A bug, not bad input: say so in one line; -v shows the traceback.
        log.error("internal error: %s: %s", type(exc).__name__, exc, exc_info=bool(ns.verbose))
        return EXIT_BUG
