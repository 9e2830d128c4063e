"""One function per measure, each taking what it measures and returning plain data.

Nothing here knows the order of a run or renders anything (bench/run.py, bench/report.py).
Every measure is taken from outside the tool: wall time of a whole process, the commands a
process started as `strace` saw them, what a STARTTLS client is served, /proc figures.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import os
import re
import resource
import shutil
import smtplib
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tests.support.net import LOOPBACK
from tests.support.postfix import PostfixInstance, client_context, served_sha256

from .results import AFTER_RELOAD, CoreModule, ReloadTrial, StepCost

# Every process runs in the repository this bench belongs to: `python -m pftls_hook` puts the
# working directory first on sys.path, so the tool measured is this tree's, whichever
# tree the venv's editable install points at.
REPO = Path(__file__).resolve().parent.parent
COMMAND_TIMEOUT = 120.0
HANDSHAKE_TIMEOUT = 5.0


class BenchError(RuntimeError):
    """A measure could not be taken (a process failed, a certificate was never served)."""


class StraceMissing(BenchError):
    """strace is not installed: the commands a process starts cannot be seen."""


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_checked(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    timeout: float = COMMAND_TIMEOUT,
    output: IO[bytes] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `argv`; it must exit 0. Its output is read from pipes to their end, as certbot
    reads a hook's (a child left running with them is waited for too); with `output` (a
    file), the output goes there, and the run ends when `argv` itself exits."""
    where: dict[str, Any] = (
        {"stdout": output, "stderr": subprocess.STDOUT}
        if output is not None
        else {"capture_output": True, "text": True}
    )
    proc = subprocess.run(
        list(argv),
        env=dict(env),
        cwd=REPO,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
        **where,
    )
    if proc.returncode != 0:
        if output is not None:
            output.seek(0)
            text = output.read().decode(errors="replace")
        else:
            text = proc.stderr or proc.stdout
        raise BenchError(f"{' '.join(argv)} exited {proc.returncode}:\n{_tail(text)}")
    return proc


def process_seconds(argv: Sequence[str], env: Mapping[str, str]) -> float:
    """Wall time of one whole process, start (fork) to exit; it must exit 0."""
    return process_times(argv, env)[0]


def process_times(argv: Sequence[str], env: Mapping[str, str]) -> tuple[float, float]:
    """(wall time, CPU time) of one whole process; it must exit 0. The CPU time is user +
    system of the process and of every program it waited for (RUSAGE_CHILDREN grows by
    exactly those when it is reaped), not of what it only signals: Postfix's master."""
    cpu_before = _children_cpu()
    started = time.perf_counter()
    run_checked(argv, env)
    return time.perf_counter() - started, _children_cpu() - cpu_before


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------ commands it runs

_EXECVE = re.compile(r'^execve\("((?:[^"\\]|\\.)*)", \[(.*)\], .*\)\s+=\s+0$')
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_CHILD = re.compile(r"^(clone3?|v?fork)\(.*\)\s+=\s+(\d+)$")


def commands_started(argv: Sequence[str], env: Mapping[str, str]) -> list[list[str]]:
    """The argv of every process that a run of `argv` started itself (its direct children,
    from any of its threads), in order, as `strace -f` sees them: the process cannot leave
    one out. A child that never executed a program (a shell's subshell) is not a command;
    the programs those children start in turn (postfix-script's own postconf calls) are
    theirs, not the hook's. The run must exit 0."""
    strace = shutil.which("strace", path="/usr/bin:/bin")
    if strace is None:
        raise StraceMissing("strace is not installed (scripts/setup.sh installs it)")
    with tempfile.TemporaryDirectory(prefix="pftls-bench-strace-") as tmp:
        out = Path(tmp) / "trace"
        # -ff: one file per process, so no line is split by another process's.
        calls = "trace=execve,clone,clone3,fork,vfork"
        run_checked(
            [strace, "-ff", "-qq", "-ttt", "-s", "4096", "-e", calls, "-o", str(out), *argv],
            env,
        )
        traces = {int(p.name.rsplit(".", 1)[1]): p.read_text() for p in Path(tmp).iterdir()}
    return _direct_children(traces)


