"""The only place that runs `postconf` and `postfix`, for one instance (`-c DIR`).

Contract: `Postfix(config_dir).state()` reads what a deploy needs in two postconf calls
(`-x` for the parameters, `-M` for the services and their `-o` overrides), once per command;
`parameters(*names)` reads any other effective values (configure's TLS profile); `set`/
`restore` change main.cf in one call each; `check`, `is_running` and `reload` wrap the
`postfix` command (`reload` tells a stopped Postfix from a failure). `read_instances(settings,
postfixes)` reads every instance a command serves, with where its clients meet TLS and the
notes an admin should see. Every call goes through
`runner.run` (argument list, fixed PATH, timeout) and a failure raises `CommandError` with
Postfix's own last line.

Why one `postconf -e` for all changes: postconf rewrites main.cf atomically, but a main.cf
modified within the last second or two is "hot" and every later reader waits for it to cool
(measured: `postconf -e` then `postfix reload` 1.85 s against 0.04 s for the reload alone).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pftls_hook import runner
from pftls_hook.config import Endpoint, Settings

# The parameters pftls-hook manages (DESIGN invariant 5: nothing else in main.cf).
MANAGED = (
    "smtpd_tls_cert_file",
    "smtpd_tls_key_file",
    "smtpd_tls_chain_files",
    "tls_server_sni_maps",
)
_READ = (
    "myhostname",
    *MANAGED,
    "smtpd_tls_eccert_file",
    "smtpd_tls_dcert_file",
    "smtpd_tls_security_level",
    "smtpd_use_tls",
    "smtpd_enforce_tls",
    "smtpd_tls_wrappermode",
)
_TLS_SERVICES = ("smtpd", "postscreen")
_TLS_LEVELS = ("may", "encrypt")

Runner = Callable[..., runner.Result]


@dataclass(frozen=True)
class Override:
    """A master.cf `-o` setting: it beats main.cf for that one service."""

    service: str
    param: str
    value: str

    def __str__(self) -> str:
        return f"master.cf {self.service}: -o {self.param}={self.value}"


@dataclass(frozen=True)
class Service:
    name: str
    type: str
    command: str
    chroot: str = "-"  # master.cf column 5: y, n, or - (the default, n since Postfix 3.0)


@dataclass(frozen=True)
class PostfixState:
    effective: Mapping[str, str]  # `postconf -x`: values as Postfix uses them
    services: tuple[Service, ...]
    overrides: tuple[Override, ...]

    @property
    def myhostname(self) -> str:
        return self.effective["myhostname"]

    @property
    def uses_chain_files(self) -> bool:
        return bool(self.effective.get("smtpd_tls_chain_files", "").strip())

    def pointed_files(self) -> list[str]:
        """The files smtpd loads its key and certificates from, per main.cf."""
        if self.uses_chain_files:
            return self.effective["smtpd_tls_chain_files"].replace(",", " ").split()
        key, cert = (
            self.effective.get(k, "") for k in ("smtpd_tls_key_file", "smtpd_tls_cert_file")
        )
        return [f for f in dict.fromkeys((key, cert)) if f]

    def tls_overrides(self) -> list[Override]:
        """Overrides of the managed parameters: they bypass main.cf, so a deploy misses them."""
        return [o for o in self.overrides if o.param in MANAGED or o.param.endswith("cert_file")]

    def probe_endpoints(self) -> tuple[list[Endpoint], list[str]]:
        """Where clients meet smtpd's TLS: inet smtpd/postscreen services, on loopback
        unless master.cf binds an address. Returns the endpoints and notes on skipped ones."""
        endpoints, notes = [], []
        for svc in self.services:
            if svc.type != "inet" or svc.command not in _TLS_SERVICES:
                continue
            own = {o.param: o.value for o in self.overrides if o.service == f"{svc.name}/inet"}
            wrapper = own.get(
                "smtpd_tls_wrappermode", self.effective.get("smtpd_tls_wrappermode", "no")
            )
            level = own.get("smtpd_tls_security_level", server_tls_level(self.effective)[0])
            endpoint = _endpoint(svc.name, implicit_tls=wrapper == "yes")
            if endpoint is None:
                notes.append(f"master.cf {svc.name}: cannot tell its port, not probed")
            elif wrapper != "yes" and level not in _TLS_LEVELS:
                notes.append(f"master.cf {svc.name}: TLS not enabled (level {level!r}), not probed")
            else:
                endpoints.append(endpoint)
        return endpoints, notes


def server_tls_level(values: Mapping[str, str]) -> tuple[str, str]:
    """smtpd's TLS level and where it comes from: `smtpd_tls_security_level`, else the
    pre-2.3 booleans, which still decide when the level is unset."""
    if values.get("smtpd_tls_security_level"):
        return values["smtpd_tls_security_level"], "smtpd_tls_security_level"
    if values.get("smtpd_enforce_tls") == "yes":
        return "encrypt", "smtpd_enforce_tls = yes"
    if values.get("smtpd_use_tls") == "yes":
        return "may", "smtpd_use_tls = yes"
    return "none", "default"


def pointing(key: str, cert: str, *, chain_files: bool) -> dict[str, str]:
    """The main.cf values that make smtpd load `key` and `cert` (one path when combined).
    When main.cf uses `smtpd_tls_chain_files`, the legacy parameters are ignored by Postfix,
    so that one is managed instead."""
    if chain_files:
        return {"smtpd_tls_chain_files": key if key == cert else f"{key} {cert}"}
    return {"smtpd_tls_cert_file": cert, "smtpd_tls_key_file": key}


def _endpoint(name: str, *, implicit_tls: bool) -> Endpoint | None:
    host, _, port = name.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if host in ("0.0.0.0", "*"):  # noqa: S104 - a wildcard bind is probed on loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if port.isdigit():
        return Endpoint(host, int(port), implicit_tls)
    try:
        return Endpoint(host, socket.getservbyname(port, "tcp"), implicit_tls)
    except OSError:
        return None


def _parse_assignments(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        name, sep, value = line.partition(" = ")
        if sep:
            values[name.strip()] = value.strip()
        elif line.rstrip().endswith(" ="):
            values[line.rstrip()[:-2].strip()] = ""
    return values


def _parse_services(text: str) -> tuple[list[Service], list[Override]]:
    """`postconf -M` (not on a terminal: one line per service, `-o` settings inline, a
    value with spaces as `-o { name = value }`): the services and their overrides."""
    services, overrides = [], []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8 or line[:1].isspace():
            continue
        service = Service(fields[0], fields[1], fields[7], fields[4])
        services.append(service)
        args = iter(fields[8:])
        for arg in args:
            if arg != "-o":
                continue
            setting = next(args, "")
            if setting == "{":
                words = []
                for word in args:
                    if word == "}":
                        break
                    words.append(word)
                setting = " ".join(words).replace(" = ", "=", 1)
            param, sep, value = setting.partition("=")
            if sep:
                where = f"{service.name}/{service.type}"
                overrides.append(Override(where, param.strip(), value.strip()))
    return services, overrides


class Postfix:
    def __init__(self, config_dir: Path, run: Runner = runner.run) -> None:
        self.config_dir = config_dir
        self._run = run

    def _postconf(self, *args: str) -> runner.Result:
        return self._run(["postconf", "-c", str(self.config_dir), *args], timeout=30).check()

    def _postfix(self, *args: str, timeout: float = 60) -> runner.Result:
        return self._run(["postfix", "-c", str(self.config_dir), *args], timeout=timeout)

    def state(self) -> PostfixState:
        """Everything a deploy reads of Postfix, in two commands run side by side: each is
        mostly postconf's start-up (8 ms here), which a no-op deploy hook would wait for
        twice."""
        with ThreadPoolExecutor(2) as pool:
            params, services = pool.map(
                lambda args: self._postconf(*args), [("-x", *_READ), ("-M",)]
            )
        effective = _parse_assignments(params.stdout)
        found, overrides = _parse_services(services.stdout)
        return PostfixState(effective, tuple(found), tuple(overrides))

    def parameters(self, *names: str) -> dict[str, str]:
        """Effective values (`postconf -x`: defaults included, `$name` expanded) of `names`."""
        return _parse_assignments(self._postconf("-x", *names).stdout)

    def explicit(self, *names: str) -> dict[str, str]:
        """What main.cf itself says of `names` (`postconf -n`: unexpanded, unset ones absent):
        read just before a main.cf change, so a rollback can put exactly that back."""
        return _parse_assignments(self._postconf("-n", *names).stdout)

    def set(self, values: Mapping[str, str]) -> None:
        """All changes in one `postconf -e`: main.cf is replaced atomically, and only once."""
        if values:
            self._postconf("-e", *(f"{name} = {value}" for name, value in values.items()))

    def restore(self, explicit_before: Mapping[str, str], names: Sequence[str]) -> None:
        """Put `names` back as main.cf had them: the old value, or removed if it was unset.

        Only what differs now is written: a `postconf -e` that failed changed nothing (it
        replaces main.cf atomically), and writing again would fail again (a read-only or
        full /etc/postfix), turning a clean rollback into a failed one."""
        now = self.explicit(*names)
        back = {
            n: explicit_before[n]
            for n in names
            if n in explicit_before and now.get(n) != explicit_before[n]
        }
        unset = [n for n in names if n not in explicit_before and n in now]
        self.set(back)
        if unset:
            self._postconf("-X", *unset)

    def check(self) -> None:
        self._postfix("check").check()

    def is_running(self) -> bool:
        return self._postfix("status", timeout=30).ok

    def reload(self) -> bool:
        """Reload; False when Postfix is not running (nothing to reload). `postfix status`
        runs only when the reload failed, to tell that case from a real failure: the
        no-op and routine paths never pay for it."""
        result = self._postfix("reload")
        if result.ok:
            return True
        if not self.is_running():
            return False
        result.check()
        return True


@dataclass(frozen=True)
class Instance:
    """One Postfix instance as read for this command, and where its clients meet TLS."""

    postfix: Postfix
    state: PostfixState
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True)
class Reading:
    """Every instance a command serves, read once (under the lock when it deploys): the
    first decides the selection; `notes` are for the admin (overrides, unprobed services)."""

    instances: tuple[Instance, ...]
    notes: tuple[str, ...]

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(dict.fromkeys(e for i in self.instances for e in i.endpoints))


def read_instances(settings: Settings, postfixes: Sequence[Postfix]) -> Reading:
    notes: list[str] = []
    instances = []
    for index, postfix in enumerate(postfixes):
        state = postfix.state()
        where = "" if len(postfixes) == 1 else f"{postfix.config_dir}: "
        notes += [f"{where}{o} overrides main.cf for that service" for o in state.tls_overrides()]
        for extra in ("smtpd_tls_eccert_file", "smtpd_tls_dcert_file"):
            if state.effective.get(extra) and not state.uses_chain_files:
                notes.append(
                    f"{where}main.cf {extra} is set too: some clients may be served that one"
                )
        # --probe names endpoints for the whole deploy: the first instance carries them.
        endpoints: list[Endpoint] = list(settings.probes) if index == 0 else []
        if not settings.probes and not settings.no_probe:
            endpoints, skipped = state.probe_endpoints()
            notes.extend(where + s for s in skipped)
        instances.append(Instance(postfix, state, tuple(endpoints)))
    return Reading(tuple(instances), tuple(notes))
