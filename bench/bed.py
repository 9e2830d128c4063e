"""The test bed the benchmark runs on: pebble, one private Postfix on 127.0.0.1, the venv's
certbot with one lineage, pftls-hook's command line, the shell hook, and a crowd of
unrelated lineages that can be moved in and out of live/.

Every piece comes from tests/support (the same wrappers the tests use); this module only
puts them together and talks to pftls-hook through its command line and its documented
options, nothing else of pftls_hook.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.certbot import Certbot
from tests.support.net import LOOPBACK, free_port
from tests.support.pebble import Pebble
from tests.support.pki import CA
from tests.support.postfix import PostfixInstance, wait_for_served_sha256
from tests.support.tool import Tool

from .measure import BenchError, leaf_sha256, run_checked

CERT_NAME = "mail"
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
SERVED_TIMEOUT = 30.0
SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")  # pftls-hook's default --ca-file
# Postfix treats a main.cf modified less than about a second or two ago as "hot", and every
# postconf/postfix waits until it cools: a measured run never starts on a hot main.cf.
MAIN_CF_COOL_S = 2.5

BASELINE_SH = """#!/bin/sh
# The common shell deploy hook: verify, copy, reload.
openssl verify -CAfile {roots} -untrusted "$RENEWED_LINEAGE/chain.pem" -purpose sslserver \\
    "$RENEWED_LINEAGE/fullchain.pem" \\
  && cp "$RENEWED_LINEAGE/fullchain.pem" "$RENEWED_LINEAGE/privkey.pem" {copy_dir}/ \\
  && postfix -c {config_dir} reload
