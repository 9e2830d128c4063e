"""certbot for the admin: obtain a certificate with the hook in place, register the hook.

Contract:
- `hook_argv(settings)`: the `deploy-hook` command line with the options in use, for
  certbot to run after every issuance and renewal.
- `obtain(settings, request)`: refuses a dns-ovh credentials file certbot-dns-ovh could not
  use or that others could read (`credentials.check_credentials`) with a one-line
  `UsageError`, before anything runs; then runs certbot's own CLI, `certonly ... --deploy-hook
  <hook_argv>` with `--config-dir` = the parent of our live dir, through `runner.run` with a
  timeout. When the names include every name of an existing lineage (read from its
  certificate), that lineage is named (`--cert-name N --expand`): certbot would otherwise
  stop at its non-interactive "expand and replace?" question. Otherwise certbot makes a new
  lineage. Either way it is said, and `--dry-run` says it without running anything. Then
  deploys the selected lineage through `Deployer` (usually a no-op: certbot has just run the
  hook). No deploy lock is held while certbot runs, since the hook takes it.
- `register(settings)` / `unregister(settings)`: the certbot-native hook, an executable
  `<certbot config dir>/renewal-hooks/deploy/pftls-hook` (a sh script with our marker line)
  that certbot runs after every renewal of any lineage. Written atomically, 0755, root;
  idempotent; a file there without our marker is never replaced or removed.
"""

from __future__ import annotations

import logging
import os
import shlex
import stat
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pftls_hook import runner
from pftls_hook.config import DEFAULT_CONFIG, Settings, load_settings
from pftls_hook.deploy import Deployer
from pftls_hook.errors import CommandError, EnvironmentRefusedError, RefusedError, UsageError
from pftls_hook.fsutil import atomic_write, fsync_dir, untrusted
from pftls_hook.lineage import list_lineages
from pftls_hook.outcome import Outcome
from pftls_hook.pem import name_covers
from pftls_hook.select import leaf_of
from pftls_hook.setup import AUTHENTICATORS
from pftls_hook.setup.credentials import check_credentials
from pftls_hook.verify import dns_names

log = logging.getLogger("pftls-hook")

HOOK_FILE = "pftls-hook"
KEY_TYPES = ("ecdsa", "rsa")  # what certbot's --key-type takes, and the probe tells apart
MARKER = "# pftls-hook register: managed file, `pftls-hook unregister` removes it"
# The caller's variables certbot may need, passed through by name: a private ACME server's
# CA (REQUESTS_CA_BUNDLE; pebble in the tests) and an HTTP proxy. Nothing else leaks in.
CERTBOT_ENV = ("REQUESTS_CA_BUNDLE", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy")
# certbot gets the DNS propagation wait plus this; the ACME exchange and our hook fit in it.
CERTBOT_TIMEOUT = 600.0
# Settings with a command-line flag, carried into the hook when they differ from the file's.
_FLAGS = (
    ("live_dir", "--live-dir"),
    ("postfix_config_dir", "--postfix-config-dir"),
    ("install_dir", "--install-dir"),
    ("ca_file", "--ca-file"),
    ("lock_file", "--lock-file"),
    ("hostnames", "--hostname"),
    ("probes", "--probe"),
    ("no_probe", "--no-probe"),
    ("probe_timeout", "--probe-timeout"),
    ("layout", "--layout"),
    ("min_days", "--min-days"),
    ("dane", "--dane"),
    ("dns_resolvers", "--dns-resolver"),
    ("metrics_file", "--metrics-file"),
    ("sni", "--sni"),
    ("postfix_config_dirs", "--postfix-config-dir"),  # repeats the first one: deduplicated
)
# Deploy settings that only the config file or the environment can give: certbot runs the
# hook without our environment, so these must live in the file.
_FILE_ONLY = ("lineages", "lock_timeout", "settle_timeout")


@dataclass(frozen=True)
class ObtainRequest:
    domains: tuple[str, ...]
    email: str
    authenticator: str = "dns-ovh"
    credentials: Path | None = None
    propagation_seconds: int = 60
    server: str | None = None
    webroot_path: Path | None = None
    certbot_args: tuple[str, ...] = ()  # passed to certbot verbatim, after ours
    # One lineage per key type, `<first domain>-<type>`; () = certbot's default, one lineage.
    key_types: tuple[str, ...] = ()


# ------------------------------------------------------------------------ the hook command


def _file_settings(settings: Settings) -> Settings:
    """What the config file alone gives: the hook reads the same file itself."""
    path = settings.config_file
    if path is None or not path.exists():
        return Settings()
    return load_settings({"config": str(path)}, {})


def hook_argv(settings: Settings) -> list[str]:
    """`<python> -m pftls_hook [--config FILE] <options that differ from the file> deploy-hook`"""
    base = _file_settings(settings)
    argv = [sys.executable, "-m", "pftls_hook"]
    config = settings.config_file
    if config is not None and config != DEFAULT_CONFIG and config.exists():
        argv += ["--config", str(config.absolute())]
    for name, flag in _FLAGS:
        value, default = getattr(settings, name), getattr(base, name)
        if value == default:
            continue
        if isinstance(value, bool):
            argv.append(flag)
        elif isinstance(value, tuple):
            for item in value:
                argv += [flag, str(item)]
        elif isinstance(value, Path):
            # certbot runs hooks from its own working directory.
            argv += [flag, str(value.absolute())]
        else:
            argv += [flag, str(value)]
    for name in _FILE_ONLY:
        if getattr(settings, name) != getattr(base, name):
            log.warning("%s comes from the environment: the hook will not see it", name)
    return [*argv, "deploy-hook"]


# ----------------------------------------------------------------------------- obtain


def certbot_command() -> list[str]:
    """certbot's CLI entry point in this environment, where its dns-ovh plugin is installed:
    the console script beside our interpreter, else certbot's `main` run by it."""
    script = Path(sys.executable).parent / "certbot"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "import sys; from certbot.main import main; sys.exit(main())"]


@dataclass(frozen=True)
class LineagePlan:
    """Which lineage certbot will write: an existing one (`cert_name`) or a new one."""

    domains: tuple[str, ...]
    cert_name: str | None = None
    existing: tuple[str, ...] = ()  # cert_name's names now

    def __str__(self) -> str:
        if self.cert_name is None:
            return f"a new lineage for {', '.join(self.domains)}"
        added = [d for d in self.domains if _norm(d) not in {_norm(n) for n in self.existing}]
        if not added:
            return f"lineage {self.cert_name}, which has these names (renewed only if due)"
        had = ", ".join(self.existing)
        return f"lineage {self.cert_name} ({had}) expanded with {', '.join(added)}"

    def certbot_args(self) -> list[str]:
        return [] if self.cert_name is None else ["--cert-name", self.cert_name, "--expand"]


def _norm(name: str) -> str:
    # certbot lowercases the names it is given; a trailing dot names the same host.
    return name.lower().rstrip(".")


def lineage_names(settings: Settings) -> dict[str, tuple[str, ...]]:
    """Each lineage's names, as certbot sees them: the subjectAltName of its certificate.
    A lineage that cannot be read safely now is left out: rather than name one we could not
    check, certbot is left to make a new lineage."""
    found = {}
    for name in list_lineages(settings.live_dir):
        try:
            leaf = leaf_of(settings, name)
        except RefusedError as exc:
            log.info("%s: names not read: %s", name, exc)
            continue
        found[name] = tuple(dns_names(leaf))
    return found


def plan_lineage(settings: Settings, domains: Sequence[str]) -> LineagePlan:
    """The lineage whose names are all among `domains` (the one with most names, if
    several): certbot asks before expanding it, so it is named. None such: a new one."""
    wanted = {_norm(d) for d in domains}
    subsets = [
        (len(names), cert_name, names)
        for cert_name, names in lineage_names(settings).items()
        if names and {_norm(n) for n in names} <= wanted
    ]
    if not subsets:
        return LineagePlan(tuple(domains))
    _, cert_name, names = max(subsets)
    return LineagePlan(tuple(domains), cert_name, names)


