"""The scale stage of bench.run: pftls-hook with many SNI names, on one real private
Postfix on loopback (its own, not the bed's).

It makes a test CA, one default lineage for the instance's myhostname and N lineages for N
other names (`mx0000.scale.example`, ... ECDSA P-256, as certbot's default), written as
certbot lays lineages out (live/ links into archive/), and a config file naming them in
`sni`. Then it times, each as the wall time of one `python -m pftls_hook` process:

- `install`: the first full deploy: N+1 lineages verified, N+1 files written, the SNI table
  written, one `postconf -e`, `postfix check`, one reload, and every chain proven by a probe
  sending its SNI name;
- `deploy-hook`, `renewals` times: one SNI lineage renewed (a new version) and the hook run
  for it, returning once a client sending that name is shown the renewal; the first right
  after the install;
- `status` and `status --check`, three times each: every chain probed (N+1 chains).

bench/report.py holds them against issue #10's targets (install <= 10 s, the hook <= 1 s,
status <= 2 s); nothing is asserted. Everything lives under the directory it is given; the
Postfix instance is stopped also on failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tests.support import lineage as fake
from tests.support.net import free_port
from tests.support.pki import CA
from tests.support.postfix import PostfixInstance
from tests.support.tool import Tool

from .bed import say
from .results import SCALE_CHECK, SCALE_HOOK, SCALE_INSTALL, SCALE_STATUS, ScaleSample

HOSTNAME = "mail.scale.example"
STATUS_RUNS = 3


def names(count: int) -> list[str]:
    return [f"mx{i:04d}.scale.example" for i in range(count)]


def timed(command: str, argv: Sequence[str], env: dict[str, str]) -> ScaleSample:
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, check=False)
    sample = ScaleSample(command, time.monotonic() - started, proc.returncode)
    if proc.returncode != 0:
        say(f"  {command} exited {proc.returncode}: {(proc.stdout + proc.stderr).strip()[-300:]}")
    return sample


def run(count: int, renewals: int, base: Path) -> list[ScaleSample]:
    base.mkdir(mode=0o711)
    ca = CA.root("pftls scale root")
    inter = ca.intermediate("pftls scale intermediate")
    config_dir = base / "letsencrypt"
    sni = names(count)
    say(f"scale: issuing {count + 1} certificates and writing their lineages")
    for name in [HOSTNAME, *sni]:
        leaf = inter.issue(name)
        fake.new_lineage(
            config_dir, name, cert_pem=leaf.cert_pem, chain_pem=leaf.chain_pem,
            privkey_pem=leaf.key_pem(),
        )  # fmt: skip
    (base / "root.pem").write_bytes(ca.cert_pem)
    config = base / "config.toml"
    config.write_text("sni = [\n" + "".join(f'  "{n}",\n' for n in sni) + "]\n")
    config.chmod(0o644)

    postfix = PostfixInstance(base / "pf", free_port(), HOSTNAME)
    postfix.create()
    postfix.start()
    try:
        # The tests' rig builds the options: the same as theirs, DANE off among them (no
        # TLSA lookup through the machine's resolver, which is not on loopback).
        rig = Tool(
            postfix, base, base / "root.pem", probe_timeout="10",
            certbot_config_dir=config_dir, config_file=config,
        )  # fmt: skip
        tool = [sys.executable, "-m", "pftls_hook", *rig.options()]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PFTLS_HOOK_")}
        say("scale: install (first full deploy)")
        samples = [timed(SCALE_INSTALL, [*tool, "-q", "install"], env)]
        # Renewals, each of another SNI name, the first right after the install.
        versions: dict[str, int] = {}
        for i in range(renewals):
            renewed = sni[(count // 2 + i * 97) % count]
            # A renewal comes long after the previous deploy: its main.cf write must not
            # still be "hot" (Postfix makes readers wait ~2 s for a main.cf that new);
            # back-dated as the tests do (tests/support/deployed.py).
            past = time.time() - 60
            os.utime(postfix.config_dir / "main.cf", (past, past))
            leaf = inter.issue(renewed)
            versions[renewed] = versions.get(renewed, 1) + 1
            fake.renew(
                config_dir, renewed, versions[renewed],
                cert_pem=leaf.cert_pem, chain_pem=leaf.chain_pem, privkey_pem=leaf.key_pem(),
            )  # fmt: skip
            say(f"scale: deploy-hook for {renewed}")
            hook_env = {**env, "RENEWED_LINEAGE": str(config_dir / "live" / renewed)}
            samples.append(timed(SCALE_HOOK, [*tool, "-q", "deploy-hook"], hook_env))
        for command, args in ((SCALE_STATUS, ["status"]), (SCALE_CHECK, ["status", "--check"])):
            say(f"scale: {command} x{STATUS_RUNS}")
            samples += [timed(command, [*tool, *args], env) for _ in range(STATUS_RUNS)]
        return samples
    finally:
        postfix.stop()
