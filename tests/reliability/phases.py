"""The phases of a deploy as pftls-hook's own stderr shows them: the one definition of the
log lines the crash case (test_crash.py) sorts its kills by.

A switching deploy writes one `pftls-hook: <message>` line per step (deploy.py), in this
order: `<name>: version N verified, leaf …`, `switched in <files>`, `main.cf: …` (only when
main.cf changes), `probe: <endpoints> serve the new certificate`, `<name>: pruned …` (only
when an old version is removed), `<name>: deployed; Postfix serves …`. A kill is placed in
the phase opened by the last of these lines the killed process wrote. The patterns are
matched against the product's real output in test_crash.py, so a reworded line fails a test
instead of silently counting later kills as earlier ones (as `installed ` once did, long
after the product had started writing `switched in`).

`Timeline` reads a started process's stderr as it arrives, noting when each marker came:
the crash case aims its kills with it and calibrates the phases' lengths with it.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Marker:
    key: str
    pattern: re.Pattern[str]
    required: bool  # written by every switching deploy; else only when its step applies


MARKERS = (
    Marker("verified", re.compile(r"pftls-hook: \S+: version \d+ verified, leaf [0-9a-f]+…"), True),
    Marker("switched", re.compile(r"pftls-hook: switched in /"), True),
    Marker("main.cf", re.compile(r"pftls-hook: main\.cf: smtpd_tls_\w+ = "), False),
    Marker("proven", re.compile(r"pftls-hook: probe: .+ serve the new certificate"), True),
    Marker("pruned", re.compile(r"pftls-hook: \S+: pruned /"), False),
    Marker("deployed", re.compile(r"pftls-hook: \S+: deployed; Postfix serves [0-9a-f]+…"), True),
)


def marker_of(line: str) -> str | None:
    """The key of the marker `line` is, if any (matched from the line's start)."""
    return next((m.key for m in MARKERS if m.pattern.match(line)), None)


def markers_in(stderr: str) -> list[str]:
    """The markers of a run's stderr, in the order it wrote them."""
    return [key for line in stderr.splitlines() if (key := marker_of(line))]


@dataclass(frozen=True)
class Phase:
    name: str
    opened_by: str | None  # the marker whose line opens it; None: the process's start


PHASES = (
    Phase("start-up, reading and verifying (before `verified`)", None),
    Phase("verified, before the switch", "verified"),
    Phase("switched: main.cf, reload and proof", "switched"),
    Phase("proven: pruning", "proven"),
    Phase("deployed line written, exiting", "deployed"),
)
SWITCHED = next(i for i, p in enumerate(PHASES) if p.opened_by == "switched")
DONE = "exited before the kill"


def landed(stderr: str) -> Phase:
    """The phase a run killed now was in: opened by the last marker it wrote."""
    seen = set(markers_in(stderr))
    return next(p for p in reversed(PHASES) if p.opened_by is None or p.opened_by in seen)


@dataclass
class Timeline:
    """A started process's stderr, each marker with its time since `started`."""

    proc: subprocess.Popen[str]
    started: float
    lines: list[str] = field(default_factory=list)
    at: dict[str, float] = field(default_factory=dict)
    ended_at: float | None = None
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            now = time.monotonic() - self.started
            with self._changed:
                self.lines.append(line)
                key = marker_of(line)
                if key is not None:
                    self.at.setdefault(key, now)
                self._changed.notify_all()
        with self._changed:
            self.ended_at = time.monotonic() - self.started
            self._changed.notify_all()

    def wait_for(self, key: str, timeout: float) -> bool:
        """Until `key`'s line came (True) or stderr closed without it (False)."""
        with self._changed:
            self._changed.wait_for(lambda: key in self.at or self.ended_at is not None, timeout)
            return key in self.at

    def finish(self, timeout: float) -> str:
        """Wait for the process and its stderr; the whole stderr."""
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return "".join(self.lines)


__all__ = [
    "DONE",
    "MARKERS",
    "PHASES",
    "SWITCHED",
    "Marker",
    "Phase",
    "Timeline",
    "landed",
    "marker_of",
    "markers_in",
]
