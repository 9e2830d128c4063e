"""`pftls-hook status --check`: the monitoring-plugins convention, each state in a scenario
that must produce it, against a real private Postfix and fake certbot lineages.

0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, and no other exit code; one line on stdout, with
perfdata `days_left=N;21:;7:` whenever a served certificate was seen.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import MakePostfix
from tests.support.pki import CA, Leaf
from tests.support.postfix import PostfixInstance, served_sha256
from tests.support.tool import NAME, Tool, assert_exit

HOST = "127.0.0.1"
OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
PERFDATA = re.compile(r" \| days_left=(-?[0-9]+);21:;7:$")


@pytest.fixture(scope="module")
def inter() -> CA:
    return CA.root("pftls status-test root").intermediate("pftls status-test intermediate")


def make_tool(postfix: PostfixInstance, tmp_path: Path, inter: CA) -> Tool:
    ca_file = tmp_path / "root.pem"
    assert inter.parent is not None
    ca_file.write_bytes(inter.parent.cert_pem)
    return Tool(postfix=postfix, base=tmp_path, ca_file=ca_file)


def expiring_in(inter: CA, days: int) -> Leaf:
    # An hour more than `days`: days_left counts whole days.
    return inter.issue(NAME, not_after=datetime.now(UTC) + timedelta(days=days, hours=1))


def check(tool: Tool, code: int) -> str:
    """Run `status --check`, require exit `code` and one line; return that line."""
    result: subprocess.CompletedProcess[str] = tool.run("status", "--check")
    assert_exit(result, code)
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    print(lines[0])  # shown with -s: what the monitoring system would display
    state = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}[code]
    assert lines[0].startswith(f"PFTLS-HOOK {state}: "), lines[0]
    return lines[0]


def days_left(line: str) -> int:
    match = PERFDATA.search(line)
    assert match, line
    return int(match.group(1))


def test_ok_after_deploy_then_critical_when_the_live_certificate_moves_on(
    postfix: PostfixInstance, tmp_path: Path, inter: CA
) -> None:
    tool = make_tool(postfix, tmp_path, inter)
    first = inter.issue(NAME)
    tool.lineage(first)
    assert_exit(tool.run("install"), OK)

    line = check(tool, OK)
    assert days_left(line) == 89  # a 90-day certificate, back-dated one hour

    # certbot renews, and nothing deploys it: Postfix still serves version 1.
    tool.lineage(inter.issue(NAME), version=2)
    assert served_sha256(HOST, postfix.port) == hashlib.sha256(first.cert_der).hexdigest()
    line = check(tool, CRITICAL)
    assert "not the live certificate" in line
    assert days_left(line) == 89


def test_warning_with_15_days_left_then_critical_with_5(
    postfix: PostfixInstance, tmp_path: Path, inter: CA
) -> None:
    tool = make_tool(postfix, tmp_path, inter)
    tool.lineage(expiring_in(inter, 15))
    assert_exit(tool.run("install"), OK)
    assert days_left(check(tool, WARNING)) == 15

    tool.lineage(expiring_in(inter, 5), version=2)
    assert_exit(tool.run("--min-days", "0", "install"), OK)
    line = check(tool, CRITICAL)
    assert "expires in 5 days" in line
    assert days_left(line) == 5


def test_unknown_without_a_lineage_or_with_postfix_stopped(
    make_postfix: MakePostfix, tmp_path: Path, inter: CA
) -> None:
    postfix = make_postfix(start=False)
    tool = make_tool(postfix, tmp_path, inter)
    line = check(tool, UNKNOWN)
    assert "no lineage" in line
    assert "|" not in line  # nothing served: no perfdata

    tool.lineage(inter.issue(NAME))
    assert_exit(tool.run("install"), OK)  # installed; Postfix not running
    line = check(tool, UNKNOWN)
    assert "refused" in line.lower()


def test_unknown_even_on_a_usage_error(postfix: PostfixInstance, tmp_path: Path, inter: CA) -> None:
    # A monitoring system reads 2 as CRITICAL: a broken check must say UNKNOWN instead.
    tool = make_tool(postfix, tmp_path, inter)
    assert tool.run("status", "--check", "--no-such-option").returncode == UNKNOWN
    result = tool.run("--config", str(tmp_path / "missing.toml"), "status", "--check")
    assert result.returncode == UNKNOWN
    assert result.stdout.startswith("PFTLS-HOOK UNKNOWN: ")


def test_a_lineage_whose_key_link_broke_shows_its_read_error(
    postfix: PostfixInstance, tmp_path: Path, inter: CA
) -> None:
    """status reads each lineage whole: a dangling privkey link (every deploy of it would be
    refused) is shown as that lineage's error, not as a healthy live certificate."""
    tool = make_tool(postfix, tmp_path, inter)
    tool.lineage(inter.issue(NAME))
    assert_exit(tool.run("install"), OK)
    link = tool.live_dir / NAME / "privkey.pem"
    link.unlink()
    link.symlink_to(f"../../archive/{NAME}/privkey9.pem")  # no such version

    result = tool.run("status", "--json")

    assert_exit(result, OK)
    (lineage,) = json.loads(result.stdout)["lineages"]
    assert "privkey.pem" in lineage["live"]["error"], lineage
    assert lineage["live"]["cert"] is None, lineage
