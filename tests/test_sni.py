"""SNI: `--sni NAME` serves each name the lineage covering it through a texthash table
pftls-hook owns (`<install dir>/sni.map`, named by tls_server_sni_maps), the default chain
for every other client. What each client gets is judged by `openssl s_client -servername`
against a real private Postfix 3.7."""

from __future__ import annotations

import os
import shlex
import stat
import sys
from pathlib import Path

import pytest

from tests.support import lineage as fake
from tests.support import sclient
from tests.support.certbot import Certbot
from tests.support.daemon import NotifySocket, WatchProcess
from tests.support.pebble import Pebble
from tests.support.pki import CA, Leaf
from tests.support.postfix import PostfixInstance
from tests.support.tool import NAME, Tool, assert_exit
from tests.support.trusted import live_sha, sha, trusting_tool

HOST = "127.0.0.1"
ONE, TWO = "mx.one.example", "mx.two.example"  # SNI names; lineages are named after them
EXIT_OK, EXIT_REFUSED = 0, 3


@pytest.fixture(scope="module")
def inter() -> CA:
    return CA.root("pftls sni-test root").intermediate("pftls sni-test intermediate")


@pytest.fixture
def tool(postfix: PostfixInstance, tmp_path: Path, inter: CA) -> Tool:
    return trusting_tool(postfix, tmp_path, inter)


def shown(tool: Tool, servername: str | None) -> str:
    return sclient.served_sha256(HOST, tool.postfix.port, sclient.ECDSA_ONLY, servername=servername)


def sni(*names: str) -> list[str]:
    return [arg for name in names for arg in ("--sni", name)]


def table(tool: Tool) -> Path:
    return tool.install_dir / "sni.map"


def lineages(tool: Tool, inter: CA) -> dict[str, Leaf]:
    leaves = {n: inter.issue(n) for n in (NAME, ONE, TWO)}
    for name, leaf in leaves.items():
        tool.lineage(leaf, name=name)
    return leaves


def test_each_sni_name_gets_its_lineage_and_other_clients_the_default(
    tool: Tool, inter: CA
) -> None:
    leaves = lineages(tool, inter)

    result = tool.run(*sni(ONE, TWO), "install")

    assert_exit(result, EXIT_OK)
    assert shown(tool, ONE) == sha(leaves[ONE])
    assert shown(tool, TWO) == sha(leaves[TWO])
    assert shown(tool, NAME) == sha(leaves[NAME])
    assert shown(tool, None) == sha(leaves[NAME])
    assert shown(tool, "unknown.example") == sha(leaves[NAME])
    maps = tool.postfix.postconf("-h", "tls_server_sni_maps").strip()
    assert maps == f"texthash:{table(tool)}"
    entries = {line.split()[0] for line in table(tool).read_text().splitlines()[1:]}
    assert entries == {ONE, TWO, NAME}  # the default name too: no SNI mismatch logged
    st = os.stat(table(tool))
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    # pftls-hook proved each name with SNI itself.
    assert f"SNI {ONE}" in result.stderr and f"SNI {TWO}" in result.stderr

    again = tool.run(*sni(ONE, TWO), "install")
    assert_exit(again, EXIT_OK)
    assert again.stderr.count("unchanged") == 3, again.stderr


def test_an_sni_name_no_lineage_covers_is_named_and_gets_the_default(tool: Tool, inter: CA) -> None:
    leaves = lineages(tool, inter)
    orphan = "mx.none.example"
    warning = f"sni {orphan}: no usable lineage covers it: its clients are served the default"

    result = tool.run(*sni(ONE, orphan), "install")

    assert_exit(result, EXIT_OK)
    assert warning in result.stderr
    assert shown(tool, ONE) == sha(leaves[ONE])
    assert shown(tool, orphan) == sha(leaves[NAME])
    entries = {line.split()[0] for line in table(tool).read_text().splitlines()[1:]}
    assert entries == {ONE, NAME}
    assert warning in tool.run(*sni(ONE, orphan), "status").stdout