def _direct_children(traces: Mapping[int, str]) -> list[list[str]]:
    """From one `strace -ttt` file per task: the first program each direct child of the
    traced process executed (its threads count as the process), in the order of creation."""
    spawned: dict[int, tuple[int, bool, float]] = {}  # task -> (creator, a thread?, when)
    for task, text in traces.items():
        for stamp, call in _lines(text):
            match = _CHILD.match(call)
            if match:
                spawned[int(match.group(2))] = (task, "CLONE_THREAD" in call, stamp)
    roots = [task for task in traces if task not in spawned]
    if len(roots) != 1:
        raise BenchError(f"cannot tell the traced process among {sorted(roots)}")
    process = {roots[0]}  # the traced process's tasks: itself and its threads
    while True:
        threads = {
            t for t, (creator, thread, _) in spawned.items() if thread and creator in process
        }
        if threads <= process:
            break
        process |= threads
    children = sorted(
        (t for t, (creator, thread, _) in spawned.items() if creator in process and not thread),
        key=lambda t: spawned[t][2],
    )
    commands = []
    for task in children:
        for _, call in _lines(traces.get(task, "")):
            match = _EXECVE.match(call)
            if match:
                commands.append(_STRING.findall(match.group(2)) or [match.group(1)])
                break
    return commands


def _lines(text: str) -> list[tuple[float, str]]:
    """(epoch seconds, the call) of each line `strace -ttt` wrote."""
    out = []
    for line in text.splitlines():
        stamp, _, call = line.partition(" ")
        try:
            out.append((float(stamp), call))
        except ValueError:
            continue
    return out


# ------------------------------------------------------------------- what is served


def leaf_sha256(cert_pem: Path) -> str:
    """SHA-256 of the first certificate of a PEM file, as a client is shown it (DER)."""
    text = cert_pem.read_text()
    end = "-----END CERTIFICATE-----"
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(text[: text.index(end) + len(end)])).hexdigest()


@dataclass(frozen=True)
class Seen:
    served_at: float  # epoch seconds: the end of the first handshake showing `expected`
    handshakes: int  # handshakes begun up to and including that one
    matching_handshake_s: float
    slowest_handshake_s: float  # of every handshake of the poll, the late ones included


@dataclass(frozen=True)
class _Handshake:
    begun: float
    done: float
    sha: str  # "" when it failed
    error: str


def poll_until_served(
    port: int,
    expected: str,
    *,
    interval: float,
    timeout: float,
    context: ssl.SSLContext,
    parallel: int = 4,
) -> Seen:
    """A new STARTTLS handshake on 127.0.0.1:port every `interval`, up to `parallel` at
    once, until one shows the leaf with SHA-256 `expected`. Several at once, so that one
    handshake held up by Postfix (the reload stall in docs/benchmarks.md) does not hide
    what the connections after it are served. The caller builds `context`
    (client_context()) beforehand: that takes tens of milliseconds, which must not delay
    the first handshake."""
    results: list[_Handshake] = []
    lock = threading.Lock()
    found = threading.Event()
    slots = threading.Semaphore(parallel)

    def handshake() -> None:
        begun = time.time()
        try:
            sha, error = (
                served_sha256(LOOPBACK, port, timeout=HANDSHAKE_TIMEOUT, context=context),
                "",
            )
        except (OSError, smtplib.SMTPException, RuntimeError) as exc:
            sha, error = "", str(exc)
        with lock:
            results.append(_Handshake(begun, time.time(), sha, error))
        if sha == expected:
            found.set()
        slots.release()

    start = time.time()
    threads = []
    while not found.is_set():
        if time.time() - start > timeout:
            with lock:
                last = results[-1] if results else None
            seen = "nothing" if last is None else last.sha[:16] or last.error[:80]
            raise BenchError(
                f"{LOOPBACK}:{port} did not serve {expected[:16]}… within {timeout:.0f} s"
                f" ({len(results)} handshakes; last: {seen})"
            )
        if slots.acquire(timeout=interval):
            thread = threading.Thread(target=handshake, daemon=True)
            thread.start()
            threads.append(thread)
            found.wait(interval)
    for thread in threads:  # the late ones too: a stalled handshake shows in `slowest`
        thread.join(timeout=2 * HANDSHAKE_TIMEOUT)
    with lock:
        done = list(results)
    first = min((h for h in done if h.sha == expected), key=lambda h: h.done)
    return Seen(
        served_at=first.done,
        handshakes=sum(h.begun <= first.begun for h in done),
        matching_handshake_s=first.done - first.begun,
        slowest_handshake_s=max(h.done - h.begun for h in done),
    )


