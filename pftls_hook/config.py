"""Settings, built once: defaults < config file < environment < command-line flags.

Contract: `load_settings(flags, environ)` returns a frozen `Settings` or raises `UsageError`
with one line. `flags` holds only the options given on the command line (absent = not
given). The config file is TOML (`/etc/pftls-hook/config.toml`, `$PFTLS_HOOK_CONFIG`, or
`--config`); its keys mirror the long options (`live-dir` or `live_dir`). The file decides
what root deploys, so it must be owned by root and writable by nobody else.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pftls_hook.errors import UsageError

DEFAULT_CONFIG = Path("/etc/pftls-hook/config.toml")
LAYOUTS = ("combined", "separate")


@dataclass(frozen=True)
class Endpoint:
    """Where a mail client would connect: STARTTLS, or TLS from the first byte (port 465)."""

    host: str
    port: int
    implicit_tls: bool = False
    algorithm: str | None = None  # a probe offering only this key algorithm (None: any)
    servername: str | None = None  # a probe sending this SNI name (None: none)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        client = [f"{self.algorithm} client"] if self.algorithm else []
        client += [f"SNI {self.servername}"] if self.servername else []
        offers = f" ({', '.join(client)})" if client else ""
        return f"{host}:{self.port}{'/tls' if self.implicit_tls else ''}{offers}"


@dataclass(frozen=True)
class DnsServer:
    """A DNS resolver to ask for TLSA records (`--dns-resolver ADDR[:PORT]`)."""

    address: str
    port: int = 53

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


DANE_MODES = ("enforce", "warn", "off")
_CHOICES = {"layout": LAYOUTS, "dane": DANE_MODES}


@dataclass(frozen=True)
class Settings:
    live_dir: Path = Path("/etc/letsencrypt/live")
    postfix_config_dir: Path = Path("/etc/postfix")
    postfix_config_dirs: tuple[Path, ...] = ()  # several instances (the first is the one above)
    install_dir: Path = Path("/etc/postfix/tls")
    ca_file: Path = Path("/etc/ssl/certs/ca-certificates.crt")
    lock_file: Path = Path("/run/pftls-hook/deploy.lock")
    hostnames: tuple[str, ...] = ()
    probes: tuple[Endpoint, ...] = ()
    no_probe: bool = False
    layout: str = "combined"
    min_days: int = 1
    lineages: tuple[str, ...] = ()
    sni: tuple[str, ...] = ()  # names served their own chains by SNI (tls_server_sni_maps)
    dry_run: bool = False
    verbosity: int = 0
    probe_timeout: float = 10.0
    lock_timeout: float = 120.0
    settle_timeout: float = 10.0
    debounce: float = 0.5
    reconcile_interval: float = 600.0
    dane: str = "enforce"
    dns_resolvers: tuple[DnsServer, ...] = ()  # empty: the nameservers of /etc/resolv.conf
    dane_ports: tuple[int, ...] = (25,)
    # Prometheus textfile (e.g. in node_exporter's textfile collector directory); metrics.py
    metrics_file: Path | None = None
    config_file: Path | None = field(default=None, compare=False)

    @property
    def certbot_config_dir(self) -> Path:
        return self.live_dir.parent

    @property
    def instances(self) -> tuple[Path, ...]:
        """The Postfix instances each deploy serves, the first deciding the selection."""
        return self.postfix_config_dirs or (self.postfix_config_dir,)


def parse_endpoint(text: str) -> Endpoint:
    """`HOST:PORT`, `[v6]:PORT`, with `/tls` for implicit TLS (smtps, port 465)."""
    raw = text.strip()
    implicit = raw.endswith("/tls")
    raw = raw.removesuffix("/tls")
    host, sep, port = raw.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--probe {text!r}: expected HOST:PORT, e.g. 127.0.0.1:25")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise UsageError(f"--probe {text!r}: HOST must be an IP address or localhost") from None
    return Endpoint(host, int(port), implicit)


def parse_dns_server(text: str) -> DnsServer:
    """`ADDR`, `ADDR:PORT`, `[v6]:PORT` or a bare IPv6 address; port 53 by default."""
    raw = text.strip()
    if raw.startswith("["):
        host, _, rest = raw[1:].partition("]")
        port = rest.removeprefix(":") if rest.startswith(":") else ("53" if not rest else "")
    elif raw.count(":") == 1:
        host, port = raw.split(":")
    else:
        host, port = raw, "53"
    try:
        address = str(ipaddress.ip_address(host))
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError
    except ValueError:
        raise UsageError(
            f"--dns-resolver {text!r}: expected ADDR[:PORT], e.g. 127.0.0.1:53 or [::1]:53"
        ) from None
    return DnsServer(address, int(port))


_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def parse_sni_name(text: str) -> str:
    """A name clients send by SNI: a DNS name in A-label form (Postfix looks up the name
    as sent; IDNs arrive as A-labels), lower-cased."""
    name = text.strip().lower().removesuffix(".")
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(map(_DNS_LABEL.match, labels)):
        raise UsageError(f"sni: {text!r} is not a DNS name (A-labels, e.g. mail.example.com)")
    return name


def _as_list(value: Any, key: str) -> list[str]:
    if isinstance(value, str):
        return value.replace(",", " ").split()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise UsageError(f"{key}: expected a string or a list of strings")


_BOOL_WORDS = {"1": True, "yes": True, "true": True, "0": False, "no": False, "false": False}


def _convert(key: str, value: Any) -> Any:  # noqa: PLR0911, PLR0912 - one branch per kind
    """One setting's value from TOML, the environment or a flag, checked and typed."""
    try:
        if key in ("hostnames", "lineages"):
            return tuple(_as_list(value, key))
        if key == "postfix_config_dirs":
            return tuple(dict.fromkeys(Path(v) for v in _as_list(value, key)))
        if key == "sni":
            return tuple(dict.fromkeys(parse_sni_name(v) for v in _as_list(value, key)))
        if key == "probes":
            return tuple(parse_endpoint(v) for v in _as_list(value, key))
        if key == "dns_resolvers":
            return tuple(parse_dns_server(v) for v in _as_list(value, key))
        if key == "dane_ports":
            items = value if isinstance(value, list) else _as_list(value, key)
            ports = tuple(int(p) for p in items if not isinstance(p, bool))
            if not ports or len(ports) != len(items) or not all(0 < p < 65536 for p in ports):
                raise ValueError
            return ports
        if key in ("no_probe", "dry_run"):
            if isinstance(value, bool):
                return value
            return _BOOL_WORDS[str(value).lower()]
        if key in ("min_days", "verbosity"):
            number = int(value)
            if number < 0:
                raise ValueError
            return number
        if key in ("probe_timeout", "lock_timeout", "settle_timeout", "debounce"):
            seconds = float(value)
            if seconds < 0:
                raise ValueError
            return seconds
        if key == "reconcile_interval":
            seconds = float(value)
            if seconds <= 0:
                raise ValueError
            return seconds
        if key in _CHOICES:
            if value not in _CHOICES[key]:
                raise UsageError(f"{key}: {value!r} is not one of {', '.join(_CHOICES[key])}")
            return value
        if isinstance(value, str | Path) and str(value):
            return Path(value)
    except (ValueError, KeyError, TypeError):
        pass
    raise UsageError(f"{key.replace('_', '-')}: invalid value {value!r}")


