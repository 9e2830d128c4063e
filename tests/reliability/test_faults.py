"""Case 2, faults: what a renewal meets when the machine misbehaves.

Each test starts from the state a renewal meets (version 1 installed by pftls-hook and
served, version 2 live in the lineage), injects one fault, runs the deploy, and requires:
a non-zero exit (or, for a stopped Postfix, the documented success with a warning) with
one clear line and no traceback; no partial or new file left in the install dir; main.cf
byte for byte as it was; and the previous certificate still served.

Faults come from the real thing where the machine can make them (a full tmpfs, a read-only
mount, a stopped Postfix, an impostor SMTP server); a failing `postfix reload` or `postconf`
is a runner handed to `Postfix(dir, run=...)` in-process (STYLE: tests hand in a fake
runner or use the real Postfix).
"""

from __future__ import annotations

import os
import re
import smtplib
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from pftls_hook import runner
from pftls_hook.config import Settings
from pftls_hook.deploy import Deployer
from pftls_hook.errors import CommandError, DeployFailedError, PftlsError
from pftls_hook.postfix import Postfix
from tests.support.deployed import (
    LOOPBACK,
    combined,
    cool_main_cf,
    current,
    first_deploy,
    sha256,
    wait_serves,
)
from tests.support.fake_smtp import FakeSmtpServer
from tests.support.figures import record
from tests.support.installed import pointed_pair, stale_temps
from tests.support.mounts import fill, read_only_bind, remount, tmpfs
from tests.support.net import wait_until
from tests.support.pki import CA, Leaf
from tests.support.postfix import served_sha256
from tests.support.tool import NAME, Tool, assert_exit

POSTFIX_COMMANDS = ("postalias", "postcat", "postconf", "postdrop", "postfix", "postkick",
                    "postlock", "postlog", "postmap", "postqueue", "sendmail")  # fmt: skip

EXIT_OK, EXIT_ROLLED_BACK, EXIT_CANNOT = 0, 4, 6

FAULTS = {
    "reload-fails-once": "`postfix reload` fails once",
    "reload-fails": "`postfix reload` fails every time (the rollback's reload too)",
    "not-running": "Postfix is not running",
    "postconf-fails": "`postconf` fails (reading the configuration)",
    "main-cf-read-only": "`postconf -e` fails (main.cf's directory read-only, first install)",
    "disk-full": "the install dir fills up (64 KiB tmpfs, ENOSPC mid-write)",
    "disk-full-separate": "the same, separate layout (the key fits, its certificate not)",
    "read-only": "the install dir is read-only (tmpfs remounted ro)",
    "probe-wrong-cert": "the probe sees another certificate",
    "probe-454": "the probe gets 454 (smtpd could not load its key)",
    "repair-454": "Postfix answers 454 before the deploy (its key file is missing)",
    "slow-queue-scan": "the queue scan `postfix reload` leaves running (`postsuper &`) "
    "does not end (a large queue)",
}


# What these tests found in the deploy routine, and how it answers now.
FINDINGS = (
    "a full or read-only install dir raised a bare OSError (internal error, exit 1); "
    "now exit 6 naming the dir and the reason, nothing new left behind (install.py)",
    "a failed `postconf -e` (read-only main.cf dir) was written back during the rollback, "
    "failed again and made it exit 5; now only values that differ are restored (postfix.py)",
    "a `postfix reload` that failed again in the rollback made it exit 5 although the "
    "previous certificate was served; now proven by the probe, exit 4 (deploy.py)",
    "a 454 from an old idle smtpd after the reload rolled a repair of a broken TLS back to "
    "it (4 deploys in 8); a 454 is now retried until the probe timeout (probe.py)",
    "`postfix reload` returned only once the `postsuper &` it leaves behind had ended (that "
    "child kept our output pipes open): a long queue scan made the reload time out and a "
    "good deploy roll back; output is now captured in memory files (runner.py)",
)


@pytest.fixture(scope="module")
def outcomes() -> Iterator[dict[str, str]]:
    """What each fault led to, one line each; written as faults.json at the end."""
    seen: dict[str, str] = {}
    yield seen
    record(
        "faults",
        title="Faults during a deploy",
        figure=f"{len(seen)}/{len(FAULTS)} faults handled",
        details=[
            f"{what}: {shorten(seen.get(key, 'NOT HANDLED (test failed)'))}"
            for key, what in FAULTS.items()
        ],
        findings=list(FINDINGS),
        handled=len(seen),
        total=len(FAULTS),
    )


