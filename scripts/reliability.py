"""Run the reliability tests (issue 5) and regenerate docs/reliability.md from their figures.

    .venv/bin/python scripts/reliability.py        # as root: the tests run a private Postfix

It runs `pytest tests/reliability` with $PFTLS_RELIABILITY_OUT set to a temp dir, where each
case's test writes `<case>.json` (tests/support/figures.py), then renders one page: when,
on what, with which versions, a summary table and one section per case in a fixed order. A
case that wrote no figure shows "not run". The page is rewritten even when tests fail (their
figures say so); the exit code is pytest's.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "docs" / "reliability.md"
OUT_ENV = "PFTLS_RELIABILITY_OUT"  # the same name as tests/support/figures.py's
# The page's order; the titles are used when a case wrote no figure.
CASES = {
    "crash": "Crash consistency",
    "crash-sni": "Crash consistency: SNI renewals",
    "faults": "Faults",
    "concurrency": "Concurrency",
    "hostile": "Hostile and broken input",
    "dane-hostile": "Hostile DNS for the DANE guard",
    "fuzz": "Fuzzing",
    "exposure": "Key exposure",
    "trusted": "Inputs it trusts",
}
PYTEST_TIMEOUT = 3600.0
COMMAND_TIMEOUT = 30.0
# pytest's per-test temp dirs, shortened in the details: they change with every run.
_TEMP_DIR = re.compile(r"/tmp/pytest-of-[^/\s]+/pytest-[0-9]+/[^/\s]+")  # noqa: S108 - a pattern
# Keys of a figure file that are not extra numbers.
_SHOWN = {"case", "title", "figure", "details", "findings", "table"}


def _output(argv: Sequence[str]) -> str:
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return proc.stdout.strip() or "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _proc_field(file: str, name: str) -> str | None:
    """The value of the first `name: value` line of a /proc file, if any."""
    try:
        lines = Path("/proc", file).read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(name)), None)


def _machine() -> str:
    cpu = _proc_field("cpuinfo", "model name") or platform.machine()
    memory = _proc_field("meminfo", "MemTotal")
    ram = f"{int(memory.split()[0]) // 1024 // 1024} GiB RAM" if memory else "RAM unknown"
    return f"{cpu}, {os.cpu_count()} CPUs, {ram}"


def environment() -> list[str]:
    commit = _output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _output(["git", "-C", str(REPO), "status", "--porcelain", "--", "pftls_hook"])
    return [
        f"- Machine: {platform.system()} {platform.release()} ({_os_name()}), {_machine()}",
        f"- pftls-hook {_version('pftls-hook')} at commit {commit}"
        + (" (with uncommitted changes to pftls_hook/)" if dirty not in ("", "unknown") else ""),
        f"- Python {platform.python_version()}, cryptography {_version('cryptography')}, "
        f"watchdog {_version('watchdog')}, hypothesis {_version('hypothesis')}, "
        f"pytest {_version('pytest')}",
        f"- Postfix {_output(['/usr/sbin/postconf', '-d', '-h', 'mail_version'])}, "
        f"certbot {_version('certbot')}",
    ]


def _os_name() -> str:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME", "unknown OS")
    except OSError:
        return "unknown OS"


def run_tests(out_dir: Path, junit: Path, extra: Sequence[str]) -> int:
    env = dict(os.environ, **{OUT_ENV: str(out_dir)})
    argv = [sys.executable, "-m", "pytest", "tests/reliability", f"--junitxml={junit}", *extra]
    print("running:", " ".join(argv), flush=True)
    try:
        return subprocess.run(
            argv, cwd=REPO, env=env, timeout=PYTEST_TIMEOUT, check=False
        ).returncode
    except subprocess.TimeoutExpired:
        print(f"pytest did not finish within {PYTEST_TIMEOUT:g} s", file=sys.stderr)
        return 124


def test_times(junit: Path) -> tuple[str, dict[str, float]]:
    """pytest's totals as one line, and the seconds spent per case (by test module name)."""
    try:
        suite = ET.parse(junit).getroot()  # noqa: S314 - our own pytest's report
    except (OSError, ET.ParseError):
        return "pytest wrote no report", {}
    inner = suite.find("testsuite")
    suite = inner if suite.tag != "testsuite" and inner is not None else suite
    counts = {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    line = (
        f"{passed} passed, {counts['failures']} failed, {counts['errors']} errors, "
        f"{counts['skipped']} skipped in {float(suite.get('time', '0')):.0f} s"
    )
    seconds: dict[str, float] = {}
    for case in suite.iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        for name in CASES:
            if name in module:
                seconds[name] = seconds.get(name, 0.0) + float(case.get("time", "0"))
    return line, seconds


def _value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def table(spec: dict[str, Any]) -> list[str]:
    """A figure's `table` ({"columns": [...], "rows": [[...], ...]}) as a Markdown table."""
    columns, rows = spec.get("columns") or [], spec.get("rows") or []
    if not columns:
        return []
    lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return [*lines, ""]


def section(name: str, figure: dict[str, Any] | None, seconds: float | None) -> list[str]:
    title = figure.get("title", CASES[name]) if figure else CASES[name]
    lines = [f"## {title} (`{name}`)", ""]
    if figure is None:
        return [*lines, "**not run**: no figure was written for this case.", ""]
    took = f" ({seconds:.0f} s)" if seconds is not None else ""
    lines += [f"**{figure.get('figure', 'no figure')}**{took}", ""]
    lines += table(figure.get("table") or {})
    numbers = {k: v for k, v in figure.items() if k not in _SHOWN}
    lines += [f"- {key}: {_value(value)}" for key, value in numbers.items()]
    if numbers:
        lines.append("")
    findings = figure.get("findings") or []
    if findings:
        lines += ["Findings (what the case found, and what refuses it now):", ""]
        lines += [*(f"- {f}" for f in findings), ""]
    details = figure.get("details") or []
    if details:
        lines += [f"<details><summary>{len(details)} details</summary>", ""]
        lines += [f"- {_TEMP_DIR.sub('…', str(d))}" for d in details]
        lines += ["", "</details>", ""]
    return lines


def render(figures: dict[str, dict[str, Any]], summary: str, seconds: dict[str, float]) -> str:
    now = datetime.now(UTC)
    lines = [
        "# pftls-hook: reliability figures",
        "",
        "Generated by `scripts/reliability.py`, which runs `pytest tests/reliability` and writes "
        "this page from the figures each case measured (issue 5). Do not edit by hand: "
        "run the script again.",
        "",
        f"- Run: {now:%Y-%m-%d %H:%M} UTC; tests: {summary}",
        *environment(),
        "",
        "| case | figure |",
        "|---|---|",
    ]
    for name, title in CASES.items():
        figure = figures.get(name)
        shown = figure.get("figure", "no figure") if figure else "not run"
        lines.append(f"| {figure.get('title', title) if figure else title} | {shown} |")
    lines.append("")
    for name in CASES:
        lines += section(name, figures.get(name), seconds.get(name))
    return "\n".join(lines).rstrip() + "\n"


def read_figures(out_dir: Path) -> dict[str, dict[str, Any]]:
    figures = {}
    for name in CASES:
        path = out_dir / f"{name}.json"
        try:
            figures[name] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return figures


def main(argv: Sequence[str]) -> int:
    """Extra arguments go to pytest (e.g. `-x`, `-k hostile`)."""
    if os.geteuid() != 0:
        print("run as root: the tests start a private Postfix", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="pftls-reliability-") as temp:
        out_dir, junit = Path(temp) / "figures", Path(temp) / "junit.xml"
        code = run_tests(out_dir, junit, argv)
        summary, seconds = test_times(junit)
        page = render(read_figures(out_dir), summary, seconds)
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text(page)
    print(f"wrote {OUTPUT.relative_to(REPO)}; tests: {summary}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
