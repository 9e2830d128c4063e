"""The deploy pipeline against a real private Postfix, through the real CLI.

Every test runs `python -m pftls_hook` as a subprocess, as certbot or an admin would, on a
fake certbot lineage signed by an in-memory test CA, and judges the result from outside:
the exit code, the one-line reasons on stderr, main.cf's bytes, the installed files' modes,
and what a STARTTLS client is shown by Postfix (tests/support/postfix.py's own client, not
pftls_hook's probe).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import MakePostfix
from tests.support import lineage as fake
from tests.support.fake_smtp import FakeSmtpServer
from tests.support.net import wait_until
from tests.support.pki import CA, CLIENT_AUTH, Leaf
from tests.support.postfix import PostfixInstance, served_sha256, wait_for_served_sha256
from tests.support.tool import Tool, run_cli

HOST = "127.0.0.1"
NAME = "mail.test.example"  # the lineage, and the instance's myhostname
# A wrong certificate must be noticed quickly: the probe retries until this bound.
PROBE_TIMEOUT = "2"

# Exit codes (pftls_hook/cli.py, README).
EXIT_OK, EXIT_REFUSED, EXIT_ROLLED_BACK, EXIT_CANNOT = 0, 3, 4, 6


# ---------------------------------------------------------------------------- the rig


@pytest.fixture(scope="module")
def root() -> CA:
    return CA.root("pftls deploy-test root")


@pytest.fixture(scope="module")
def inter(root: CA) -> CA:
    return root.intermediate("pftls deploy-test intermediate")


def sha256(leaf: Leaf) -> str:
    return hashlib.sha256(leaf.cert_der).hexdigest()


def combined(leaf: Leaf) -> bytes:
    """What the combined layout must install: the key, then the full chain."""
    return leaf.key_pem() + leaf.fullchain_pem


@dataclass
class Rig:
    """One private Postfix, one certbot config dir, one install dir, one trust anchor."""

    postfix: PostfixInstance
    config: Path  # certbot's config dir (live/, archive/)
    install_dir: Path
    ca_file: Path
    lock_file: Path
    inter: CA

    @property
    def live(self) -> Path:
        return self.config / "live"

    def cli(
        self,
        *args: str,
        options: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """`python -m pftls_hook <global options> <args>` as a separate process."""
        return run_cli([*self.tool.options(), *options, *args], env)

    @property
    def tool(self) -> Tool:
        return Tool(self.postfix, self.config.parent, self.ca_file, PROBE_TIMEOUT, self.config)

    def lineage(
        self,
        leaf: Leaf,
        version: int = 1,
        name: str = NAME,
        files: Mapping[str, bytes] | None = None,
    ) -> None:
        """Version `version` of lineage `name` holds `leaf` (`files` may override some of
        cert_pem, chain_pem, fullchain_pem, privkey_pem), and the live links point at it,
        as after `certbot certonly` or a finished renewal."""
        pems = dict(files or {})
        cert, chain = pems.get("cert_pem", leaf.cert_pem), pems.get("chain_pem", leaf.chain_pem)
        privkey, fullchain = pems.get("privkey_pem", leaf.key_pem()), pems.get("fullchain_pem")
        if version == 1:
            fake.new_lineage(
                self.config,
                name,
                cert_pem=cert,
                chain_pem=chain,
                privkey_pem=privkey,
                fullchain_pem=fullchain,
            )
        else:
            fake.renew(
                self.config,
                name,
                version,
                cert_pem=cert,
                chain_pem=chain,
                privkey_pem=privkey,
                fullchain_pem=fullchain,
            )

    def served(self) -> str:
        return served_sha256(HOST, self.postfix.port)

    def main_cf(self) -> bytes:
        return self.postfix.main_cf_bytes()

    def param(self, name: str) -> str:
        return self.postfix.postconf("-h", name).strip()

    @property
    def current(self) -> Path:
        """The combined file main.cf names: `<install>/<lineage>.pem`."""
        return self.install_dir / f"{NAME}.pem"

    def versions(self, suffix: str = ".pem") -> list[Path]:
        pattern = re.compile(re.escape(NAME) + r"\.[0-9]{8}T[0-9]{12}Z" + re.escape(suffix) + "$")
        if not self.install_dir.exists():
            return []
        return sorted(p for p in self.install_dir.iterdir() if pattern.match(p.name))

    def deploy_first(self) -> Leaf:
        """Version 1 issued, installed by a full first deploy, and served."""
        leaf = self.inter.issue(NAME)
        self.lineage(leaf)
        result = self.cli("install")
        assert_ok(result)
        assert_serves(self, leaf)
        return leaf


def _make_rig(postfix: PostfixInstance, tmp_path: Path, root: CA, inter: CA) -> Rig:
    ca_file = tmp_path / "test-root.pem"
    ca_file.write_bytes(root.cert_pem)
    return Rig(
        postfix=postfix,
        config=tmp_path / "letsencrypt",
        install_dir=tmp_path / "tls",
        ca_file=ca_file,
        lock_file=tmp_path / "run" / "deploy.lock",
        inter=inter,
    )


def cool_main_cf(postfix: PostfixInstance) -> None:
    """Back-date main.cf after a test's own postconf -e: Postfix makes every reader wait
    1-2 s for a freshly written main.cf to "cool", a cost of the setup, not of the test."""
    past = time.time() - 60
    os.utime(postfix.config_dir / "main.cf", (past, past))


@pytest.fixture
def rig(postfix: PostfixInstance, tmp_path: Path, root: CA, inter: CA) -> Rig:
    """A running Postfix serving its own initial certificate; no lineage yet."""
    return _make_rig(postfix, tmp_path, root, inter)


@dataclass(frozen=True)
class Deployed:
    rig: Rig
    first: Leaf  # version 1 of the lineage: installed by pftls-hook, served by Postfix


@pytest.fixture
def deployed(make_postfix: MakePostfix, tmp_path: Path, root: CA, inter: CA) -> Deployed:
    """A running Postfix that serves version 1, installed by pftls-hook: the state a
    renewal meets. The quick route there (the full first deploy is tested on its own):
    main.cf is pointed at the install dir while Postfix is stopped, pftls-hook installs
    (Postfix not running: no reload), then Postfix starts."""
    rig = _make_rig(make_postfix(start=False), tmp_path, root, inter)
    first = inter.issue(NAME)
    rig.lineage(first)
    current = rig.current
    rig.postfix.postconf(
        "-e", f"smtpd_tls_cert_file = {current}", f"smtpd_tls_key_file = {current}"
    )
    cool_main_cf(rig.postfix)
    assert_ok(rig.cli("install"))
    rig.postfix.start()
    assert_serves(rig, first)
    return Deployed(rig, first)


# ----------------------------------------------------------------- named assertions


def assert_clean_log(result: subprocess.CompletedProcess[str]) -> None:
    """Invariant 7: one prefixed line per step on stderr, never a traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    for line in result.stderr.splitlines():
        assert line.startswith("pftls-hook: "), f"unprefixed stderr line: {line!r}"


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == EXIT_OK, f"exit {result.returncode}\n{result.stderr}"
    assert_clean_log(result)