# ---------------------------------------------------------------------- the daemon


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the ")", proc(5)'s field 3 (state) comes first: utime (14) and stime (15) are 11, 12.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu_seconds(pid: int, seconds: float) -> float:
    """CPU time a process uses while left alone for `seconds`."""
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - before


def status_kb(pid: int, key: str) -> int:
    """A `<key>: N kB` line of /proc/<pid>/status (VmHWM, VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {key}")


# ------------------------------------------------------------ Postfix around a reload


class _Traffic:
    """A client doing STARTTLS handshakes back to back, keeping (start, duration)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.log: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        context = client_context()
        while not self.stop.is_set():
            begun = time.time()
            # A failed handshake still took its time, which is what is kept.
            with contextlib.suppress(OSError, smtplib.SMTPException, RuntimeError):
                served_sha256(LOOPBACK, self.port, timeout=HANDSHAKE_TIMEOUT, context=context)
            self.log.append((begun, time.time() - begun))

    def slowest_between(self, start: float, end: float) -> float:
        return max((d for b, d in list(self.log) if start <= b <= end), default=0.0)


def reload_trials(
    postfix: PostfixInstance, trials: int, *, gap: float, watch: float
) -> list[ReloadTrial]:
    """`postfix reload` with one client right after it returns (what a hook's probe does),
    then with a client connecting back to back across it (a busy server): the slowest
    handshake in the `watch` seconds after each reload."""
    out = []
    context = client_context()
    for _ in range(trials):
        postfix.reload()
        begun = time.time()
        served_sha256(LOOPBACK, postfix.port, timeout=HANDSHAKE_TIMEOUT, context=context)
        out.append(ReloadTrial(AFTER_RELOAD, time.time() - begun))
        time.sleep(gap)
    traffic = _Traffic(postfix.port)
    traffic.thread.start()
    try:
        for _ in range(trials):
            time.sleep(gap)
            reloaded = time.time()
            postfix.reload()
            time.sleep(watch)
            slowest = traffic.slowest_between(reloaded - gap / 2, reloaded + watch)
            out.append(ReloadTrial("back-to-back client across it", slowest))
    finally:
        traffic.stop.set()
        traffic.thread.join(timeout=2 * HANDSHAKE_TIMEOUT)
    return out


def step_costs(
    commands: Sequence[tuple[str, Sequence[str]]], env: Mapping[str, str], repeats: int
) -> list[StepCost]:
    """Wall time of single commands, `repeats` runs each, each to its own exit."""
    return [
        StepCost(what, [own_seconds(argv, env) for _ in range(repeats)]) for what, argv in commands
    ]


def own_seconds(argv: Sequence[str], env: Mapping[str, str]) -> float:
    """Wall time of one process from the fork to its own exit; it must exit 0. Its output
    goes to a file, not a pipe: a child it leaves running with that output (`postfix
    reload` leaves `postsuper &`) is not waited for, as pftls-hook's runner does not."""
    with tempfile.TemporaryFile() as output:
        started = time.perf_counter()
        run_checked(argv, env, output=output)
        return time.perf_counter() - started


__all__ = [
    "REPO",
    "BenchError",
    "Seen",
    "StraceMissing",
    "commands_started",
    "cpu_seconds",
    "idle_cpu_seconds",
    "leaf_sha256",
    "poll_until_served",
    "process_seconds",
    "process_times",
    "reload_trials",
    "run_checked",
    "status_kb",
    "step_costs",
]


def core_size(package: Path, modules: Sequence[str]) -> list[CoreModule]:
    """Each module's lines: all of them, and the code alone (no docstring, comment or blank
    line), as the tree being measured has them."""
    sizes = []
    for name in modules:
        source = (package / f"{name}.py").read_text()
        lines = source.splitlines()
        docs: set[int] = set()
        for node in ast.walk(ast.parse(source)):
            kinds = ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
            first = node.body[0] if isinstance(node, kinds) and node.body else None
            value = first.value if isinstance(first, ast.Expr) else None
            if (
                first is not None
                and isinstance(value, ast.Constant)
                and isinstance(value.value, str)
            ):
                docs.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
        code = [
            text
            for number, text in enumerate(lines, 1)
            if number not in docs and text.strip() and not text.strip().startswith("#")
        ]
        sizes.append(CoreModule(name, len(lines), len(code)))
    return sizes