"""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def workspace(keep: bool, prefix: str = "pftls-bench-") -> Iterator[Path]:
    """A short temporary directory, traversable (0711) by Postfix's unprivileged daemons."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o711)
    try:
        yield base
    finally:
        if keep:
            say(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


class Crowd:
    """`count` unrelated, valid lineages (a host that also serves websites): certificates
    for other names from a CA of their own, whose root is also a trust anchor. They live in
    archive/ and renewal/ all the time; their live/<name> directories are moved between
    live/ and a parking directory beside it (same depth, so the relative links resolve)."""

    def __init__(self, rig: Tool, count: int) -> None:
        self.rig = rig
        self.live = rig.live_dir
        self.parked = rig.config_dir / "parked"
        self.names = [f"site{i:04d}.web.test.example" for i in range(count)]
        self.inside = True
        self.root = CA.root("bench websites root")
        self.issuer = self.root.intermediate("bench websites intermediate")

    def create(self) -> None:
        for name in self.names:
            self.rig.lineage(self.issuer.issue(name, f"www.{name}"), name=name)
        self.parked.mkdir(mode=0o700, exist_ok=True)
        self.leave()

    def enter(self) -> None:
        if not self.inside:
            for name in self.names:
                os.rename(self.parked / name, self.live / name)
            self.inside = True

    def leave(self) -> None:
        if self.inside:
            for name in self.names:
                os.rename(self.live / name, self.parked / name)
            self.inside = False


class Bed:
    def __init__(self, base: Path, crowd_size: int) -> None:
        self.base = base
        self.pebble = Pebble(base / "pebble")
        self.postfix = PostfixInstance(base / "pf", free_port())
        self.certbot = Certbot(base / "certbot", self.pebble)
        self.roots = base / "roots.pem"  # pebble's root, and the crowd's
        # The system's CA bundle (the default --ca-file) with those roots: None without one.
        self.bundle: Path | None = base / "bundle.pem" if SYSTEM_BUNDLE.is_file() else None
        self.copy_dir = base / "copy"  # where the shell hook copies to
        self.baseline_hook = base / "baseline-hook.sh"
        self.rig = Tool(self.postfix, base, self.roots, certbot_config_dir=self.certbot.config_dir)
        self.crowd = Crowd(self.rig, crowd_size) if crowd_size else None
        self.tool = [sys.executable, "-m", "pftls_hook", *self.rig.options()]

    @property
    def lineage(self) -> Path:
        return self.certbot.lineage(CERT_NAME)

    @property
    def main_cf(self) -> Path:
        return self.postfix.config_dir / "main.cf"

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", **extra}

    def hook_env(self) -> dict[str, str]:
        """What certbot hands a deploy hook (storage paths of the renewed lineage)."""
        return self.env(RENEWED_LINEAGE=str(self.lineage), RENEWED_DOMAINS=self.postfix.hostname)

    def start(self, stack: contextlib.ExitStack) -> None:
        say("start pebble and a private Postfix instance on 127.0.0.1")
        stack.callback(self.pebble.stop)
        self.pebble.start()
        self.postfix.create()
        stack.callback(self.postfix.stop)
        self.postfix.start()
        roots = self.pebble.roots_pem()
        if self.crowd is not None:
            roots += self.crowd.root.cert_pem
        self.roots.write_bytes(roots)
        if self.bundle is not None:
            self.bundle.write_bytes(SYSTEM_BUNDLE.read_bytes() + roots)
        self.copy_dir.mkdir(mode=0o700)
        self.baseline_hook.write_text(
            BASELINE_SH.format(
                roots=shlex.quote(str(self.roots)),
                copy_dir=shlex.quote(str(self.copy_dir)),
                config_dir=shlex.quote(str(self.postfix.config_dir)),
            )
        )
        self.baseline_hook.chmod(0o755)
        say(f"certbot certonly -d {self.postfix.hostname} (pebble)")
        self.certbot.certonly([self.postfix.hostname], cert_name=CERT_NAME)
        if self.crowd is not None:
            say(f"{len(self.crowd.names)} unrelated lineages (parked outside live/ for now)")
            self.crowd.create()
        say("pftls-hook install: main.cf points into its install dir from now on")
        run_checked([*self.tool, "install"], self.env())
        self.wait_served()

    def renew(self) -> tuple[float, float]:
        """`certbot renew --force-renewal`, no hook: (start, exit) in epoch seconds."""
        before = leaf_sha256(self.lineage / "cert.pem")
        start = time.time()
        self.certbot.renew(force=True, cert_name=CERT_NAME)
        exited = time.time()
        if leaf_sha256(self.lineage / "cert.pem") == before:
            raise BenchError("certbot renew --force-renewal left cert.pem as it was")
        return start, exited

    def wait_served(self) -> None:
        expected = leaf_sha256(self.lineage / "cert.pem")
        wait_for_served_sha256(LOOPBACK, self.postfix.port, expected, timeout=SERVED_TIMEOUT)

    def wait_main_cf_cool(self) -> None:
        age = time.time() - self.main_cf.stat().st_mtime
        if age < MAIN_CF_COOL_S:
            time.sleep(MAIN_CF_COOL_S - age)

    def point_at_copies(self) -> None:
        """main.cf to the shell hook's copies (one file each, as that hook's users have)."""
        for name in ("fullchain.pem", "privkey.pem"):
            shutil.copyfile(self.lineage / name, self.copy_dir / name)
        (self.copy_dir / "privkey.pem").chmod(0o600)
        self.postfix.postconf(
            "-e",
            "smtpd_tls_chain_files =",
            f"smtpd_tls_cert_file = {self.copy_dir / 'fullchain.pem'}",
            f"smtpd_tls_key_file = {self.copy_dir / 'privkey.pem'}",
        )
        self.postfix.reload()
        self.wait_served()

    def snapshot(self) -> tuple[bytes, list[tuple[str, int]]]:
        """main.cf and the install dir (names, mtimes): what a no-op must leave as it was."""
        install = self.rig.install_dir
        files = sorted(
            (str(p.relative_to(install)), p.lstat().st_mtime_ns) for p in install.rglob("*")
        )
        return self.main_cf.read_bytes(), files
