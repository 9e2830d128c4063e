"""Several chains, one per key algorithm: an ECDSA and an RSA lineage for the same names are
served side by side through `smtpd_tls_chain_files`, each renewed, proven and refused on its
own. What each client gets is judged by `openssl s_client -sigalgs` (ECDSA-only, RSA-only)
against a real private Postfix; certificates from a test CA (fast), then from pebble with
the real certbot, its deploy hook and the watch daemon (slow)."""

from __future__ import annotations

import os
import random
import shlex
import stat
import sys
import time
from pathlib import Path

import pytest

from tests.support import lineage as fake
from tests.support import sclient
from tests.support.certbot import Certbot
from tests.support.daemon import NotifySocket, WatchProcess
from tests.support.deployed import start
from tests.support.installed import pointed_chains, stale_temps
from tests.support.pebble import Pebble
from tests.support.pki import CA
from tests.support.postfix import PostfixInstance
from tests.support.tool import NAME, Tool, assert_exit
from tests.support.trusted import live_sha, sha, trusting_tool

HOST = "127.0.0.1"
EC, RSA = "mail-ecdsa", "mail-rsa"  # the lineages, as `certbot --cert-name` names them
EXIT_OK, EXIT_REFUSED = 0, 3


@pytest.fixture(scope="module")
def inter() -> CA:
    return CA.root("pftls chains-test root").intermediate("pftls chains-test intermediate")


@pytest.fixture
def tool(postfix: PostfixInstance, tmp_path: Path, inter: CA) -> Tool:
    return trusting_tool(postfix, tmp_path, inter)


def shown(postfix: PostfixInstance, sigalgs: str) -> str:
    return sclient.served_sha256(HOST, postfix.port, sigalgs)


def chain_files(tool: Tool) -> str:
    return tool.postfix.postconf("-h", "smtpd_tls_chain_files").strip()


def assert_root_only(path: Path) -> None:
    st = os.stat(path)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600), (path, oct(st.st_mode))


def hook(tool: Tool, name: str) -> None:
    result = tool.run("deploy-hook", env={"RENEWED_LINEAGE": str(tool.live_dir / name)})
    assert_exit(result, EXIT_OK)


def test_ecdsa_and_rsa_lineages_are_served_side_by_side(tool: Tool, inter: CA) -> None:
    postfix = tool.postfix
    ec, rsa = inter.issue(NAME, key="ec"), inter.issue(NAME, key="rsa")
    tool.lineage(ec, name=EC)
    tool.lineage(rsa, name=RSA)

    result = tool.run("install")

    assert_exit(result, EXIT_OK)
    files = [tool.install_dir / f"{n}.pem" for n in (EC, RSA)]
    assert chain_files(tool) == ", ".join(map(str, files))
    for path in files:
        assert_root_only(path)
    assert shown(postfix, sclient.ECDSA_ONLY) == sha(ec)
    assert shown(postfix, sclient.RSA_ONLY) == sha(rsa)
    # Each chain was proven by a client offering only its algorithm.
    assert "(ecdsa client)" in result.stderr and "(rsa client)" in result.stderr

    # Again: nothing to do, nothing written.
    main_cf = postfix.main_cf_bytes()
    again = tool.run("install")
    assert_exit(again, EXIT_OK)
    assert again.stderr.count("unchanged") == 2, again.stderr
    assert postfix.main_cf_bytes() == main_cf


def test_renewal_of_one_lineage_redeploys_just_it(tool: Tool, inter: CA) -> None:
    postfix = tool.postfix
    ec, rsa = inter.issue(NAME, key="ec"), inter.issue(NAME, key="rsa")
    tool.lineage(ec, name=EC)
    tool.lineage(rsa, name=RSA)
    assert_exit(tool.run("install"), EXIT_OK)
    main_cf = postfix.main_cf_bytes()
    ec_file = (tool.install_dir / f"{EC}.pem").read_bytes()

    rsa2 = inter.issue(NAME, key="rsa")
    tool.lineage(rsa2, 2, name=RSA)
    hook(tool, RSA)

    # The hook returned once proven: no wait needed. main.cf untouched, ECDSA untouched.
    assert shown(postfix, sclient.RSA_ONLY) == sha(rsa2)
    assert shown(postfix, sclient.ECDSA_ONLY) == sha(ec)
    assert postfix.main_cf_bytes() == main_cf
    assert (tool.install_dir / f"{EC}.pem").read_bytes() == ec_file

    ec2 = inter.issue(NAME, key="ec")
    tool.lineage(ec2, 2, name=EC)
    hook(tool, EC)
    assert shown(postfix, sclient.ECDSA_ONLY) == sha(ec2)
    assert shown(postfix, sclient.RSA_ONLY) == sha(rsa2)
    assert postfix.main_cf_bytes() == main_cf


