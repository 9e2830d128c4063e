"""Case 6, key exposure: no key byte is ever readable by anyone but root, temp files included.

While pftls-hook deploys again and again, alternating two versions (with rollbacks: a probe
that sees an impostor, and the `rollback` command), two observers watch the install dir
(tests/support/exposure.py): inotify with an lstat of every file an event names, and a
process running as nobody that tries to open every file it lists. Files that hold a key —
the combined `<name>*.pem`, the separate `*.key`, and their temp files `.<name>.tmp.<pid>` —
must be root's with no group/other bit, and nobody must never open one. `.crt` files (the
separate layout's certificates) may be world-readable; nobody opening one, and a canary
file, proves its attempts reach the directory.

The installs run with umask 000, the worst an admin's shell could hand down: a key file's
mode must not depend on it (the three that write main.cf do not: Postfix would rightly
complain about a main.cf written under it). The separate layout is driven in-process
through `install.Separate` (each CLI deploy there rewrites main.cf, ~2 s of Postfix's "hot
main.cf" wait), plus two deploys through the CLI. Then SNI: installs with an SNI name whose
lineage alternates two versions, which write its combined file and the SNI table (the
table lists file names, no key: it is a text-style table, README "SNI").
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pftls_hook.install import Separate
from pftls_hook.pem import SourceFiles
from pftls_hook.verify import VerifiedBundle, verify_bundle
from tests.conftest import MakePostfix
from tests.reliability.conftest import make_tool
from tests.support import lineage as fake
from tests.support.deployed import first_deploy
from tests.support.exposure import StatWatch, UnprivilegedOpener
from tests.support.fake_smtp import FakeSmtpServer
from tests.support.figures import record
from tests.support.installed import TEMP
from tests.support.pki import CA, Leaf
from tests.support.tool import NAME, Tool, assert_exit

INSTALLS = 100  # through the CLI, combined layout, Postfix running
ROLLED_BACK_EVERY = 10  # that install's probe meets an impostor: rollback (exit 4)
ROLLBACK_COMMAND_EVERY = 25  # then `pftls-hook rollback`
SEPARATE_CYCLES = 100  # Separate.install (the separate layout), in-process
SNI_INSTALLS = 10  # through the CLI with --sni, after the first (which writes main.cf)
SNI_NAME = "mx.one.example"
CANARY = "canary.txt"  # world-readable on purpose: nobody must be able to open it
# The negative control: a planted world-readable "key" both observers must report.
CONTROL = "control.key"


def holds_key(name: str) -> bool:
    final = name[1:].rsplit(".tmp.", 1)[0] if TEMP.match(name) else name
    return final.endswith((".pem", ".key"))


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def exposed_tool(make_postfix: MakePostfix, postfix_root: Path, root: CA) -> Tool:
    """A Tool whose install dir nobody can reach: under postfix_root (0711), not under
    pytest's 0700 tmp tree."""
    base = Path(tempfile.mkdtemp(prefix="exposure-", dir=postfix_root))
    base.chmod(0o711)
    tool = make_tool(make_postfix(), base, root)
    tool.install_dir.mkdir(mode=0o755)
    canary = tool.install_dir / CANARY
    canary.write_text("readable by all\n")
    canary.chmod(0o644)
    return tool


def plant_control(directory: Path) -> None:
    control = directory / CONTROL
    control.write_bytes(b"-----BEGIN PRIVATE KEY-----\nplanted by the test\n")
    control.chmod(0o644)
    time.sleep(0.5)  # the opener lists the directory thousands of times a second
    control.unlink()


def bundle(leaf: Leaf, anchor: CA) -> VerifiedBundle:
    files = SourceFiles(leaf.cert_pem, leaf.chain_pem, leaf.fullchain_pem, leaf.key_pem())
    return verify_bundle(files, anchors=[anchor.cert], hostnames=[NAME], now=datetime.now(UTC))


def deploy_combined(tool: Tool, impostor: FakeSmtpServer) -> dict[str, int]:
    """INSTALLS CLI installs alternating versions 1 and 2; returns what each exit meant."""
    counts = {"deployed": 0, "rolled back": 0, "rollback command": 0}
    for i in range(INSTALLS):
        fake.point_links(tool.config_dir, NAME, 1 + i % 2)
        if i % ROLLED_BACK_EVERY == ROLLED_BACK_EVERY - 1:
            wrong = ("--probe", f"127.0.0.1:{impostor.port}", "--probe-timeout", "0.5")
            assert_exit(tool.run("install", *wrong), 4)
            counts["rolled back"] += 1
            continue
        assert_exit(tool.run("install"), 0)
        counts["deployed"] += 1
        if i % ROLLBACK_COMMAND_EVERY == ROLLBACK_COMMAND_EVERY - 1:
            assert_exit(tool.run("rollback"), 0)
            counts["rollback command"] += 1
    return counts


