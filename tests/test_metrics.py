"""`--metrics-file`: what Debian's real prometheus-node-exporter serves from it.

Every value is read back the way a Prometheus server would read it: node_exporter's textfile
collector on a loopback port, scraped over HTTP, parsed from the exposition format, and
compared with the certificates the test made and Postfix (a real private instance) serves.
"""

from __future__ import annotations

import functools
import json
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pftls_hook import metrics
from tests.support.daemon import WatchProcess
from tests.support.net import LOOPBACK, wait_until
from tests.support.node_exporter import SAMPLE, NodeExporter, value
from tests.support.pki import CA, Leaf
from tests.support.postfix import PostfixInstance
from tests.support.tool import NAME, Tool, assert_exit

pytestmark = pytest.mark.slow
EXIT_OK, EXIT_REFUSED = 0, 3


def epoch(leaf: Leaf) -> float:
    return leaf.cert.not_valid_after_utc.timestamp()


@pytest.fixture(scope="module")
def inter() -> CA:
    return CA.root("pftls metrics-test root").intermediate("pftls metrics-test intermediate")


@pytest.fixture
def textfile_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "textfile"
    directory.mkdir()
    return directory


@pytest.fixture
def exporter(textfile_dir: Path, tmp_path: Path) -> Iterator[NodeExporter]:
    server = NodeExporter(textfile_dir, tmp_path / "node-exporter.log")
    try:
        yield server
    finally:
        server.stop()


def make_tool(postfix: PostfixInstance, tmp_path: Path, inter: CA) -> Tool:
    ca_file = tmp_path / "root.pem"
    assert inter.parent is not None
    ca_file.write_bytes(inter.parent.cert_pem)
    return Tool(postfix=postfix, base=tmp_path, ca_file=ca_file, probe_timeout="2")


def test_deploys_refusals_and_served_certificate_as_node_exporter_serves_them(
    postfix: PostfixInstance, tmp_path: Path, inter: CA, textfile_dir: Path, exporter: NodeExporter
) -> None:
    tool = make_tool(postfix, tmp_path, inter)
    metrics = textfile_dir / "pftls-hook.prom"
    endpoint = f"{LOOPBACK}:{postfix.port}"
    first = inter.issue(NAME, not_after=datetime.now(UTC) + timedelta(days=40))
    tool.lineage(first)

    before = time.time()
    assert_exit(tool.run("install", "--metrics-file", str(metrics)), EXIT_OK)
    after = time.time()
    st = os.stat(metrics)
    assert stat.S_IMODE(st.st_mode) == 0o644 and st.st_uid == 0
    assert sorted(p.name for p in textfile_dir.iterdir()) == [
        ".pftls-hook.prom.counters.json",
        "pftls-hook.prom",
    ], "a temp file was left behind"

    s = exporter.scrape()
    assert value(s, "node_textfile_scrape_error") == 0
    name = "pftls_certificate_not_after_timestamp_seconds"
    assert value(s, name, lineage=NAME, source="live", endpoint="") == epoch(first)
    assert value(s, name, lineage=NAME, source="installed", endpoint="") == epoch(first)
    assert value(s, name, lineage=NAME, source="served", endpoint=endpoint) == epoch(first)
    assert value(s, "pftls_served_matches_installed", endpoint=endpoint) == 1
    assert value(s, "pftls_deploys_total", result="deployed") == 1
    assert value(s, "pftls_deploys_total", result="refused") == 0
    success = value(s, "pftls_deploy_last_success_timestamp_seconds", lineage=NAME)
    assert before <= success <= after
    assert value(s, "pftls_deploy_last_attempt_timestamp_seconds") == success

    # A renewal the checks refuse (issued for another name) is counted, and changes nothing.
    wrong = inter.issue("other.test.example")
    tool.lineage(wrong, version=2)
    assert_exit(tool.run("install", NAME, "--metrics-file", str(metrics)), EXIT_REFUSED)
    s = exporter.scrape()
    assert value(s, "pftls_deploys_total", result="refused") == 1
    assert value(s, "pftls_deploys_total", result="deployed") == 1
    assert value(s, "pftls_deploy_last_success_timestamp_seconds", lineage=NAME) == success
    assert value(s, "pftls_deploy_last_attempt_timestamp_seconds") > success
    assert value(s, name, lineage=NAME, source="served", endpoint=endpoint) == epoch(first)

    # A good renewal: every source moves to the new certificate.
    second = inter.issue(NAME, not_after=datetime.now(UTC) + timedelta(days=90))
    tool.lineage(second, version=3)
    assert_exit(tool.run("install", "--metrics-file", str(metrics)), EXIT_OK)
    s = exporter.scrape()
    assert value(s, "pftls_deploys_total", result="deployed") == 2
    for source, where in (("live", ""), ("installed", ""), ("served", endpoint)):
        assert value(s, name, lineage=NAME, source=source, endpoint=where) == epoch(second)

    # Postfix stopped: `status` rewrites the file; the endpoint no longer serves the
    # installed certificate, and there is no served not-after to show.
    postfix.stop()
    tool.probe_timeout = "1"
    result = tool.run("status", "--metrics-file", str(metrics), "--probe", endpoint)
    assert_exit(result, EXIT_OK)
    s = exporter.scrape()
    assert value(s, "pftls_served_matches_installed", endpoint=endpoint) == 0
    assert (
        name,
        frozenset({"lineage": NAME, "source": "served", "endpoint": endpoint}.items()),
    ) not in s
    assert value(s, name, lineage=NAME, source="installed", endpoint="") == epoch(second)
    assert value(s, "pftls_deploys_total", result="deployed") == 2  # status counts nothing