def shorten(line: str) -> str:
    """Absolute paths cut to their last part: the test's temp dirs say nothing."""
    return re.sub(r"(?:/[^/\s:`']+)+/([^/\s:`']+)", r"…/\1", line)


# ------------------------------------------------------------------------------ the rig


@dataclass
class Renewal:
    """Version 1 installed and served, version 2 live; what the install dir and main.cf
    hold before the faulty deploy."""

    tool: Tool
    first: Leaf
    second: Leaf
    main_cf: bytes = b""
    listing: tuple[str, ...] = ()

    def snapshot(self) -> None:
        self.main_cf = self.tool.postfix.main_cf_bytes()
        self.listing = tuple(sorted(os.listdir(self.tool.install_dir)))

    def settings(self) -> Settings:
        tool = self.tool
        return Settings(
            live_dir=tool.live_dir,
            postfix_config_dir=tool.postfix.config_dir,
            install_dir=tool.install_dir,
            ca_file=tool.ca_file or Path("/nonexistent"),
            lock_file=tool.lock_file,
            probe_timeout=float(tool.probe_timeout),
        )


def renewal(
    tool: Tool, inter: CA, *, second: Leaf | None = None, layout: str = "combined"
) -> Renewal:
    first = inter.issue(NAME)
    tool.lineage(first)
    if layout == "combined":
        first_deploy(tool)
    else:
        assert_exit(tool.run("--layout", layout, "install"), EXIT_OK)
    wait_serves(tool, first)
    renewed = Renewal(tool, first, second or inter.issue(NAME))
    tool.lineage(renewed.second, 2)
    renewed.snapshot()
    return renewed


def assert_previous_state(renewed: Renewal) -> None:
    """Invariant 3: files, main.cf and what Postfix serves are as before the deploy."""
    tool = renewed.tool
    assert tool.postfix.main_cf_bytes() == renewed.main_cf, "main.cf changed"
    assert stale_temps(tool.install_dir) == [], "a temp file was left behind"
    assert tuple(sorted(os.listdir(tool.install_dir))) == renewed.listing, "install dir changed"
    assert pointed_pair(tool.postfix).leaf_sha256 == sha256(renewed.first)
    wait_serves(tool, renewed.first)