def obtain_argv(
    settings: Settings, request: ObtainRequest, plan: LineagePlan | None = None
) -> list[str]:
    """The admin's certbot command, with the deploy hook, our certbot config dir and the
    lineage to expand, if any."""
    argv = [*certbot_command(), "certonly"]
    if request.authenticator == "dns-ovh":
        argv += [
            "--dns-ovh",
            "--dns-ovh-credentials", str(Path(str(request.credentials)).absolute()),
            "--dns-ovh-propagation-seconds", str(request.propagation_seconds),
        ]  # fmt: skip
    elif request.authenticator == "standalone":
        argv += ["--standalone"]
    else:
        argv += ["--webroot", "--webroot-path", str(Path(str(request.webroot_path)).absolute())]
    argv += ["-n", "--agree-tos", "-m", request.email]
    for domain in request.domains:
        argv += ["-d", domain]
    # The lineage must appear under our live dir: certbot's config dir is its parent.
    argv += ["--config-dir", str(settings.certbot_config_dir.absolute())]
    if request.server:
        argv += ["--server", request.server]
    if plan is not None:
        argv += plan.certbot_args()
    # certbot stores this as renew_hook in renewal/<name>.conf: every renewal redeploys.
    argv += ["--deploy-hook", shlex.join(hook_argv(settings))]
    return [*argv, *request.certbot_args]


def _validate(request: ObtainRequest) -> None:
    if request.authenticator not in AUTHENTICATORS:
        raise UsageError(f"--authenticator: one of {', '.join(AUTHENTICATORS)}")
    if not request.domains or any(not d or d.startswith("-") for d in request.domains):
        raise UsageError("obtain: give at least one --domain NAME")
    if request.propagation_seconds < 0:
        raise UsageError("--propagation-seconds: must be 0 or more")
    if request.authenticator == "dns-ovh":
        if request.credentials is None:
            raise UsageError("obtain --authenticator dns-ovh: give --dns-ovh-credentials FILE")
        check_credentials(request.credentials)
    if request.authenticator == "webroot" and request.webroot_path is None:
        raise UsageError("obtain --authenticator webroot: give --webroot-path DIR")
    unknown = [t for t in request.key_types if t not in KEY_TYPES]
    if unknown or len(set(request.key_types)) != len(request.key_types):
        raise UsageError(f"--key-type: distinct ones of {', '.join(KEY_TYPES)}, e.g. ecdsa,rsa")
    if request.key_types and any(
        a.split("=")[0] in ("--cert-name", "--key-type") for a in request.certbot_args
    ):
        raise UsageError("--key-type names the lineages itself: drop --cert-name/--key-type")


def _certbot_failure(result: runner.Result) -> CommandError:
    # certbot ends with boilerplate ("Ask for help ...", "Saving debug log ..."): show the
    # lines that say what went wrong.
    noise = ("Saving debug log", "Ask for help", "See the logfile", "An unexpected error")
    lines = [
        line.strip()
        for line in (result.stderr or result.stdout).splitlines()
        if line.strip() and not line.strip().startswith(noise)
    ]
    detail = " / ".join(lines[-2:]) or "no output"
    return CommandError(f"certbot certonly exited {result.returncode}: {detail}")


def _certbot_runs(
    settings: Settings, request: ObtainRequest
) -> list[tuple[list[str], LineagePlan | None]]:
    """certbot's command(s): one per key type, each naming its lineage `<first>-<type>`
    (an existing one is expanded to the names asked for); else one, its lineage planned
    (expanded or new) unless the admin named it."""
    if request.key_types:
        first = _norm(request.domains[0])
        base = obtain_argv(settings, request)
        return [
            ([*base, "--cert-name", f"{first}-{kind}", "--expand", "--key-type", kind], None)
            for kind in request.key_types
        ]
    plan = None
    if not any(a.split("=")[0] in ("--cert-name", "--expand") for a in request.certbot_args):
        plan = plan_lineage(settings, request.domains)  # else the admin chose
    return [(obtain_argv(settings, request, plan), plan)]


