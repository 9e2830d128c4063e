"""Renewal-to-served latency of pftls-hook, against a shell-hook baseline, on loopback.

Run as root: `sudo .venv/bin/python bench/latency.py [--renewals N] [--idle-seconds S]`
(`--quick` for a short run). It starts pebble (a local ACME server), a private Postfix
instance (own config and queue dirs, a port on 127.0.0.1; the machine's own Postfix is never
touched) and has the venv's real certbot obtain one certificate. Then, for each variant,
one warm-up renewal and N measured ones with `certbot renew --force-renewal`:

- `hook`:     certbot runs `python -m pftls_hook ... deploy-hook` as its deploy hook;
- `daemon`:   `python -m pftls_hook ... watch` runs; certbot runs no hook at all;
- `baseline`: the common shell deploy hook: `openssl verify -purpose sslserver`, `cp` the
              files into a directory main.cf points at, `postfix reload`.

Every variant is measured from outside the same way: when certbot exits, a poller starts
STARTTLS handshakes in a tight loop (one every `--poll-interval`, default 5 ms, one at a
time) and records when the first handshake completes whose leaf SHA-256 is that of the new
`cert.pem`. Each deploy hook runs under the same timer wrapper (a shell script that writes
`date` before and after), which gives the hook's own run time. For the daemon it also
reads when its deploy began and returned (its stderr lines, time-stamped on arrival), its
CPU time over an idle period (utime+stime from /proc/<pid>/stat) and its peak RSS (VmHWM).
Last, `postfix reload` with and without client traffic across it (Postfix can stall a
connection that races the reload for a second), and the wall time of the single commands a
deploy is made of. It prints a markdown report and writes it to docs/benchmarks.md, with
the machine it ran on (including the load average: other work on the machine shows there).

Everything lives in one temporary directory that is removed at the end (`--keep` keeps it),
and every process it starts is stopped, also on failure or Ctrl-C. Not a test: nothing here
asserts on wall-clock time; the targets are reported as met or missed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import os
import platform
import shlex
import shutil
import signal
import smtplib
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.certbot import CERTBOT, Certbot, CertbotError
from tests.support.net import LOOPBACK, free_port
from tests.support.pebble import Pebble
from tests.support.postfix import (
    PostfixError,
    PostfixInstance,
    wait_for_served_sha256,
)

REPO = Path(__file__).resolve().parent.parent
CERT_NAME = "mail"
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_OUTPUT = REPO / "docs" / "benchmarks.md"
VARIANTS = ("hook", "daemon", "baseline")

POLL_TIMEOUT = 30.0  # a renewal not served after this is reported as a failure
HANDSHAKE_TIMEOUT = 5.0
DAEMON_READY_TIMEOUT = 60.0
DAEMON_STOP_TIMEOUT = 10.0
DAEMON_SETTLE = 3.0  # after the last renewal, before the idle window starts
DAEMON_DEPLOY_WAIT = 15.0  # after the poll, wait this long at most for its "deployed" line
COMMAND_TIMEOUT = 60.0
STEP_REPEATS = 5
RELOAD_TRIAL_GAP = 1.0
RELOAD_TRIAL_WATCH = 1.5
STALL_S = 0.5  # a handshake this slow waited on Postfix (see the report's notes)

TARGET_DAEMON_MEDIAN_S = 1.0
TARGET_HOOK_RATIO = 3.0
TARGET_IDLE_CPU_PER_MIN_S = 0.1
TARGET_RSS_MB = 40.0

TIMER_SH = """#!/bin/sh
# Timer wrapper for a deploy hook: appends "start end exit-code" (epoch seconds) to $1.
out=$1
shift
start=$(date +%s.%N)
"$@"
rc=$?
end=$(date +%s.%N)
echo "$start $end $rc" >> "$out"
exit $rc
"""

BASELINE_SH = """#!/bin/sh
# The common shell deploy hook: verify, copy, reload.
openssl verify -CAfile {root} -untrusted "$RENEWED_LINEAGE/chain.pem" -purpose sslserver \\
    "$RENEWED_LINEAGE/fullchain.pem" \\
  && cp "$RENEWED_LINEAGE/fullchain.pem" "$RENEWED_LINEAGE/privkey.pem" {copy_dir}/ \\
  && postfix -c {config_dir} reload
