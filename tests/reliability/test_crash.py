"""Case 1, crash consistency: `pftls-hook install` SIGKILLed at a chosen moment.

The lineage flips between two valid versions A and B, and each install is killed in one of
the deploy's phases (tests/reliability/phases.py), taken in turn: before verification ends
(Python start-up included), verified but not switched, switched (main.cf, reload, proof),
proven (pruning), and after the last line. A few calibration installs first measure how long
each phase lasts, from the times their real log lines arrive; a kill aimed at a phase waits
for the line that opens it, then a delay drawn uniformly over that phase's median length.
Where a kill really landed is read from what the killed process had logged, and published
next to where it was aimed. A SIGKILL runs no cleanup: only the order of the steps can
protect Postfix. After each kill, judged from outside (tests/support/installed.py):
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
import signal
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.reliability.phases import (
    DONE,
    MARKERS,
    PHASES,
    SWITCHED,
    Phase,
    Timeline,
    landed,
    markers_in,
)
from tests.support import lineage as fake
from tests.support import sclient
from tests.support.deployed import (
    LOOPBACK,
    combined,
    cool_main_cf,
    current,
    first_deploy,
    sha256,
    start,
    wait_serves,
)
from tests.support.figures import record
from tests.support.installed import file_pair, pointed_pair, stale_temps
from tests.support.net import wait_until
from tests.support.pki import CA
from tests.support.postfix import wait_for_served_sha256
from tests.support.tool import NAME, Tool, assert_exit

RUNS = 150  # 30 per phase
CALIBRATION_RUNS = 6
MIN_AFTER_SWITCH = 20  # kills that must land with the new files already switched in
SEED = 20261125  # fixed: a failure can be replayed
SNI_RUNS = 30
SNI_NAME = "mx.one.example"  # an SNI name, and the lineage that covers it
KILL_WAIT = 10.0
# A lock left held would make the next install wait for it; fail fast instead.
NEXT_RUN_ENV = {"PFTLS_HOOK_LOCK_TIMEOUT": "5"}


def assert_markers_in_order(stderr: str) -> list[str]:
    """Each marker at most once, in the deploy's order, every required one present."""
    seen = markers_in(stderr)
    assert seen == [m.key for m in MARKERS if m.key in seen], f"out of order: {seen}\n{stderr}"
    missing = [m.key for m in MARKERS if m.required and m.key not in seen]
    assert not missing, f"no {missing} line in a deploy's log:\n{stderr}"
    return seen


def calibrate(tool: Tool, versions: tuple[int, int]) -> dict[str, float]:
    """The median length of each phase, in seconds, over installs that switch versions."""
    lengths: dict[str, list[float]] = {p.name: [] for p in PHASES}
    for i in range(CALIBRATION_RUNS):
        fake.point_links(tool.config_dir, NAME, versions[i % 2])
        timeline = Timeline(start(tool, "install"), time.monotonic())
        stderr = timeline.finish(KILL_WAIT * 6)
        assert timeline.proc.returncode == 0, stderr
        assert_markers_in_order(stderr)
        assert timeline.ended_at is not None
        # Every phase is opened by a required marker (or the start): all present here.
        bounds = [timeline.at[p.opened_by] if p.opened_by else 0.0 for p in PHASES]
        ends = [*bounds[1:], timeline.ended_at]
        for phase, begin, end in zip(PHASES, bounds, ends, strict=True):
            lengths[phase.name].append(end - begin)
    return {name: statistics.median(times) for name, times in lengths.items()}


def kill_in(tool: Tool, aim: Phase, length: float, rng: random.Random) -> tuple[int, str]:
    """Start an install, kill it in `aim` (if it gets there); its exit code and stderr."""
    timeline = Timeline(start(tool, "install"), time.monotonic())
    if aim.opened_by is None or timeline.wait_for(aim.opened_by, KILL_WAIT):
        time.sleep(rng.uniform(0, length))
    timeline.proc.kill()
    stderr = timeline.finish(KILL_WAIT)
    return timeline.proc.returncode, stderr