def assert_unchanged(
    rig: Rig,
    main_cf_before: bytes,
    served_before: str,
    result: subprocess.CompletedProcess[str],
    *,
    code: int | None = None,
) -> None:
    """Invariant 3: a refused or failed deploy leaves main.cf and the served certificate
    as they were. After a rollback Postfix was reloaded, and new smtpd processes take a
    moment to come up: wait (bounded) for the previous certificate rather than sample once."""
    assert result.returncode != EXIT_OK, f"unexpectedly succeeded\n{result.stderr}"
    if code is not None:
        assert result.returncode == code, f"exit {result.returncode}, not {code}\n{result.stderr}"
    assert_clean_log(result)
    assert rig.main_cf() == main_cf_before, "main.cf changed"
    wait_for_served_sha256(HOST, rig.postfix.port, served_before, timeout=10)


def assert_serves(rig: Rig, leaf: Leaf) -> None:
    """Postfix shows `leaf` to a STARTTLS client. `postfix reload` is asynchronous and an
    old idle smtpd may take one more connection, so this waits (bounded) for it."""
    wait_for_served_sha256(HOST, rig.postfix.port, sha256(leaf), timeout=10)


def assert_root_file(path: Path, mode: int = 0o600) -> None:
    """A regular file (not a link) owned by root:root with exactly `mode`."""
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode), f"{path} is not a regular file"
    assert (st.st_uid, st.st_gid) == (0, 0), f"{path} owned by {st.st_uid}:{st.st_gid}"
    assert stat.S_IMODE(st.st_mode) == mode, f"{path} mode {stat.S_IMODE(st.st_mode):o}"


def reload_count(postfix: PostfixInstance) -> int:
    # postfix-script logs this once per `postfix reload` command, before it signals master.
    return postfix.log_text().count("refreshing the Postfix mail system")


# ------------------------------------------------------------------------- happy path


