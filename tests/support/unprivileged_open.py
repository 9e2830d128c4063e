"""Run as an unprivileged user: try to open, for reading, every file that shows up in a
directory, as fast as it can, until SIGTERM; then print a JSON report on stdout.

A separate script because it runs in a child that has dropped root (`subprocess.Popen(user=
65534, group=65534, extra_groups=[])`) under the system's python3, which may not reach the
project's venv: stdlib only, passed to `python3 -I -c` as text (tests/support/exposure.py).

Report: {"scans", "attempts", "opened": {name: count}, "key_seen": [names whose bytes held
a private key], "denied": {errno name: count}}. A file opened early and written later would
still leak through the open descriptor, so descriptors of what was opened are kept and read
once more at the end.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
from collections import Counter

KEY_MARK = b"PRIVATE KEY"
MAX_KEPT = 512


def main(directory: str) -> None:
    # Below the deploys' priority: the loop takes every idle cycle, not the ones they need.
    os.nice(5)
    stop = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    scans, attempts = 0, 0
    opened: Counter[str] = Counter()
    denied: Counter[str] = Counter()
    key_seen: set[str] = set()
    kept: list[tuple[str, int]] = []
    while not stop:
        scans += 1
        try:
            names = os.listdir(directory)
        except OSError as exc:
            denied[errno.errorcode.get(exc.errno or 0, "?")] += 1
            continue
        for name in names:
            attempts += 1
            try:
                fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_NONBLOCK)
            except OSError as exc:
                denied[errno.errorcode.get(exc.errno or 0, "?")] += 1
                continue
            opened[name] += 1
            if KEY_MARK in _read(fd):
                key_seen.add(name)
            if len(kept) < MAX_KEPT and opened[name] == 1:
                kept.append((name, fd))
            else:
                os.close(fd)
    for name, fd in kept:
        if KEY_MARK in _read(fd, rewind=True):
            key_seen.add(name)
        os.close(fd)
    report = {
        "scans": scans,
        "attempts": attempts,
        "opened": dict(opened),
        "key_seen": sorted(key_seen),
        "denied": dict(denied),
    }
    sys.stdout.write(json.dumps(report))


def _read(fd: int, *, rewind: bool = False) -> bytes:
    try:
        if rewind:
            os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 1 << 16)
    except OSError:  # a directory, a FIFO with no writer
        return b""


if __name__ == "__main__":
    main(sys.argv[1])
