"""`pftls-hook obtain`, `register`, `unregister`: certbot run for the admin, with the deploy
hook in place so that every renewal reaches Postfix.

The slow tests here run real certbot against pebble with `--authenticator standalone` and a
real private Postfix, then renew with certbot itself, or expand the lineage with one more
name; the dns-ovh authenticator is run end to end in test_obtain_dns_ovh.py. The dns-ovh
refusals check the credentials file before anything runs; the installed certbot must list
the dns-ovh plugin.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from pftls_hook.setup.credentials import ENDPOINTS
from pftls_hook.setup.obtain import certbot_command
from tests.conftest import MakePostfix
from tests.support import sclient
from tests.support.certbot import CERTBOT, Certbot
from tests.support.net import LOOPBACK
from tests.support.pebble import Pebble
from tests.support.pki import CA
from tests.support.postfix import PostfixInstance, served_sha256
from tests.support.tool import NAME, Tool, assert_exit

EXIT_OK, EXIT_USAGE, EXIT_CANNOT = 0, 2, 6
NOBODY = 65534
HOOK_MARKER = "# pftls-hook register"


def leaf_sha256(lineage: Path) -> str:
    cert = x509.load_pem_x509_certificate((lineage / "cert.pem").read_bytes())
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def hook_file(tool: Tool) -> Path:
    return tool.config_dir / "renewal-hooks" / "deploy" / "pftls-hook"


# ------------------------------------------------------------- dns-ovh credentials refusals


@pytest.fixture
def offline_tool(make_postfix: MakePostfix, tmp_path: Path) -> Tool:
    """A tool whose certbot would write under tmp_path/certbot-*: proof that it never ran."""
    return Tool(postfix=make_postfix(start=False), base=tmp_path, ca_file=None)


def obtain_dns_ovh(tool: Tool, credentials: Path) -> subprocess.CompletedProcess[str]:
    return tool.run(
        "obtain", "--domain", NAME, "--email", "admin@test.example",
        "--dns-ovh-credentials", str(credentials), "--propagation-seconds", "1",
        f"--certbot-arg=--work-dir={tool.base / 'certbot-work'}",
        f"--certbot-arg=--logs-dir={tool.base / 'certbot-logs'}",
    )  # fmt: skip


def assert_certbot_never_ran(tool: Tool) -> None:
    for path in (tool.config_dir, tool.base / "certbot-work", tool.base / "certbot-logs"):
        assert not path.exists(), f"{path} exists: certbot ran"


GOOD_CREDENTIALS = (
    "dns_ovh_endpoint = ovh-eu\ndns_ovh_application_key = k\n"
    "dns_ovh_application_secret = S3CRET\ndns_ovh_consumer_key = c\n"
)


def credentials(
    tmp_path: Path, mode: int = 0o600, owner: int = 0, content: bytes | str = GOOD_CREDENTIALS
) -> Path:
    path = tmp_path / "ovh.ini"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    path.chmod(mode)
    os.chown(path, owner, owner)
    return path


def without(key: str) -> str:
    return "".join(line + "\n" for line in GOOD_CREDENTIALS.splitlines() if key not in line)


# Each file certbot-dns-ovh could not use, with the fix its one-line refusal names.
BROKEN_CREDENTIALS: list[tuple[Callable[[Path], Path], str]] = [
    (lambda tmp: tmp / "missing.ini", "not found"),
    (lambda tmp: credentials(tmp, mode=0o640), "chmod 600"),
    (lambda tmp: credentials(tmp, mode=0o604), "chmod 600"),
    (lambda tmp: credentials(tmp, owner=NOBODY), "chown root:root"),
    (
        lambda tmp: credentials(tmp, content=GOOD_CREDENTIALS.encode() + b"# caf\xff\n"),
        "not UTF-8 text (byte 0xff at offset",
    ),
    (lambda tmp: credentials(tmp, content=b""), "lack dns_ovh_endpoint"),
    *[
        (lambda tmp, key=key: credentials(tmp, content=without(key)), f"lack {key}")
        for key in (
            "dns_ovh_endpoint",
            "dns_ovh_application_key",
            "dns_ovh_application_secret",
            "dns_ovh_consumer_key",
        )
    ],
    (
        lambda tmp: credentials(
            tmp, content=GOOD_CREDENTIALS.replace("consumer_key = c", "consumer_key =")
        ),
        "dns_ovh_consumer_key is empty",
    ),
    (
        lambda tmp: credentials(tmp, content=GOOD_CREDENTIALS.replace("S3CRET", "S3CRET, S3CRET2")),
        "dns_ovh_application_secret is not one value",
    ),
    (
        lambda tmp: credentials(tmp, content=GOOD_CREDENTIALS.replace("ovh-eu", "ovh-fr")),
        "dns_ovh_endpoint = 'ovh-fr' is not an OVH API endpoint",
    ),
    (
        lambda tmp: credentials(tmp, content=GOOD_CREDENTIALS + "dns_ovh_endpoint = ovh-ca\n"),
        "do not parse: Duplicate keyword name at line 5",
    ),
]
BROKEN_CREDENTIALS_IDS = [
    "missing",
    "group-readable",
    "other-readable",
    "owned-by-nobody",
    "not-utf8",
    "empty-file",
    "no-endpoint",
    "no-application-key",
    "no-application-secret",
    "no-consumer-key",
    "empty-value",
    "list-value",
    "unknown-endpoint",
    "duplicate-key",
]


@pytest.mark.parametrize(("make", "fix"), BROKEN_CREDENTIALS, ids=BROKEN_CREDENTIALS_IDS)
def test_obtain_refuses_unusable_dns_ovh_credentials_before_running_anything(
    offline_tool: Tool, tmp_path: Path, make: Callable[[Path], Path], fix: str
) -> None:
    path = make(tmp_path)
    result = obtain_dns_ovh(offline_tool, path)
    assert_exit(result, EXIT_USAGE)
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert str(path) in result.stderr
    assert fix in result.stderr
    # The secrets never reach the terminal.
    assert "S3CRET" not in result.stderr
    assert_certbot_never_ran(offline_tool)


def test_the_endpoints_accepted_are_those_the_installed_lexicon_knows() -> None:
    from lexicon._private.providers import ovh  # certbot-dns-ovh's backend, as installed

    assert set(ENDPOINTS) == set(ovh.ENDPOINTS)


def test_installed_certbot_lists_the_dns_ovh_plugin(tmp_path: Path) -> None:
    # The certbot that obtain runs, isolated from the machine's own dirs.
    argv = [
        *certbot_command(), "plugins",
        "--config-dir", str(tmp_path / "config"),
        "--work-dir", str(tmp_path / "work"),
        "--logs-dir", str(tmp_path / "logs"),
    ]  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "* dns-ovh" in result.stdout, result.stdout
    assert certbot_command() == [str(CERTBOT)]


def test_obtain_dry_run_shows_the_admins_command_with_the_hook(offline_tool: Tool) -> None:
    creds = credentials(offline_tool.base)
    result = offline_tool.run(
        "--dry-run", "--hostname", NAME, "obtain", "-d", NAME, "-m", "admin@test.example",
        "--dns-ovh-credentials", str(creds),
    )  # fmt: skip
    assert_exit(result, EXIT_OK)
    argv = shlex.split(result.stdout.splitlines()[0].removeprefix("would run "))
    assert argv[:2] == [str(CERTBOT), "certonly"]
    expected = ["--dns-ovh", "--dns-ovh-credentials", str(creds),
                "--dns-ovh-propagation-seconds", "60", "-n", "--agree-tos",
                "-m", "admin@test.example", "-d", NAME,
                "--config-dir", str(offline_tool.config_dir)]  # fmt: skip
    assert argv[2 : 2 + len(expected)] == expected
    hook = shlex.split(argv[argv.index("--deploy-hook") + 1])
    assert hook[:3] == [sys.executable, "-m", "pftls_hook"]
    assert hook[-1] == "deploy-hook"
    for option in ("--live-dir", "--postfix-config-dir", "--install-dir", "--lock-file"):
        assert option in hook
    assert hook[hook.index("--hostname") + 1] == NAME
    assert_certbot_never_ran(offline_tool)


# ------------------------------------------------------------- more names for a lineage

EXTRA = "smtp.test.example"


def dry_run_obtain(tool: Tool, *domains: str) -> tuple[list[str], str]:
    """`obtain --dry-run -d ...` (standalone): certbot's argv, and what it says it writes."""
    args = [arg for domain in domains for arg in ("-d", domain)]
    result = tool.run(
        "--dry-run", "--hostname", NAME, "obtain", *args, "-m", "admin@test.example",
        "--authenticator", "standalone",
    )  # fmt: skip
    assert_exit(result, EXIT_OK)
    lines = result.stdout.splitlines()
    argv = shlex.split(lines[0].removeprefix("would run "))
    said = next(line for line in lines if line.startswith("certbot would write "))
    return argv, said


