"""The venv's real certbot, isolated in its own directories and bound to a test pebble."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from .net import LOOPBACK
from .pebble import Pebble

# certbot lives next to the interpreter running the tests (the venv's bin).
CERTBOT = Path(sys.executable).parent / "certbot"
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
CERTBOT_TIMEOUT = 180.0


class CertbotError(RuntimeError):
    """certbot exited non-zero; the message carries its output."""


class Certbot:
    """Runs `certbot` with config, work and logs dirs under `base`, against `pebble`."""

    def __init__(self, base: Path, pebble: Pebble) -> None:
        self.base: Path = base.resolve()
        self.pebble = pebble
        self.work_dir: Path = self.base / "work"
        self.logs_dir: Path = self.base / "logs"
        self._config_dir: Path = self.base / "config"

    @property
    def config_dir(self) -> Path:
        return self._config_dir

    @property
    def live_dir(self) -> Path:
        return self._config_dir / "live"

    def lineage(self, cert_name: str) -> Path:
        """live/<cert_name>: the directory with cert/chain/fullchain/privkey.pem."""
        return self.live_dir / cert_name

    def env(self) -> dict[str, str]:
        """The environment certbot runs with (also useful for hooks run by hand)."""
        return {
            # The venv's bin first, so a --deploy-hook naming pftls-hook finds ours.
            "PATH": f"{CERTBOT.parent}:{SYSTEM_PATH}",
            # pebble's HTTPS certificate is from a test CA; requests trusts this file.
            "REQUESTS_CA_BUNDLE": str(self.pebble.tls_ca_file),
            # Keep ~/.config/letsencrypt/cli.ini of the machine out of the tests.
            "XDG_CONFIG_HOME": str(self.base / "xdg"),
            "HOME": str(self.base),
            "LANG": "C.UTF-8",
        }

    def _common(self) -> list[str]:
        return [
            "--config-dir",
            str(self._config_dir),
            "--work-dir",
            str(self.work_dir),
            "--logs-dir",
            str(self.logs_dir),
            "--server",
            self.pebble.directory_url,
            "--non-interactive",
            "--agree-tos",
            "--register-unsafely-without-email",
        ]

    def run(
        self,
        args: Sequence[str],
        *,
        check: bool = True,
        timeout: float = CERTBOT_TIMEOUT,
        prefix: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """certbot <args> with the common isolation flags appended; `prefix` runs it through
        another command, `env` adds to its environment."""
        argv = [*prefix, str(CERTBOT), *args, *self._common()]
        self.base.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env={**self.env(), **(env or {})},
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise CertbotError(
                f"certbot {' '.join(args)} failed (exit {proc.returncode})\n"
                f"stderr:\n{proc.stderr.strip()}\nstdout:\n{proc.stdout.strip()}"
            )
        return proc

    def certonly(
        self,
        domains: list[str],
        *,
        cert_name: str | None = None,
        key_type: str = "ecdsa",
        extra: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        """Obtain a certificate with the standalone authenticator."""
        args = [
            "certonly",
            "--standalone",
            "--http-01-port",
            str(self.pebble.http01_port),
            "--http-01-address",
            LOOPBACK,
            "--key-type",
            key_type,
        ]
        for domain in domains:
            args += ["-d", domain]
        if cert_name is not None:
            args += ["--cert-name", cert_name]
        return self.run([*args, *extra])

    def renew(
        self,
        *,
        force: bool = True,
        cert_name: str | None = None,
        deploy_hook: str | None = None,
        extra: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        """`certbot renew`; the authenticator and ports come from the renewal conf."""
        # Without this certbot sleeps up to 8 minutes when not on a terminal.
        args = ["renew", "--no-random-sleep-on-renew"]
        if force:
            args.append("--force-renewal")
        if cert_name is not None:
            args += ["--cert-name", cert_name]
        if deploy_hook is not None:
            args += ["--deploy-hook", deploy_hook]
        return self.run([*args, *extra])

    def __repr__(self) -> str:
        return f"Certbot(base={self.base!s}, server={self.pebble.directory_url!r})"