def test_renewal_of_an_sni_lineage_changes_the_sni_answer(tool: Tool, inter: CA) -> None:
    # The stale-map failure: with a `postmap -F` table Postfix would keep the old copy.
    leaves = lineages(tool, inter)
    assert_exit(tool.run(*sni(ONE, TWO), "install"), EXIT_OK)
    main_cf, map_bytes = tool.postfix.main_cf_bytes(), table(tool).read_bytes()

    renewed = inter.issue(ONE)
    tool.lineage(renewed, 2, name=ONE)
    result = tool.run(
        *sni(ONE, TWO), "deploy-hook", env={"RENEWED_LINEAGE": str(tool.live_dir / ONE)}
    )

    assert_exit(result, EXIT_OK)
    assert shown(tool, ONE) == sha(renewed)  # proven before the hook returned
    assert shown(tool, TWO) == sha(leaves[TWO])
    assert shown(tool, None) == sha(leaves[NAME])
    assert tool.postfix.main_cf_bytes() == main_cf
    assert table(tool).read_bytes() == map_bytes  # texthash: nothing to rebuild


def test_a_broken_sni_lineage_is_refused_while_the_others_deploy(tool: Tool, inter: CA) -> None:
    leaves = lineages(tool, inter)
    assert_exit(tool.run(*sni(ONE, TWO), "install"), EXIT_OK)

    broken, stranger = inter.issue(ONE), inter.issue(ONE)
    fake.renew(
        tool.config_dir, ONE, 2,
        cert_pem=broken.cert_pem, chain_pem=broken.chain_pem, privkey_pem=stranger.key_pem(),
    )  # fmt: skip
    two = inter.issue(TWO)
    tool.lineage(two, 2, name=TWO)
    result = tool.run(*sni(ONE, TWO), "install")

    assert_exit(result, EXIT_REFUSED)
    assert f"{ONE}: refused" in result.stderr and f"{TWO}: deployed" in result.stderr
    assert shown(tool, ONE) == sha(leaves[ONE])
    assert shown(tool, TWO) == sha(two)
    assert shown(tool, None) == sha(leaves[NAME])


def test_removing_a_name_from_sni_removes_it_from_the_table(tool: Tool, inter: CA) -> None:
    leaves = lineages(tool, inter)
    assert_exit(tool.run(*sni(ONE, TWO), "install"), EXIT_OK)
    assert shown(tool, TWO) == sha(leaves[TWO])

    result = tool.run(*sni(ONE), "install")

    assert_exit(result, EXIT_OK)
    entries = {line.split()[0] for line in table(tool).read_text().splitlines()[1:]}
    assert entries == {ONE, NAME}
    assert shown(tool, TWO) == sha(leaves[NAME])
    assert shown(tool, ONE) == sha(leaves[ONE])


def test_status_check_covers_the_sni_chains(tool: Tool, inter: CA) -> None:
    lineages(tool, inter)
    assert_exit(tool.run(*sni(ONE, TWO), "install"), EXIT_OK)
    ok = tool.run(*sni(ONE, TWO), "status", "--check")
    assert ok.returncode == 0, ok.stdout
    assert "all 3 chains" in ok.stdout

    tool.lineage(inter.issue(TWO), 2, name=TWO)  # renewed, not deployed
    stale = tool.run(*sni(ONE, TWO), "status", "--check")
    assert stale.returncode == 2, stale.stdout
    assert f"SNI {TWO}" in stale.stdout


def test_an_sni_name_gets_one_chain_per_algorithm(tool: Tool, inter: CA) -> None:
    leaves = lineages(tool, inter)
    rsa = inter.issue(ONE, key="rsa")
    tool.lineage(rsa, name=f"{ONE}-rsa")

    assert_exit(tool.run(*sni(ONE), "install"), EXIT_OK)

    port = tool.postfix.port
    assert sclient.served_sha256(HOST, port, sclient.ECDSA_ONLY, servername=ONE) == sha(leaves[ONE])
    assert sclient.served_sha256(HOST, port, sclient.RSA_ONLY, servername=ONE) == sha(rsa)
    entry = next(line for line in table(tool).read_text().splitlines() if line.startswith(ONE))
    assert entry.split(None, 1)[1] == ", ".join(
        str(tool.install_dir / f"{n}.pem") for n in (ONE, f"{ONE}-rsa")
    )


