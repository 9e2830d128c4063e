"""A private Postfix serving a certificate that pftls-hook installed: the state a renewal
meets, reached quickly, plus what the reliability cases ask of it.

`first_deploy(tool)` points main.cf at the install dir's current file itself and back-dates
main.cf, so pftls-hook's first install writes no main.cf: a main.cf write makes Postfix's
readers wait ~2 s for the file to "cool", a cost of the setup, not of what is measured.
`start(tool, *args)` is `Tool.run` without the wait, for runs that get killed or race.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from .pki import Leaf
from .postfix import PostfixInstance, wait_for_served_sha256
from .tool import NAME, Tool, assert_exit

LOOPBACK = "127.0.0.1"


def sha256(leaf: Leaf) -> str:
    return hashlib.sha256(leaf.cert_der).hexdigest()


def combined(leaf: Leaf) -> bytes:
    """The combined layout's file: the key, then the full chain."""
    return leaf.key_pem() + leaf.fullchain_pem


def lineage_files(leaf: Leaf) -> dict[str, bytes]:
    """The keyword arguments of tests/support/lineage.py's writers for `leaf`."""
    return {"cert_pem": leaf.cert_pem, "chain_pem": leaf.chain_pem, "privkey_pem": leaf.key_pem()}


def current(tool: Tool, name: str = NAME) -> Path:
    """The combined file main.cf names: `<install dir>/<lineage>.pem`."""
    return tool.install_dir / f"{name}.pem"


def cool_main_cf(postfix: PostfixInstance) -> None:
    past = time.time() - 60
    os.utime(postfix.config_dir / "main.cf", (past, past))


def first_deploy(tool: Tool, *options: str) -> None:
    """Deploy the lineage as it is now (`tool.lineage` first) and wait until it is served."""
    path = current(tool)
    tool.postfix.postconf("-e", f"smtpd_tls_cert_file = {path}", f"smtpd_tls_key_file = {path}")
    cool_main_cf(tool.postfix)
    assert_exit(tool.run(*options, "install"), 0)


def wait_serves(tool: Tool, leaf: Leaf, *, timeout: float = 10.0) -> None:
    """Postfix shows `leaf` to a STARTTLS client, with a chain that verifies against the
    tool's trust anchor (when it has one). Bounded wait: `postfix reload` is asynchronous."""
    wait_for_served_sha256(
        LOOPBACK, tool.postfix.port, sha256(leaf), timeout=timeout, cafile=tool.ca_file
    )


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment without PFTLS_HOOK_* or RENEWED_LINEAGE, plus `extra`."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PFTLS_HOOK_")}
    environ.pop("RENEWED_LINEAGE", None)
    environ.update(extra or {})
    return environ


def start(tool: Tool, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    """`python -m pftls_hook <tool's options> <args>`, started, not waited for."""
    return subprocess.Popen(
        [sys.executable, "-m", "pftls_hook", *tool.options(), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(env),
    )


__all__ = [
    "LOOPBACK",
    "clean_env",
    "combined",
    "cool_main_cf",
    "current",
    "first_deploy",
    "lineage_files",
    "sha256",
    "start",
    "wait_serves",
]