# Accepted spellings in files and environment, mapped to setting names.
_ALIASES = {
    "hostname": "hostnames",
    "probe": "probes",
    "lineage": "lineages",
    "dns_resolver": "dns_resolvers",
    "dane_port": "dane_ports",
}
_SETTABLE = {f.name for f in fields(Settings)} - {"config_file"}


def _key(raw: str) -> str:
    key = raw.replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _SETTABLE:
        raise UsageError(f"unknown setting {raw!r}")
    return key


def _read_config_file(path: Path, explicit: bool) -> dict[str, Any]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if explicit:
            raise UsageError(f"{path}: config file not found") from None
        return {}
    from pftls_hook.fsutil import untrusted  # noqa: PLC0415 - `--help` loads no core module

    reason = untrusted(st)
    if reason:
        raise UsageError(f"{path}: config file {reason}")
    import tomllib  # noqa: PLC0415 - only when there is a file: the hook starts leaner

    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None


def load_settings(flags: Mapping[str, Any], environ: Mapping[str, str]) -> Settings:
    values: dict[str, Any] = {}
    config_flag = flags.get("config")
    env_config = environ.get("PFTLS_HOOK_CONFIG")
    path = Path(config_flag or env_config or DEFAULT_CONFIG)
    for raw, value in _read_config_file(path, bool(config_flag or env_config)).items():
        key = _key(raw)
        values[key] = _convert(key, value)
    for name, value in environ.items():
        if name.startswith("PFTLS_HOOK_") and name != "PFTLS_HOOK_CONFIG":
            key = _key(name.removeprefix("PFTLS_HOOK_").lower())
            values[key] = _convert(key, value)
    for raw, value in flags.items():
        if raw == "config" or value is None:
            continue
        key = _key(raw)
        if key == "postfix_config_dir" and isinstance(value, list):
            # --postfix-config-dir, repeatable: several give the instances.
            values.pop("postfix_config_dirs", None)  # the flags replace the file's list
            key = "postfix_config_dirs" if len(value) > 1 else key
            values[key] = _convert(key, value if len(value) > 1 else value[0])
            continue
        values[key] = _convert(key, value)
    if values.get("postfix_config_dirs"):
        values["postfix_config_dir"] = values["postfix_config_dirs"][0]
    return replace(Settings(), config_file=path, **values)