"""


class BenchError(RuntimeError):
    """The benchmark could not run (a process failed, a renewal was never served)."""


# ------------------------------------------------------------------------ measurements


@dataclass(frozen=True)
class Renewal:
    """One measured renewal. Times are seconds; `*_at` are epoch seconds."""

    certbot_s: float  # certbot start to exit
    latency_s: float  # certbot exit to the end of the first handshake serving the new leaf
    links_to_served_s: float  # live/<name>/fullchain.pem re-pointed (lstat mtime) to served
    handshakes: int  # handshakes the poller made until the first match (1 = at once)
    handshake_s: float  # duration of that matching handshake
    slowest_handshake_s: float  # the longest handshake of the poll
    hook_s: float | None = None  # the deploy hook's own run time (timer wrapper)
    # daemon only, from certbot's exit, read off its log lines naming the new leaf:
    daemon_began_s: float | None = None  # its deploy started (quiet period over, settled)
    daemon_done_s: float | None = None  # its deploy returned (its own probe saw the leaf)


@dataclass
class VariantResult:
    name: str
    renewals: list[Renewal] = field(default_factory=list)


@dataclass(frozen=True)
class DaemonFigures:
    idle_seconds: float
    idle_cpu_s: float  # utime + stime over the idle window
    idle_wakeups: int  # voluntary context switches of all its threads over the window
    threads: int
    peak_rss_mb: float  # VmHWM at the end
    rss_mb: float  # VmRSS at the end
    ready_s: float  # start to READY=1 (first reconcile done)
    stop_s: float  # SIGTERM to exit

    @property
    def cpu_per_minute_s(self) -> float:
        return self.idle_cpu_s * 60.0 / self.idle_seconds


@dataclass(frozen=True)
class StepCost:
    what: str
    median_s: float
    max_s: float


@dataclass(frozen=True)
class ReloadTrial:
    traffic: str  # which clients connected around `postfix reload`
    slowest_s: float  # the slowest of their handshakes


@dataclass
class Results:
    variants: dict[str, VariantResult] = field(default_factory=dict)
    daemon: DaemonFigures | None = None
    steps: list[StepCost] = field(default_factory=list)
    reload_trials: list[ReloadTrial] = field(default_factory=list)


# --------------------------------------------------------------------------- the poller


def _tls_context() -> ssl.SSLContext:
    # Identification only: which leaf is served. No chain or name check.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def handshake(port: int, context: ssl.SSLContext) -> tuple[str, float]:
    """EHLO, STARTTLS; returns (leaf SHA-256, epoch time the leaf was in hand)."""
    with smtplib.SMTP(
        LOOPBACK, port, local_hostname="bench.test.example", timeout=HANDSHAKE_TIMEOUT
    ) as smtp:
        smtp.ehlo()
        smtp.starttls(context=context)
        sock = smtp.sock
        if not isinstance(sock, ssl.SSLSocket):
            raise BenchError("STARTTLS did not produce a TLS socket")
        der = sock.getpeercert(binary_form=True)
        done = time.time()
        if der is None:
            raise BenchError("no certificate served")
        return hashlib.sha256(der).hexdigest(), done


@dataclass(frozen=True)
class Seen:
    served_at: float  # end of the first matching handshake
    handshakes: int
    handshake_s: float
    slowest_s: float


def poll_until_served(
    port: int, expected: str, *, interval: float, timeout: float = POLL_TIMEOUT
) -> Seen:
    """Handshake every `interval` (one at a time, start to start) until `expected` is served."""
    context = _tls_context()
    start = time.time()
    next_at = start
    count = 0
    slowest = 0.0
    last = ""
    while True:
        now = time.time()
        if now < next_at:
            time.sleep(next_at - now)
        begun = time.time()
        count += 1
        try:
            sha, done = handshake(port, context)
        except (OSError, smtplib.SMTPException, BenchError) as exc:
            sha, done, last = "", time.time(), f"error: {exc}"
        slowest = max(slowest, done - begun)
        if sha == expected:
            return Seen(done, count, done - begun, slowest)
        if sha:
            last = sha
        if done - start > timeout:
            raise BenchError(
                f"127.0.0.1:{port} did not serve {expected[:16]}… within {timeout:.0f} s"
                f" ({count} handshakes; last: {last[:60]})"
            )
        next_at = begun + interval


def leaf_sha256(cert_pem: Path) -> str:
    """SHA-256 of the first certificate in a PEM file (the leaf), as a client would see it."""
    text = cert_pem.read_text()
    end = "-----END CERTIFICATE-----"
    first = text[: text.index(end) + len(end)]
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(first)).hexdigest()


# ------------------------------------------------------------------------ the test bed


def _run(args: Sequence[str], *, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        env=env if env is not None else {"PATH": SYSTEM_PATH, "LANG": "C"},
        timeout=COMMAND_TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise BenchError(
            f"{shlex.join(args)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"
        )
    return proc.stdout


class Bed:
    """pebble, one private Postfix instance, certbot with one lineage, and our tool's argv."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.pebble = Pebble(base / "pebble")
        self.postfix = PostfixInstance(base / "pf", free_port())
        self.certbot = Certbot(base / "certbot", self.pebble)
        self.root_file = base / "pebble-root.pem"
        self.install_dir = base / "tls"
        self.run_dir = base / "run"
        self.copy_dir = base / "copy"  # the baseline hook's files
        self.timer = base / "timer.sh"
        self.baseline_hook = base / "baseline-hook.sh"
        self.tool = [
            sys.executable, "-m", "pftls_hook",
            "--live-dir", str(self.certbot.live_dir),
            "--postfix-config-dir", str(self.postfix.config_dir),
            "--install-dir", str(self.install_dir),
            "--ca-file", str(self.root_file),
            "--lock-file", str(self.run_dir / "deploy.lock"),
            # No TLSA lookup: the machine's resolver is not on loopback.
            "--dane", "off",
        ]  # fmt: skip

    @property
    def lineage(self) -> Path:
        return self.certbot.lineage(CERT_NAME)

    def start(self, stack: contextlib.ExitStack) -> None:
        say("start pebble and a private Postfix instance on 127.0.0.1")
        stack.callback(self.pebble.stop)
        self.pebble.start()
        self.root_file.write_bytes(self.pebble.roots_pem())
        self.postfix.create()
        stack.callback(self.postfix.stop)
        self.postfix.start()
        self.timer.write_text(TIMER_SH)
        self.timer.chmod(0o755)
        self.copy_dir.mkdir(mode=0o700)
        self.baseline_hook.write_text(
            BASELINE_SH.format(
                root=shlex.quote(str(self.root_file)),
                copy_dir=shlex.quote(str(self.copy_dir)),
                config_dir=shlex.quote(str(self.postfix.config_dir)),
            )
        )
        self.baseline_hook.chmod(0o755)
        say(f"certbot certonly -d {self.postfix.hostname} (pebble)")
        self.certbot.certonly([self.postfix.hostname], cert_name=CERT_NAME)

    def tool_env(self) -> dict[str, str]:
        return {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}

    def install(self) -> None:
        """`pftls-hook install`: main.cf points into the install dir from now on."""
        _run([*self.tool, "install"], env=self.tool_env())
        self.wait_served()

    def point_at_copies(self) -> None:
        """Set main.cf up for the baseline hook: separate files in copy_dir, then reload."""
        for name in ("fullchain.pem", "privkey.pem"):
            shutil.copyfile(self.lineage / name, self.copy_dir / name)
        (self.copy_dir / "privkey.pem").chmod(0o600)
        self.postfix.postconf(
            "-e",
            f"smtpd_tls_cert_file = {self.copy_dir / 'fullchain.pem'}",
            f"smtpd_tls_key_file = {self.copy_dir / 'privkey.pem'}",
        )
        self.postfix.reload()
        self.wait_served()

    def wait_served(self) -> None:
        expected = leaf_sha256(self.lineage / "cert.pem")
        wait_for_served_sha256(LOOPBACK, self.postfix.port, expected, timeout=POLL_TIMEOUT)

    def clear_stored_hook(self) -> None:
        """Drop the deploy hook an earlier `--deploy-hook` stored in renewal/<name>.conf."""
        conf = self.certbot.config_dir / "renewal" / f"{CERT_NAME}.conf"
        lines = conf.read_text().splitlines(keepends=True)
        conf.write_text("".join(x for x in lines if not x.lstrip().startswith("renew_hook")))


