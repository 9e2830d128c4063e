"""Benchmark pftls-hook against the common shell hook, and write docs/benchmarks.md.

    .venv/bin/python -m bench.run                     # as root, from the repository
    .venv/bin/python -m bench.run --rounds 3 --renewals 3 --stages paired,commands

Orchestration only: it builds the bed (bench/bed.py), runs the stages in order, takes each
figure with bench/measure.py, saves the raw samples (bench/results.py) and has
bench/report.py render the page from them. Stages (`--stages`, default all):

- paired:   `--rounds` rounds; each renews the lineage with certbot (no hook), then runs,
            each in a fresh process timed from outside, in a shuffled order within each
            pair: the deploy hook that switches to the new version and the shell hook; a
            no-op deploy hook and the shell hook; a no-op with `--lineages` unrelated
            lineages in live/ and one without them.
- commands: the commands a switching hook, a no-op hook and the shell hook start (strace).
- daemon:   `pftls-hook watch` running, `--renewals` renewals with no hook: certbot's exit
            to the new certificate served; then its idle CPU, RSS, stop time.
- reload:   `postfix reload` with and without a client across it (the handshake stall).
- steps:    wall time of the single commands a deploy is made of.
- proof:    main.cf pointed at the shell hook's copies, one renewal: its copy is served.
- scale:    `--sni-names` SNI lineages on a Postfix of its own (bench/scale.py): a full
            `install`, the deploy hook after `--renewals` renewals, `status` (issue 10).

Everything lives in one temporary directory, removed at the end (`--keep` keeps it), and
every process it starts is stopped, also on failure or Ctrl-C. Nothing here asserts on
time: targets are reported met or not, as measured.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from tests.support import machine
from tests.support.certbot import CertbotError
from tests.support.daemon import NotifySocket, WatchProcess
from tests.support.postfix import PostfixError, client_context

from . import measure, report, scale
from .bed import Bed, say, workspace
from .results import (
    BASELINE_NOOP,
    BASELINE_SWITCH,
    NOOP,
    NOOP_BUNDLE,
    NOOP_CROWD,
    NOOP_EMPTY,
    NOOP_ROOTS,
    STEP_CRYPTOGRAPHY,
    STEP_POSTCONF,
    STEP_PYTHON,
    STEP_RELOAD,
    SWITCH,
    BaselineProof,
    Commands,
    DaemonFacts,
    Round,
    Run,
    Served,
    Settings,
)

REPO = measure.REPO
DEFAULT_OUTPUT = REPO / "docs" / "benchmarks.md"
DEFAULT_DATA = REPO / "bench" / "last-run.json"
STAGES = ("paired", "commands", "daemon", "reload", "steps", "proof", "scale")
SERVED_TIMEOUT = 30.0
READY_TIMEOUT = 60.0
DAEMON_AFTER_S = 2.0  # after a renewal is served, before the next: the daemon's probe ends
RELOAD_GAP_S = 1.0
RELOAD_WATCH_S = 1.5
STEP_REPEATS = 5


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds the ExitStack: everything is stopped


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="pftls-hook against the shell hook on a private Postfix; run as root.",
    )
    parser.add_argument("--rounds", type=int, default=None, help="paired rounds (10; quick 3)")
    parser.add_argument(
        "--lineages",
        type=int,
        default=1000,
        help="unrelated lineages (default 1000; 0 leaves that pair out)",
    )
    parser.add_argument(
        "--renewals", type=int, default=None, help="daemon renewals after a warm-up (10; quick 3)"
    )
    parser.add_argument(
        "--sni-names",
        type=int,
        default=None,
        help="the scale stage's SNI names (1000; quick 100)",
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=None, help="daemon idle window (15 s; quick 5 s)"
    )
    parser.add_argument(
        "--reload-trials", type=int, default=None, help="reloads per traffic kind (5; quick 2)"
    )
    parser.add_argument("--quick", action="store_true", help="the smaller counts above")
    parser.add_argument(
        "--gap", type=float, default=0.5, help="seconds between measured runs (default 0.5)"
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=0.01,
        metavar="SECONDS",
        help="a new handshake this often while waiting to be served (default 0.01)",
    )
    parser.add_argument("--stages", default=",".join(STAGES), help=f"subset of {','.join(STAGES)}")
    parser.add_argument(
        "--watch-option",
        action="append",
        default=[],
        metavar="OPTION",
        help="a global option for the daemon (repeatable), e.g. --watch-option=--debounce=0.2",
    )
    parser.add_argument("--seed", type=int, default=None, help="for the shuffled order")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, metavar="FILE")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="FILE",
        help="save the raw samples here (default with the page: bench/last-run.json)",
    )
    parser.add_argument("--no-write", action="store_true", help="print the page only")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    for name, full, quick in (
        ("rounds", 10, 3),
        ("renewals", 10, 3),
        ("idle_seconds", 15.0, 5.0),
        ("reload_trials", 5, 2),
        ("sni_names", 1000, 100),
    ):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(args.stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stage(s): {', '.join(unknown)}")
    if min(args.rounds, args.renewals, args.reload_trials, args.sni_names) < 1:
        parser.error("--rounds, --renewals, --reload-trials, --sni-names >= 1")
    if args.lineages < 0:
        parser.error("--lineages >= 0")
    if not 0 < args.poll_interval <= 1 or args.idle_seconds <= 0 or args.gap < 0:
        parser.error("0 < --poll-interval <= 1, --idle-seconds > 0, --gap >= 0")
    return args


class Bench:
    def __init__(self, bed: Bed, run: Run, rng: random.Random) -> None:
        self.bed = bed
        self.run = run
        self.rng = rng
        self.settings = run.settings

    def timed(self, variant: str) -> tuple[float, float]:
        """One measured run of a variant, on a settled Postfix and a cool main.cf:
        (wall, CPU) seconds."""
        bed = self.bed
        time.sleep(self.settings.gap_s)  # no run starts in the wake of another's reload
        bed.wait_main_cf_cool()
        if bed.crowd is not None:  # in live/ for that one variant alone
            (bed.crowd.enter if variant == NOOP_CROWD else bed.crowd.leave)()
        if variant.startswith("baseline"):
            return measure.process_times([str(bed.baseline_hook)], bed.hook_env())
        if variant == SWITCH:
            return measure.process_times([*bed.tool, "deploy-hook"], bed.hook_env())
        # The bundle's variant names it last: the later --ca-file is the one that counts.
        bundle = ["--ca-file", str(bed.bundle)] if variant == NOOP_BUNDLE and bed.bundle else []
        before = bed.snapshot()
        times = measure.process_times([*bed.tool, *bundle, "deploy-hook"], bed.hook_env())
        if bed.snapshot() != before:
            self.run.notes.append(
                f"a {variant} deploy hook run changed main.cf or the install dir"
                " (it was not a no-op)"
            )
        return times

    def pair(self, a: str, b: str, round_: Round) -> None:
        for variant in self.rng.sample([a, b], 2):
            round_.seconds[variant], round_.cpu_seconds[variant] = self.timed(variant)
            round_.order.append(variant)

    def paired(self) -> None:
        rounds = self.settings.rounds
        pairs = [(NOOP, BASELINE_NOOP)]
        if self.bed.crowd is not None:
            pairs.append((NOOP_CROWD, NOOP_EMPTY))
        if self.bed.bundle is not None:
            pairs.append((NOOP_BUNDLE, NOOP_ROOTS))
        for index in range(1, rounds + 1):
            self.bed.renew()
            round_ = Round(index, [], {}, {})
            # The switch comes first: the no-ops need the new version installed.
            self.pair(SWITCH, BASELINE_SWITCH, round_)
            self.bed.wait_served()
            for a, b in self.rng.sample(pairs, len(pairs)):
                self.pair(a, b, round_)
            if self.bed.crowd is not None:
                self.bed.crowd.leave()  # the next renewal, and the later stages, without it
            self.run.rounds.append(round_)
            times = ", ".join(f"{v} {round_.seconds[v]:.3f} s" for v in round_.order)
            say(f"  round {index}/{rounds}: {times}")

    def commands(self) -> None:
        bed = self.bed
        try:
            bed.renew()
            hook = [*bed.tool, "deploy-hook"]
            shell = [str(bed.baseline_hook)]
            for variant, argv in ((SWITCH, hook), (NOOP, hook), (BASELINE_NOOP, shell)):
                bed.wait_main_cf_cool()
                started = [
                    [arg.replace(str(bed.base), "<bench>") for arg in command]
                    for command in measure.commands_started(argv, bed.hook_env())
                ]
                self.run.commands.append(Commands(variant, started))
                say(f"  {variant}: {len(started)} commands")
            bed.wait_served()
        except measure.StraceMissing as exc:
            self.run.commands_note = str(exc)
            say(f"  not counted: {exc}")

    def daemon(self, stack: contextlib.ExitStack) -> None:
        bed, settings = self.bed, self.settings
        notify = NotifySocket()
        stack.callback(notify.close)
        options = [*bed.tool[3:], *settings.watch_options]
        watch = WatchProcess(
            options,
            bed.env(NOTIFY_SOCKET=notify.address),
            bed.base / "watch.log",
            REPO,
        )
        started = time.monotonic()
        watch.start()
        stack.callback(watch.kill)
        try:
            ready = notify.wait_for(lambda m: m.get("READY") == "1", timeout=READY_TIMEOUT)
        except TimeoutError as exc:
            raise measure.BenchError(f"{exc}\n{watch.output_text()[-2000:]}") from exc
        context = client_context()
        for i in range(settings.renewals + 1):
            start, exited = bed.renew()
            expected = measure.leaf_sha256(bed.lineage / "cert.pem")
            seen = measure.poll_until_served(
                bed.postfix.port,
                expected,
                interval=settings.poll_interval_s,
                timeout=SERVED_TIMEOUT,
                context=context,
            )
            links_at = os.lstat(bed.lineage / "fullchain.pem").st_mtime
            served = Served(
                certbot_s=exited - start,
                exit_to_served_s=seen.served_at - exited,
                links_to_served_s=seen.served_at - links_at,
                handshakes=seen.handshakes,
                matching_handshake_s=seen.matching_handshake_s,
                slowest_handshake_s=seen.slowest_handshake_s,
            )
            label = "warm-up" if i == 0 else f"{i}/{settings.renewals}"
            say(
                f"  daemon {label}: exit -> served {served.exit_to_served_s * 1000:.0f} ms"
                f" ({served.handshakes} handshakes, slowest {served.slowest_handshake_s:.3f} s)"
            )
            if i > 0:
                self.run.daemon.append(served)
            time.sleep(DAEMON_AFTER_S)
        say(f"  daemon idle for {settings.idle_seconds:g} s")
        idle = measure.idle_cpu_seconds(watch.pid, settings.idle_seconds)
        peak = measure.status_kb(watch.pid, "VmHWM")
        code, stop_s = watch.stop()
        self.run.daemon_facts = DaemonFacts(
            ready_s=ready.received - started,
            idle_seconds=settings.idle_seconds,
            idle_cpu_s=idle,
            peak_rss_kb=peak,
            stop_s=stop_s,
            exit_code=code,
        )

    def steps(self) -> None:
        bed = self.bed
        config = str(bed.postfix.config_dir)
        py = sys.executable
        openssl = [
            "openssl", "verify", "-CAfile", str(bed.roots),
            "-untrusted", str(bed.lineage / "chain.pem"),
            "-purpose", "sslserver", str(bed.lineage / "fullchain.pem"),
        ]  # fmt: skip
        commands: list[tuple[str, Sequence[str]]] = [
            (STEP_PYTHON, [py, "-c", "pass"]),
            (STEP_CRYPTOGRAPHY, [py, "-c", "import cryptography.x509"]),
            ("python -m pftls_hook --help", [py, "-m", "pftls_hook", "--help"]),
            ("postconf -c DIR -n", ["postconf", "-c", config, "-n"]),
            (STEP_POSTCONF, ["postconf", "-c", config, "-x"]),
            ("postconf -c DIR -M", ["postconf", "-c", config, "-M"]),
            ("postfix -c DIR status", ["postfix", "-c", config, "status"]),
            ("postfix -c DIR check", ["postfix", "-c", config, "check"]),
            (STEP_RELOAD, ["postfix", "-c", config, "reload"]),
            ("openssl verify -purpose sslserver", openssl),
        ]
        self.run.steps = measure.step_costs(commands, bed.env(), STEP_REPEATS)
        bed.wait_served()  # the reloads are asynchronous: leave Postfix settled

    def proof(self) -> None:
        bed = self.bed
        bed.point_at_copies()
        bed.renew()
        bed.wait_main_cf_cool()
        expected = measure.leaf_sha256(bed.lineage / "cert.pem")
        context = client_context()
        hook_s = measure.process_seconds([str(bed.baseline_hook)], bed.hook_env())
        returned = time.time()
        seen = measure.poll_until_served(
            bed.postfix.port,
            expected,
            interval=self.settings.poll_interval_s,
            timeout=SERVED_TIMEOUT,
            context=context,
        )
        self.run.proof = BaselineProof(hook_s, seen.served_at - returned)


def bench(args: argparse.Namespace, base: Path, run: Run) -> None:
    crowd = args.lineages if "paired" in args.stages else 0
    bed = Bed(base, crowd)
    bench = Bench(bed, run, random.Random(args.seed))  # noqa: S311 - an order, not a secret
    with contextlib.ExitStack() as stack:
        bed.start(stack)
        if "paired" in args.stages:
            say(f"paired: {args.rounds} rounds, {args.lineages} unrelated lineages")
            bench.paired()
        if "commands" in args.stages:
            say("commands each hook starts (strace)")
            bench.commands()
        if "daemon" in args.stages:
            say(f"daemon: {args.renewals} renewals (after a warm-up), no hook, watch running")
            bench.daemon(stack)
        if "reload" in args.stages:
            say(f"postfix reload with and without traffic ({args.reload_trials} each)")
            run.reload_trials = measure.reload_trials(
                bed.postfix, args.reload_trials, gap=RELOAD_GAP_S, watch=RELOAD_WATCH_S
            )
        if "steps" in args.stages:
            say("the pieces, one command at a time")
            bench.steps()
        if "proof" in args.stages:
            say("the shell hook end to end (main.cf -> its copies)")
            bench.proof()
        say("stopping everything")
    if "scale" in args.stages:
        # Its own Postfix and lineages, once the bed's are stopped.
        say(f"scale: {args.sni_names} SNI names, {args.renewals} renewals")
        run.scale_load = machine.load_average()  # the stage comes last: its own figure
        run.scale = scale.run(args.sni_names, args.renewals, base / "scale")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        say("python -m bench.run must run as root (Postfix, and hooks run as root)")
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    run = Run(
        Settings(
            rounds=args.rounds,
            lineages=args.lineages,
            renewals=args.renewals,
            poll_interval_s=args.poll_interval,
            idle_seconds=args.idle_seconds,
            gap_s=args.gap,
            reload_trials=args.reload_trials,
            watch_options=args.watch_option,
            stages=args.stages,
            sni_names=args.sni_names,
        ),
        machine=machine.facts(REPO),
        load_start=machine.load_average(),
        core=measure.core_size(REPO / "pftls_hook", report.CORE_MODULES),
    )
    started = time.monotonic()
    try:
        with workspace(args.keep) as base:
            bench(args, base, run)
    except (measure.BenchError, CertbotError, PostfixError, TimeoutError) as exc:
        say(f"benchmark failed: {exc}")
        return 1
    run.elapsed_s = time.monotonic() - started
    run.load_end = machine.load_average()
    page = report.render(run)
    print(page)
    data = args.data or (None if args.no_write else DEFAULT_DATA)
    if data is not None:
        run.save(data)
        say(f"wrote {data}")
    if not args.no_write:
        args.output.write_text(page)
        say(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
