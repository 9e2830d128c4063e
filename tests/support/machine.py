"""Facts about the machine a figure was measured on, for the pages that publish figures.

`facts(repo)` returns (label, value) rows: date, CPU, cores, RAM, kernel, OS, the versions
of Python, Postfix, certbot, OpenSSL, cryptography and watchdog, and the commit of `repo`
(marked when pftls_hook/ has uncommitted changes). `load_average()` is read separately, at
the start and at the end of a run: other work on a shared machine shows there. Nothing here
raises: a fact that cannot be read is "unknown".
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
COMMAND_TIMEOUT = 30.0


def first_line(argv: Sequence[str]) -> str:
    """The first line a command prints (stdout, else stderr), or "unknown"."""
    try:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
            env={"PATH": PATH, "LANG": "C"},
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else ""


def version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def proc_field(file: str, name: str) -> str | None:
    """The value of the first `name: value` line of /proc/<file>, if any."""
    try:
        lines = Path("/proc", file).read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(name)), None)


def os_name() -> str:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME", "unknown")
    except OSError:
        return "unknown"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def commit(repo: Path) -> str:
    """The short commit of `repo`, marked when pftls_hook/ differs from it."""
    head = first_line(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    dirty = first_line(["git", "-C", str(repo), "status", "--porcelain", "--", "pftls_hook"])
    if dirty not in ("", "unknown"):
        head += " (pftls_hook/ with uncommitted changes)"
    return head


def facts(repo: Path) -> list[tuple[str, str]]:
    memory = proc_field("meminfo", "MemTotal")
    return [
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("CPU", proc_field("cpuinfo", "model name") or platform.machine()),
        ("cores", str(os.cpu_count())),
        ("RAM", f"{int(memory.split()[0]) / 1024 / 1024:.1f} GiB" if memory else "unknown"),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("OS", os_name()),
        ("Python", platform.python_version()),
        ("Postfix", first_line(["postconf", "-d", "-h", "mail_version"])),
        ("certbot", version("certbot")),
        ("OpenSSL", first_line(["openssl", "version"])),
        ("cryptography", version("cryptography")),
        ("watchdog", version("watchdog")),
        ("pftls-hook commit", commit(repo)),
    ]


__all__ = ["commit", "facts", "first_line", "load_average", "os_name", "proc_field", "version"]