def test_a_renewal_reads_what_is_served_and_itself_not_all_of_live(tool: Tool, inter: CA) -> None:
    """A host that also serves websites has many lineages in live/. The deploy hook for a
    renewal of what Postfix serves reads the installed lineages and the renewed one; only
    `install`, which looks at everything, reads the others (a broken one is logged)."""
    ec = inter.issue(NAME, key="ec")
    tool.lineage(ec, name=EC)
    assert_exit(tool.run("install"), EXIT_OK)
    other = "www.other.example"
    web = inter.issue(other)
    fake.new_lineage(
        tool.config_dir, other, cert_pem=b"not a certificate\n", chain_pem=web.chain_pem,
        privkey_pem=web.key_pem(),
    )  # fmt: skip
    ec2 = inter.issue(NAME, key="ec")
    tool.lineage(ec2, 2, name=EC)

    result = tool.run("-v", "deploy-hook", env={"RENEWED_LINEAGE": str(tool.live_dir / EC)})

    assert_exit(result, EXIT_OK)
    assert shown(tool.postfix, sclient.ECDSA_ONLY) == sha(ec2)
    assert other not in result.stderr, result.stderr
    # The full look does read it, and says why it is no candidate.
    full = tool.run("-v", "install")
    assert_exit(full, EXIT_OK)
    assert f"{other}: not considered now" in full.stderr, full.stderr


def test_a_lineage_of_a_new_algorithm_joins_through_its_deploy_hook(tool: Tool, inter: CA) -> None:
    """ECDSA served alone; certbot then issues an RSA lineage for the same names and runs
    the deploy hook for it: both chains are served from then on."""
    ec, rsa = inter.issue(NAME, key="ec"), inter.issue(NAME, key="rsa")
    tool.lineage(ec, name=EC)
    assert_exit(tool.run("install"), EXIT_OK)
    tool.lineage(rsa, name=RSA)

    hook(tool, RSA)

    assert shown(tool.postfix, sclient.RSA_ONLY) == sha(rsa)
    assert shown(tool.postfix, sclient.ECDSA_ONLY) == sha(ec)


def test_the_separate_layout_keeps_the_installed_lineage_over_a_new_algorithm(
    tool: Tool, inter: CA
) -> None:
    """The separate layout serves one chain: an RSA lineage installed keeps it when an
    ECDSA lineage for the same names appears (rule 2: installed wins while it qualifies),
    whether that lineage's deploy hook runs or a later install."""
    layout = ("--layout", "separate")
    rsa, ec = inter.issue(NAME, key="rsa"), inter.issue(NAME, key="ec")
    tool.lineage(rsa, name=RSA)
    assert_exit(tool.run(*layout, "install"), EXIT_OK)
    tool.lineage(ec, name=EC)

    hooked = tool.run(*layout, "deploy-hook", env={"RENEWED_LINEAGE": str(tool.live_dir / EC)})
    installed = tool.run(*layout, "install")

    assert_exit(hooked, EXIT_OK)
    assert "skipped" in hooked.stderr, hooked.stderr
    assert_exit(installed, EXIT_OK)
    cert_file = tool.postfix.postconf("-h", "smtpd_tls_cert_file").strip()
    assert Path(cert_file).name.startswith(f"{RSA}."), cert_file
    both = f"{sclient.ECDSA_ONLY}:{sclient.RSA_ONLY}"
    assert shown(tool.postfix, both) == sha(rsa)