# ---------------------------------------------------------------------------- variants


def renew_and_measure(
    bed: Bed,
    *,
    hook: str | None,
    timing_file: Path | None,
    interval: float,
    daemon: Daemon | None = None,
) -> Renewal:
    before = leaf_sha256(bed.lineage / "cert.pem")
    start = time.time()
    bed.certbot.renew(force=True, cert_name=CERT_NAME, deploy_hook=hook)
    exited = time.time()
    expected = leaf_sha256(bed.lineage / "cert.pem")
    if expected == before:
        raise BenchError("certbot renew --force-renewal left cert.pem as it was")
    seen = poll_until_served(bed.postfix.port, expected, interval=interval)
    links_at = os.lstat(bed.lineage / "fullchain.pem").st_mtime
    hook_s = None
    if timing_file is not None:
        hook_start, hook_end, rc = timing_file.read_text().splitlines()[-1].split()
        if rc != "0":
            raise BenchError(f"the deploy hook exited {rc}; see {bed.certbot.logs_dir}")
        hook_s = float(hook_end) - float(hook_start)
    began = done = None
    if daemon is not None:
        began_at, done_at = daemon.deploy_times(expected, since=exited)
        began = None if began_at is None else began_at - exited
        done = None if done_at is None else done_at - exited
    return Renewal(
        certbot_s=exited - start,
        latency_s=seen.served_at - exited,
        links_to_served_s=seen.served_at - links_at,
        handshakes=seen.handshakes,
        handshake_s=seen.handshake_s,
        slowest_handshake_s=seen.slowest_s,
        hook_s=hook_s,
        daemon_began_s=began,
        daemon_done_s=done,
    )


def run_renewals(
    bed: Bed,
    name: str,
    count: int,
    *,
    hook: Callable[[Path], str] | None,
    interval: float,
    daemon: Daemon | None = None,
) -> VariantResult:
    """One warm-up renewal (not counted: it may carry a main.cf change), then `count`."""
    result = VariantResult(name)
    timing_file = bed.base / f"{name}-hook-times.txt"
    command = hook(timing_file) if hook is not None else None
    for i in range(count + 1):
        renewal = renew_and_measure(
            bed,
            hook=command,
            timing_file=timing_file if hook is not None else None,
            interval=interval,
            daemon=daemon,
        )
        label = "warm-up" if i == 0 else f"{i}/{count}"
        hook_text = f", hook {renewal.hook_s:.3f} s" if renewal.hook_s is not None else ""
        if renewal.daemon_done_s is not None:
            hook_text = f", daemon deployed {renewal.daemon_done_s:.3f} s after exit"
        say(
            f"  {name} {label}: certbot {renewal.certbot_s:.2f} s{hook_text},"
            f" exit -> served {renewal.latency_s * 1000:.0f} ms"
            f" ({renewal.handshakes} handshake{'s' if renewal.handshakes > 1 else ''})"
        )
        if i > 0:
            result.renewals.append(renewal)
    return result


