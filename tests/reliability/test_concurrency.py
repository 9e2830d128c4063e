"""Case 3, concurrency: the deploy hook, the watch daemon and manual installs racing.

The daemon (`pftls-hook watch`, as systemd runs it) watches the lineage the whole time.
Each round renews the lineage the way certbot does (previous_* links, the four links
re-pointed one by one, tests/support/lineage.py) while a manual `install` is already
running; once the renewal is done, certbot's deploy hook and a second manual install start
together. All of them, and the daemon's reaction to the renewal, meet at the one deploy
lock. Required after every round:
- every command exits 0 within COMMAND_TIMEOUT (no deadlock, no refusal);
- Postfix serves the certificate of the newest version, and the install dir's current file
  holds it (no lost update: no older snapshot deployed after a newer one);
- the daemon is still alive.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from pftls_hook.config import Settings
from pftls_hook.deploy import Deployer
from pftls_hook.errors import RefusedError
from tests.support import lineage as fake
from tests.support.daemon import NotifySocket, WatchProcess
from tests.support.deployed import (
    clean_env,
    combined,
    current,
    first_deploy,
    lineage_files,
    start,
    wait_serves,
)
from tests.support.figures import record
from tests.support.installed import stale_temps
from tests.support.pki import CA, Leaf
from tests.support.tool import NAME, Tool

ROUNDS = 50
COMMAND_TIMEOUT = 60.0  # a bound for each command; the lock timeout is 120 s
DEBOUNCE = "0.2"
SEED = 20261126  # fixed: a failure can be replayed
# What a command's last stderr line says it did.
ACTIONS = (
    ("deployed;", "deployed"),
    ("nothing to do", "no-op"),
    ("reloaded", "reloaded"),
    ("skipped", "skipped"),
)


@dataclass(frozen=True)
class Finished:
    actor: str
    returncode: int
    seconds: float
    stderr: str

    @property
    def action(self) -> str:
        return next((a for marker, a in ACTIONS if marker in self.stderr), "other")


def run_timed(tool: Tool, actor: str, *args: str, env: Mapping[str, str] | None = None) -> Finished:
    started = time.monotonic()
    proc = start(tool, *args, env=env)
    try:
        _, stderr = proc.communicate(timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate(timeout=10)
        stderr += f"\n(killed after {COMMAND_TIMEOUT:g} s)"
    return Finished(actor, proc.returncode, time.monotonic() - started, stderr)


@pytest.fixture
def daemon(tool: Tool, tmp_path: Path) -> Iterator[WatchProcess]:
    """`pftls-hook watch` on the tool's lineage, started once it exists, stopped at the end."""
    notify = NotifySocket()
    process = WatchProcess(
        [*tool.options(), "--debounce", DEBOUNCE],
        clean_env({"NOTIFY_SOCKET": notify.address}),
        tmp_path / "daemon.log",
        tmp_path,
    ).start()
    try:
        notify.wait_for(lambda m: m.get("READY") == "1", timeout=30)
        yield process
    finally:
        process.kill()
        notify.close()