def check_after_kill(tool: Tool, known: dict[str, str]) -> None:
    pair = pointed_pair(tool.postfix)  # files exist, one key, the leaf is the key's
    assert pair.leaf_sha256 in known, f"main.cf points at an unknown certificate {pair.files}"
    # `postfix check` (0.2 s of shell) alongside the reload: two readers, and 150 runs.
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
    lengths = calibrate(tool, (1, 2))
    rng = random.Random(SEED)  # noqa: S311 - kill timing, not cryptography
    aimed: Counter[str] = Counter()
    found: Counter[str] = Counter()
    survived, after_switch, version, left_temps = 0, 0, 2, 0
    started = time.monotonic()
    try:
        for run in range(RUNS):
            version = 3 - version
            fake.point_links(tool.config_dir, NAME, version)
            aim = PHASES[run % len(PHASES)]
            aimed[aim.name] += 1
            code, stderr = kill_in(tool, aim, lengths[aim.name], rng)
            assert code in (0, -signal.SIGKILL), f"the install failed on its own:\n{stderr}"
            if code == 0:
                found[DONE] += 1
            else:
                where = landed(stderr)
                found[where.name] += 1
                after_switch += PHASES.index(where) >= SWITCHED

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
            title="Crash consistency: install SIGKILLed in every phase of a deploy",
            figure=f"{survived}/{RUNS} kills survived, {after_switch} of them after the switch",
            details=[
                "install switching between two valid versions; each kill aimed at one phase "
                "in turn: it waits for the log line that opens the phase, then a delay uniform "
                "over the phase's median length (measured from the real log lines in "
                f"{CALIBRATION_RUNS} calibration installs); where it landed is read from what "
                "the killed process had logged",
                "after each kill: main.cf names existing files whose key matches the "
                "certificate; postfix check passes; after a reload Postfix serves that "
                "certificate, one of the two, with a chain that verifies; the next install "
                "exits 0 with no temp file left and the lock free",
                f"temp files a kill left behind, removed by the next install: {left_temps}",
                f"{elapsed:.0f} s for {RUNS} runs",
            ],
            runs=RUNS,
            survived=survived,
            after_switch=after_switch,
            temps_recovered=left_temps,
            table={
                "columns": ["phase (opened by the log line)", "median length", "aimed", "landed"],
                "rows": [
                    *(
                        [p.name, f"{lengths[p.name] * 1000:.1f} ms", aimed[p.name], found[p.name]]
                        for p in PHASES
                    ),
                    [DONE, "", "", found[DONE]],
                ],
            },
        )
    assert survived == RUNS
    assert after_switch >= MIN_AFTER_SWITCH, f"only {after_switch} kills after the switch"


def sni_served(tool: Tool) -> str:
    return sclient.served_sha256(
        LOOPBACK, tool.postfix.port, sclient.ECDSA_ONLY, servername=SNI_NAME
    )