def timed(bed: Bed, command: Sequence[str]) -> Callable[[Path], str]:
    def build(timing_file: Path) -> str:
        return shlex.join([str(bed.timer), str(timing_file), *command])

    return build


class Daemon:
    """`python -m pftls_hook watch` with a private NOTIFY_SOCKET to learn when it is ready."""

    def __init__(self, bed: Bed, extra: Sequence[str] = ()) -> None:
        self.bed = bed
        self.extra = list(extra)  # more options for `watch`, e.g. -v
        self.proc: subprocess.Popen[bytes] | None = None
        self.reader: threading.Thread | None = None
        self.lines: list[tuple[float, str]] = []  # (arrival time, line), appended by reader
        self.log_file = bed.base / "daemon.log"
        self.notify_path = bed.base / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.ready_s = 0.0

    def start(self) -> None:
        self.notify.bind(str(self.notify_path))
        env = {**self.bed.tool_env(), "NOTIFY_SOCKET": str(self.notify_path)}
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [*self.bed.tool, *self.extra, "watch"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C on the terminal is ours to pass on
        )
        self.reader = threading.Thread(target=self._copy_log, args=(self.proc,), daemon=True)
        self.reader.start()
        deadline = started + DAEMON_READY_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"watch exited {self.proc.returncode}:\n{self.log_tail()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"watch sent no READY=1 within {DAEMON_READY_TIMEOUT:.0f} s")
            self.notify.settimeout(min(remaining, 0.5))
            try:
                message = self.notify.recv(4096).decode(errors="replace")
            except TimeoutError:
                continue
            if "READY=1" in message.splitlines():
                self.ready_s = time.monotonic() - started
                return

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError("the daemon is not running")
        return self.proc.pid

    def stop(self) -> float:
        """SIGTERM, wait (bounded), SIGKILL if it must; returns seconds to exit."""
        proc, self.proc = self.proc, None
        self.notify.close()
        if proc is None or proc.poll() is not None:
            return 0.0
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=DAEMON_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=DAEMON_STOP_TIMEOUT)
            say(f"watch did not stop within {DAEMON_STOP_TIMEOUT:.0f} s of SIGTERM: killed")
        stopped = time.monotonic() - started
        if self.reader is not None:
            self.reader.join(timeout=DAEMON_STOP_TIMEOUT)
        return stopped

    def _copy_log(self, proc: subprocess.Popen[bytes]) -> None:
        """The daemon's output to daemon.log, each line stamped with its arrival time."""
        if proc.stdout is None:
            return
        with self.log_file.open("a") as log:
            for raw in proc.stdout:
                at, line = time.time(), raw.decode(errors="replace")
                self.lines.append((at, line.rstrip("\n")))
                log.write(f"{at:.3f} {line}")
                log.flush()

    def deploy_times(
        self, leaf_sha256: str, *, since: float, timeout: float = DAEMON_DEPLOY_WAIT
    ) -> tuple[float | None, float | None]:
        """When the daemon's log first named this leaf (its deploy began, after the quiet
        period and the settled check), and when it logged it `deployed`: arrival times of
        its stderr lines, keyed on the 16-hex-digit fingerprint prefix it prints."""
        prefix = leaf_sha256[:16]
        deadline = time.monotonic() + timeout
        while True:
            mine = [(at, text) for at, text in list(self.lines) if at >= since and prefix in text]
            done = [at for at, text in mine if "deployed" in text]
            if done or time.monotonic() >= deadline:
                return (mine[0][0] if mine else None), (done[0] if done else None)
            time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the ")": state is field 3 of proc(5), so utime (14) and stime (15) are 11, 12.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def voluntary_switches(pid: int) -> tuple[int, int]:
    """(sum of voluntary context switches over all threads, number of threads)."""
    total = 0
    tasks = list(Path(f"/proc/{pid}/task").iterdir())
    for task in tasks:
        with contextlib.suppress(OSError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total, len(tasks)


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {key}")


def daemon_variant(
    bed: Bed,
    count: int,
    idle_seconds: float,
    interval: float,
    stack: contextlib.ExitStack,
    *,
    extra: Sequence[str] = (),
) -> tuple[VariantResult, DaemonFigures]:
    bed.clear_stored_hook()
    daemon = Daemon(bed, extra)
    stack.callback(daemon.stop)
    say("start `pftls-hook watch`, wait for READY=1")
    daemon.start()
    result = run_renewals(bed, "daemon", count, hook=None, interval=interval, daemon=daemon)
    time.sleep(DAEMON_SETTLE)
    pid = daemon.pid
    say(f"  daemon idle for {idle_seconds:.0f} s (CPU time from /proc/{pid}/stat)")
    cpu0 = cpu_seconds(pid)
    wake0, _ = voluntary_switches(pid)
    time.sleep(idle_seconds)
    cpu1 = cpu_seconds(pid)
    wake1, threads = voluntary_switches(pid)
    hwm, rss = status_kb(pid, "VmHWM"), status_kb(pid, "VmRSS")
    stop_s = daemon.stop()
    figures = DaemonFigures(
        idle_seconds=idle_seconds,
        idle_cpu_s=cpu1 - cpu0,
        idle_wakeups=wake1 - wake0,
        threads=threads,
        peak_rss_mb=hwm / 1024,
        rss_mb=rss / 1024,
        ready_s=daemon.ready_s,
        stop_s=stop_s,
    )
    return result, figures


class _Traffic:
    """A client doing STARTTLS handshakes back to back, recording (start, duration)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.log: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        context = _tls_context()
        while not self.stop.is_set():
            begun = time.time()
            with contextlib.suppress(OSError, smtplib.SMTPException, BenchError):
                handshake(self.port, context)
            self.log.append((begun, time.time() - begun))

    def slowest_since(self, since: float) -> float:
        return max((d for b, d in list(self.log) if b >= since - RELOAD_TRIAL_GAP / 2), default=0)


def reload_trials(bed: Bed, trials: int) -> list[ReloadTrial]:
    """`postfix reload` with one client right after it returns (what a deploy hook's probe
    does), and with a client connecting back to back across it (a busy server; the daemon
    variant's poller): the slowest handshake in the 1.5 s after each reload."""
    out = []
    context = _tls_context()
    for _ in range(trials):
        bed.postfix.reload()
        begun = time.time()
        handshake(bed.postfix.port, context)
        out.append(ReloadTrial("one client after the reload", time.time() - begun))
        time.sleep(RELOAD_TRIAL_GAP)
    traffic = _Traffic(bed.postfix.port)
    traffic.thread.start()
    try:
        for _ in range(trials):
            time.sleep(RELOAD_TRIAL_GAP)
            reloaded = time.time()
            bed.postfix.reload()
            time.sleep(RELOAD_TRIAL_WATCH)
            out.append(
                ReloadTrial("back-to-back client across it", traffic.slowest_since(reloaded))
            )
    finally:
        traffic.stop.set()
        traffic.thread.join(timeout=2 * HANDSHAKE_TIMEOUT)
    return out


def step_costs(bed: Bed) -> list[StepCost]:
    """What the pieces of a deploy cost on this machine (median of a few runs each)."""
    config = str(bed.postfix.config_dir)
    env = bed.tool_env()
    py = sys.executable
    openssl = [
        "openssl", "verify", "-CAfile", str(bed.root_file),
        "-untrusted", str(bed.lineage / "chain.pem"),
        "-purpose", "sslserver", str(bed.lineage / "fullchain.pem"),
    ]  # fmt: skip
    commands: list[tuple[str, list[str]]] = [
        ("python -c pass", [py, "-c", "pass"]),
        ("python -c 'import cryptography.x509'", [py, "-c", "import cryptography.x509"]),
        ("python -m pftls_hook --help", [py, "-m", "pftls_hook", "--help"]),
        ("postconf -c DIR -n", ["postconf", "-c", config, "-n"]),
        ("postfix -c DIR status", ["postfix", "-c", config, "status"]),
        ("postfix -c DIR check", ["postfix", "-c", config, "check"]),
        ("postfix -c DIR reload", ["postfix", "-c", config, "reload"]),
        ("openssl verify -purpose sslserver (baseline)", openssl),
    ]
    costs = []
    for what, argv in commands:
        runs = []
        for _ in range(STEP_REPEATS):
            started = time.monotonic()
            _run(argv, env=env)
            runs.append(time.monotonic() - started)
        costs.append(StepCost(what, statistics.median(runs), max(runs)))
    # Reloads are asynchronous; leave Postfix settled.
    bed.wait_served()
    return costs


# ----------------------------------------------------------------------------- report


def _first_line(args: Sequence[str]) -> str:
    try:
        out = subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
            env={"PATH": SYSTEM_PATH, "LANG": "C"},
            stdin=subprocess.DEVNULL,
        )
    except OSError as exc:
        return f"unknown ({exc.strerror})"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def machine(load_at_start: str) -> list[tuple[str, str]]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    commit = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(REPO), "status", "--porcelain", "--", "pftls_hook"])
    if dirty not in ("", "unknown"):
        commit += " (pftls_hook/ with uncommitted changes)"
    return [
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("CPU", cpu),
        ("cores", str(os.cpu_count())),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("OS", _os_name()),
        ("Python", platform.python_version()),
        ("Postfix", _first_line(["postconf", "-d", "-h", "mail_version"])),
        ("certbot", _first_line([str(CERTBOT), "--version"]).removeprefix("certbot ")),
        ("OpenSSL (baseline)", _first_line(["openssl", "version"])),
        ("cryptography", version("cryptography")),
        ("watchdog", version("watchdog")),
        ("pftls-hook commit", commit),
        ("load average (1, 5, 15 min) at the start", load_at_start),
        ("load average (1, 5, 15 min) at the end", _loadavg()),
    ]


