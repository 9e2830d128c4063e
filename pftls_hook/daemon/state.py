"""What the `watch` daemon did last, in a small JSON file that `status` shows.

Contract: `state_file(settings)` is `<lock file's dir>/watch-state.json` (by default
/run/pftls-hook/watch-state.json: the daemon's own runtime dir, gone at reboot like the
daemon). `write(path, state)` replaces it atomically (temp file + rename) and never raises:
the daemon must not die over a report. `read(path)` returns the state, with `running` set
by whether the writer's pid is still alive, or None when there is no file. `render(state)`
gives the lines `status` prints. The file holds names, fingerprints and error lines; no key
material.

Keys: pid, started, updated (ISO 8601 UTC), phase (starting | idle | waiting | failing |
stopped), serving (lineage name), status (the line also sent to systemd as STATUS=),
last_outcome {lineage, action, leaf_sha256, at}, last_failure {lineage, error, at,
retry_at}; the last two may be null.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from pftls_hook.config import Settings

log = logging.getLogger("pftls-hook")
STATE_FILE_NAME = "watch-state.json"


def state_file(settings: Settings) -> Path:
    return settings.lock_file.parent / STATE_FILE_NAME


def write(path: Path, state: dict[str, Any]) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temp.unlink(missing_ok=True)  # left by a killed daemon that had our pid
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, 0o644)
        with os.fdopen(fd, "w") as handle:
            json.dump(state, handle, indent=1, sort_keys=True)
            handle.write("\n")
        os.replace(temp, path)
    except OSError as exc:
        log.warning("%s: cannot write the daemon state: %s", path, exc.strerror)
        temp.unlink(missing_ok=True)


def read(path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return {"error": f"{path}: unreadable: {exc}", "running": False}
    if not isinstance(state, dict):
        return {"error": f"{path}: not a JSON object", "running": False}
    state["running"] = state.get("phase") != "stopped" and _alive(state.get("pid"))
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


def render(state: dict[str, Any] | None) -> list[str]:
    if state is None:
        return ["watch daemon: no state file (not started)"]
    if "error" in state:
        return [f"watch daemon: {state['error']}"]
    running = f"running (pid {state.get('pid')})" if state["running"] else "not running"
    lines = [f"watch daemon: {running}, since {state.get('started', '?')}"]
    lines.append(f"  status:       {state.get('status', '')}")
    outcome = state.get("last_outcome")
    if outcome:
        sha = outcome.get("leaf_sha256", "")[:16]
        lines.append(
            f"  last outcome: {outcome.get('lineage')}: {outcome.get('action')}"
            f"{f' ({sha}…)' if sha else ''} at {outcome.get('at')}"
        )
    failure = state.get("last_failure")
    if failure:
        lines.append(
            f"  last failure: {failure.get('error')} at {failure.get('at')},"
            f" retry at {failure.get('retry_at')}"
        )
        lines.extend(f"  waiting for DNS: {r}" for r in failure.get("waiting_for_dns", ()))
    return lines