def test_obtain_names_the_lineage_to_expand_when_the_names_include_all_of_its(
    offline_tool: Tool,
) -> None:
    inter = CA.root("obtain plan root").intermediate("obtain plan inter")
    offline_tool.lineage(inter.issue(NAME))
    offline_tool.lineage(inter.issue("other.test.example"), name="other.test.example")
    before = tree(offline_tool.config_dir)

    argv, said = dry_run_obtain(offline_tool, NAME, EXTRA)
    assert argv[argv.index("--cert-name") + 1] == NAME
    assert "--expand" in argv
    assert said == f"certbot would write lineage {NAME} ({NAME}) expanded with {EXTRA}"

    # The same names: that lineage again, which certbot renews only when due.
    argv, said = dry_run_obtain(offline_tool, NAME.upper())
    assert argv[argv.index("--cert-name") + 1] == NAME
    assert "renewed only if due" in said

    # The admin's own --cert-name: left to certbot, nothing added.
    result = offline_tool.run(
        "--dry-run", "--hostname", NAME, "obtain", "-d", NAME, "-d", EXTRA,
        "-m", "admin@test.example", "--authenticator", "standalone",
        "--certbot-arg=--cert-name=mine",
    )  # fmt: skip
    assert_exit(result, EXIT_OK)
    argv = shlex.split(result.stdout.splitlines()[0].removeprefix("would run "))
    assert "--expand" not in argv and "--cert-name" not in argv
    assert argv[-1] == "--cert-name=mine"
    assert "certbot would write" not in result.stdout

    assert tree(offline_tool.config_dir) == before  # certbot never ran