def _loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return "unknown"


def ms(value: float) -> str:
    return f"{value * 1000:.0f} ms"


def _med(values: Sequence[float]) -> float:
    return statistics.median(values)


def _ratio(ours: float, base: float) -> str:
    return f"{ours / base:.2f}x" if base > 0 else "n/a"


def _stat(values: Sequence[float]) -> str:
    return f"{ms(_med(values))} / {ms(max(values))}" if values else "-"


def _latency(r: Renewal) -> float:
    return r.latency_s


def _links(r: Renewal) -> float:
    return r.links_to_served_s


def _hook(r: Renewal) -> float:
    return r.hook_s if r.hook_s is not None else 0.0


def _certbot(r: Renewal) -> float:
    return r.certbot_s


def render(
    results: Results, info: list[tuple[str, str]], args: argparse.Namespace, elapsed: float
) -> str:
    quick = " (quick mode)" if args.quick else ""
    out = [
        "# Benchmarks",
        "",
        f"Written by `bench/latency.py`{quick}: {args.renewals} measured renewals per variant"
        f" (after one warm-up each), poll interval {args.poll_interval * 1000:g} ms,"
        f" daemon idle window {args.idle_seconds:g} s; the run took {elapsed:.0f} s."
        " Regenerate with `sudo .venv/bin/python bench/latency.py`.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in info),
        "",
        *_method(args.poll_interval),
        *_latency_section(results),
        *_daemon_section(results),
        "## Targets",
        "",
        "| target | figure | met |",
        "|---|---|---|",
        *(
            f"| {target} | {figure} | {'yes' if met else '**no**'} |"
            for target, figure, met in targets(results)
        ),
        "",
        *_reload_section(results.reload_trials),
        *_steps_section(results.steps),
    ]
    return "\n".join(out).rstrip() + "\n"


