"""Scale: pftls-hook with many SNI names, against one real private Postfix on loopback.

Run as root: `.venv/bin/python bench/scale.py [--names N]` (default 1,000). It makes a test
CA, one default lineage for the instance's myhostname and N lineages for N other names
(`mx0000.scale.example`, ... ECDSA P-256, as certbot's default), written as certbot lays
lineages out (live/ links into archive/), and a config file naming them in `sni`. Then it
measures, each as the wall time of one `python -m pftls_hook` process:

- `install`: the first full deploy: N+1 lineages verified, N+1 files written, the SNI table
  written, one `postconf -e`, `postfix check`, one reload, and every chain proven by a probe
  sending its SNI name (with the probes of the state before, for rollback);
- `deploy-hook`: one SNI lineage renewed (version 2) and the hook run for it, returning once
  a client sending that name is shown the renewal; then again for another lineage;
- `status` and `status --check`: every chain probed (N+1 chains).

The targets (issue #10: install <= 10 s, the hook <= 1 s, status <= 2 s) are reported as met
or missed, never asserted. It prints a markdown section and writes it to
docs/benchmarks-scale.md, with the machine it ran on. Everything lives in one temporary
directory, removed at the end (`--keep` keeps it); the Postfix instance is stopped also on
failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bed import workspace
from tests.support import lineage as fake
from tests.support.net import free_port
from tests.support.pki import CA
from tests.support.postfix import PostfixInstance

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "docs" / "benchmarks-scale.md"
HOSTNAME = "mail.scale.example"
TARGETS = {
    "install": 10.0,
    "deploy-hook": 1.0,
    "deploy-hook again": 1.0,
    "status": 2.0,
    "status --check": 2.0,
}


def say(text: str) -> None:
    print(f"[scale] {text}", file=sys.stderr, flush=True)


def names(count: int) -> list[str]:
    return [f"mx{i:04d}.scale.example" for i in range(count)]


def timed(argv: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, check=False)
    return time.monotonic() - started, proc.returncode, proc.stdout + proc.stderr


def run(count: int, base: Path) -> list[tuple[str, float, int]]:
    ca = CA.root("pftls scale root")
    inter = ca.intermediate("pftls scale intermediate")
    config_dir = base / "letsencrypt"
    sni = names(count)
    say(f"issuing {count + 1} certificates and writing their lineages")
    started = time.monotonic()
    for name in [HOSTNAME, *sni]:
        leaf = inter.issue(name)
        fake.new_lineage(
            config_dir, name, cert_pem=leaf.cert_pem, chain_pem=leaf.chain_pem,
            privkey_pem=leaf.key_pem(),
        )  # fmt: skip
    say(f"  {time.monotonic() - started:.1f} s")
    (base / "root.pem").write_bytes(ca.cert_pem)
    config = base / "config.toml"
    config.write_text("sni = [\n" + "".join(f'  "{n}",\n' for n in sni) + "]\n")
    config.chmod(0o644)

    postfix = PostfixInstance(base / "pf", free_port(), HOSTNAME)
    postfix.create()
    postfix.start()
    try:
        tool = [
            sys.executable, "-m", "pftls_hook",
            "--config", str(config),
            "--live-dir", str(config_dir / "live"),
            "--postfix-config-dir", str(postfix.config_dir),
            "--install-dir", str(base / "tls"),
            "--ca-file", str(base / "root.pem"),
            "--lock-file", str(base / "run" / "deploy.lock"),
            "--probe-timeout", "10",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("PFTLS_HOOK_")}
        results = []
        say("install (first full deploy)")
        results.append(("install", *timed([*tool, "-q", "install"], env)[:2]))
        # A renewal comes long after the install: its main.cf write must not still be
        # "hot" (Postfix makes readers wait ~2 s for a main.cf that new); back-dated as
        # the tests do (tests/support/deployed.py).
        past = time.time() - 60
        os.utime(postfix.config_dir / "main.cf", (past, past))
        # Two renewals, one right after the other: the first right after the install has
        # measured ~1 s slower than the second, for a reason not established here.
        for label, renewed in (("deploy-hook", sni[count // 2]), ("deploy-hook again", sni[1])):
            leaf = inter.issue(renewed)
            fake.renew(
                config_dir, renewed, 2, cert_pem=leaf.cert_pem, chain_pem=leaf.chain_pem,
                privkey_pem=leaf.key_pem(),
            )  # fmt: skip
            say(f"{label} for {renewed}")
            hook_env = {**env, "RENEWED_LINEAGE": str(config_dir / "live" / renewed)}
            results.append((label, *timed([*tool, "-q", "deploy-hook"], hook_env)[:2]))
        say("status")
        results.append(("status", *timed([*tool, "status"], env)[:2]))
        say("status --check")
        seconds, code, output = timed([*tool, "status", "--check"], env)
        say(f"  {output.strip()[:200]}")
        results.append(("status --check", seconds, code))
        return results
    finally:
        postfix.stop()


def report(count: int, results: list[tuple[str, float, int]]) -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        "## Scale: many SNI names (bench/scale.py)",
        "",
        f"{count} SNI names plus the default name, one ECDSA lineage each, one private "
        f"Postfix {postfix_version()} instance on loopback. Wall time of one "
        "`python -m pftls_hook` process each; targets from issue #10.",
        "",
        "| command | seconds | exit | target | met |",
        "|---|---|---|---|---|",
    ]
    for command, seconds, code in results:
        target = TARGETS[command]
        met = "yes" if seconds <= target and code == 0 else "no"
        lines.append(f"| `{command}` | {seconds:.2f} | {code} | ≤ {target:g} s | {met} |")
    lines += [
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()}: "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, load average {load} "
        "(other work on the machine shows there).",
    ]
    return "\n".join(lines)


def postfix_version() -> str:
    proc = subprocess.run(
        ["/usr/sbin/postconf", "-d", "-h", "mail_version"],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() or "?"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--names", type=int, default=1000, help="SNI names (default 1000)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    with workspace(args.keep, prefix="pftls-scale-") as base:
        results = run(args.names, base)
    text = report(args.names, results)
    print(text)
    args.output.write_text(text + "\n")
    return 0 if all(code == 0 for _, _, code in results) else 1


if __name__ == "__main__":
    sys.exit(main())