def obtain(
    settings: Settings, request: ObtainRequest, *, echo: Callable[[str], None] = print
) -> Outcome | None:
    """Run certbot, then deploy. None on a dry run."""
    _validate(request)  # before anything runs, Postfix and certbot included
    deployer = Deployer(settings)
    hostnames = deployer.context().hostnames
    missing = [h for h in hostnames if not name_covers(request.domains, h)]
    if missing:
        # Postfix would never be given this certificate: the hook deploys only a lineage
        # that covers the required names.
        raise UsageError(
            f"the certificate would not cover {', '.join(missing)}, the name Postfix must "
            f"serve (myhostname, or --hostname): add --domain {missing[0]}"
        )
    runs = _certbot_runs(settings, request)
    if settings.dry_run:
        for argv, plan in runs:
            echo(f"would run {shlex.join(argv)}")
            if plan is not None:
                echo(f"certbot would write {plan}")
        echo(f"then deploy the lineage(s) covering {', '.join(hostnames)}")
        return None
    for argv, plan in runs:
        if plan is not None:
            log.info("certbot writes %s", plan)
        log.info("running certbot certonly for %s", ", ".join(request.domains))
        result = runner.run(
            argv, timeout=request.propagation_seconds + CERTBOT_TIMEOUT, keep_env=CERTBOT_ENV
        )
        for line in (result.stdout + result.stderr).splitlines():
            log.debug("certbot: %s", line)
        if not result.ok:
            raise _certbot_failure(result)
    # Every selected chain: with --key-type, one per algorithm.
    return deployer.deploy(None)


# --------------------------------------------------------------------- register / unregister


def hook_path(settings: Settings) -> Path:
    return settings.certbot_config_dir / "renewal-hooks" / "deploy" / HOOK_FILE


def hook_script(settings: Settings) -> bytes:
    return (
        "#!/bin/sh\n"
        f"{MARKER}\n"
        "# certbot runs this after each renewal: deploy the certificate to Postfix.\n"
        f"exec {shlex.join(hook_argv(settings))}\n"
    ).encode()


def _read_ours(path: Path) -> bytes | None:
    """The current hook file if it is ours; None if there is none; refuse anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise EnvironmentRefusedError(f"{path}: not a regular file: left alone")
    data = path.read_bytes()
    if MARKER.encode() not in data:
        raise EnvironmentRefusedError(
            f"{path}: exists and was not written by pftls-hook: left alone (move it away first)"
        )
    return data


def _hooks_dir(settings: Settings) -> Path:
    """renewal-hooks/deploy/, created 0755 as certbot makes it; refused if others could
    write in it (certbot runs, as root, whatever is executable there)."""
    config_dir = settings.certbot_config_dir
    if not config_dir.is_dir():
        raise EnvironmentRefusedError(f"{config_dir}: no certbot config dir (see --live-dir)")
    directory = hook_path(settings).parent
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise EnvironmentRefusedError(f"{directory}: not a directory")
    reason = untrusted(st)
    if reason:
        raise EnvironmentRefusedError(f"{directory}: {reason}")
    return directory


def register(settings: Settings, *, echo: Callable[[str], None] = print) -> str:
    path = hook_path(settings)
    script = hook_script(settings)
    current = _read_ours(path)
    if current == script:
        st = os.stat(path)
        if stat.S_IMODE(st.st_mode) == 0o755 and st.st_uid in (0, os.geteuid()):
            return f"{path}: already registered"
    if settings.dry_run:
        echo(f"would write {path} (0755):")
        echo(script.decode().rstrip("\n"))
        return "dry run: nothing changed"
    _hooks_dir(settings)
    # The temp name ends in "~": certbot skips such files, so it never runs a half-written
    # hook (the temp file is executable before its bytes are all there).
    atomic_write(path, script, 0o755, temp_suffix="~")
    return f"{path}: registered"


def unregister(settings: Settings, *, echo: Callable[[str], None] = print) -> str:
    path = hook_path(settings)
    if _read_ours(path) is None:
        return f"{path}: not registered, nothing to do"
    if settings.dry_run:
        echo(f"would remove {path}")
        return "dry run: nothing changed"
    path.unlink()
    fsync_dir(path.parent)
    return f"{path}: removed"


__all__ = [
    "LineagePlan",
    "ObtainRequest",
    "check_credentials",
    "hook_argv",
    "obtain",
    "plan_lineage",
    "register",
    "unregister",
]