def _method(interval: float) -> list[str]:
    return [
        "## How it is measured",
        "",
        "pebble (local ACME server), a private Postfix instance on 127.0.0.1 and the venv's"
        " real certbot; one lineage, `certbot renew --force-renewal` each time. When certbot"
        " exits, a poller starts STARTTLS handshakes (EHLO, STARTTLS, read the leaf), one at a"
        f" time, one every {interval * 1000:g} ms or back to back when a handshake"
        " takes longer; **exit → served** is from certbot's exit to the end of the first"
        " handshake whose leaf SHA-256 is that of the new `cert.pem`. Its resolution is one"
        " handshake (the 'matching handshake took' column). The same poller serves every variant.",
        "",
        "- **hook**: `certbot renew --deploy-hook '<timer> python -m pftls_hook … deploy-hook'`."
        " certbot runs the hook before it exits, and the hook returns only once its own probe"
        " saw Postfix serve the new certificate, so the first handshake already matches.",
        "- **baseline**: the common shell hook under the same timer: `openssl verify -CAfile"
        " <pebble root> -untrusted chain.pem -purpose sslserver fullchain.pem && cp"
        " fullchain.pem privkey.pem <dir>/ && postfix -c <dir> reload` (main.cf pointed at"
        " the copies beforehand).",
        "- **daemon**: `python -m pftls_hook … watch` running (default 0.5 s quiet period),"
        " certbot with no hook. Here the poller runs while the daemon deploys. smtpd loads"
        " its certificate when a process starts, and under the poller's load (a connection"
        " every few ms, 100 per smtpd process) a fresh smtpd starts every fraction of a"
        " second: so the poller may see the new file served right after the daemon switches"
        " it, before the reload that makes every new connection use it.",
        "- **hook run time**: the timer wrapper (`date +%s.%N` before and after the hook"
        " command, both hooks alike). **certbot**: certbot's start to exit, hook included."
        " **links → served**: from the mtime of the re-pointed `live/<name>/fullchain.pem`"
        " link (the last link certbot writes) to the first matching handshake; for the hooks"
        " an upper bound, as the poller only starts when certbot exits.",
        "",
    ]


