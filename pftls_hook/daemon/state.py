"""What the `watch` daemon did last, in a small JSON file that `status` shows.

Contract: `state_file(settings)` is `<lock file's dir>/watch-state-<id>.json`, where `<id>`
identifies the configuration (live dir, Postfix instance, install dir): two daemons, or a
daemon and a `status` run for another configuration, never read each other's state. By
default that dir is /run/pftls-hook: the daemon's own runtime dir, gone at reboot like the
daemon. `write(path, state)` replaces the file atomically and never raises: the daemon
must not die over a report. `read(path)` returns the `WatchState`, with `running` set by
whether the writer's pid is still alive, or None when there is no file. `render(state)`
gives the lines `status` prints. The file holds names, fingerprints and error lines; no key
material.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pftls_hook.config import Settings
from pftls_hook.fsutil import atomic_write

log = logging.getLogger("pftls-hook")


@dataclass
class LastOutcome:
    lineage: str
    action: str
    leaf_sha256: str
    at: str


@dataclass
class LastFailure:
    lineage: str
    error: str
    at: str
    retry_at: str
    waiting_for_dns: list[str] = field(default_factory=list)  # TLSA records to publish


@dataclass
class WatchState:
    pid: int
    started: str
    phase: str = "starting"  # starting | idle | waiting | failing | stopped
    serving: str = ""
    status: str = "starting"  # the line also sent to systemd as STATUS=
    updated: str = ""
    last_outcome: LastOutcome | None = None
    last_failure: LastFailure | None = None
    running: bool = field(default=False)  # set by read(), never written
    error: str = ""  # set by read() for an unreadable file


def state_file(settings: Settings) -> Path:
    identity = "\0".join(
        str(p.absolute())
        for p in (settings.live_dir, settings.postfix_config_dir, settings.install_dir)
    )
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    return settings.lock_file.parent / f"watch-state-{digest}.json"


def write(path: Path, state: WatchState) -> None:
    data = {k: v for k, v in asdict(state).items() if k not in ("running", "error")}
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode(), 0o644)
    except OSError as exc:
        log.warning("%s: cannot write the daemon state: %s", path, exc.strerror)


def _from_json(data: dict[str, Any]) -> WatchState:
    known = {f.name for f in dataclasses.fields(WatchState)}
    state = WatchState(**{k: v for k, v in data.items() if k in known})
    if isinstance(state.last_outcome, dict):
        state.last_outcome = LastOutcome(**state.last_outcome)
    if isinstance(state.last_failure, dict):
        state.last_failure = LastFailure(**state.last_failure)
    return state


def read(path: Path) -> WatchState | None:
    try:
        state = _from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        return WatchState(pid=0, started="", error=f"{path}: unreadable: {exc}")
    state.running = state.phase != "stopped" and _alive(state.pid)
    return state


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def render(state: WatchState | None) -> list[str]:
    if state is None:
        return ["watch daemon: no state file for this configuration (not started)"]
    if state.error:
        return [f"watch daemon: {state.error}"]
    running = f"running (pid {state.pid})" if state.running else "not running"
    lines = [f"watch daemon: {running}, since {state.started}", f"  status:       {state.status}"]
    if outcome := state.last_outcome:
        sha = outcome.leaf_sha256[:16]
        lines.append(
            f"  last outcome: {outcome.lineage}: {outcome.action}"
            f"{f' ({sha}…)' if sha else ''} at {outcome.at}"
        )
    if failure := state.last_failure:
        lines.append(
            f"  last failure: {failure.error} at {failure.at}, retry at {failure.retry_at}"
        )
        lines.extend(f"  waiting for DNS: {r}" for r in failure.waiting_for_dns)
    return lines