def test_install_points_main_cf_at_one_root_only_file_and_postfix_serves_it(rig: Rig) -> None:
    leaf = rig.inter.issue(NAME)
    rig.lineage(leaf)

    result = rig.cli("install")

    assert_ok(result)
    assert rig.param("smtpd_tls_cert_file") == str(rig.current)
    assert rig.param("smtpd_tls_key_file") == str(rig.current)
    assert_root_file(rig.current)
    assert rig.current.read_bytes() == combined(leaf)
    # The current name is a hard link to the one version; no temp file is left behind.
    (version,) = rig.versions()
    assert version.samefile(rig.current)
    assert sorted(os.listdir(rig.install_dir)) == sorted([version.name, rig.current.name])
    assert_serves(rig, leaf)


def test_second_install_is_a_no_op(rig: Rig) -> None:
    rig.deploy_first()
    main_cf = rig.postfix.config_dir / "main.cf"
    before = (main_cf.read_bytes(), main_cf.stat().st_mtime_ns)
    # The first deploy reloaded once; let its log line land before counting.
    wait_until(lambda: reload_count(rig.postfix) == 1, timeout=10, what="the first reload")
    reloads = reload_count(rig.postfix)

    result = rig.cli("install")

    assert_ok(result)
    assert "nothing to do" in result.stderr
    assert (main_cf.read_bytes(), main_cf.stat().st_mtime_ns) == before
    # Proof that no reload happened: reload once ourselves; postlogd writes lines in the
    # order they were sent, so had the tool reloaded, its line would show up before ours.
    rig.postfix.reload()
    wait_until(
        lambda: reload_count(rig.postfix) > reloads, timeout=10, what="our reload in the log"
    )
    assert reload_count(rig.postfix) == reloads + 1


def test_renewal_serves_new_leaf_without_main_cf_write_and_prunes(rig: Rig) -> None:
    rig.deploy_first()
    main_cf = rig.main_cf()

    for version in (2, 3):
        leaf = rig.inter.issue(NAME)  # a new key each time, as certbot's default
        rig.lineage(leaf, version)
        result = rig.cli("install")
        assert_ok(result)
        assert_serves(rig, leaf)
        assert rig.current.read_bytes() == combined(leaf)
        assert rig.main_cf() == main_cf, "a renewal must not rewrite main.cf"

    kept = rig.versions()
    assert len(kept) == 2, kept
    assert kept[-1].samefile(rig.current)
    for path in kept:
        assert_root_file(path)


# -------------------------------------------------------------------------- refusals


def _days_ago(days: int) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


def _files(leaf: Leaf) -> dict[str, bytes]:
    return {"cert_pem": leaf.cert_pem, "chain_pem": leaf.chain_pem, "privkey_pem": leaf.key_pem()}


Breakage = Callable[[Leaf, CA, CA], dict[str, bytes]]