def test_an_sni_name_served_by_an_ed25519_lineage_is_proven(tool: Tool, inter: CA) -> None:
    """A lineage whose key is neither RSA nor ECDSA (Ed25519) may be a name's only one: TLS
    1.2 has no suites that ask for it, so the proof offers every algorithm (it once looked
    the algorithm up among the suites and ended in a traceback)."""
    tool.lineage(inter.issue(NAME), name=NAME)
    ed = inter.issue(ONE, key="ed25519")
    tool.lineage(ed, name=ONE)

    result = tool.run(*sni(ONE), "install")

    assert_exit(result, EXIT_OK)
    assert "Traceback" not in result.stderr
    assert f"SNI {ONE}" in result.stderr  # proven by pftls-hook itself
    port = tool.postfix.port
    assert sclient.served_sha256(HOST, port, "ed25519", servername=ONE) == sha(ed)
    status = tool.run(*sni(ONE), "status", "--check")
    assert status.returncode == 0, status.stdout + status.stderr


def test_the_admins_own_sni_table_is_kept_after_ours(tool: Tool, inter: CA) -> None:
    leaves = lineages(tool, inter)
    theirs = inter.issue("mx.admin.example")
    own_file = tool.base / "admin.pem"
    own_file.write_bytes(theirs.key_pem() + theirs.fullchain_pem)
    own_file.chmod(0o600)
    own_table = tool.base / "admin-sni"
    own_table.write_text(f"mx.admin.example {own_file}\n")
    tool.postfix.postconf("-e", f"tls_server_sni_maps = texthash:{own_table}")

    assert_exit(tool.run(*sni(ONE), "install"), EXIT_OK)

    maps = tool.postfix.postconf("-h", "tls_server_sni_maps").strip()
    assert maps == f"texthash:{table(tool)}, texthash:{own_table}"
    assert shown(tool, ONE) == sha(leaves[ONE])
    assert shown(tool, "mx.admin.example") == sha(theirs)


def test_a_name_that_is_not_a_dns_name_is_a_usage_error(tool: Tool) -> None:
    main_cf = tool.postfix.main_cf_bytes()
    result = tool.run("--sni", "mx one.example", "install")
    assert_exit(result, 2)
    assert result.stderr.count("\n") == 1 and "is not a DNS name" in result.stderr
    assert tool.postfix.main_cf_bytes() == main_cf


@pytest.mark.slow
def test_certbot_renewals_of_an_sni_lineage_through_daemon_and_hook(
    tmp_path: Path, pebble: Pebble, certbot: Certbot, postfix: PostfixInstance
) -> None:
    certbot.certonly([postfix.hostname], cert_name="mail")
    certbot.certonly([ONE], cert_name=ONE)
    tool = Tool(postfix, tmp_path, pebble.root_file(), certbot_config_dir=certbot.config_dir)
    assert_exit(tool.run(*sni(ONE), "install"), EXIT_OK)
    assert shown(tool, ONE) == live_sha(certbot, ONE)
    assert shown(tool, None) == live_sha(certbot, "mail")

    notify = NotifySocket()
    daemon = WatchProcess(
        [*tool.options(), *sni(ONE), "--debounce", "0.2"],
        {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "NOTIFY_SOCKET": notify.address,
        },
        tmp_path / "daemon.log",
        tmp_path,
    ).start()
    try:
        notify.wait_for(lambda m: m.get("READY") == "1", timeout=60)
        certbot.renew(force=True, cert_name=ONE)
        sclient.wait_for(
            HOST, postfix.port, sclient.ECDSA_ONLY, live_sha(certbot, ONE), servername=ONE,
            timeout=30,
        )  # fmt: skip
    finally:
        daemon.kill()
        notify.close()
    assert "Traceback" not in daemon.output_text()

    hook = shlex.join(
        [sys.executable, "-m", "pftls_hook", *tool.options(), *sni(ONE), "deploy-hook"]
    )
    certbot.renew(force=True, cert_name=ONE, deploy_hook=hook)
    assert shown(tool, ONE) == live_sha(certbot, ONE)  # proven before certbot returned
    assert shown(tool, None) == live_sha(certbot, "mail")
