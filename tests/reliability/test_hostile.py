"""Case 4 of issue 5: hostile and broken input, through the real CLI, against a real Postfix.

One private Postfix for the module, serving a certificate pftls-hook installed. Each case of
`hostile.cases()` builds its broken lineage in a certbot config dir of its own and runs
`pftls-hook install` on it (and the deploy hook, for the RENEWED_LINEAGE cases). Refused
cleanly means: exit 3; every stderr line prefixed `pftls-hook: `, no traceback; the last one
naming the file (or path, or lineage name) at fault; an answer within serving.RUN_TIMEOUT
(certbot waits for its hook forever, so a hang is a failure); and afterwards main.cf byte-identical,
the install dir's files identical, and Postfix serving the same certificate.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest

from tests.reliability import hostile
from tests.reliability.serving import run_bounded
from tests.support.deployed import LOOPBACK, wait_serves
from tests.support.pki import CA
from tests.support.postfix import served_sha256
from tests.support.scorecard import Scorecard
from tests.support.tool import Tool, assert_clean_log, assert_exit

EXIT_REFUSED = 3
CASES = list(hostile.cases())
REFUSED, ACCEPTED = "refused", "accepted by design"
# What these cases found, and where it is refused now (docs/reliability.md lists these).
FINDINGS = (
    "deploy-hook with RENEWED_LINEAGE `<live>/..`, `<live>/../live/<name>`, a non-UTF-8 name "
    "or a symlinked lineage dir exited 0 (skipped, or deployed); a name holding a newline "
    "forged a log line: lineage.renewed_lineage() refuses them (exit 3), once cli.py calls it",
    "`install ../live/<name>` read and verified the lineage, then tried to write "
    "`<install dir>/../live/<name>.<stamp>.pem`, outside the install dir (exit 6 only because "
    "that dir did not exist): read_lineage refuses `..`",
    "text outside the PEM blocks (trailing garbage, `Bag Attributes`, NUL bytes), non-ASCII "
    "bytes and PEM blocks of other kinds (an X509 CRL) were accepted and installed as read",
    "a chain.pem in the wrong order passed (the path builder treats it as a pool; TLS 1.2 "
    "clients need the order)",
    "a group- or world-writable config, live or archive dir was trusted",
    "a CA certificate as leaf and a CA:FALSE intermediate were refused with a path error "
    "naming fullchain.pem: now named cert.pem / chain.pem",
)


@pytest.fixture(scope="module")
def card() -> Iterator[Scorecard]:
    card = Scorecard("hostile", "Hostile and broken input")
    yield card
    refused, total = card.count(REFUSED)
    accepted, accepted_total = card.count(ACCEPTED)
    runs = card.counts["runs"]
    card.record(
        f"{refused}/{total} refused cleanly; main.cf byte-identical after "
        f"{card.counts['main.cf identical']}/{runs} runs; "
        f"{accepted}/{accepted_total} accepted by design (CRLF line ends) and served",
        refused=refused,
        total=total,
        accepted=accepted,
        accepted_total=accepted_total,
        findings=list(FINDINGS),
    )


@pytest.fixture(scope="module")
def stranger() -> CA:
    """An intermediate under a root that is not in --ca-file."""
    return CA.root("pftls untrusted root").intermediate("pftls untrusted intermediate")


@dataclass(frozen=True)
class Observed:
    """What a refused run must leave exactly as it was."""

    main_cf: bytes
    install_dir: dict[str, bytes]
    served: str

    @classmethod
    def of(cls, tool: Tool) -> Observed:
        files = {p.name: p.read_bytes() for p in sorted(tool.install_dir.iterdir())}
        served = served_sha256(LOOPBACK, tool.postfix.port)
        return cls(tool.postfix.main_cf_bytes(), files, served)


def assert_refused_naming(result: subprocess.CompletedProcess[str], named: str) -> str:
    """Exit 3 and a clean log whose last line names `named`; returns that line."""
    assert_exit(result, EXIT_REFUSED)
    last = result.stderr.splitlines()[-1]
    assert named in last, f"the reason does not name {named!r}: {last!r}"
    # A lineage name holding a newline must not forge a line of its own in the log.
    assert "\npftls-hook: deployed" not in result.stderr, result.stderr
    return last.removeprefix("pftls-hook: ")


def assert_left_alone(before: Observed, tool: Tool) -> None:
    after = Observed.of(tool)
    assert after.main_cf == before.main_cf, "main.cf changed"
    assert after.install_dir == before.install_dir, "the install dir changed"
    assert after.served == before.served, "Postfix serves another certificate"


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_lineage_is_refused_cleanly(
    case: hostile.Case, served: Tool, inter: CA, stranger: CA, card: Scorecard
) -> None:
    index = CASES.index(case)
    kit = hostile.Kit(
        config=served.base / f"c{index}",
        outside=served.base / f"o{index}",
        inter=inter,
        stranger=stranger,
    )
    kit.outside.mkdir()
    attack = case.build(kit)
    tool = replace(served, certbot_config_dir=kit.config)

    with card.attempt(case.name, group=ACCEPTED if case.accepted else REFUSED) as notes:
        for run in attack.runs:
            before = Observed.of(tool)
            started = time.monotonic()
            result = run_bounded(tool, *run.args, env=dict(run.env))
            took = f"{time.monotonic() - started:.1f} s"
            card.counts["runs"] += 1
            # Counted whatever else the run got wrong: the figure's second number.
            card.counts["main.cf identical"] += tool.postfix.main_cf_bytes() == before.main_cf
            if attack.serves is not None:
                assert_exit(result, 0)
                assert_clean_log(result)
                wait_serves(tool, attack.serves)
                assert tool.postfix.main_cf_bytes() == before.main_cf, "main.cf changed"
                notes.append(f"{run.args[0]}: deployed and served ({took})")
            else:
                reason = assert_refused_naming(result, attack.named)
                assert_left_alone(before, tool)
                notes.append(f"{run.args[0]}: exit 3, `{reason}` ({took})")


def test_the_generator_makes_at_least_40_distinct_cases() -> None:
    names = [case.name for case in CASES]
    assert len(set(names)) == len(names) >= 40