def test_daemon_counts_survive_its_restart(
    postfix: PostfixInstance, tmp_path: Path, inter: CA, textfile_dir: Path, exporter: NodeExporter
) -> None:
    tool = make_tool(postfix, tmp_path, inter)
    metrics = textfile_dir / "pftls-hook.prom"
    tool.lineage(inter.issue(NAME))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PFTLS_HOOK_", "NOTIFY_"))}
    options = [*tool.options(), "--metrics-file", str(metrics)]

    counts = []
    for run in range(2):
        daemon = WatchProcess(options, env, tmp_path / f"watch-{run}.log", tmp_path).start()
        try:
            # Each start reconciles: a deploy the first time, nothing to do the second.
            expected = "deployed" if run == 0 else "already installed and served"
            daemon.wait_output(expected, timeout=60)
            result = "unchanged" if run else "deployed"
            wait_until(
                functools.partial(counted_once, exporter, result),
                timeout=10,
                what="the daemon's deploy in the metrics",
            )
        finally:
            code, _ = daemon.stop()
        assert code == 0
        s = exporter.scrape()
        counts.append(
            (value(s, "pftls_deploys_total", result="deployed"),
             value(s, "pftls_deploys_total", result="unchanged"))
        )  # fmt: skip
    # The second daemon started from the first one's counts, not from zero.
    assert counts == [(1, 0), (1, 1)]


def counted_once(exporter: NodeExporter, result: str) -> bool:
    return exporter.scrape().get(("pftls_deploys_total", frozenset({("result", result)}))) == 1


def test_unreadable_counters_are_reported_and_start_again(
    postfix: PostfixInstance, tmp_path: Path, inter: CA, textfile_dir: Path, exporter: NodeExporter
) -> None:
    tool = make_tool(postfix, tmp_path, inter)
    metrics = textfile_dir / "pftls-hook.prom"
    counters = textfile_dir / ".pftls-hook.prom.counters.json"
    tool.lineage(inter.issue(NAME))
    counters.write_text('{"deploys": {"deployed": 7')  # cut short, as by a full disk
    result = tool.run("install", "--metrics-file", str(metrics))
    assert_exit(result, EXIT_OK)
    assert f"pftls-hook: {counters}: unreadable, counters start again at 0" in result.stderr
    s = exporter.scrape()
    assert value(s, "pftls_deploys_total", result="deployed") == 1
    assert json.loads(counters.read_text())["deploys"]["deployed"] == 1

    # A metrics directory that cannot be written costs a warning, never the deploy.
    result = tool.run("install", "--metrics-file", str(tmp_path / "missing" / "x.prom"))
    assert_exit(result, EXIT_OK)
    assert "x.prom: metrics not written: No such file or directory" in result.stderr