@pytest.mark.slow
def test_sigkill_during_an_sni_renewal_leaves_the_table_and_its_files_working(
    tool: Tool, inter: CA
) -> None:
    """SNI: Postfix loads the chain for a name from the file pftls-hook's table lists for it,
    so a kill must never leave the table naming a missing file, or a file whose key is not
    its certificate's. The SNI lineage flips between two versions; each install is killed
    after its first `verified` line (the default lineage's; the SNI lineage is read and
    verified next; start-up is the main case's), at a delay drawn uniformly over the rest of
    the fastest calibration install: a slow calibration on a busy machine would otherwise
    aim most kills past the end. After each kill: the table lists every name with
    a working pair, `postfix check` passes, after a reload a client sending the name is
    shown that pair's certificate (one of the two), and the next install exits 0 and serves
    the current version."""
    tool.lineage(inter.issue(NAME))
    versions = {1: inter.issue(SNI_NAME), 2: inter.issue(SNI_NAME)}
    for n, leaf in versions.items():
        tool.lineage(leaf, n, name=SNI_NAME)
    known = {sha256(leaf) for leaf in versions.values()}
    sni = ("--sni", SNI_NAME)
    assert_exit(tool.run(*sni, "install"), 0)  # writes main.cf (the table, chain files)
    cool_main_cf(tool.postfix)  # or Postfix's wait for a new main.cf would skew the span
    rests = []
    for version in (1, 2, 1, 2, 1):
        fake.point_links(tool.config_dir, SNI_NAME, version)
        timeline = Timeline(start(tool, *sni, "install"), time.monotonic())
        stderr = timeline.finish(KILL_WAIT * 6)
        assert timeline.proc.returncode == 0, stderr
        assert "verified" in timeline.at and timeline.ended_at is not None, stderr
        rests.append(timeline.ended_at - timeline.at["verified"])
    span = min(rests)
    table = tool.install_dir / "sni.map"
    rng = random.Random(SEED)  # noqa: S311 - kill timing, not cryptography
    found: Counter[str] = Counter()
    version = 1
    for _ in range(SNI_RUNS):
        version = 3 - version
        fake.point_links(tool.config_dir, SNI_NAME, version)
        timeline = Timeline(start(tool, *sni, "install"), time.monotonic())
        if timeline.wait_for("verified", KILL_WAIT):
            time.sleep(rng.uniform(0, span))
        timeline.proc.kill()
        stderr = timeline.finish(KILL_WAIT)
        code = timeline.proc.returncode
        assert code in (0, -signal.SIGKILL), f"the install failed on its own:\n{stderr}"
        found[DONE if code == 0 else landed(stderr).name] += 1

        entries = {line.split()[0]: line.split()[1:] for line in table.read_text().splitlines()[1:]}
        assert set(entries) == {NAME, SNI_NAME}, entries
        pair = file_pair(Path(entries[SNI_NAME][0]))  # exists, one key, the key's leaf
        assert pair.leaf_sha256 in known
        tool.postfix.check()
        tool.postfix.reload()
        wait_until(
            lambda: sni_served(tool) == pair.leaf_sha256,  # noqa: B023 - called right here
            timeout=10,
            what=f"SNI {SNI_NAME} served the table's certificate",
        )
        assert_exit(tool.run(*sni, "install", env=NEXT_RUN_ENV), 0)
        assert stale_temps(tool.install_dir) == []
        assert sni_served(tool) == sha256(versions[version])
    killed = SNI_RUNS - found[DONE]
    record(
        "crash-sni",
        title="Crash consistency: SNI renewals SIGKILLed",
        figure=f"{SNI_RUNS}/{SNI_RUNS} kills left a working SNI table, {killed} mid-install",
        details=[
            "install with an SNI name whose lineage flips between two versions, killed after "
            "its first `verified` line at a delay uniform over the rest of the fastest of 5 "
            f"calibration installs ({span * 1000:.0f} ms); where it landed is read from what "
            "the killed process had logged",
            "after each kill: the table lists the default name and the SNI name, each file "
            "holds one key and the certificate for it, one of the two versions; postfix check "
            "passes; after a reload a client sending the name is shown that certificate; the "
            "next install exits 0, leaves no temp file and serves the current version",
        ],
        runs=SNI_RUNS,
        killed=killed,
        table={
            "columns": ["phase (opened by the log line)", "landed"],
            "rows": [[p.name, found[p.name]] for p in PHASES] + [[DONE, found[DONE]]],
        },
    )
    # Most kills must land inside an install, not after it ended.
    assert killed >= SNI_RUNS // 2, f"only {killed} of {SNI_RUNS} installs were killed: {found}"


@pytest.mark.slow
def test_a_real_deploy_writes_every_phase_marker_in_order(tool: Tool, inter: CA) -> None:
    """The markers are the product's real log lines: three installs on a private Postfix
    (the first points main.cf at the install dir, the third prunes the first version) write
    each of them, in the deploy's order, and nothing unprefixed."""
    seen: set[str] = set()
    for version in (1, 2, 3):
        tool.lineage(inter.issue(NAME), version)
        result = tool.run("install")
        assert_exit(result, 0)
        seen.update(assert_markers_in_order(result.stderr))
    assert seen == {m.key for m in MARKERS}, f"never logged: {set(m.key for m in MARKERS) - seen}"


def test_phase_names_the_last_step_logged() -> None:
    verified = "pftls-hook: x: version 2 verified, leaf 0123456789abcdef…, expires 2027-01-01\n"
    switched = "pftls-hook: switched in /etc/postfix/tls/x.pem\n"
    proven = "pftls-hook: probe: 127.0.0.1:25 serve the new certificate\n"
    assert landed("") is PHASES[0]
    assert landed("pftls-hook: x: a warning\n" + verified) is PHASES[1]
    assert landed(verified + switched) is PHASES[SWITCHED]
    assert landed(verified + switched + proven) is PHASES[SWITCHED + 1]
    # A line that only mentions a marker's words is not that marker.
    assert landed(verified + "pftls-hook: deploy failed: switched in part\n") is PHASES[1]


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
