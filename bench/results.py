"""What one benchmark run measured: raw samples only, as dataclasses that round-trip JSON.

bench/run.py fills a `Run` and saves it; bench/report.py turns a `Run` into the page. No
figure derived from samples (a median, a ratio, a target met) is stored here: the renderer
computes every published figure from these samples, so the page can be recomputed from
the saved file (`python -m bench.report FILE`).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The paired variants: each round runs every variant once, in a shuffled order.
SWITCH = "switch"  # pftls-hook deploy-hook right after a renewal: installs the new version
BASELINE_SWITCH = "baseline (switch)"  # the shell hook, next to SWITCH
NOOP = "no-op"  # pftls-hook deploy-hook again: already installed and served
BASELINE_NOOP = "baseline (no-op)"  # the shell hook, next to NOOP
NOOP_CROWD = "no-op, crowded live/"  # NOOP with the unrelated lineages moved into live/
NOOP_EMPTY = "no-op, live/ without them"  # NOOP next to NOOP_CROWD, the same lineages out
NOOP_BUNDLE = "no-op, system CA bundle"  # NOOP with --ca-file the system bundle + the roots
NOOP_ROOTS = "no-op, test roots alone"  # NOOP next to NOOP_BUNDLE, --ca-file the roots

# Single commands of the steps stage, and the reload trial, that the switch's floor sums.
STEP_PYTHON = "python -c pass"
STEP_CRYPTOGRAPHY = "python -c 'import cryptography.x509'"
STEP_POSTCONF = "postconf -c DIR -x"
STEP_RELOAD = "postfix -c DIR reload"
AFTER_RELOAD = "one client after the reload"
VARIANTS = (
    SWITCH, BASELINE_SWITCH, NOOP, BASELINE_NOOP, NOOP_CROWD, NOOP_EMPTY, NOOP_BUNDLE, NOOP_ROOTS,
)  # fmt: skip


@dataclass(frozen=True)
class Round:
    """One paired round: whole-process wall time per variant, its CPU time (user+system,
    with the programs it waited for), and the order they ran in."""

    index: int
    order: list[str]
    seconds: dict[str, float]
    cpu_seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Commands:
    """The commands one run of a hook started itself (its direct child processes), as
    seen by `strace -f` from outside: argv of each, in order."""

    variant: str
    argv: list[list[str]]


@dataclass(frozen=True)
class Served:
    """One renewal taken to Postfix by the daemon, seen by the poller (seconds)."""

    certbot_s: float  # certbot start to exit
    exit_to_served_s: float  # certbot exit to the end of the first handshake with the new leaf
    links_to_served_s: float  # live/<name>/fullchain.pem re-pointed (its lstat mtime) to served
    handshakes: int  # handshakes until the first match (1 = at once)
    matching_handshake_s: float  # how long that handshake took: the poller's resolution
    slowest_handshake_s: float  # the slowest handshake of the poll


@dataclass(frozen=True)
class DaemonFacts:
    ready_s: float  # start to READY=1
    idle_seconds: float
    idle_cpu_s: float  # utime+stime over the idle window
    peak_rss_kb: int  # VmHWM after the renewals and the idle window
    stop_s: float  # SIGTERM to exit
    exit_code: int


@dataclass(frozen=True)
class ReloadTrial:
    traffic: str  # which clients connected around `postfix reload`
    slowest_s: float  # the slowest of their handshakes in the watch window


@dataclass(frozen=True)
class StepCost:
    what: str
    seconds: list[float]


@dataclass(frozen=True)
class BaselineProof:
    """The shell hook taken end to end once, with main.cf pointed at its copies."""

    hook_s: float
    hook_exit_to_served_s: float


@dataclass(frozen=True)
class ScaleSample:
    """One `python -m pftls_hook` process of the scale stage: which command, its wall time
    and exit code."""

    command: str  # SCALE_COMMANDS
    seconds: float
    code: int


# The scale stage's commands, in the order it runs them.
SCALE_INSTALL = "install"  # the first full deploy of every SNI name
SCALE_HOOK = "deploy-hook"  # one SNI lineage renewed, the hook run for it
SCALE_STATUS = "status"
SCALE_CHECK = "status --check"
SCALE_COMMANDS = (SCALE_INSTALL, SCALE_HOOK, SCALE_STATUS, SCALE_CHECK)


@dataclass
class CoreModule:
    name: str
    lines: int
    code_lines: int  # without docstrings, comments and blank lines


@dataclass
class Settings:
    rounds: int
    lineages: int
    renewals: int
    poll_interval_s: float
    idle_seconds: float
    gap_s: float
    reload_trials: int
    watch_options: list[str]
    stages: list[str]
    sni_names: int = 0  # the scale stage's SNI names


@dataclass
class Run:
    settings: Settings
    machine: list[tuple[str, str]] = field(default_factory=list)
    load_start: str = ""
    load_end: str = ""
    elapsed_s: float = 0.0
    rounds: list[Round] = field(default_factory=list)
    commands: list[Commands] = field(default_factory=list)
    commands_note: str = ""  # why no command count was taken, when none was
    daemon: list[Served] = field(default_factory=list)
    daemon_facts: DaemonFacts | None = None
    reload_trials: list[ReloadTrial] = field(default_factory=list)
    steps: list[StepCost] = field(default_factory=list)
    proof: BaselineProof | None = None
    scale: list[ScaleSample] = field(default_factory=list)
    scale_load: str = ""  # load average when the scale stage began
    notes: list[str] = field(default_factory=list)  # what the run saw that is not a sample
    core: list[CoreModule] = field(default_factory=list)  # the tree's core, measured

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Run:
        run: Run = _build(cls, json.loads(path.read_text()))
        return run


def _build(cls: Any, data: Any) -> Any:
    """A dataclass from what dataclasses.asdict made of it (nested, lists, dicts, optional);
    a field the data lacks (saved by an older version) keeps its default."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name in data]
    return cls(**{name: _value(hints[name], data[name]) for name in names})


def _value(hint: Any, data: Any) -> Any:
    """`data` read back as type `hint`."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if data is None:
        return None
    if origin in (types.UnionType, typing.Union):
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return [_value(args[0], item) for item in data]
    if origin is tuple:
        return tuple(_value(a, item) for a, item in zip(args, data, strict=True))
    if origin is dict:
        return {key: _value(args[1], item) for key, item in data.items()}
    return _build(hint, data) if dataclasses.is_dataclass(hint) else data