def _latency_section(results: Results) -> list[str]:
    out = [
        "## Renewal to served",
        "",
        "| variant | n | exit → served, median / max | hook run time, median / max"
        " | links → served, median / max | certbot, median | handshakes to match, max"
        " | matching handshake took, median | renewals with a handshake ≥ 0.5 s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in VARIANTS:
        variant = results.variants.get(name)
        if variant is None or not variant.renewals:
            continue
        rs = variant.renewals
        hooks = [r.hook_s for r in rs if r.hook_s is not None]
        out.append(
            f"| {name} | {len(rs)} | {_stat([r.latency_s for r in rs])}"
            f" | {_stat(hooks)} | {_stat([r.links_to_served_s for r in rs])}"
            f" | {_med([r.certbot_s for r in rs]):.2f} s | {max(r.handshakes for r in rs)}"
            f" | {ms(_med([r.handshake_s for r in rs]))}"
            f" | {sum(r.slowest_handshake_s >= STALL_S for r in rs)} |"
        )
    out.append("")
    ours = results.variants.get("hook")
    base = results.variants.get("baseline")
    if not (ours and base and ours.renewals and base.renewals):
        return out
    out += [
        "### Deploy hook ÷ shell baseline",
        "",
        "| measure | pftls-hook | baseline | ours ÷ baseline |",
        "|---|---|---|---|",
    ]
    rows: tuple[tuple[str, Callable[[Renewal], float], Callable[[Sequence[float]], float]], ...]
    rows = (
        ("exit → served, median", _latency, _med),
        ("exit → served, max", _latency, max),
        ("hook run time, median", _hook, _med),
        ("hook run time, max", _hook, max),
        ("links → served, median", _links, _med),
        ("certbot start to exit, median", _certbot, _med),
    )
    for label, pick, agg in rows:
        a = agg([pick(r) for r in ours.renewals])
        b = agg([pick(r) for r in base.renewals])
        out.append(f"| {label} | {ms(a)} | {ms(b)} | {_ratio(a, b)} |")
    out.append("")
    return out


def _daemon_section(results: Results) -> list[str]:
    d = results.daemon
    if d is None:
        return []
    variant = results.variants.get("daemon")
    rs = variant.renewals if variant else []
    began = [r.daemon_began_s for r in rs if r.daemon_began_s is not None]
    done = [r.daemon_done_s for r in rs if r.daemon_done_s is not None]
    runs = [
        r.daemon_done_s - r.daemon_began_s
        for r in rs
        if r.daemon_done_s is not None and r.daemon_began_s is not None
    ]
    return [
        "## The daemon",
        "",
        "| | |",
        "|---|---|",
        f"| certbot exit → its deploy begins (first log line naming the new leaf),"
        f" median / max | {_stat(began)} |",
        f"| certbot exit → its deploy returns (its own probe saw the new leaf),"
        f" median / max | {_stat(done)} |",
        f"| its deploy's run time, median / max | {_stat(runs)} |",
        f"| CPU time over {d.idle_seconds:g} s idle (utime+stime) | {d.idle_cpu_s:.3f} s"
        f" = {d.cpu_per_minute_s:.3f} s per minute |",
        f"| wake-ups over the idle window (voluntary context switches, {d.threads}"
        f" threads) | {d.idle_wakeups} |",
        f"| peak RSS (VmHWM), after the renewals | {d.peak_rss_mb:.1f} MB |",
        f"| RSS at the end (VmRSS) | {d.rss_mb:.1f} MB |",
        f"| start to READY=1 (first reconcile done) | {d.ready_s:.2f} s |",
        f"| SIGTERM to exit | {ms(d.stop_s)} |",
        "",
    ]


def _reload_section(trials: list[ReloadTrial]) -> list[str]:
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
        " wait about a second, and are then served the old certificate. Only connections"
        " that race the reload are hit, so a busy server sees it whichever tool reloads."
        " In this benchmark the daemon variant is exposed (the poller runs across the"
        " daemon's reload, and the daemon's own probe follows it) and the hook variants are"
        " not (they reload before certbot exits, when the poller has not started): that is"
        " the column 'renewals with a handshake ≥ 0.5 s' and the maximum of the daemon's"
        " deploy run time. The slowest handshake in the 1.5 s after each `postfix reload`:",
        "",
        "| clients | reloads | slowest handshake, median / max | reloads with one ≥ 0.5 s |",
        "|---|---|---|---|",
    ]
    for traffic in dict.fromkeys(t.traffic for t in trials):
        mine = [t.slowest_s for t in trials if t.traffic == traffic]
        out.append(
            f"| {traffic} | {len(mine)} | {_stat(mine)} | {sum(x >= STALL_S for x in mine)} |"
        )
    out.append("")
    return out


def _steps_section(steps: list[StepCost]) -> list[str]:
    if not steps:
        return []
    return [
        "## What the pieces cost here",
        "",
        f"Wall time of single commands, median / max of {STEP_REPEATS} runs. A deploy-hook"
        " run is Python start-up and imports (`python -m pftls_hook --help`), the postconf"
        " reads, `postfix status`, `postfix check`, `postfix reload` and two STARTTLS"
        " probes; the shell baseline is `openssl verify`, `cp` and `postfix reload`.",
        "",
        "| command | median | max |",
        "|---|---|---|",
        *(f"| `{s.what}` | {ms(s.median_s)} | {ms(s.max_s)} |" for s in steps),
        "",
    ]