def test_a_refused_lineage_keeps_its_version_and_never_blocks_the_other(
    tool: Tool, inter: CA
) -> None:
    postfix = tool.postfix
    ec, rsa = inter.issue(NAME, key="ec"), inter.issue(NAME, key="rsa")
    tool.lineage(ec, name=EC)
    tool.lineage(rsa, name=RSA)
    assert_exit(tool.run("install"), EXIT_OK)

    # certbot left the ECDSA lineage with a key that is not the certificate's.
    ec2, stranger = inter.issue(NAME, key="ec"), inter.issue(NAME, key="ec")
    fake.renew(
        tool.config_dir, EC, 2,
        cert_pem=ec2.cert_pem, chain_pem=ec2.chain_pem, privkey_pem=stranger.key_pem(),
    )  # fmt: skip
    refused = tool.run("deploy-hook", env={"RENEWED_LINEAGE": str(tool.live_dir / EC)})
    assert_exit(refused, EXIT_REFUSED)
    assert shown(postfix, sclient.ECDSA_ONLY) == sha(ec)
    assert shown(postfix, sclient.RSA_ONLY) == sha(rsa)

    # The RSA lineage renews meanwhile: `install` deploys it, reports the ECDSA refusal
    # and exits with it (the worst outcome).
    rsa2 = inter.issue(NAME, key="rsa")
    tool.lineage(rsa2, 2, name=RSA)
    result = tool.run("install")
    assert_exit(result, EXIT_REFUSED)
    assert f"{EC}: refused" in result.stderr
    assert f"{RSA}: deployed" in result.stderr
    assert shown(postfix, sclient.RSA_ONLY) == sha(rsa2)
    assert shown(postfix, sclient.ECDSA_ONLY) == sha(ec)
    assert chain_files(tool) == ", ".join(str(tool.install_dir / f"{n}.pem") for n in (EC, RSA))


def test_dry_run_shows_both_chains_and_changes_nothing(tool: Tool, inter: CA) -> None:
    tool.lineage(inter.issue(NAME, key="ec"), name=EC)
    tool.lineage(inter.issue(NAME, key="rsa"), name=RSA)
    main_cf = tool.postfix.main_cf_bytes()

    result = tool.run("--dry-run", "install")

    assert_exit(result, EXIT_OK)
    assert f"would write {tool.install_dir}/{EC}.<stamp>.pem" in result.stdout
    assert f"would write {tool.install_dir}/{RSA}.<stamp>.pem" in result.stdout
    assert "would run postconf -e 'smtpd_tls_chain_files = " in result.stdout
    assert tool.postfix.main_cf_bytes() == main_cf
    assert not tool.install_dir.exists() or not any(tool.install_dir.iterdir())


@pytest.mark.slow
def test_certbot_rsa_and_ecdsa_lineages_renewed_through_hook_and_daemon(
    tmp_path: Path, pebble: Pebble, certbot: Certbot, postfix: PostfixInstance
) -> None:
    certbot.certonly([postfix.hostname], cert_name=EC, key_type="ecdsa")
    certbot.certonly([postfix.hostname], cert_name=RSA, key_type="rsa")
    tool = Tool(postfix, tmp_path, pebble.root_file(), certbot_config_dir=certbot.config_dir)
    assert_exit(tool.run("install"), EXIT_OK)
    assert shown(postfix, sclient.ECDSA_ONLY) == live_sha(certbot, EC)
    assert shown(postfix, sclient.RSA_ONLY) == live_sha(certbot, RSA)
    main_cf = postfix.main_cf_bytes()

    # The daemon: a renewal of the RSA lineage alone reaches the RSA clients alone.
    notify = NotifySocket()
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    daemon = WatchProcess(
        [*tool.options(), "--debounce", "0.2"],
        {**env, "NOTIFY_SOCKET": notify.address},
        tmp_path / "daemon.log",
        tmp_path,
    ).start()
    try:
        notify.wait_for(lambda m: m.get("READY") == "1", timeout=60)
        ec_before = live_sha(certbot, EC)
        certbot.renew(force=True, cert_name=RSA)
        renewed = live_sha(certbot, RSA)
        sclient.wait_for(HOST, postfix.port, sclient.RSA_ONLY, renewed, timeout=30)
        assert shown(postfix, sclient.ECDSA_ONLY) == ec_before
        assert postfix.main_cf_bytes() == main_cf
    finally:
        daemon.kill()
        notify.close()
    assert "Traceback" not in daemon.output_text()

    # certbot's deploy hook, once per renewed lineage: both proven before certbot returns.
    hook = shlex.join([sys.executable, "-m", "pftls_hook", *tool.options(), "deploy-hook"])
    certbot.renew(force=True, deploy_hook=hook)
    assert shown(postfix, sclient.ECDSA_ONLY) == live_sha(certbot, EC)
    assert shown(postfix, sclient.RSA_ONLY) == live_sha(certbot, RSA)
    assert postfix.main_cf_bytes() == main_cf