def deploy_sni(tool: Tool) -> None:
    """SNI_INSTALLS installs with an SNI name, its lineage alternating versions 1 and 2."""
    for i in range(SNI_INSTALLS):
        fake.point_links(tool.config_dir, SNI_NAME, 1 + i % 2)
        assert_exit(tool.run("--sni", SNI_NAME, "install"), 0)


def cycle_separate(directory: Path, bundles: list[VerifiedBundle]) -> None:
    """Install, then prune (or, every fifth time, undo), as a deploy and a rollback do."""
    install_dir = Separate(directory)
    for i in range(SEPARATE_CYCLES):
        installed = install_dir.install(NAME, bundles[i % 2], chain_files=False)
        if i % 5 == 4:
            installed.undo()
        else:
            install_dir.prune([NAME], set(installed.files))


@pytest.mark.slow
def test_no_key_is_ever_readable_but_by_root(exposed_tool: Tool, inter: CA, root: CA) -> None:
    tool = exposed_tool
    leaves = [inter.issue(NAME), inter.issue(NAME)]
    tool.lineage(leaves[0], 1)
    tool.lineage(leaves[1], 2)
    fake.point_links(tool.config_dir, NAME, 1)
    for version in (1, 2):
        tool.lineage(inter.issue(SNI_NAME), version, name=SNI_NAME)
    impostor_leaf = CA.root("pftls impostor").intermediate().issue(NAME)

    with (
        FakeSmtpServer(impostor_leaf, tool.base) as impostor,
        StatWatch(tool.install_dir, holds_key) as watch,
        UnprivilegedOpener(tool.install_dir) as opener,
    ):
        first_deploy(tool)
        # Not for postconf -e (first deploy, separate layout): Postfix would rightly
        # complain about the main.cf it writes under umask 000.
        with umask(0):
            counts = deploy_combined(tool, impostor)
            cycle_separate(tool.install_dir, [bundle(leaf, root) for leaf in leaves])
        for version in (1, 2):
            fake.point_links(tool.config_dir, NAME, version)
            assert_exit(tool.run("--layout", "separate", "install"), 0)
        assert_exit(tool.run("--sni", SNI_NAME, "install"), 0)  # writes main.cf
        with umask(0):
            deploy_sni(tool)
        plant_control(tool.install_dir)

    report = opener.report
    key_opens = {name: n for name, n in report["opened"].items() if holds_key(name)}
    exposures = [*watch.exposures, *(f"nobody opened {n}" for n in key_opens)]
    exposures += [f"nobody read key bytes from {name}" for name in report["key_seen"]]
    # The planted key shows that each observer does see an exposure; it is not counted.
    caught = {
        "stat": any(e.startswith(CONTROL) for e in watch.exposures),
        "open": CONTROL in report["opened"],
        "read": CONTROL in report["key_seen"],
    }
    exposures = [e for e in exposures if CONTROL not in e]
    crt_opens = sum(n for name, n in report["opened"].items() if name.endswith(".crt"))
    files = watch.files - {CANARY, CONTROL}
    key_files = sorted(name for name in files if holds_key(name))
    temps = [name for name in key_files if TEMP.match(name)]
    record(
        "exposure",
        title="Key exposure: who can read a key file, temp files included",
        figure=f"{len(exposures)} exposures: {report['attempts']:,} open attempts as nobody, "
        f"{len(files)} files observed",
        details=[
            f"{INSTALLS + 4 + SNI_INSTALLS} deploys through the CLI (combined layout, Postfix "
            f"running; {counts['rolled back']} rolled back by an impostor probe, "
            f"{counts['rollback command']} `rollback` commands; 2 in the separate layout; "
            f"{SNI_INSTALLS + 1} with an SNI name whose lineage alternates two versions) "
            f"and {SEPARATE_CYCLES} separate-layout installs in-process; all but the four that "
            "write main.cf under umask 000",
            f"inotify: {watch.events} events, {watch.stats} lstat()s, {len(files)} "
            f"distinct files, {len(key_files)} of them holding a key ({len(temps)} temp "
            f"files); {watch.vanished} gone before their lstat; {watch.overflows} overflows",
            f"nobody: {report['scans']:,} scans, {report['attempts']:,} open attempts, "
            f"refused {report['denied']}; opened only world-readable files: "
            f"{crt_opens} certificate (.crt) opens, {report['opened'].get(CANARY, 0)} canary",
            f"exposures: {len(exposures)}; a planted world-readable key (the control, not "
            f"counted) was caught by: {', '.join(k for k, v in caught.items() if v)}",
        ],
        files_observed=len(files),
        stats=watch.stats,
        opens_attempted=report["attempts"],
        exposures=len(exposures),
    )
    assert all(caught.values()), f"an observer missed the planted key: {caught}"
    assert exposures == []
    assert watch.overflows == 0, "inotify lost events: the observation is incomplete"
    assert report["opened"].get(CANARY, 0) > 0, "nobody never reached the install dir"
    assert crt_opens > 0, "nobody never opened a certificate file"
    assert temps, "no temp file was ever observed"