def test_obtain_makes_a_new_lineage_when_no_lineage_has_only_names_asked_for(
    offline_tool: Tool,
) -> None:
    inter = CA.root("obtain plan root").intermediate("obtain plan inter")
    offline_tool.lineage(inter.issue(NAME, EXTRA))  # more names than asked for
    before = tree(offline_tool.config_dir)

    argv, said = dry_run_obtain(offline_tool, NAME)
    assert "--cert-name" not in argv and "--expand" not in argv
    assert said == f"certbot would write a new lineage for {NAME}"
    assert tree(offline_tool.config_dir) == before  # certbot never ran


def tree(root: Path) -> set[str]:
    """Every path under root: a dry run must leave it as it was."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# --------------------------------------------------------------------- register / unregister


def test_register_writes_one_root_executable_and_unregister_removes_only_ours(
    offline_tool: Tool,
) -> None:
    tool = offline_tool
    tool.config_dir.mkdir()
    path = hook_file(tool)

    assert_exit(tool.run("register"), EXIT_OK)
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755)
    text = path.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert HOOK_MARKER in text
    exec_line = text.splitlines()[-1]
    command = shlex.split(exec_line)
    assert command[:4] == ["exec", sys.executable, "-m", "pftls_hook"]
    assert command[-1] == "deploy-hook"
    assert command[command.index("--live-dir") + 1] == str(tool.live_dir)
    assert sorted(p.name for p in path.parent.iterdir()) == ["pftls-hook"]  # no temp left

    before = (path.read_bytes(), st.st_mtime_ns, st.st_ino)
    again = tool.run("register")
    assert_exit(again, EXIT_OK)
    assert "already registered" in again.stderr
    after = os.lstat(path)
    assert (path.read_bytes(), after.st_mtime_ns, after.st_ino) == before

    assert_exit(tool.run("unregister"), EXIT_OK)
    assert not path.exists()
    assert "nothing to do" in tool.run("unregister").stderr

    # The admin's own hook at that path is neither replaced nor removed.
    path.write_text("#!/bin/sh\necho the admin's own hook\n")
    for command_name in ("register", "unregister"):
        result = tool.run(command_name)
        assert_exit(result, EXIT_CANNOT)
        assert "not written by pftls-hook" in result.stderr
    assert path.read_text() == "#!/bin/sh\necho the admin's own hook\n"


def test_the_hook_carries_the_config_file_and_only_the_options_that_differ_from_it(
    tmp_path: Path, make_postfix: MakePostfix
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'install-dir = "{tmp_path / "from-file"}"\nmin-days = 7\n')
    config.chmod(0o600)
    tool = Tool(postfix=make_postfix(start=False), base=tmp_path, ca_file=None)
    tool.config_dir.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "pftls_hook", "--config", str(config),
         "--live-dir", str(tool.live_dir), "--hostname", NAME, "register", "--dry-run"],
        capture_output=True, text=True, timeout=60, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("PFTLS_HOOK_")},
    )  # fmt: skip
    assert_exit(result, EXIT_OK)
    exec_line = next(line for line in result.stdout.splitlines() if line.startswith("exec "))
    hook = shlex.split(exec_line)[1:]
    assert hook == [
        sys.executable, "-m", "pftls_hook", "--config", str(config),
        "--live-dir", str(tool.live_dir), "--hostname", NAME, "deploy-hook",
    ]  # fmt: skip
    assert not hook_file(tool).exists()  # a dry run


# ------------------------------------------------------ end to end: pebble, certbot, Postfix


def certbot_tool(
    tmp_path: Path, pebble: Pebble, certbot: Certbot, postfix: PostfixInstance
) -> Tool:
    """certbot's config dir is the test certbot's: `certbot renew` sees the lineage."""
    return Tool(
        postfix=postfix,
        base=tmp_path,
        ca_file=pebble.root_file(),
        certbot_config_dir=certbot.config_dir,
    )


def obtain_standalone(
    tool: Tool, pebble: Pebble, certbot: Certbot, *domains: str, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    args = [arg for domain in domains for arg in ("--domain", domain)]
    return tool.run(
        "obtain", *args, *extra, "--email", "admin@test.example",
        "--authenticator", "standalone", "--server", pebble.directory_url,
        f"--certbot-arg=--http-01-port={pebble.http01_port}",
        f"--certbot-arg=--http-01-address={LOOPBACK}",
        f"--certbot-arg=--work-dir={certbot.work_dir}",
        f"--certbot-arg=--logs-dir={certbot.logs_dir}",
        env={"REQUESTS_CA_BUNDLE": str(pebble.tls_ca_file)},
    )  # fmt: skip


@pytest.mark.slow
def test_obtain_deploys_and_certbot_renew_redeploys_through_the_registered_hooks(
    tmp_path: Path, pebble: Pebble, certbot: Certbot, postfix: PostfixInstance
) -> None:
    tool = certbot_tool(tmp_path, pebble, certbot, postfix)
    live = certbot.live_dir
    assert_exit(obtain_standalone(tool, pebble, certbot, NAME), EXIT_OK)
    lineage = live / NAME
    first = leaf_sha256(lineage)
    assert served_sha256(LOOPBACK, postfix.port) == first

    # The hook certbot keeps for this lineage: renew_hook in renewal/<name>.conf.
    conf = (certbot.config_dir / "renewal" / f"{NAME}.conf").read_text()
    renew_hook = next(line for line in conf.splitlines() if line.startswith("renew_hook = "))
    hook = shlex.split(renew_hook.removeprefix("renew_hook = "))
    assert hook[:3] == [sys.executable, "-m", "pftls_hook"]
    assert hook[hook.index("--live-dir") + 1] == str(live)
    assert hook[-1] == "deploy-hook"

    # And the certbot-native one, for every lineage.
    assert_exit(tool.run("register"), EXIT_OK)
    registered = certbot.config_dir / "renewal-hooks" / "deploy" / "pftls-hook"
    assert os.access(registered, os.X_OK)

    certbot.renew(force=True, cert_name=NAME)
    renewed = leaf_sha256(lineage)
    assert renewed != first
    # Both hooks ran inside certbot, one after the other; the first deployed, the second
    # found it already served. Either way Postfix serves the renewal when certbot returns.
    assert served_sha256(LOOPBACK, postfix.port) == renewed
    certbot_log = (certbot.logs_dir / "letsencrypt.log").read_text()
    assert f"Running deploy-hook command: {registered}" in certbot_log
    assert "Running deploy-hook command: " + renew_hook.removeprefix("renew_hook = ") in (
        certbot_log
    )


@pytest.mark.slow
def test_obtain_with_one_more_name_expands_the_lineage_and_postfix_serves_it(
    tmp_path: Path, pebble: Pebble, certbot: Certbot, postfix: PostfixInstance
) -> None:
    tool = certbot_tool(tmp_path, pebble, certbot, postfix)
    assert_exit(obtain_standalone(tool, pebble, certbot, NAME), EXIT_OK)
    lineage = certbot.live_dir / NAME
    first = leaf_sha256(lineage)

    # Without --expand certbot -n stops at "Do you want to expand and replace ...?".
    result = obtain_standalone(tool, pebble, certbot, NAME, EXTRA)
    assert_exit(result, EXIT_OK)
    assert f"certbot writes lineage {NAME} ({NAME}) expanded with {EXTRA}" in result.stderr
    assert sorted(p.name for p in certbot.live_dir.iterdir() if p.is_dir()) == [NAME]
    cert = x509.load_pem_x509_certificate((lineage / "cert.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted([NAME, EXTRA])
    expanded = leaf_sha256(lineage)
    assert expanded != first
    assert served_sha256(LOOPBACK, postfix.port) == expanded


@pytest.mark.slow
def test_obtain_key_types_makes_an_ecdsa_and_an_rsa_lineage_served_side_by_side(
    tmp_path: Path, pebble: Pebble, certbot: Certbot, postfix: PostfixInstance
) -> None:
    """The dual setup in one command: `--key-type ecdsa,rsa` has certbot make
    `<name>-ecdsa` and `<name>-rsa`, and each client is served its algorithm's chain."""
    tool = certbot_tool(tmp_path, pebble, certbot, postfix)

    result = obtain_standalone(tool, pebble, certbot, NAME, extra=("--key-type", "ecdsa,rsa"))

    assert_exit(result, EXIT_OK)
    ecdsa_dir, rsa_dir = certbot.live_dir / f"{NAME}-ecdsa", certbot.live_dir / f"{NAME}-rsa"
    key_ecdsa = x509.load_pem_x509_certificate((ecdsa_dir / "cert.pem").read_bytes()).public_key()
    key_rsa = x509.load_pem_x509_certificate((rsa_dir / "cert.pem").read_bytes()).public_key()
    assert isinstance(key_ecdsa, ec.EllipticCurvePublicKey), key_ecdsa
    assert isinstance(key_rsa, rsa.RSAPublicKey), key_rsa
    served = {
        sigalgs: sclient.served_sha256(LOOPBACK, postfix.port, sigalgs)
        for sigalgs in (sclient.ECDSA_ONLY, sclient.RSA_ONLY)
    }
    assert served[sclient.ECDSA_ONLY] == leaf_sha256(ecdsa_dir)
    assert served[sclient.RSA_ONLY] == leaf_sha256(rsa_dir)


def test_obtain_refuses_an_unknown_key_type_before_running_anything(offline_tool: Tool) -> None:
    result = offline_tool.run(
        "obtain", "-d", NAME, "-m", "admin@test.example", "--authenticator", "standalone",
        "--key-type", "ecdsa,dsa",
    )  # fmt: skip
    assert_exit(result, EXIT_USAGE)
    assert "--key-type" in result.stderr