@pytest.mark.slow
def test_hook_daemon_and_installs_race_to_the_newest(
    tool: Tool, inter: CA, request: pytest.FixtureRequest
) -> None:
    leaf = inter.issue(NAME)
    tool.lineage(leaf)
    first_deploy(tool)
    daemon: WatchProcess = request.getfixturevalue("daemon")
    hook_env = {"RENEWED_LINEAGE": str(tool.live_dir / NAME), "RENEWED_DOMAINS": NAME}
    rng = random.Random(SEED)  # noqa: S311 - timing, not cryptography
    finished: list[Finished] = []
    rounds, started, stopped_in = 0, time.monotonic(), float("nan")
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            for version in range(2, ROUNDS + 2):
                leaf = inter.issue(NAME)
                racing: list[Future[Finished]] = [
                    pool.submit(run_timed, tool, "install during the renewal", "install")
                ]
                time.sleep(rng.uniform(0, 0.2))  # anywhere in that install's first part
                tool.lineage(leaf, version)  # certbot's renewal, link by link
                racing += [
                    pool.submit(run_timed, tool, "deploy hook", "deploy-hook", env=hook_env),
                    pool.submit(run_timed, tool, "install after the renewal", "install"),
                ]
                done = [f.result(timeout=COMMAND_TIMEOUT + 15) for f in racing]
                finished += done
                for f in done:
                    assert f.returncode == 0, f"{f.actor}: exit {f.returncode}\n{f.stderr}"
                wait_serves(tool, leaf)
                assert current(tool).read_bytes() == combined(leaf), "an older version won"
                assert daemon.alive(), daemon.output_text()
                rounds += 1
        assert stale_temps(tool.install_dir) == []
        code, stopped_in = daemon.stop()
        assert code == 0, daemon.output_text()
        assert "Traceback" not in daemon.output_text()
    finally:
        actions = Counter(f"{f.actor}: {f.action}" for f in finished)
        slowest = max(finished, key=lambda f: f.seconds, default=Finished("-", 0, 0.0, ""))
        log = daemon.output_text()
        record(
            "concurrency",
            title="Concurrency: deploy hook, daemon and manual installs racing",
            figure=f"{rounds}/{ROUNDS} rounds ended serving the newest certificate; "
            f"slowest command {slowest.seconds:.1f} s",
            details=[
                "each round: a manual install starts, certbot's renewal re-points the links "
                "one by one meanwhile, then the deploy hook and a second install start "
                "together; the watch daemon reacts to the same renewal",
                f"{len(finished)} commands, {sum(f.returncode == 0 for f in finished)} exit 0; "
                f"bound {COMMAND_TIMEOUT:g} s each, "
                f"slowest {slowest.seconds:.2f} s ({slowest.actor})",
                *(f"{what}: {n}" for what, n in sorted(actions.items())),
                f"daemon: {log.count('deployed;')} deploys, "
                f"{log.count('nothing to do')} no-ops, alive through every round, "
                f"stopped by SIGTERM in {stopped_in:.2f} s",
                f"{time.monotonic() - started:.0f} s for {ROUNDS} rounds",
            ],
            findings=[
                "`install` started while certbot re-pointed the links skipped the unsettled "
                "lineage, found none and exited 3 (round 26 of the first run); it now waits "
                "up to settle-timeout for a lineage changed that recently (deploy.py)"
            ],
            rounds=rounds,
            commands=len(finished),
            max_command_seconds=round(slowest.seconds, 3),
        )
    assert rounds == ROUNDS


# ------------------------------------------- choosing the lineage while certbot renews it


def half_renewed(config: Path, first: Leaf, second: Leaf) -> None:
    """Version 1 settled, then certbot stopped after re-pointing cert.pem to version 2."""
    fake.new_lineage(config, NAME, **lineage_files(first))
    fake.write_version(config, NAME, 2, **lineage_files(second))
    fake.add_previous_links(config, NAME)
    fake.point_links(config, NAME, {"cert": 2})


def finish_renewal(config: Path) -> None:
    fake.point_links(config, NAME, 2)
    fake.remove_previous_links(config, NAME)


def test_install_during_a_renewal_waits_for_it(tmp_path: Path, inter: CA) -> None:
    """What the race above found: `install` with no name, started while certbot re-points
    the links, chose among settled lineages only, found none, and exited 3."""
    config = tmp_path / "letsencrypt"
    half_renewed(config, inter.issue(NAME), inter.issue(NAME))
    deployer = Deployer(Settings(live_dir=config / "live", settle_timeout=10))
    certbot = threading.Timer(0.5, finish_renewal, args=(config,))
    certbot.start()
    try:
        assert deployer.choose([NAME]) == NAME
    finally:
        certbot.join(timeout=10)


def test_a_lineage_left_half_renewed_is_not_waited_for(tmp_path: Path, inter: CA) -> None:
    config = tmp_path / "letsencrypt"
    half_renewed(config, inter.issue(NAME), inter.issue(NAME))
    long_ago = time.time() - 3600  # certbot was interrupted an hour ago
    os.utime(config / "live" / NAME, (long_ago, long_ago))
    deployer = Deployer(Settings(live_dir=config / "live", settle_timeout=10))

    started = time.monotonic()
    with pytest.raises(RefusedError, match="no lineage to deploy"):
        deployer.choose([NAME])
    assert time.monotonic() - started < 2