def targets(results: Results) -> list[tuple[str, str, bool]]:
    rows: list[tuple[str, str, bool]] = []
    daemon = results.variants.get("daemon")
    if daemon and daemon.renewals:
        median = _med([r.latency_s for r in daemon.renewals])
        rows.append(
            (
                f"daemon: exit → served median ≤ {TARGET_DAEMON_MEDIAN_S:g} s",
                ms(median),
                median <= TARGET_DAEMON_MEDIAN_S,
            )
        )
    ours = results.variants.get("hook")
    base = results.variants.get("baseline")
    if ours and base and ours.renewals and base.renewals:
        a = _med([r.latency_s for r in ours.renewals])
        b = _med([r.latency_s for r in base.renewals])
        rows.append(
            (
                f"deploy hook: exit → served ≤ {TARGET_HOOK_RATIO:g}x the baseline's (medians)",
                f"{ms(a)} vs {ms(b)}: {_ratio(a, b)}",
                a <= TARGET_HOOK_RATIO * b,
            )
        )
        a = _med([_hook(r) for r in ours.renewals])
        b = _med([_hook(r) for r in base.renewals])
        rows.append(
            (
                f"deploy hook: hook run time ≤ {TARGET_HOOK_RATIO:g}x the baseline's"
                " (medians; same reading applied to the hooks' own time)",
                f"{ms(a)} vs {ms(b)}: {_ratio(a, b)}",
                a <= TARGET_HOOK_RATIO * b,
            )
        )
    d = results.daemon
    if d is not None:
        rows.append(
            (
                f"daemon idle CPU ≤ {TARGET_IDLE_CPU_PER_MIN_S:g} s per minute",
                f"{d.cpu_per_minute_s:.3f} s",
                d.cpu_per_minute_s <= TARGET_IDLE_CPU_PER_MIN_S,
            )
        )
        rows.append(
            (
                f"daemon peak RSS ≤ {TARGET_RSS_MB:g} MB",
                f"{d.peak_rss_mb:.1f} MB",
                d.peak_rss_mb <= TARGET_RSS_MB,
            )
        )
    return rows


# ------------------------------------------------------------------------------- main


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the ExitStack: everything is stopped


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Renewal-to-served latency of pftls-hook (deploy hook, watch daemon)"
        " against the common shell hook, on loopback with pebble, certbot and a private"
        " Postfix instance. Run as root."
    )
    parser.add_argument("--renewals", type=int, default=None, help="per variant (default 10)")
    parser.add_argument(
        "--idle-seconds", type=float, default=None, help="daemon idle window (default 60)"
    )
    parser.add_argument("--quick", action="store_true", help="3 renewals, 10 s idle")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of {','.join(VARIANTS)}",
    )
    parser.add_argument(
        "--watch-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra option for `watch` (repeatable), e.g. --watch-arg=-v",
    )
    parser.add_argument("--poll-interval", type=float, default=0.005, metavar="SECONDS")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, metavar="FILE")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.renewals is None:
        args.renewals = 3 if args.quick else 10
    if args.idle_seconds is None:
        args.idle_seconds = 10.0 if args.quick else 60.0
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s): {', '.join(unknown)}")
    args.variants = chosen
    if args.renewals < 1 or args.idle_seconds <= 0 or not 0 < args.poll_interval <= 1:
        parser.error("--renewals >= 1, --idle-seconds > 0, 0 < --poll-interval <= 1")
    return args


@contextlib.contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    # Short, and traversable (0711) by Postfix's unprivileged daemons; see tests/conftest.py.
    base = Path(tempfile.mkdtemp(prefix="pftls-bench-"))
    base.chmod(0o711)
    try:
        yield base
    finally:
        if keep:
            say(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def check_watch_available() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pftls_hook", "watch", "--help"],
        capture_output=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise BenchError(
            "`python -m pftls_hook watch` is not available yet: run with --variants hook,baseline"
        )


def bench(args: argparse.Namespace, base: Path, results: Results) -> None:
    bed = Bed(base)
    interval: float = args.poll_interval
    with contextlib.ExitStack() as stack:
        bed.start(stack)
        if "hook" in args.variants or "daemon" in args.variants:
            say("pftls-hook install (main.cf now points into the install dir)")
            bed.install()
        if "hook" in args.variants:
            say(f"variant hook: {args.renewals} renewals with --deploy-hook pftls-hook")
            command = [*bed.tool, "deploy-hook"]
            results.variants["hook"] = run_renewals(
                bed, "hook", args.renewals, hook=timed(bed, command), interval=interval
            )
        if "daemon" in args.variants:
            say(f"variant daemon: {args.renewals} renewals, no hook, `watch` running")
            variant, figures = daemon_variant(
                bed, args.renewals, args.idle_seconds, interval, stack, extra=args.watch_arg
            )
            results.variants["daemon"] = variant
            results.daemon = figures
        if "baseline" in args.variants:
            say("baseline: main.cf -> copied fullchain.pem/privkey.pem, reload")
            bed.point_at_copies()
            say(f"variant baseline: {args.renewals} renewals with the shell hook")
            results.variants["baseline"] = run_renewals(
                bed,
                "baseline",
                args.renewals,
                hook=timed(bed, [str(bed.baseline_hook)]),
                interval=interval,
            )
        trials = 4 if args.quick else 10
        say(f"postfix reload with and without client traffic ({trials} reloads each)")
        results.reload_trials = reload_trials(bed, trials)
        say("cost of the pieces (single commands)")
        results.steps = step_costs(bed)
        say("stopping everything")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        say("bench/latency.py must run as root (certbot hooks and Postfix run as root)")
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    load_at_start = _loadavg()
    results = Results()
    try:
        if "daemon" in args.variants:
            check_watch_available()
        with workspace(args.keep) as base:
            bench(args, base, results)
    except (BenchError, CertbotError, PostfixError, TimeoutError) as exc:
        say(f"benchmark failed: {exc}")
        return 1
    report = render(results, machine(load_at_start), args, time.monotonic() - started)
    print(report)
    if not args.no_write:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report + "\n")
        say(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
