"""The benchmark page: a pure function from the raw samples of a run to markdown.

`render(run)` computes every figure it shows (medians, spreads, ratios, counts, targets
met) from the samples in `run` and does no I/O. `python -m bench.report FILE [--output
PAGE]` renders a run saved by bench/run.py again, so a published page can be recomputed
from its data.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .results import (
    AFTER_RELOAD,
    BASELINE_NOOP,
    BASELINE_SWITCH,
    NOOP,
    NOOP_BUNDLE,
    NOOP_CROWD,
    NOOP_EMPTY,
    NOOP_ROOTS,
    SCALE_CHECK,
    SCALE_COMMANDS,
    SCALE_HOOK,
    SCALE_INSTALL,
    SCALE_STATUS,
    STEP_CRYPTOGRAPHY,
    STEP_POSTCONF,
    STEP_PYTHON,
    STEP_RELOAD,
    SWITCH,
    VARIANTS,
    Run,
    ScaleSample,
    Served,
)

STALL_S = 0.5  # a handshake this slow waited on Postfix (see "Postfix right after a reload")
POSTFIX_COMMANDS = ("postconf", "postfix")
REGENERATE = ".venv/bin/python -m bench.run"  # as root, from the repository root

# The targets of issue 8 ("Done when"), and the two kept from the daemon's first issue.
SWITCH_RATIO = 3.0
NOOP_RATIO = 3.0
NOOP_COMMANDS = 3
CROWD_RATIO = 1.5
DAEMON_MEDIAN_S = 0.25
DAEMON_MIN_RENEWALS = 10
IDLE_CPU_PER_MIN_S = 0.1
PEAK_RSS_MB = 40.0
CORE_LINES = 1700
# Issue 8's core: lineage, select, verify, install, postfix, probe, deploy, runner, lock,
# errors, config and the file-system helper; with the three split out of them since
# (hook from cli and deploy, outcome from deploy, pem from verify).
CORE_MODULES = (
    "lineage", "select", "verify", "install", "postfix", "probe", "deploy", "runner", "lock",
    "errors", "config", "fsutil", "hook", "outcome", "pem",
)  # fmt: skip
# Issue 10's scale targets (seconds of one process), held against the median of its runs.
SCALE_TARGETS = {SCALE_INSTALL: 10.0, SCALE_HOOK: 1.0, SCALE_STATUS: 2.0, SCALE_CHECK: 2.0}

PAIRS = (
    (SWITCH, BASELINE_SWITCH, SWITCH_RATIO, "a switching deploy hook ÷ the shell hook"),
    (NOOP, BASELINE_NOOP, NOOP_RATIO, "a no-op deploy hook ÷ the shell hook"),
    (NOOP_CROWD, NOOP_EMPTY, CROWD_RATIO, "a no-op with the unrelated lineages ÷ without"),
    # No target: what the default --ca-file (the system's bundle) adds to a no-op.
    (NOOP_BUNDLE, NOOP_ROOTS, None, "a no-op with the system CA bundle ÷ with the test roots"),
)


@dataclass(frozen=True)
class Spread:
    n: int
    median: float
    q1: float
    q3: float
    low: float
    high: float


def spread(values: Sequence[float]) -> Spread:
    ordered = sorted(values)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return Spread(len(ordered), statistics.median(ordered), q1, q3, ordered[0], ordered[-1])


def ms(seconds: float) -> str:
    value = seconds * 1000
    return f"{value:.1f} ms" if abs(value) < 10 else f"{value:.0f} ms"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _samples(run: Run, variant: str) -> list[float]:
    return [r.seconds[variant] for r in run.rounds if variant in r.seconds]


def _cpu_samples(run: Run, variant: str) -> list[float]:
    return [r.cpu_seconds[variant] for r in run.rounds if variant in r.cpu_seconds]


def _paired_ratios(run: Run, a: str, b: str) -> list[float]:
    return [
        r.seconds[a] / r.seconds[b]
        for r in run.rounds
        if a in r.seconds and b in r.seconds and r.seconds[b] > 0
    ]


def _is_postfix_command(argv: Sequence[str]) -> bool:
    return bool(argv) and argv[0].rsplit("/", 1)[-1] in POSTFIX_COMMANDS


def postfix_commands(run: Run, variant: str) -> int | None:
    """How many postconf/postfix commands the counted run of `variant` started."""
    for counted in run.commands:
        if counted.variant == variant:
            return sum(_is_postfix_command(argv) for argv in counted.argv)
    return None


def _held_up(served: Served) -> bool:
    """The handshake that first showed the new certificate was itself held up by Postfix
    (the reload stall): then the figure carries that hold-up."""
    return served.matching_handshake_s >= STALL_S


# --------------------------------------------------------------------------- targets


def targets(run: Run) -> list[tuple[str, str, str]]:
    """(target, figure, met or not) for each target the run has the samples for."""
    rows = []
    for a, b, limit, label in PAIRS:
        ours, base = _samples(run, a), _samples(run, b)
        if ours and base and limit is not None:
            m_a, m_b = statistics.median(ours), statistics.median(base)
            rows.append(
                (
                    f"{label} ≤ {limit:g}x (medians of whole-process time)",
                    f"{ms(m_a)} ÷ {ms(m_b)} = {ratio(m_a, m_b)}",
                    met(m_a <= limit * m_b),
                )
            )
    count = postfix_commands(run, NOOP)
    if count is not None:
        rows.append(
            (
                f"postconf/postfix commands a no-op deploy hook runs ≤ {NOOP_COMMANDS}",
                str(count),
                met(count <= NOOP_COMMANDS),
            )
        )
    if run.daemon:
        s = spread([d.exit_to_served_s for d in run.daemon])
        enough = s.n >= DAEMON_MIN_RENEWALS
        calm = [d for d in run.daemon if not _held_up(d)]
        figure = f"{ms(s.median)} over {s.n}" + ("" if enough else " (too few renewals)")
        if calm and len(calm) < s.n:
            figure += (
                f"; in {s.n - len(calm)} the matching handshake was held up ≥ {STALL_S:g} s"
                f" (the reload stall), the other {len(calm)}: {ms(_median_latency(calm))}"
            )
        rows.append(
            (
                f"daemon: certbot exit → new certificate served ≤ {DAEMON_MEDIAN_S:g} s median"
                f" over ≥ {DAEMON_MIN_RENEWALS} renewals",
                figure,
                met(enough and s.median <= DAEMON_MEDIAN_S),
            )
        )
    facts = run.daemon_facts
    if facts is not None:
        per_minute = facts.idle_cpu_s * 60 / facts.idle_seconds
        rows.append(
            (
                f"daemon idle CPU ≤ {IDLE_CPU_PER_MIN_S:g} s per minute",
                f"{per_minute:.3f} s",
                met(per_minute <= IDLE_CPU_PER_MIN_S),
            )
        )
        peak = facts.peak_rss_kb / 1024
        rows.append(
            (f"daemon peak RSS ≤ {PEAK_RSS_MB:g} MB", f"{peak:.1f} MB", met(peak <= PEAK_RSS_MB))
        )
    if run.core:
        lines, code = (sum(getattr(m, f) for m in run.core) for f in ("lines", "code_lines"))
        rows.append(
            (
                f"the core ({len(run.core)} modules) ≤ {CORE_LINES:,} lines",
                f"{lines:,} lines; {code:,} without docstrings, comments and blank lines",
                met(lines <= CORE_LINES),
            )
        )
    for command, samples in _scale_samples(run).items():
        s = spread([x.seconds for x in samples])
        ok = all(x.code == 0 for x in samples) and s.median <= SCALE_TARGETS[command]
        rows.append(
            (
                f"{run.settings.sni_names} SNI names: `{command}` ≤ {SCALE_TARGETS[command]:g} s"
                + (f" (median of {s.n})" if s.n > 1 else ""),
                f"{s.median:.2f} s" + ("" if all(x.code == 0 for x in samples) else " (failed)"),
                met(ok),
            )
        )
    return rows


def _scale_samples(run: Run) -> dict[str, list[ScaleSample]]:
    by_command = {c: [x for x in run.scale if x.command == c] for c in SCALE_COMMANDS}
    return {c: xs for c, xs in by_command.items() if xs}


# -------------------------------------------------------------------------- sections


def _header(run: Run) -> list[str]:
    s = run.settings
    return [
        "# Benchmarks",
        "",
        f"Written by `bench/` (`python -m bench.run`, stages {', '.join(s.stages)}):"
        f" {s.rounds} paired rounds with {s.lineages} unrelated lineages, {s.renewals}"
        f" daemon renewals after a warm-up, poll interval {s.poll_interval_s * 1000:g} ms;"
        f" the run took {run.elapsed_s:.0f} s. Regenerate with `{REGENERATE}` as root from"
        " the repository root; it also saves the raw samples, from which"
        " `.venv/bin/python -m bench.report bench/last-run.json` renders this page again. A"
        " quicker subset: `--quick` (3 rounds, 3 renewals, 100 SNI names), `--stages paired,scale`,"
        " `--lineages 0` (no crowded pair); `--watch-option=--debounce=0.2` passes an"
        " option to the daemon.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in run.machine),
        f"| load average (1, 5, 15 min) at the start | {run.load_start} |",
        f"| load average (1, 5, 15 min) at the end | {run.load_end} |",
        "",
    ]


def _targets(run: Run) -> list[str]:
    rows = targets(run)
    if not rows:
        return []
    return [
        "## Targets",
        "",
        "As measured in this run; nothing in the test suite asserts on time.",
        "",
        "| target | figure | |",
        "|---|---|---|",
        *(f"| {target} | {figure} | {ok} |" for target, figure, ok in rows),
        "",
    ]


def switch_floor(run: Run) -> list[tuple[str, float]]:
    """What a switching deploy hook must do at the least, as the issue asks it (verify with
    cryptography, read Postfix's state, reload, prove the new certificate served), each
    piece as this run measured it alone: (piece, median seconds); [] without the samples."""
    steps = {s.what: statistics.median(s.seconds) for s in run.steps}
    fresh = [t.slowest_s for t in run.reload_trials if t.traffic == AFTER_RELOAD]
    needed = (STEP_PYTHON, STEP_CRYPTOGRAPHY, STEP_POSTCONF, STEP_RELOAD)
    if not fresh or any(k not in steps for k in needed):
        return []
    return [
        (f"start Python (`{STEP_PYTHON}`)", steps[STEP_PYTHON]),
        (
            "load cryptography, which verifies the chain (`import cryptography.x509`, less"
            " the start)",
            steps[STEP_CRYPTOGRAPHY] - steps[STEP_PYTHON],
        ),
        ("read Postfix's parameters (`postconf -x`; `-M` runs beside it)", steps[STEP_POSTCONF]),
        ("reload (`postfix reload`, to its own exit)", steps[STEP_RELOAD]),
        (
            "prove it: one STARTTLS handshake right after a reload, on a new smtpd",
            statistics.median(fresh),
        ),
    ]


def _floor(run: Run) -> list[str]:
    parts = switch_floor(run)
    base = _samples(run, BASELINE_SWITCH)
    if not parts or not base:
        return []
    total, shell = sum(s for _, s in parts), statistics.median(base)
    return [
        "## What a switch cannot go below",
        "",
        "The work a switching deploy hook cannot skip, each piece timed alone in this run"
        " (medians; the single commands under 'What the pieces cost here', the handshake"
        " under 'Postfix right after a reload'). pftls-hook's own work comes on top: its"
        " imports, reading and verifying the lineage, writing the files, the probe of what"
        " was served before the switch.",
        "",
        "| piece | median |",
        "|---|---|",
        *(f"| {what} | {ms(seconds)} |" for what, seconds in parts),
        f"| **sum** | **{ms(total)}** |",
        f"| the shell hook in the switch pairs | {ms(shell)} |",
        f"| sum ÷ shell hook (the target for the whole hook: ≤ {SWITCH_RATIO:g}x)"
        f" | {ratio(total, shell)} |",
        "",
    ]


def _method(run: Run) -> list[str]:
    s = run.settings
    return [
        "## How it is measured",
        "",
        "pebble (a local ACME server), one private Postfix instance on 127.0.0.1 and the"
        " venv's real certbot with one lineage; pftls-hook is run as `python -m pftls_hook"
        " <options> <command>` with the options of tests/support/tool.py. A **whole-process"
        " time** is from the fork to the exit of one fresh process, timed from outside.",
        "",
        "- **paired rounds**: each round renews the lineage (`certbot renew --force-renewal`"
        " without a hook), then runs, each as certbot runs a deploy hook (as root,"
        " `RENEWED_LINEAGE` set): the **switch** (`pftls-hook deploy-hook`, which installs"
        " the new version, reloads Postfix and proves it served) and the **shell hook**;"
        " then a **no-op** (the same hook again: installed and served already) and the"
        " shell hook; then a no-op with the unrelated lineages moved into live/ and one"
        " without them; then a no-op whose `--ca-file` is the system's CA bundle (the"
        " default, some 140 roots) with the test roots appended, and one with the test roots"
        " alone. Within each pair the order is shuffled, the no-op pairs come in a"
        f" shuffled order, and every run starts {s.gap_s:g} s after the previous one ended,"
        " on a main.cf not modified for 2.5 s (Postfix makes every reader of a main.cf"
        " modified in the last second or two wait).",
        "- **the shell hook**: `openssl verify -CAfile <roots> -untrusted chain.pem -purpose"
        " sslserver fullchain.pem && cp fullchain.pem privkey.pem <dir>/ && postfix -c"
        " <dir> reload`. Every hook run's output is read from pipes to their end, as"
        " certbot reads a hook's: the shell hook's time includes the `postsuper` its"
        " `postfix reload` leaves running with them (certbot waits for it too); pftls-hook"
        " gives its own commands memory files, so it does not. In the paired rounds main.cf"
        " names pftls-hook's files, so that"
        " pftls-hook finds its own state; the shell hook's work (verify, copy, a reload"
        " signal) is the same whichever files main.cf names. The **proof** stage points"
        " main.cf at the shell hook's copies and shows that its copy is then served.",
        "- **the unrelated lineages**: valid certificates for other names (a host that also"
        " serves websites) from a CA of their own, whose root is in the `--ca-file` for"
        " every run; each is a certbot lineage (live/, archive/, renewal/), moved in and"
        " out of live/ by renaming its live/ directory.",
        "- **commands**: each hook run once under `strace -f` (not timed): the programs the"
        " hook's own process started (a program those start in turn, such as the postconf"
        " that `postfix reload`'s script runs, is not the hook's).",
        "- **the daemon**: `pftls-hook <options> watch` running as systemd would"
        " (NOTIFY_SOCKET), certbot renewing without a hook. From certbot's exit (the links"
        f" are final) a poller begins a STARTTLS handshake every {s.poll_interval_s * 1000:g}"
        " ms, up to 4 at once (so that one handshake held up by Postfix does not hide what"
        " the next connections are served), until one shows the new leaf; **exit → served**"
        " ends when that handshake ends, so its resolution is one handshake ('the matching"
        " handshake took' below). **links → served** is from the mtime of the re-pointed"
        " `live/<name>/fullchain.pem` link (certbot's last).",
        "",
    ]


def _table(rows: list[tuple[str, Sequence[float]]]) -> list[str]:
    out = ["| | n | median | quartiles | min to max |", "|---|---|---|---|---|"]
    for label, values in rows:
        if values:
            s = spread(values)
            out.append(
                f"| {label} | {s.n} | {ms(s.median)} | {ms(s.q1)} to {ms(s.q3)}"
                f" | {ms(s.low)} to {ms(s.high)} |"
            )
    return out


def _paired(run: Run) -> list[str]:
    if not run.rounds:
        return []
    out = [
        "## Deploy hook and shell hook, paired",
        "",
        "Whole-process time of each run:",
        "",
        *_table([(v, _samples(run, v)) for v in VARIANTS]),
        "",
        "CPU time of each run (user + system, of the process and of the programs it"
        " waited for; not Postfix's own work after a reload signal), which other work on"
        " the machine inflates less than the wall time:",
        "",
        *_table([(v, _cpu_samples(run, v)) for v in VARIANTS]),
        "",
        "Ratios of the wall times: of the medians, and per round (the two runs of a pair"
        " ran one after the other):",
        "",
        "| | ratio of medians | per round: median | per round: min to max | target"
        " | CPU time: ratio of medians |",
        "|---|---|---|---|---|---|",
    ]
    for a, b, limit, label in PAIRS:
        ours, base, per_round = _samples(run, a), _samples(run, b), _paired_ratios(run, a, b)
        cpu_a, cpu_b = _cpu_samples(run, a), _cpu_samples(run, b)
        cpu = ratio(statistics.median(cpu_a), statistics.median(cpu_b)) if cpu_a and cpu_b else "-"
        if ours and base and per_round:
            s = spread(per_round)
            out.append(
                f"| {label} | {ratio(statistics.median(ours), statistics.median(base))}"
                f" | {s.median:.2f}x | {s.low:.2f}x to {s.high:.2f}x"
                f" | {'-' if limit is None else f'≤ {limit:g}x'} | {cpu} |"
            )
    out.append("")
    return out


def _commands(run: Run) -> list[str]:
    if run.commands_note and not run.commands:
        return ["## Commands a hook runs", "", f"Not counted: {run.commands_note}.", ""]
    if not run.commands:
        return []
    out = [
        "## Commands a hook runs",
        "",
        "| run | commands | of them postconf/postfix |",
        "|---|---|---|",
    ]
    for counted in run.commands:
        postfix = sum(_is_postfix_command(a) for a in counted.argv)
        out.append(f"| {counted.variant} | {len(counted.argv)} | {postfix} |")
    out.append("")
    for counted in run.commands:
        out += [f"{counted.variant}:", "", "```"]
        out += [" ".join(argv) for argv in counted.argv] or ["(none)"]
        out += ["```", ""]
    return out


def _median_latency(served: Sequence[Served]) -> float:
    return statistics.median(d.exit_to_served_s for d in served)


def _daemon(run: Run) -> list[str]:
    if not run.daemon:
        return []
    ds = run.daemon
    calm = [d for d in ds if not _held_up(d)]
    pick: list[tuple[str, Callable[[Served], float]]] = [
        ("certbot exit → served", lambda d: d.exit_to_served_s),
        (
            "certbot exit → the matching handshake began",
            lambda d: d.exit_to_served_s - d.matching_handshake_s,
        ),
        ("links → served", lambda d: d.links_to_served_s),
        ("certbot start → exit", lambda d: d.certbot_s),
        ("the matching handshake took", lambda d: d.matching_handshake_s),
        ("the slowest handshake of the poll", lambda d: d.slowest_handshake_s),
    ]
    out = [
        "## The daemon: certbot's exit to the new certificate served",
        "",
        *_table([(label, [f(d) for d in ds]) for label, f in pick]),
        "",
        f"Handshakes until the match: at most {max(d.handshakes for d in ds)}; the first"
        f" handshake already matched in {sum(d.handshakes == 1 for d in ds)} of {len(ds)}"
        " renewals (served before the poll began: for those the figure is an upper bound,"
        " the time to the end of one handshake). Renewals whose poll met a handshake of"
        f" {STALL_S:g} s or more (the stall below):"
        f" {sum(d.slowest_handshake_s >= STALL_S for d in ds)} of {len(ds)}. In"
        f" {len(ds) - len(calm)} of them the matching handshake itself took that long: that"
        " connection was held up, then shown the new certificate"
        + (
            f"; certbot exit → served without those: median {ms(_median_latency(calm))}"
            f" over {len(calm)}."
            if calm and len(calm) < len(ds)
            else "."
        )
        + " 'Served' is when the client has the certificate (the end of that handshake);"
        " 'the matching handshake began' is the earliest the new certificate can have been"
        " in use for it. The two differ by the hold-up.",
        "",
    ]
    facts = run.daemon_facts
    if facts is not None:
        out += [
            "| | |",
            "|---|---|",
            f"| start to READY=1 | {facts.ready_s:.2f} s |",
            f"| CPU time over {facts.idle_seconds:g} s idle (utime+stime) |"
            f" {facts.idle_cpu_s:.3f} s |",
            f"| peak RSS (VmHWM) | {facts.peak_rss_kb / 1024:.1f} MB |",
            f"| SIGTERM to exit | {ms(facts.stop_s)} (exit code {facts.exit_code}) |",
            "",
        ]
    return out


def _reload(run: Run) -> list[str]:
    trials = run.reload_trials
    if not trials:
        return []
    out = [
        "## Postfix right after a reload",
        "",
        "A pre-reload smtpd that accepts a connection in the few milliseconds after the"
        " SIGHUP asks tlsmgr for a PRNG seed on STARTTLS over its kept connection; the reload"
        " has just stopped that tlsmgr, the read gets ECONNRESET, and Postfix's client sleeps"
        " one second before it reconnects (seen with strace: `read(...) = -1 ECONNRESET`,"
        " then `clock_nanosleep({tv_sec=1})`). That client, and the ones queued behind it,"
        " wait about a second. Only connections that race the reload are hit, whichever"
        " tool reloads: the daemon's poller runs across the daemon's reload, the paired"
        " hook runs are spaced apart. pftls-hook's own proof does not wait such a"
        " handshake out: it gives a handshake 0.25 s (doubled each round) and then opens a"
        " new connection (pftls_hook/probe.py). The slowest handshake in the"
        " 1.5 s after each `postfix reload`:",
        "",
        "| clients | reloads | slowest handshake, median / max"
        f" | reloads with one ≥ {STALL_S:g} s |",
        "|---|---|---|---|",
    ]
    for traffic in dict.fromkeys(t.traffic for t in trials):
        mine = [t.slowest_s for t in trials if t.traffic == traffic]
        s = spread(mine)
        stalls = sum(x >= STALL_S for x in mine)
        out.append(f"| {traffic} | {s.n} | {ms(s.median)} / {ms(s.high)} | {stalls} |")
    out.append("")
    return out


def _steps(run: Run) -> list[str]:
    if not run.steps:
        return []
    out = [
        "## What the pieces cost here",
        "",
        "Wall time of single commands, one fresh process each, to its own exit (its output"
        " to a file, as pftls-hook's runner takes it: the `postsuper` that `postfix reload`"
        " leaves running is not waited for):",
        "",
        "| command | n | median | max |",
        "|---|---|---|---|",
    ]
    for step in run.steps:
        s = spread(step.seconds)
        out.append(f"| `{step.what}` | {s.n} | {ms(s.median)} | {ms(s.high)} |")
    out.append("")
    return out


def _proof(run: Run) -> list[str]:
    proof = run.proof
    if proof is None:
        return []
    return [
        "## The shell hook end to end",
        "",
        f"With main.cf pointed at its copies, after one more renewal: the shell hook took"
        f" {ms(proof.hook_s)}, and its copy was served {ms(proof.hook_exit_to_served_s)}"
        " after it exited (reload is asynchronous).",
        "",
    ]


def _scale(run: Run) -> list[str]:
    samples = _scale_samples(run)
    if not samples:
        return []
    lines = [
        "## Scale: many SNI names",
        "",
        f"{run.settings.sni_names} SNI names plus the default name, one ECDSA lineage each,"
        " written as certbot lays them out, named in the config's `sni`; a private Postfix of"
        " its own on 127.0.0.1 (bench/scale.py). Wall time of one `python -m pftls_hook`"
        " process each: `install` (the first deploy of them all), `deploy-hook` after each"
        " renewal of one SNI lineage (another each time; the first right after the install),"
        " `status` and `status --check` (every chain probed with its SNI name)."
        f" Load average when the stage began: {run.scale_load}.",
        "",
        "| command | n | median | min to max | exit codes | target |",
        "|---|---|---|---|---|---|",
    ]
    for command, xs in samples.items():
        s = spread([x.seconds for x in xs])
        codes = ", ".join(str(c) for c in sorted({x.code for x in xs}))
        lines.append(
            f"| `{command}` | {s.n} | {s.median:.2f} s | {s.low:.2f} s to {s.high:.2f} s"
            f" | {codes} | ≤ {SCALE_TARGETS[command]:g} s |"
        )
    return [*lines, ""]


def _core(run: Run) -> list[str]:
    if not run.core:
        return []
    lines = [
        "## The core's size",
        "",
        "Lines of each core module as this tree has them (`measure.core_size`): all of them,"
        " and the code alone, without docstrings, comments and blank lines.",
        "",
        "| module | lines | code lines |",
        "|---|---|---|",
        *(f"| `{m.name}.py` | {m.lines:,} | {m.code_lines:,} |" for m in run.core),
    ]
    total, code = sum(m.lines for m in run.core), sum(m.code_lines for m in run.core)
    return [*lines, f"| all | {total:,} | {code:,} |", ""]


def _notes(run: Run) -> list[str]:
    if not run.notes:
        return []
    return ["## Notes", "", *(f"- {note}" for note in dict.fromkeys(run.notes)), ""]


def render(run: Run) -> str:
    sections = [
        _header(run),
        _notes(run),
        _targets(run),
        _floor(run),
        _method(run),
        _paired(run),
        _commands(run),
        _daemon(run),
        _reload(run),
        _steps(run),
        _proof(run),
        _scale(run),
        _core(run),
    ]
    return "\n".join(line for section in sections for line in section).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.report", description="Render a saved benchmark run as markdown."
    )
    parser.add_argument("data", type=Path, help="the raw samples bench.run saved")
    parser.add_argument("--output", type=Path, default=None, help="write here, not stdout")
    args = parser.parse_args(argv)
    page = render(Run.load(args.data))
    if args.output is None:
        sys.stdout.write(page)
    else:
        args.output.write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
