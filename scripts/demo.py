"""The main job end to end, on loopback only, leaving the machine as it was.

Starts pebble (a local ACME server) and a private Postfix instance (own config and queue
dirs, port on 127.0.0.1; never the machine's own Postfix), has real certbot obtain a
certificate, deploys it with `pftls-hook install`, renews it with certbot calling
`pftls-hook deploy-hook`, and shows what a STARTTLS client sees after each step.
Run as root: `sudo .venv/bin/python scripts/demo.py`.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.certbot import Certbot
from tests.support.net import free_port
from tests.support.pebble import Pebble
from tests.support.postfix import PostfixInstance, served_sha256


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="pftls-demo-") as tmp:
        base = Path(tmp)
        base.chmod(0o711)  # Postfix's unprivileged daemons must traverse it
        pebble = Pebble(base / "pebble")
        postfix = PostfixInstance(base / "pf", free_port())
        certbot = Certbot(base / "certbot", pebble)
        tool = [
            sys.executable, "-m", "pftls_hook",
            "--live-dir", str(certbot.live_dir),
            "--postfix-config-dir", str(postfix.config_dir),
            "--install-dir", str(base / "tls"),
            "--ca-file", str(base / "pebble-root.pem"),
            "--lock-file", str(base / "run" / "deploy.lock"),
            # No TLSA lookup: the machine's resolver is not on loopback.
            "--dane", "off",
        ]  # fmt: skip
        try:
            step("start pebble (loopback ACME server) and a private Postfix instance")
            pebble.start()
            (base / "pebble-root.pem").write_bytes(pebble.roots_pem())
            postfix.create()
            postfix.start()
            print(f"postfix on 127.0.0.1:{postfix.port}, serving its initial self-signed cert")
            print(f"served sha256: {served_sha256('127.0.0.1', postfix.port)}")

            step(f"certbot certonly -d {postfix.hostname}")
            certbot.certonly([postfix.hostname], cert_name="mail")

            step("pftls-hook install: verify, install, point main.cf, reload, prove")
            subprocess.run([*tool, "install"], check=True)

            step("certbot renew --force-renewal --deploy-hook 'pftls-hook deploy-hook'")
            hook = shlex.join([*tool, "deploy-hook"])
            proc = certbot.renew(force=True, cert_name="mail", deploy_hook=hook)
            print(proc.stderr.strip()[-2000:])

            step("pftls-hook status")
            subprocess.run([*tool, "status"], check=True)
            print(f"\nserved sha256 now: {served_sha256('127.0.0.1', postfix.port)}")
        finally:
            postfix.stop()
            pebble.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
