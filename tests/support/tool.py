"""pftls-hook as an admin or certbot runs it: a separate process, judged from outside.

`Tool` binds one private Postfix instance, one certbot config dir, one install dir and one
trust anchor; it is the one place that turns them into the tool's options (the deploy,
watch, certbot and status tests all ask it). `Tool.run(*args)` is
`python -m pftls_hook <those options> <args>` with a clean environment (no PFTLS_HOOK_*,
no RENEWED_LINEAGE from the caller). Like the rest of tests/support, this module does not
import pftls_hook.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import lineage as fake
from .pki import Leaf
from .postfix import PostfixInstance

NAME = "mail.test.example"  # the lineage, and the test instances' myhostname
CLI_TIMEOUT = 120.0


@dataclass
class Tool:
    postfix: PostfixInstance
    base: Path  # the test's tmp_path
    ca_file: Path | None  # the trust anchor deploys verify against (--ca-file), if given
    probe_timeout: str = "5"
    certbot_config_dir: Path | None = None  # default: base/letsencrypt
    config_file: Path | None = None  # --config, if given

    @property
    def config_dir(self) -> Path:
        """certbot's config dir: live/, archive/, renewal/, renewal-hooks/."""
        return self.certbot_config_dir or self.base / "letsencrypt"

    @property
    def live_dir(self) -> Path:
        return self.config_dir / "live"

    @property
    def install_dir(self) -> Path:
        return self.base / "tls"

    @property
    def lock_file(self) -> Path:
        return self.base / "run" / "deploy.lock"

    def options(self) -> list[str]:
        return [
            *(["--config", str(self.config_file)] if self.config_file else []),
            "--live-dir", str(self.live_dir),
            "--postfix-config-dir", str(self.postfix.config_dir),
            "--install-dir", str(self.install_dir),
            "--lock-file", str(self.lock_file),
            "--probe-timeout", self.probe_timeout,
            # No TLSA lookup: the machine's resolver is not on loopback (tests/test_dane.py).
            "--dane", "off",
            *(["--ca-file", str(self.ca_file)] if self.ca_file else []),
        ]  # fmt: skip

    def run(
        self, *args: str, env: Mapping[str, str] | None = None, prefix: Sequence[str] = ()
    ) -> subprocess.CompletedProcess[str]:
        return run_cli([*self.options(), *args], env, prefix=prefix)

    def lineage(self, leaf: Leaf, version: int = 1, name: str = NAME) -> None:
        """Version `version` of lineage `name` holds `leaf`, and the live links point at it
        (as after `certbot certonly`, or a finished renewal for version > 1)."""
        cert, chain, key = leaf.cert_pem, leaf.chain_pem, leaf.key_pem()
        if version == 1:
            fake.new_lineage(self.config_dir, name, cert_pem=cert, chain_pem=chain, privkey_pem=key)
        else:
            fake.renew(
                self.config_dir, name, version, cert_pem=cert, chain_pem=chain, privkey_pem=key
            )


def assert_clean_log(result: subprocess.CompletedProcess[str]) -> None:
    """Invariant 7: one prefixed line per step on stderr, never a traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    for line in result.stderr.splitlines():
        assert line.startswith("pftls-hook: "), f"unprefixed stderr line: {line!r}"


def assert_exit(result: subprocess.CompletedProcess[str], code: int) -> None:
    assert result.returncode == code, (
        f"exit {result.returncode}, expected {code}\nstdout:\n{result.stdout}\n"
        f"stderr:\n{result.stderr}"
    )
    assert_clean_log(result)


def run_cli(
    argv: Sequence[str], env: Mapping[str, str] | None = None, *, prefix: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """`python -m pftls_hook ARGV` as certbot or an admin runs it: our own PFTLS_HOOK_*
    settings and any RENEWED_LINEAGE of the test's environment kept out, `env` added;
    `prefix` runs it through another command (e.g. `mounts.private_hosts`)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PFTLS_HOOK_")}
    environ.pop("RENEWED_LINEAGE", None)
    environ.update(env or {})
    return subprocess.run(
        [*prefix, sys.executable, "-m", "pftls_hook", *argv],
        capture_output=True,
        text=True,
        env=environ,
        timeout=CLI_TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )
