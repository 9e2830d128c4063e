"""Debian's pebble (a test ACME server) on loopback, for certbot to talk to."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import urllib.request
from pathlib import Path
from typing import IO

from .net import LOOPBACK, free_port, port_accepts, wait_until
from .pki import CA
from .process import terminate

PEBBLE = "/usr/bin/pebble"
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
HTTP_TIMEOUT = 10.0


class Pebble:
    """One pebble process with its own config, TLS certificate and ports.

    By default challenges are not really validated (PEBBLE_VA_ALWAYS_VALID=1): the
    tests are about what happens after issuance. certbot --standalone still binds
    http01_port, so that port must be free. With `dns_server` ("ADDR:PORT", a test
    DNS server) pebble validates for real, resolving through that server alone
    (`-dnsserver`): a DNS-01 challenge passes only if its TXT record is served there,
    and every order is validated anew (no authorization reuse).
    """

    def __init__(self, base: Path, *, dns_server: str | None = None) -> None:
        self.base: Path = base.resolve()
        self.dns_server = dns_server
        self.acme_port: int = free_port()
        self.management_port: int = free_port()
        self.http01_port: int = free_port()
        self.tls01_port: int = free_port()
        self.tls_ca_file: Path = self.base / "pebble-tls-ca.pem"
        self.config_file: Path = self.base / "pebble-config.json"
        self.log_file: Path = self.base / "pebble.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def directory_url(self) -> str:
        return f"https://{LOOPBACK}:{self.acme_port}/dir"

    def _write_config(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        # pebble's own HTTPS certificate: a tiny CA that clients are told to
        # trust (REQUESTS_CA_BUNDLE), separate from the ACME roots it issues from.
        ca = CA.root("pebble test TLS CA")
        leaf = ca.issue(LOOPBACK, "localhost")
        cert_file = self.base / "pebble-tls-cert.pem"
        key_file = self.base / "pebble-tls-key.pem"
        self.tls_ca_file.write_bytes(ca.cert_pem)
        cert_file.write_bytes(leaf.cert_pem)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(leaf.key_pem())
        config = {
            "pebble": {
                "listenAddress": f"{LOOPBACK}:{self.acme_port}",
                "managementListenAddress": f"{LOOPBACK}:{self.management_port}",
                "certificate": str(cert_file),
                "privateKey": str(key_file),
                "httpPort": self.http01_port,
                "tlsPort": self.tls01_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        self.config_file.write_text(json.dumps(config, indent=2) + "\n")

    def start(self) -> None:
        """Start pebble and return when both its ACME and management ports answer."""
        if self._proc is not None:
            raise RuntimeError("pebble already started")
        self._write_config()
        env = {
            "PATH": PATH,
            "PEBBLE_VA_NOSLEEP": "1",
            # pebble rejects 5% of good nonces by default to exercise client
            # retries; certbot copes, but it makes timings noisy.
            "PEBBLE_WFE_NONCEREJECT": "0",
        }
        argv = [PEBBLE, "-config", str(self.config_file)]
        if self.dns_server is None:
            env["PEBBLE_VA_ALWAYS_VALID"] = "1"
        else:
            argv += ["-dnsserver", self.dns_server]
            # pebble reuses a valid authorization for half of new orders by default; a
            # renewal must prove control of the name again here.
            env["PEBBLE_AUTHZREUSE"] = "0"
        self._log = self.log_file.open("ab")
        self._proc = subprocess.Popen(
            argv,
            cwd=self.base,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

        def ready() -> bool:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(
                    f"pebble exited with {self._proc.returncode}:\n{self.log_text()}"
                )
            return port_accepts(LOOPBACK, self.acme_port) and port_accepts(
                LOOPBACK, self.management_port
            )

        try:
            wait_until(ready, timeout=START_TIMEOUT, what="pebble", on_timeout=self.log_text)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop pebble (idempotent) and wait for it to exit."""
        proc, self._proc = self._proc, None
        terminate(proc, STOP_TIMEOUT)
        if self._log is not None:
            self._log.close()
            self._log = None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def roots_pem(self) -> bytes:
        """The ACME root (PEM) that pebble's issued chains end at.

        pebble makes a new root at every start, so this is only valid for this
        process. Fetched over HTTPS verified against tls_ca_file.
        """
        context = ssl.create_default_context(cafile=str(self.tls_ca_file))
        url = f"https://{LOOPBACK}:{self.management_port}/roots/0"
        with urllib.request.urlopen(url, context=context, timeout=HTTP_TIMEOUT) as resp:
            body: bytes = resp.read()
        if b"-----BEGIN CERTIFICATE-----" not in body:
            raise RuntimeError(f"unexpected answer from {url}: {body[:200]!r}")
        return body

    def root_file(self) -> Path:
        """Write roots_pem() to base/pebble-root.pem and return its path."""
        path = self.base / "pebble-root.pem"
        path.write_bytes(self.roots_pem())
        return path

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __repr__(self) -> str:
        return f"Pebble(directory_url={self.directory_url!r})"
