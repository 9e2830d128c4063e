"""Case 1, crash consistency: `pftls-hook install` SIGKILLed at a random moment.

The lineage flips between two valid versions A and B, and each install is killed after a
delay drawn uniformly over the measured duration of a whole install, so kills land in every
phase (reading, verifying, writing, switching, reloading, probing). A SIGKILL runs no
cleanup: only the order of the steps can protect Postfix. After each kill, judged from
outside (tests/support/installed.py):
- main.cf names files that exist and hold one key and the certificate for it;
- `postfix check` passes;
- after our own reload Postfix serves that certificate, one of A and B, and the chain it
  sends verifies against the test root;
- the next install exits 0 within its lock timeout (the kernel dropped the dead run's
  flock) and leaves no temp file behind.
The combined layout needs no main.cf write after the first install, so the loop is fast.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support import lineage as fake
from tests.support.deployed import (
    LOOPBACK,
    combined,
    current,
    first_deploy,
    sha256,
    start,
    wait_serves,
)
from tests.support.figures import record
from tests.support.installed import pointed_pair, stale_temps
from tests.support.pki import CA
from tests.support.postfix import wait_for_served_sha256
from tests.support.tool import NAME, Tool, assert_exit

RUNS = 200
SEED = 20261125  # fixed: a failure can be replayed
KILL_WAIT = 10.0
# A lock left held would make the next install wait for it; fail fast instead.
NEXT_RUN_ENV = {"PFTLS_HOOK_LOCK_TIMEOUT": "5"}
# What the killed run had logged (stderr), latest first: where the kill landed.
PHASES = (
    ("deployed;", "killed after logging the deploy, before exiting"),
    ("probe:", "killed after the proof, before pruning"),
    ("installed ", "killed with the files switched, before or during reload and proof"),
    ("verified", "killed after verifying, before the switch"),
)


def phase(stderr: str) -> str:
    return next(
        (name for marker, name in PHASES if marker in stderr),
        "killed before the lineage was verified",
    )


def measure_install(tool: Tool, versions: tuple[int, int], rounds: int = 5) -> float:
    """Median wall time of an install that switches versions."""
    times = []
    for i in range(rounds):
        fake.point_links(tool.config_dir, NAME, versions[i % 2])
        started = time.monotonic()
        assert_exit(tool.run("install"), 0)
        times.append(time.monotonic() - started)
    return statistics.median(times)


def check_after_kill(tool: Tool, known: dict[str, str]) -> None:
    pair = pointed_pair(tool.postfix)  # files exist, one key, the leaf is the key's
    assert pair.leaf_sha256 in known, f"main.cf points at an unknown certificate {pair.files}"
    # `postfix check` (0.2 s of shell) alongside the reload: two readers, and 200 runs.
    with ThreadPoolExecutor(max_workers=1) as pool:
        checked = pool.submit(tool.postfix.check)
        tool.postfix.reload()
        wait_for_served_sha256(
            LOOPBACK, tool.postfix.port, pair.leaf_sha256, timeout=10, cafile=tool.ca_file
        )
        checked.result(timeout=60)


@pytest.mark.slow
def test_sigkill_at_any_moment_leaves_a_working_pair(tool: Tool, inter: CA) -> None:
    leaves = {1: inter.issue(NAME), 2: inter.issue(NAME)}
    known = {sha256(leaf): f"version {n}" for n, leaf in leaves.items()}
    tool.lineage(leaves[1], 1)
    tool.lineage(leaves[2], 2)
    first_deploy(tool)
    duration = measure_install(tool, (1, 2))
    rng = random.Random(SEED)  # noqa: S311 - kill timing, not cryptography
    phases: Counter[str] = Counter()
    survived, version, left_temps, started = 0, 2, 0, time.monotonic()
    try:
        for _ in range(RUNS):
            version = 3 - version
            fake.point_links(tool.config_dir, NAME, version)
            proc = start(tool, "install")
            time.sleep(rng.uniform(0, duration))
            proc.kill()
            _, stderr = proc.communicate(timeout=KILL_WAIT)
            phases["done before the kill" if proc.returncode == 0 else phase(stderr)] += 1

            check_after_kill(tool, known)
            left_temps += len(stale_temps(tool.install_dir))
            assert_exit(tool.run("install", env=NEXT_RUN_ENV), 0)
            assert stale_temps(tool.install_dir) == []
            wait_serves(tool, leaves[version])
            survived += 1
    finally:
        elapsed = time.monotonic() - started
        record(
            "crash",
            title="Crash consistency: install SIGKILLed at a random moment",
            figure=f"{survived}/{RUNS} kills survived",
            details=[
                f"install switching between two valid versions, killed after a delay uniform "
                f"over 0-{duration:.2f} s (the measured median install time)",
                "after each kill: main.cf names existing files whose key matches the "
                "certificate; postfix check passes; after a reload Postfix serves that "
                "certificate, one of the two, with a chain that verifies; the next install "
                "exits 0 with no temp file left and the lock free",
                *(f"{name}: {count}" for name, count in sorted(phases.items())),
                f"temp files a kill left behind, removed by the next install: {left_temps}",
                f"{elapsed:.0f} s for {RUNS} runs",
            ],
            runs=RUNS,
            survived=survived,
            install_seconds=round(duration, 3),
            phases=dict(phases),
            temps_recovered=left_temps,
        )
    assert survived == RUNS


def test_phase_names_the_last_step_logged() -> None:
    verified = "pftls-hook: x: version 2 verified, leaf …\n"
    assert phase(verified) == "killed after verifying, before the switch"
    assert phase(verified + "pftls-hook: x: installed /a, /b\n").startswith("killed with the files")
    assert phase("") == "killed before the lineage was verified"


def test_next_install_recovers_what_a_kill_mid_write_leaves(tool: Tool, inter: CA) -> None:
    """The write and the switch take well under a millisecond, so uniform kills rarely land
    in them (the figure counts the temp files they left). Here is what such a kill leaves,
    made by hand: a half-written temp file, the temp link to a version, and a complete
    version the switch never reached. The next install must clean up and deploy."""
    first, second = inter.issue(NAME), inter.issue(NAME)
    tool.lineage(first)
    first_deploy(tool)
    tool.lineage(second, 2)
    data = combined(second)
    half = tool.install_dir / f".{NAME}.20260101T000000000000Z.pem.tmp.99999"
    half.write_bytes(data[: len(data) // 2])
    os.link(current(tool), tool.install_dir / f".{NAME}.pem.tmp.99998")
    orphan = tool.install_dir / f"{NAME}.20260101T000000000001Z.pem"
    orphan.write_bytes(data)
    for path in (half, orphan):
        path.chmod(0o600)

    assert_exit(tool.run("install", env=NEXT_RUN_ENV), 0)

    assert stale_temps(tool.install_dir) == []
    assert pointed_pair(tool.postfix).leaf_sha256 == sha256(second)
    wait_serves(tool, second)