# case: (file named in the reason, keyword of the reason, how to break a good lineage).
# A breakage gets a good leaf, its issuing CA and an untrusted root, and returns the lineage
# files that replace the good ones; each case breaks one thing only.
REFUSALS: dict[str, tuple[str, str, Breakage]] = {
    "garbage": (
        "cert.pem", "not PEM",
        lambda good, inter, other: {"cert_pem": b"this is not a certificate\n"},
    ),
    "der": (
        "cert.pem", "DER",
        lambda good, inter, other: {"cert_pem": good.cert_der},
    ),
    "truncated-chain": (
        "chain.pem", "truncated",
        lambda good, inter, other: {
            "chain_pem": good.chain_pem[: len(good.chain_pem) // 2],
            "fullchain_pem": good.cert_pem + good.chain_pem[: len(good.chain_pem) // 2],
        },
    ),
    "encrypted-key": (
        "privkey.pem", "encrypted",
        lambda good, inter, other: {"privkey_pem": good.key_pem(encrypted_with=b"secret")},
    ),
    "mismatched-key": (
        "privkey.pem", "does not match",
        lambda good, inter, other: {"privkey_pem": inter.issue(NAME).key_pem()},
    ),
    "expired": (
        "cert.pem", "expired",
        lambda good, inter, other: _files(
            inter.issue(NAME, not_before=_days_ago(100), not_after=_days_ago(10))
        ),
    ),
    "not-yet-valid": (
        "cert.pem", "not yet valid",
        lambda good, inter, other: _files(
            inter.issue(NAME, not_before=_days_ago(-10), not_after=_days_ago(-100))
        ),
    ),
    "client-auth-only": (
        "cert.pem", "serverAuth",
        lambda good, inter, other: _files(inter.issue(NAME, eku=[CLIENT_AUTH])),
    ),
    "untrusted-root": (
        "fullchain.pem", "trust anchor",
        lambda good, inter, other: _files(other.intermediate().issue(NAME)),
    ),
    "fullchain-mismatch": (
        "fullchain.pem", "not cert.pem followed by chain.pem",
        lambda good, inter, other: {
            "fullchain_pem": good.cert_pem + other.intermediate().cert_pem
        },
    ),
    "hostname-not-covered": (
        "cert.pem", f"does not cover {NAME}",
        lambda good, inter, other: _files(inter.issue("www.test.example")),
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def other_root() -> CA:
    """A CA that is not in --ca-file."""
    return CA.root("pftls untrusted root")


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_certificate_changes_nothing(case: str, deployed: Deployed, other_root: CA) -> None:
    rig, first = deployed.rig, deployed.first
    installed = rig.current.read_bytes()
    main_cf = rig.main_cf()
    file, keyword, breakage = REFUSALS[case]
    good = rig.inter.issue(NAME)
    rig.lineage(good, 2, files=breakage(good, rig.inter, other_root))

    result = rig.cli("install", NAME)

    assert_unchanged(rig, main_cf, sha256(first), result, code=EXIT_REFUSED)
    assert re.search(rf"pftls-hook: .*{re.escape(file)}: .*{re.escape(keyword)}", result.stderr), (
        result.stderr
    )
    assert rig.current.read_bytes() == installed
    assert len(rig.versions()) == 1


def test_lineage_link_out_of_certbot_dir_is_refused(deployed: Deployed, tmp_path: Path) -> None:
    rig, first = deployed.rig, deployed.first
    main_cf = rig.main_cf()
    # A perfectly good certificate, but reached through a link that leaves the config dir.
    good = rig.inter.issue(NAME)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "cert1.pem").write_bytes(good.cert_pem)
    fake.set_link(rig.config, NAME, "cert", elsewhere / "cert1.pem")

    result = rig.cli("install", NAME)

    assert_unchanged(rig, main_cf, sha256(first), result, code=EXIT_REFUSED)
    assert re.search(r"cert\.pem: .*outside the certbot config dir", result.stderr), result.stderr


def _symlinked(rig: Rig) -> str:
    real = rig.install_dir.with_name("tls.real")
    rig.install_dir.rename(real)
    rig.install_dir.symlink_to(real)
    return "a symlink"


def _group_writable(rig: Rig) -> str:
    rig.install_dir.chmod(0o775)
    return "writable by group"


@pytest.mark.parametrize("make_unsafe", [_symlinked, _group_writable], ids=["symlink", "g+w"])
def test_unsafe_install_dir_is_refused(
    deployed: Deployed, make_unsafe: Callable[[Rig], str]
) -> None:
    rig, first = deployed.rig, deployed.first
    main_cf = rig.main_cf()
    keyword = make_unsafe(rig)
    rig.lineage(rig.inter.issue(NAME), 2)

    result = rig.cli("install")

    assert_unchanged(rig, main_cf, sha256(first), result, code=EXIT_CANNOT)
    assert f"{rig.install_dir}: install dir is {keyword}" in result.stderr, result.stderr
    assert len(rig.versions()) == 1


# -------------------------------------------------------------------------- rollback


@pytest.fixture
def impostor(tmp_path: Path, other_root: CA) -> Iterator[FakeSmtpServer]:
    """An SMTP server on loopback that completes STARTTLS with another certificate."""
    with FakeSmtpServer(other_root.intermediate().issue(NAME), tmp_path) as server:
        yield server


@pytest.fixture
def tls_broken(tmp_path: Path, other_root: CA) -> Iterator[FakeSmtpServer]:
    """An SMTP server on loopback that answers STARTTLS as smtpd does when its key does
    not load: 454, while still advertising STARTTLS."""
    with FakeSmtpServer(other_root.intermediate().issue(NAME), tmp_path, refuse_tls=True) as s:
        yield s


@pytest.mark.parametrize("server", ["impostor", "tls_broken"])
@pytest.mark.parametrize("previous", [True, False], ids=["previous-version", "first-install"])
def test_failed_probe_rolls_back(
    server: str, previous: bool, request: pytest.FixtureRequest
) -> None:
    probe: FakeSmtpServer = request.getfixturevalue(server)
    if previous:
        deployed: Deployed = request.getfixturevalue("deployed")
        rig = deployed.rig
        served_before = sha256(deployed.first)
        rig.lineage(rig.inter.issue(NAME), 2)
    else:
        rig = request.getfixturevalue("rig")
        served_before = rig.served()  # the instance's own initial certificate
        rig.lineage(rig.inter.issue(NAME))
    installed = rig.current.read_bytes() if previous else None
    main_cf = rig.main_cf()

    result = rig.cli("install", options=("--probe", f"{HOST}:{probe.port}"))

    assert_unchanged(rig, main_cf, served_before, result, code=EXIT_ROLLED_BACK)
    assert "rolled back" in result.stderr, result.stderr
    assert probe.connections > 0, "the probe never reached the fake server"
    if previous:
        assert rig.current.read_bytes() == installed
        assert len(rig.versions()) == 1
    else:
        assert not rig.current.exists()
        assert rig.versions() == []


def test_proof_does_not_wait_out_a_held_handshake(tmp_path: Path, other_root: CA) -> None:
    """After a reload a pre-reload smtpd may hold a handshake for a second (it waits for
    the stopped tlsmgr), then serve the old certificate. The proof opens a new connection
    instead of waiting: it is proven while that first session is still held."""
    from pftls_hook import probe
    from pftls_hook.config import Endpoint

    leaf = other_root.intermediate().issue(NAME)
    with FakeSmtpServer(leaf, tmp_path, hold_first_handshake=True) as server:
        endpoint = Endpoint(HOST, server.port)
        probe.wait_for([endpoint], sha256(leaf), timeout=10)
        assert server.holding, "the proof waited for the held session to be released"
        assert server.connections >= 2  # the held one, then at least one that was served
        server.release()
        # Without the hold the same probe succeeds on its first connection.
        assert probe.served(endpoint) == sha256(leaf)


def test_rollback_command_serves_the_previous_version(deployed: Deployed) -> None:
    rig, first = deployed.rig, deployed.first
    second = rig.inter.issue(NAME)
    rig.lineage(second, 2)
    assert_ok(rig.cli("install"))
    assert_serves(rig, second)
    main_cf = rig.main_cf()

    result = rig.cli("rollback")

    assert_ok(result)
    assert_serves(rig, first)
    assert rig.current.read_bytes() == combined(first)
    assert rig.main_cf() == main_cf


def test_rollback_skips_a_version_a_killed_run_never_switched_to(deployed: Deployed) -> None:
    # A run SIGKILLed after writing its version file but before the switch leaves an orphan
    # newer than the served one. The next deploy prunes it, so rollback returns to the
    # certificate that was actually served before.
    rig, first = deployed.rig, deployed.first
    never_served = rig.inter.issue(NAME)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    orphan = rig.install_dir / f"{NAME}.{stamp}.pem"
    orphan.write_bytes(combined(never_served))
    orphan.chmod(0o600)
    second = rig.inter.issue(NAME)
    rig.lineage(second, 2)
    assert_ok(rig.cli("install"))
    assert not orphan.exists()
    assert len(rig.versions()) == 2

    assert_ok(rig.cli("rollback"))

    assert_serves(rig, first)
    assert rig.current.read_bytes() == combined(first)


def test_rollback_command_in_separate_layout(rig: Rig) -> None:
    layout = ("--layout", "separate")
    leaves = [rig.inter.issue(NAME), rig.inter.issue(NAME)]
    pointers = []
    for version, leaf in enumerate(leaves, start=1):
        rig.lineage(leaf, version)
        assert_ok(rig.cli("install", options=layout))
        pointers.append((rig.param("smtpd_tls_key_file"), rig.param("smtpd_tls_cert_file")))
    assert_serves(rig, leaves[1])

    result = rig.cli("rollback", options=layout)

    assert_ok(result)
    assert (rig.param("smtpd_tls_key_file"), rig.param("smtpd_tls_cert_file")) == pointers[0]
    assert_serves(rig, leaves[0])


# ----------------------------------------------------------------------- deploy-hook


def test_deploy_hook_skips_a_lineage_postfix_does_not_use(deployed: Deployed) -> None:
    rig, first = deployed.rig, deployed.first
    rig.lineage(rig.inter.issue("www.test.example"), name="www.test.example")
    main_cf = rig.main_cf()

    result = rig.cli("deploy-hook", env={"RENEWED_LINEAGE": str(rig.live / "www.test.example")})

    assert_ok(result)
    assert "skipped" in result.stderr
    assert rig.main_cf() == main_cf
    assert_serves(rig, first)
    assert rig.current.read_bytes() == combined(first)


def test_deploy_hook_skips_when_no_lineage_is_for_postfix(rig: Rig) -> None:
    # Only a website's lineage exists: certbot renewed it, Postfix keeps its own certificate.
    rig.lineage(rig.inter.issue("www.test.example"), name="www.test.example")
    main_cf = rig.main_cf()
    served = rig.served()

    result = rig.cli("deploy-hook", env={"RENEWED_LINEAGE": str(rig.live / "www.test.example")})

    assert_ok(result)
    assert "skipped" in result.stderr
    assert rig.main_cf() == main_cf
    assert rig.served() == served
    assert not rig.install_dir.exists() or not any(rig.install_dir.iterdir())


def test_deploy_hook_reports_a_broken_renewal_of_the_postfix_lineage(
    deployed: Deployed,
) -> None:
    # A renewal that breaks cert.pem disqualifies the lineage from selection; the hook must
    # still refuse it loudly (certbot logs the exit code), not skip it as someone else's.
    rig, first = deployed.rig, deployed.first
    rig.lineage(first, 2, files={"cert_pem": b"this is not a certificate\n"})
    main_cf = rig.main_cf()

    result = rig.cli("deploy-hook", env={"RENEWED_LINEAGE": str(rig.live / NAME)})

    assert_unchanged(rig, main_cf, sha256(first), result, code=EXIT_REFUSED)
    assert "cert.pem: not PEM" in result.stderr, result.stderr


def test_deploy_hook_refuses_a_lineage_outside_the_live_dir(
    deployed: Deployed, tmp_path: Path
) -> None:
    rig, first = deployed.rig, deployed.first
    # A complete lineage with a good certificate, in another certbot config dir.
    stray = tmp_path / "other-letsencrypt"
    fake.new_lineage(
        stray,
        NAME,
        cert_pem=first.cert_pem,
        chain_pem=first.chain_pem,
        privkey_pem=first.key_pem(),
    )
    main_cf = rig.main_cf()

    result = rig.cli("deploy-hook", env={"RENEWED_LINEAGE": str(stray / "live" / NAME)})

    assert_unchanged(rig, main_cf, sha256(first), result, code=EXIT_REFUSED)
    assert "not a lineage under" in result.stderr, result.stderr


def test_deploy_hook_deploys_the_mail_lineage(deployed: Deployed) -> None:
    rig = deployed.rig
    renewed = rig.inter.issue(NAME)
    rig.lineage(renewed, 2)

    result = rig.cli("deploy-hook", env={"RENEWED_LINEAGE": str(rig.live / NAME)})

    assert_ok(result)
    assert_serves(rig, renewed)
    assert rig.current.read_bytes() == combined(renewed)


def _hook_importing(rig: Rig, *options: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """The deploy hook for the mail lineage, with Python's import log (PYTHONPROFILEIMPORTTIME):
    the result with the tool's own lines only, and the names of the modules it imported."""
    result = rig.cli(
        "deploy-hook",
        options=options,
        env={"RENEWED_LINEAGE": str(rig.live / NAME), "PYTHONPROFILEIMPORTTIME": "1"},
    )
    lines = result.stderr.splitlines()
    imported = " ".join(line.rsplit("|", 1)[-1] for line in lines if line.startswith("import time"))
    own = "\n".join(line for line in lines if not line.startswith("import time")) + "\n"
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout, own), imported


def test_deploy_hook_no_op_loads_no_cryptography_and_changes_nothing(deployed: Deployed) -> None:
    rig, first = deployed.rig, deployed.first
    main_cf = rig.postfix.config_dir / "main.cf"
    before = (main_cf.read_bytes(), main_cf.stat().st_mtime_ns, rig.current.stat().st_ino)
    reloads = reload_count(rig.postfix)  # the fixture installed before Postfix started

    result, imported = _hook_importing(rig)

    assert_ok(result)
    assert f"{NAME}: unchanged" in result.stderr, result.stderr
    assert "cryptography" not in imported and "pftls_hook.deploy" not in imported
    assert (main_cf.read_bytes(), main_cf.stat().st_mtime_ns, rig.current.stat().st_ino) == before
    assert_serves(rig, first)
    rig.postfix.reload()  # no reload of its own: ours is the only new line (see above)
    wait_until(lambda: reload_count(rig.postfix) > reloads, timeout=10, what="our reload")
    assert reload_count(rig.postfix) == reloads + 1

    # The same check sees cryptography when the hook has work: a renewal to deploy.
    renewed = rig.inter.issue(NAME)
    rig.lineage(renewed, 2)
    result, imported = _hook_importing(rig)
    assert_ok(result)
    assert "cryptography" in imported and f"{NAME}: deployed" in result.stderr
    assert_serves(rig, renewed)


def test_deploy_hook_no_op_is_judged_again_by_the_full_deploy(
    deployed: Deployed, other_root: CA
) -> None:
    """The no-op shortcut answers only for a chain a verifying client accepts now; trust
    anchors or a hostname changed since the install go to the full deploy, which refuses
    (as before the shortcut), and a stopped Postfix is not "unchanged"."""
    rig, first = deployed.rig, deployed.first
    main_cf = rig.main_cf()
    other_ca = rig.ca_file.parent / "other-root.pem"
    other_ca.write_bytes(other_root.cert_pem)

    untrusted, imported = _hook_importing(rig, "--ca-file", str(other_ca))
    assert_unchanged(rig, main_cf, sha256(first), untrusted, code=EXIT_REFUSED)
    assert "trust anchor" in untrusted.stderr and "cryptography" in imported

    renamed, _ = _hook_importing(rig, "--hostname", "smtp.test.example")
    assert_unchanged(rig, main_cf, sha256(first), renamed, code=EXIT_REFUSED)
    assert "does not cover smtp.test.example" in renamed.stderr, renamed.stderr

    # A CA file OpenSSL cannot load (no certificate in it): the shortcut steps aside and the
    # full deploy names the file, as before; no internal error.
    empty_ca = rig.ca_file.parent / "empty.pem"
    empty_ca.write_bytes(b"not a certificate\n")
    unloadable, _ = _hook_importing(rig, "--ca-file", str(empty_ca))
    assert_unchanged(rig, main_cf, sha256(first), unloadable, code=EXIT_REFUSED)
    assert f"{empty_ca}: no CA certificate" in unloadable.stderr, unloadable.stderr

    # A dry run of a refused renewal exits as the deploy would have.
    rig.lineage(rig.inter.issue("other.test.example"), 2)
    dry, _ = _hook_importing(rig, "--dry-run")
    assert_unchanged(rig, main_cf, sha256(first), dry, code=EXIT_REFUSED)
    assert f"does not cover {NAME}" in dry.stderr, dry.stderr
    rig.lineage(first, 3)  # the same certificate again, as version 3: a no-op once more

    rig.postfix.stop()
    stopped, _ = _hook_importing(rig)
    assert_ok(stopped)
    assert "installed-not-running" in stopped.stderr or "not running" in stopped.stderr
    assert "unchanged" not in stopped.stderr, stopped.stderr
    assert rig.main_cf() == main_cf


def test_deploy_hook_no_op_with_a_ca_bundle_of_many_roots_stays_on_the_shortcut(
    deployed: Deployed,
) -> None:
    """A CA file as the system's (a bundle of some 140 roots) with the right root among
    them: still a no-op without cryptography, the root found among the others
    (pem.anchors_for). What handing OpenSSL only that root saves is measured, not asserted:
    docs/benchmarks.md, the no-op with the system CA bundle."""
    rig = deployed.rig
    others = [CA.root(f"bundle root {i}").cert_pem for i in range(140)]
    bundle = rig.ca_file.parent / "bundle.pem"
    bundle.write_bytes(b"".join([*others[:70], rig.ca_file.read_bytes(), *others[70:]]))

    result, imported = _hook_importing(rig, "--ca-file", str(bundle))

    assert_ok(result)
    assert f"{NAME}: unchanged" in result.stderr, result.stderr
    assert "cryptography" not in imported


# ------------------------------------------------------------------- other situations


def test_install_while_postfix_is_stopped_installs_and_warns(rig: Rig) -> None:
    rig.postfix.stop()
    leaf = rig.inter.issue(NAME)
    rig.lineage(leaf)

    result = rig.cli("install")

    assert_ok(result)
    assert "not running" in result.stderr
    assert rig.param("smtpd_tls_cert_file") == str(rig.current)
    assert rig.param("smtpd_tls_key_file") == str(rig.current)
    assert rig.current.read_bytes() == combined(leaf)
    assert_root_file(rig.current)
    assert not rig.postfix.is_running()
    rig.postfix.start()
    assert_serves(rig, leaf)


def test_separate_layout_writes_new_files_per_version(rig: Rig) -> None:
    layout = ("--layout", "separate")
    seen: set[Path] = set()
    for version in (1, 2):
        leaf = rig.inter.issue(NAME)
        rig.lineage(leaf, version)

        result = rig.cli("install", options=layout)

        assert_ok(result)
        key = Path(rig.param("smtpd_tls_key_file"))
        crt = Path(rig.param("smtpd_tls_cert_file"))
        assert key.parent == crt.parent == rig.install_dir
        assert key.name.endswith(".key") and crt.name.endswith(".crt")
        assert not {key, crt} & seen, "a new version must get new files"
        seen |= {key, crt}
        assert_root_file(key, 0o600)
        assert_root_file(crt, 0o644)
        assert key.read_bytes() == leaf.key_pem()
        assert crt.read_bytes() == leaf.fullchain_pem
        assert_serves(rig, leaf)


def test_chain_files_parameter_is_managed_when_in_use(rig: Rig) -> None:
    initial = str(rig.postfix.initial_cert_file)
    rig.postfix.postconf("-e", f"smtpd_tls_chain_files = {initial}")
    cool_main_cf(rig.postfix)
    rig.postfix.reload()
    leaf = rig.inter.issue(NAME)
    rig.lineage(leaf)

    result = rig.cli("install")

    assert_ok(result)
    assert rig.param("smtpd_tls_chain_files") == str(rig.current)
    # The legacy parameters are ignored while chain_files is set: left as they were.
    assert rig.param("smtpd_tls_cert_file") == initial
    assert rig.param("smtpd_tls_key_file") == initial
    assert_serves(rig, leaf)


def test_dry_run_prints_the_change_and_makes_none(rig: Rig) -> None:
    rig.lineage(rig.inter.issue(NAME))
    main_cf = rig.main_cf()
    served = rig.served()

    result = rig.cli("install", options=("--dry-run",))

    assert_ok(result)
    assert f"postconf -e 'smtpd_tls_cert_file = {rig.current}'" in result.stdout
    assert f"postconf -e 'smtpd_tls_key_file = {rig.current}'" in result.stdout
    assert rig.main_cf() == main_cf
    assert not rig.install_dir.exists()
    assert rig.served() == served


def test_verify_judges_without_changing_anything(rig: Rig) -> None:
    main_cf = rig.main_cf()
    served = rig.served()
    leaf = rig.inter.issue(NAME)
    rig.lineage(leaf)

    good = rig.cli("verify")

    assert_ok(good)
    assert sha256(leaf) in good.stdout
    rig.lineage(leaf, 2, files={"privkey_pem": rig.inter.issue(NAME).key_pem()})

    bad = rig.cli("verify", NAME)

    assert bad.returncode == EXIT_REFUSED, bad.stderr
    assert_clean_log(bad)
    assert "privkey.pem: key does not match" in bad.stderr
    assert rig.main_cf() == main_cf
    assert not rig.install_dir.exists()
    assert rig.served() == served


def test_status_json_agrees_after_install(deployed: Deployed) -> None:
    rig, leaf = deployed.rig, deployed.first

    result = rig.cli("status", "--json")

    assert_ok(result)
    report = json.loads(result.stdout)
    (lineage,) = report["lineages"]
    assert lineage["name"] == NAME and lineage["serves_postfix"]
    assert lineage["live"]["cert"]["sha256"] == sha256(leaf)
    assert report["installed"]["cert"]["sha256"] == sha256(leaf)
    assert report["installed"]["file"] == str(rig.current)
    assert [s["cert"]["sha256"] for s in report["served"].values()] == [sha256(leaf)]
    assert report["warnings"] == []


def test_deploy_with_no_tls_service_says_it_is_unproven(rig: Rig) -> None:
    """A Postfix whose master.cf has no smtpd with TLS gives nothing to probe: the deploy
    must not claim Postfix serves the certificate, and must say how to enable TLS."""
    rig.postfix.postconf("-e", "smtpd_tls_security_level = none")
    cool_main_cf(rig.postfix)
    rig.lineage(rig.inter.issue(NAME))

    result = rig.cli("install")

    assert_ok(result)
    assert "NOT proven" in result.stderr and "pftls-hook configure" in result.stderr
    assert "deployed; Postfix serves" not in result.stderr
    assert "TLS not enabled" in result.stderr


def test_status_shows_only_the_daemon_state_of_its_own_configuration(deployed: Deployed) -> None:
    """Two configurations sharing the lock dir (/run/pftls-hook): each sees its own daemon
    state file, never the other's."""
    from pftls_hook.config import Settings
    from pftls_hook.daemon import state as watchstate

    rig = deployed.rig
    ours = Settings(
        live_dir=rig.live,
        postfix_config_dir=rig.postfix.config_dir,
        install_dir=rig.install_dir,
        lock_file=rig.lock_file,
    )
    other = Settings(
        live_dir=rig.config / "elsewhere" / "live",
        postfix_config_dir=rig.postfix.config_dir,
        install_dir=rig.install_dir,
        lock_file=rig.lock_file,
    )
    assert watchstate.state_file(ours) != watchstate.state_file(other)
    watchstate.write(
        watchstate.state_file(other),
        watchstate.WatchState(pid=os.getpid(), started="2026-01-01T00:00:00+00:00", phase="idle"),
    )

    report = json.loads(rig.cli("status", "--json").stdout)

    assert report["watch"] is None
    assert "no state file for this configuration" in rig.cli("status").stdout