def one_line(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """The exit code, no traceback, and the error line that names every needle."""
    assert_exit(result, code)
    lines = [line for line in result.stderr.splitlines() if all(n in line for n in needles)]
    assert lines, f"no line with {needles} in:\n{result.stderr}"
    return f"exit {code}: {lines[-1].removeprefix('pftls-hook: ')}"


# ------------------------------------------------------- in-process: a runner that fails

Match = Callable[[Sequence[str]], bool]


class FailingRunner:
    """runner.run, except that commands `match` accepts fail (exit 1, Postfix-style
    message) the first `times` times, or always when `times` is None."""

    def __init__(self, match: Match, times: int | None = None) -> None:
        self.match = match
        self.times = times
        self.failed = 0

    def __call__(
        self, argv: Sequence[str], *, timeout: float = runner.DEFAULT_TIMEOUT, **kw: object
    ) -> runner.Result:
        if self.match(argv) and (self.times is None or self.failed < self.times):
            self.failed += 1
            message = f"{argv[0]}: fatal: injected failure"
            return runner.Result(tuple(argv), 1, "", message)
        return runner.run(argv, timeout=timeout, **kw)  # type: ignore[arg-type]


def reload_command(argv: Sequence[str]) -> bool:
    return argv[0] == "postfix" and argv[-1] == "reload"


def postconf_read(argv: Sequence[str]) -> bool:
    return argv[0] == "postconf" and "-x" in argv


def deploy_with(renewed: Renewal, run: FailingRunner) -> PftlsError:
    settings = renewed.settings()
    deployer = Deployer(settings, postfix=Postfix(settings.postfix_config_dir, run=run))
    with pytest.raises(PftlsError) as caught:
        deployer.deploy(NAME)
    assert run.failed, "the fault was never injected"
    assert "\n" not in str(caught.value)
    return caught.value


@pytest.mark.parametrize(
    ("key", "times"), [("reload-fails-once", 1), ("reload-fails", None)], ids=["once", "always"]
)
def test_failed_reload_rolls_back(
    key: str, times: int | None, tool: Tool, inter: CA, outcomes: dict[str, str]
) -> None:
    renewed = renewal(tool, inter)

    error = deploy_with(renewed, FailingRunner(reload_command, times))

    # Exit 4 (cli.py): rolled back, and the previous certificate is proven served again.
    assert isinstance(error, DeployFailedError), f"{type(error).__name__}: {error}"
    assert_previous_state(renewed)
    outcomes[key] = f"exit 4: {error}"


def test_failed_postconf_changes_nothing(tool: Tool, inter: CA, outcomes: dict[str, str]) -> None:
    renewed = renewal(tool, inter)

    error = deploy_with(renewed, FailingRunner(postconf_read))

    assert isinstance(error, CommandError), f"{type(error).__name__}: {error}"  # exit 6
    assert_previous_state(renewed)
    outcomes["postconf-fails"] = f"exit 6: {error}"


# ----------------------------------------------------------------- the real thing, CLI


def test_stopped_postfix_gets_the_files_and_a_warning(
    tool: Tool, inter: CA, outcomes: dict[str, str]
) -> None:
    renewed = renewal(tool, inter)
    tool.postfix.stop()

    result = tool.run("install")

    line = one_line(result, EXIT_OK, "not running")
    assert tool.postfix.main_cf_bytes() == renewed.main_cf
    assert current(tool).read_bytes() == combined(renewed.second)
    assert stale_temps(tool.install_dir) == []
    tool.postfix.start()
    wait_serves(tool, renewed.second)
    outcomes["not-running"] = f"{line} (documented: installed, served once Postfix starts)"


def test_read_only_main_cf_rolls_back_a_first_install(
    tool: Tool, inter: CA, outcomes: dict[str, str]
) -> None:
    leaf = inter.issue(NAME)
    tool.lineage(leaf)  # main.cf still names the instance's own certificate
    main_cf = tool.postfix.main_cf_bytes()
    initial = tool.postfix.initial_cert_file.read_bytes()

    with read_only_bind(tool.postfix.config_dir):
        result = tool.run("install")

    line = one_line(result, EXIT_ROLLED_BACK, "rolled back", "Read-only file system")
    assert tool.postfix.main_cf_bytes() == main_cf
    assert os.listdir(tool.install_dir) == []
    assert tool.postfix.initial_cert_file.read_bytes() == initial
    outcomes["main-cf-read-only"] = line


@pytest.fixture
def small_install_dir(tool: Tool) -> Iterator[Path]:
    with tmpfs(tool.install_dir, size="64k") as path:
        yield path


@pytest.mark.parametrize("layout", ["combined", "separate"])
def test_full_install_dir_refuses_cleanly(
    layout: str, small_install_dir: Path, tool: Tool, inter: CA, outcomes: dict[str, str]
) -> None:
    # RSA-4096: the combined file spans two pages, so its write fails part way through;
    # in the separate layout the key fits and the certificate file after it does not.
    second = inter.issue(NAME, key="rsa", bits=4096)
    renewed = renewal(tool, inter, second=second, layout=layout)
    page = os.statvfs(small_install_dir).f_frsize
    assert len(second.key_pem()) < page < min(len(combined(second)), page + len(second.key_pem()))
    fill(small_install_dir, leave=page)
    renewed.snapshot()

    result = tool.run("--layout", layout, "install")

    line = one_line(result, EXIT_CANNOT, str(small_install_dir), "No space left on device")
    assert_previous_state(renewed)
    (small_install_dir / "filler").unlink()
    assert_exit(tool.run("--layout", layout, "install"), EXIT_OK)  # room again
    wait_serves(tool, renewed.second)
    outcomes["disk-full" if layout == "combined" else "disk-full-separate"] = line


def test_read_only_install_dir_refuses_cleanly(
    small_install_dir: Path, tool: Tool, inter: CA, outcomes: dict[str, str]
) -> None:
    renewed = renewal(tool, inter)
    remount(small_install_dir, read_only=True)

    result = tool.run("install")

    line = one_line(result, EXIT_CANNOT, str(small_install_dir), "Read-only file system")
    assert_previous_state(renewed)
    outcomes["read-only"] = line


@pytest.mark.parametrize(
    ("key", "refuse_tls"), [("probe-wrong-cert", False), ("probe-454", True)], ids=["wrong", "454"]
)
def test_failed_probe_rolls_back(
    key: str, refuse_tls: bool, tool: Tool, inter: CA, outcomes: dict[str, str]
) -> None:
    renewed = renewal(tool, inter)
    impostor = CA.root("pftls impostor root").intermediate().issue(NAME)

    with FakeSmtpServer(impostor, tool.base, refuse_tls=refuse_tls) as server:
        result = tool.run("install", "--probe", f"127.0.0.1:{server.port}")
        assert server.connections > 0, "the probe never reached the fake server"

    line = one_line(result, EXIT_ROLLED_BACK, "rolled back")
    assert_previous_state(renewed)
    outcomes[key] = line


def point_main_cf_at(tool: Tool, path: Path) -> None:
    tool.postfix.postconf("-e", f"smtpd_tls_cert_file = {path}", f"smtpd_tls_key_file = {path}")
    cool_main_cf(tool.postfix)


def leave_idle_broken_smtpds(tool: Tool, count: int) -> None:
    """`count` smtpd processes that answered STARTTLS with 454, now idle (an smtpd waits
    max_idle = 100 s for its next connection): concurrent sessions, one process each."""
    sessions = [
        smtplib.SMTP(LOOPBACK, tool.postfix.port, local_hostname="client.test", timeout=5)
        for _ in range(count)
    ]
    try:
        for session in sessions:
            session.ehlo()
            assert session.docmd("STARTTLS")[0] == 454
    finally:
        for session in sessions:
            session.quit()


REPAIR_ROUNDS, IDLE_BROKEN = 4, 5


def test_deploy_repairs_a_postfix_that_answers_454(
    tool: Tool, inter: CA, outcomes: dict[str, str]
) -> None:
    """A deploy must fix a broken TLS, not roll back to it. After the reload an old idle
    smtpd that could not load the missing key may still take one connection and answer
    454 (before the fix: 4 deploys of 8 rolled back to the broken state)."""
    for version in range(1, REPAIR_ROUNDS + 1):
        leaf = inter.issue(NAME)
        tool.lineage(leaf, version)
        point_main_cf_at(tool, tool.base / "missing.pem")
        tool.postfix.reload()
        wait_until(lambda: answers_454(tool), timeout=10, what="smtpd to answer STARTTLS with 454")
        leave_idle_broken_smtpds(tool, IDLE_BROKEN)
        point_main_cf_at(tool, current(tool))  # what the tool installs; no main.cf write

        assert_exit(tool.run("install"), EXIT_OK)
        wait_serves(tool, leaf)
    outcomes["repair-454"] = (
        f"exit 0 in {REPAIR_ROUNDS}/{REPAIR_ROUNDS} deploys, each after {IDLE_BROKEN} idle "
        "smtpd processes had answered 454: the 454 of an old process is retried"
    )


def answers_454(tool: Tool) -> bool:
    try:
        served_sha256(LOOPBACK, tool.postfix.port)
    except smtplib.SMTPResponseException as exc:
        return exc.smtp_code == 454
    return False


def held_queue_scan(tool: Tool, gate: Path, waiting: Path) -> None:
    """Point the instance's command_directory at Postfix's own programs, except postsuper:
    run without arguments (the queue scan `postfix reload` leaves running in the
    background), it writes its pid to `waiting` and waits until `gate` exists."""
    real = Path(tool.postfix.postconf("-h", "command_directory").strip())
    commands = tool.base / "commands"
    commands.mkdir()
    for program in POSTFIX_COMMANDS:
        (commands / program).symlink_to(real / program)
    postsuper = commands / "postsuper"
    postsuper.write_text(
        "#!/bin/sh\n"
        f'if [ $# -eq 0 ]; then\n  echo $$ > "{waiting}.tmp" && mv "{waiting}.tmp" "{waiting}"\n'
        f'  while [ ! -e "{gate}" ]; do sleep 0.05; done\nfi\n'
        f'exec "{real / "postsuper"}" "$@"\n'
    )
    postsuper.chmod(0o755)
    tool.postfix.postconf("-e", f"command_directory = {commands}")


def test_a_reload_does_not_wait_for_its_background_queue_scan(
    tool: Tool, inter: CA, outcomes: dict[str, str]
) -> None:
    renewed = renewal(tool, inter)
    gate, waiting = tool.base / "scan-may-end", tool.base / "scan-waiting"
    held_queue_scan(tool, gate, waiting)
    try:
        result = tool.run("deploy-hook", env={"RENEWED_LINEAGE": str(tool.live_dir / NAME)})

        # The deploy hook returned while the scan its reload started was still held.
        wait_until(waiting.exists, timeout=10, what="the reload's queue scan to start")
        os.kill(int(waiting.read_text()), 0)  # still waiting for the gate
    finally:
        gate.touch()
    assert_exit(result, EXIT_OK)
    assert "proven on" in result.stderr, result.stderr
    assert pointed_pair(tool.postfix).leaf_sha256 == sha256(renewed.second)
    wait_serves(tool, renewed.second)
    outcomes["slow-queue-scan"] = "exit 0: deployed and proven while the scan was still running"
