"""Commands and options; the only place that picks exit codes. No logic of its own.

Exit codes (documented in the README):
  0 done (or nothing to do)        3 certificate refused: nothing changed
  1 internal error (a bug)         4 deploy failed and was rolled back
  2 usage or configuration error   5 rollback failed: an admin must look now
  6 cannot proceed (unsafe install dir, lock held, Postfix command failed): nothing changed
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from pftls_hook import status
from pftls_hook.config import Settings, load_settings
from pftls_hook.deploy import Deployer
from pftls_hook.errors import (
    CommandError,
    DeployFailedError,
    EnvironmentRefusedError,
    PftlsError,
    RefusedError,
    RollbackFailedError,
    UsageError,
)

EXIT_OK, EXIT_BUG, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3
EXIT_ROLLED_BACK, EXIT_ROLLBACK_FAILED, EXIT_CANNOT = 4, 5, 6
_EXIT_CODES: tuple[tuple[type[PftlsError], int], ...] = (
    (UsageError, EXIT_USAGE),
    (RefusedError, EXIT_REFUSED),
    (DeployFailedError, EXIT_ROLLED_BACK),
    (RollbackFailedError, EXIT_ROLLBACK_FAILED),
    (EnvironmentRefusedError, EXIT_CANNOT),
    (CommandError, EXIT_CANNOT),
)
log = logging.getLogger("pftls-hook")


def _common(default: Any) -> argparse.ArgumentParser:
    """Global options, accepted before the command and after it."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", metavar="FILE", default=default)
    p.add_argument("--live-dir", metavar="DIR", default=default)
    p.add_argument("--postfix-config-dir", metavar="DIR", default=default)
    p.add_argument("--install-dir", metavar="DIR", default=default)
    p.add_argument("--ca-file", metavar="FILE", default=default)
    p.add_argument("--lock-file", metavar="FILE", default=default)
    p.add_argument("--hostname", metavar="NAME", action="append", default=default)
    p.add_argument("--probe", metavar="HOST:PORT", action="append", default=default)
    p.add_argument("--no-probe", action="store_const", const=True, default=default)
    p.add_argument("--probe-timeout", metavar="SECONDS", default=default)
    p.add_argument("--layout", choices=("combined", "separate"), default=default)
    p.add_argument("--min-days", metavar="N", default=default)
    p.add_argument("--dry-run", action="store_const", const=True, default=default)
    p.add_argument("-v", "--verbose", action="count", default=default)
    p.add_argument("-q", "--quiet", action="store_const", const=True, default=default)
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
    install.add_argument("name", nargs="?", metavar="NAME")
    verify = sub.add_parser("verify", parents=[after], help="run every check, change nothing")
    verify.add_argument("name", nargs="?", metavar="NAME")
    status = sub.add_parser("status", parents=[after], help="live, installed, served")
    status.add_argument("--json", action="store_true")
    sub.add_parser("rollback", parents=[after], help="restore the previous version")
    return parser


_FLAG_KEYS = (
    "config", "live_dir", "postfix_config_dir", "install_dir", "ca_file", "lock_file",
    "hostname", "probe", "no_probe", "probe_timeout", "layout", "min_days", "dry_run",
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


def _deploy_hook(settings: Settings) -> int:
    lineage = os.environ.get("RENEWED_LINEAGE", "")
    if not lineage:
        raise UsageError("deploy-hook: RENEWED_LINEAGE is not set (run it from certbot)")
    path = Path(lineage)
    # Only a lineage directly under our live dir: certbot's own layout, nothing else.
    if path.parent.resolve() != settings.live_dir.resolve():
        raise RefusedError(lineage, f"RENEWED_LINEAGE is not a lineage under {settings.live_dir}")
    deployer = Deployer(settings)
    hostnames = settings.hostnames or (deployer.postfix.state().myhostname,)
    chosen = deployer.choose(hostnames)
    if path.name != chosen:
        log.info("%s renewed, but Postfix uses %s: skipped", path.name, chosen)
        return EXIT_OK
    log.info("%s", deployer.deploy(chosen))
    return EXIT_OK


def _run(ns: argparse.Namespace, settings: Settings) -> int:
    if ns.command == "deploy-hook":
        return _deploy_hook(settings)
    deployer = Deployer(settings)
    if ns.command == "install":
        if ns.name:
            name = ns.name
        else:
            name = deployer.choose(settings.hostnames or (deployer.postfix.state().myhostname,))
        log.info("%s", deployer.deploy(name))
        return EXIT_OK
    if ns.command == "verify":
        ctx = deployer.context()
        name = ns.name or deployer.choose(ctx.hostnames)
        snapshot, bundle = deployer.read_and_verify(name, ctx)
        deployer.install_dir.check()
        for warning in (*ctx.notes, *bundle.warnings):
            log.warning("%s", warning)
        print(f"{name}: version {snapshot.version} deployable, leaf sha256 {bundle.leaf_sha256}")
        return EXIT_OK
    if ns.command == "status":
        report = status.collect(deployer)
        print(json.dumps(report, indent=2) if ns.json else status.render(report))
        return EXIT_OK
    if ns.command == "rollback":
        log.info("%s", deployer.rollback())
        return EXIT_OK
    raise UsageError(f"unknown command {ns.command}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed its one-line reason
        return EXIT_USAGE if exc.code else EXIT_OK
    _setup_logging(ns)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run(ns, _settings(ns))
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