def test_status_shows_every_chain_and_check_judges_each(tool: Tool, inter: CA) -> None:
    tool.lineage(inter.issue(NAME, key="ec"), name=EC)
    tool.lineage(inter.issue(NAME, key="rsa"), name=RSA)
    assert_exit(tool.run("install"), EXIT_OK)

    status = tool.run("status")
    assert_exit(status, EXIT_OK)
    assert f"chain {EC} (ecdsa, default)" in status.stdout
    assert f"chain {RSA} (rsa, default)" in status.stdout
    assert "(rsa client)" in status.stdout and "(ecdsa client)" in status.stdout
    ok = tool.run("status", "--check")
    assert ok.returncode == 0, ok.stdout
    assert "all 2 chains" in ok.stdout

    # certbot renewed the RSA lineage and nothing deployed it: that chain is stale.
    tool.lineage(inter.issue(NAME, key="rsa"), 2, name=RSA)
    stale = tool.run("status", "--check")
    assert stale.returncode == 2, stale.stdout
    assert stale.stdout.startswith("PFTLS-HOOK CRITICAL:") and f"{RSA} (rsa" in stale.stdout


CRASH_RUNS = 30
CRASH_SEED = 20261201  # fixed: a failure can be replayed


@pytest.mark.slow
def test_sigkill_during_a_dual_install_leaves_every_chain_a_working_pair(
    tool: Tool, inter: CA
) -> None:
    """Both lineages flip between two versions; each install is SIGKILLed after a delay
    uniform over a whole install. After each kill, every file main.cf lists holds a key and
    the certificate for it, one of the known ones, Postfix serves them after a reload, and
    the next install exits 0 with no temp file left."""
    postfix = tool.postfix
    versions = {
        EC: [inter.issue(NAME, key="ec") for _ in range(2)],
        RSA: [inter.issue(NAME, key="rsa") for _ in range(2)],
    }
    known = {sha(leaf) for leaves in versions.values() for leaf in leaves}
    for name, leaves in versions.items():
        tool.lineage(leaves[0], name=name)
        tool.lineage(leaves[1], 2, name=name)
    assert_exit(tool.run("install"), EXIT_OK)  # version 2 of both, main.cf written
    for name in versions:
        fake.point_links(tool.config_dir, name, 1)
    began = time.monotonic()
    assert_exit(tool.run("install"), EXIT_OK)  # a switching install: the kill range
    duration = time.monotonic() - began
    rng = random.Random(CRASH_SEED)  # noqa: S311 - kill timing, not cryptography
    version = 1
    for _ in range(CRASH_RUNS):
        version = 3 - version
        for name in versions:
            fake.point_links(tool.config_dir, name, version)
        proc = start(tool, "install")
        time.sleep(rng.uniform(0, duration))
        proc.kill()
        proc.communicate(timeout=10)

        chains = pointed_chains(postfix)  # each file: one key, the leaf is the key's
        assert len(chains) == 2 and {c.leaf_sha256 for c in chains} <= known
        postfix.check()
        postfix.reload()
        ec_file, rsa_file = chains
        sclient.wait_for(HOST, postfix.port, sclient.ECDSA_ONLY, ec_file.leaf_sha256)
        sclient.wait_for(HOST, postfix.port, sclient.RSA_ONLY, rsa_file.leaf_sha256)
        assert_exit(tool.run("install"), EXIT_OK)
        assert stale_temps(tool.install_dir) == []
        assert shown(postfix, sclient.ECDSA_ONLY) == sha(versions[EC][version - 1])
        assert shown(postfix, sclient.RSA_ONLY) == sha(versions[RSA][version - 1])
