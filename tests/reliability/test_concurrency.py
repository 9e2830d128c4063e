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
Every command's outcome is read from the product's real log lines (phases.py's markers,
`nothing to do`, `skipped`): one that matches none fails the test rather than being
counted as "other". At the end, Postfix's own log must show at least one reload per round
and no more reloads than the commands and the daemon logged proofs after a reload.
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
from pftls_hook.select import choose
from tests.reliability.phases import markers_in
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
from tests.support.net import wait_until
from tests.support.pki import CA, Leaf
from tests.support.postfix import RELOAD_LINE
from tests.support.tool import NAME, Tool

ROUNDS = 50
COMMAND_TIMEOUT = 60.0  # a bound for each command; the lock timeout is 120 s
DEBOUNCE = "0.2"
SEED = 20261126  # fixed: a failure can be replayed
MAILLOG_WAIT = 10.0  # postlogd writes the maillog asynchronously


def action(stderr: str) -> str:
    """What a command did, from the lines pftls-hook writes (deploy.py, cli.py)."""
    seen = markers_in(stderr)
    if "switched" in seen and "deployed" in seen:
        return "deployed"
    if "proven" in seen:
        return "reloaded (installed, not yet served)"
    if "nothing to do" in stderr:
        return "no-op"
    if ": skipped" in stderr:
        return "skipped"
    return "other"


def postfix_reloads(tool: Tool, since: int) -> int:
    return len(RELOAD_LINE.findall(tool.postfix.log_text()[since:]))


@dataclass(frozen=True)
class Finished:
    actor: str
    returncode: int
    seconds: float
    stderr: str

    @property
    def action(self) -> str:
        return action(self.stderr)


def proofs(log: str) -> int:
    """Reloads pftls-hook proved: each reload is followed by the probe's `proven` line."""
    return markers_in(log).count("proven")


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
    maillog_start = len(tool.postfix.log_text())  # the daemon is ready: count from here
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
                    assert f.action != "other", f"{f.actor}: no known outcome\n{f.stderr}"
                wait_serves(tool, leaf)
                assert current(tool).read_bytes() == combined(leaf), "an older version won"
                assert daemon.alive(), daemon.output_text()
                rounds += 1
        assert stale_temps(tool.install_dir) == []
        code, stopped_in = daemon.stop()
        assert code == 0, daemon.output_text()
        assert "Traceback" not in daemon.output_text()
        wait_until(
            lambda: postfix_reloads(tool, maillog_start) >= ROUNDS,
            timeout=MAILLOG_WAIT,
            what=f"{ROUNDS} reloads in Postfix's log",
        )
        reloads = postfix_reloads(tool, maillog_start)
        logged = proofs(daemon.output_text()) + sum(proofs(f.stderr) for f in finished)
        assert ROUNDS <= reloads <= logged, f"Postfix reloaded {reloads} times; {logged} logged"
    finally:
        actions = Counter(f"{f.actor}: {f.action}" for f in finished)
        slowest = max(finished, key=lambda f: f.seconds, default=Finished("-", 0, 0.0, ""))
        log = daemon.output_text()
        reloads = postfix_reloads(tool, maillog_start)
        daemon_proofs = proofs(log)
        logged = daemon_proofs + sum(proofs(f.stderr) for f in finished)
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
                f"daemon: {markers_in(log).count('deployed')} deploys, "
                f"{log.count('nothing to do')} no-ops, {daemon_proofs} reloads proven, alive "
                f"through every round, stopped by SIGTERM in {stopped_in:.2f} s",
                f"Postfix's log: {reloads} reloads carried out by its master; the commands and "
                f"the daemon logged {logged} reloads proven by the probe (SIGHUPs that arrive "
                "together are carried out once)",
                f"{time.monotonic() - started:.0f} s for {ROUNDS} rounds",
            ],
            findings=[
                "`install` started while certbot re-pointed the links skipped the unsettled "
                "lineage, found none and exited 3 (round 26 of the first run); it now waits "
                "up to settle-timeout for a lineage changed that recently (deploy.py)"
            ],
            rounds=rounds,
            commands=len(finished),
            postfix_reloads=reloads,
            reloads_logged=logged,
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


def test_install_during_a_renewal_finds_it(tmp_path: Path, inter: CA) -> None:
    """What the race above found: `install` with no name, started while certbot re-points
    the links, chose among settled lineages only, found none, and exited 3. Selection now
    reads only cert.pem, which names the lineage's hosts whatever version it is on; the
    deploy then waits for the lineage to settle."""
    config = tmp_path / "letsencrypt"
    half_renewed(config, inter.issue(NAME), inter.issue(NAME))
    settings = Settings(live_dir=config / "live", settle_timeout=10)
    certbot = threading.Timer(0.5, finish_renewal, args=(config,))
    certbot.start()
    try:
        assert choose(settings, [NAME], []).lineage == NAME
    finally:
        certbot.join(timeout=10)


def test_a_lineage_left_half_renewed_is_not_waited_for(tmp_path: Path, inter: CA) -> None:
    config = tmp_path / "letsencrypt"
    half_renewed(config, inter.issue(NAME), inter.issue(NAME))
    long_ago = time.time() - 3600  # certbot was interrupted an hour ago
    os.utime(config / "live" / NAME, (long_ago, long_ago))
    settings = Settings(live_dir=config / "live", settle_timeout=10)

    started = time.monotonic()
    selection = choose(settings, [NAME], [])
    assert selection.lineage is None and "no lineage to deploy" in selection.why_none
    assert time.monotonic() - started < 2