def test_registered_deploy_hook_carries_the_metrics_file(
    postfix: PostfixInstance, tmp_path: Path, inter: CA, textfile_dir: Path, exporter: NodeExporter
) -> None:
    tool = make_tool(postfix, tmp_path, inter)
    metrics = textfile_dir / "pftls-hook.prom"
    leaf = inter.issue(NAME)
    tool.lineage(leaf)
    assert_exit(tool.run("register", "--metrics-file", str(metrics)), EXIT_OK)
    hook = tool.config_dir / "renewal-hooks" / "deploy" / "pftls-hook"
    assert f"--metrics-file {metrics}" in hook.read_text()
    # certbot runs the hook after a renewal, with RENEWED_LINEAGE and without our environment.
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "RENEWED_LINEAGE": str(tool.live_dir / NAME)}
    ran = subprocess.run(
        [str(hook)], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert ran.returncode == 0, ran.stderr
    s = exporter.scrape()
    assert value(s, "pftls_deploys_total", result="deployed") == 1
    endpoint = f"{LOOPBACK}:{postfix.port}"
    served = value(
        s,
        "pftls_certificate_not_after_timestamp_seconds",
        lineage=NAME,
        source="served",
        endpoint=endpoint,
    )
    assert served == epoch(leaf)


def test_each_chain_is_held_against_its_own_installed_file(
    postfix: PostfixInstance, tmp_path: Path, inter: CA, textfile_dir: Path, exporter: NodeExporter
) -> None:
    """ECDSA and RSA chains: each endpoint is probed by a client offering one algorithm and
    compared with that chain's installed file, so a healthy dual setup reads 1 twice."""
    tool = make_tool(postfix, tmp_path, inter)
    metrics_file = textfile_dir / "pftls-hook.prom"
    leaves = {"ecdsa": inter.issue(NAME, key="ec"), "rsa": inter.issue(NAME, key="rsa")}
    for algorithm, leaf in leaves.items():
        tool.lineage(leaf, name=f"mail-{algorithm}")
    assert_exit(tool.run("install", "--metrics-file", str(metrics_file)), EXIT_OK)

    s = exporter.scrape()
    expiry = "pftls_certificate_not_after_timestamp_seconds"
    endpoints = {a: f"{LOOPBACK}:{postfix.port} ({a} client)" for a in leaves}
    matches = {dict(k[1])["endpoint"] for k in s if k[0] == "pftls_served_matches_installed"}
    assert matches == set(endpoints.values())
    for algorithm, leaf in leaves.items():
        lineage, endpoint = f"mail-{algorithm}", endpoints[algorithm]
        assert value(s, "pftls_served_matches_installed", endpoint=endpoint) == 1
        assert value(s, expiry, lineage=lineage, source="installed", endpoint="") == epoch(leaf)
        assert value(s, expiry, lineage=lineage, source="served", endpoint=endpoint) == epoch(leaf)

    # Postfix stopped: neither chain is served.
    postfix.stop()
    tool.probe_timeout = "1"
    assert_exit(tool.run("status", "--metrics-file", str(metrics_file)), EXIT_OK)
    s = exporter.scrape()
    for endpoint in endpoints.values():
        assert value(s, "pftls_served_matches_installed", endpoint=endpoint) == 0


# ------------------------------------------------------------------- pure: no Postfix needed


def test_counters_file_keeps_what_is_well_typed(tmp_path: Path) -> None:
    store = tmp_path / ".m.prom.counters.json"
    store.write_text(
        json.dumps(
            {
                "deploys": {"deployed": 3, "refused": "2", "unknown": 5, "failed": -1},
                "last_attempt": 1700000000.5,
                "last_success": ["not", "a", "mapping"],
            }
        )
    )
    counters = metrics._read_counters(store)
    assert counters.deploys == {**dict.fromkeys(metrics.RESULTS, 0), "deployed": 3}
    assert counters.last_attempt == 1700000000.5
    assert counters.last_success == {}


def test_render_escapes_label_values_and_parses_back() -> None:
    odd = 'a"b\\c\nd'
    snapshot = metrics.Snapshot(
        certificates=(metrics.CertificateExpiry(odd, "live", "", 1767225600.0),),
        endpoints=(metrics.EndpointCheck("[::1]:25", True),),
        unreadable=(),
        counters=metrics.Counters(last_success={"x": 1.25}),
    )
    text = metrics.render(snapshot)
    assert 'lineage="a\\"b\\\\c\\nd"' in text
    for line in text.splitlines():
        assert line.startswith("# ") or SAMPLE.match(line), line
    assert 'pftls_served_matches_installed{endpoint="[::1]:25"} 1' in text.splitlines()
    assert 'pftls_deploy_last_success_timestamp_seconds{lineage="x"} 1.25' in text.splitlines()
