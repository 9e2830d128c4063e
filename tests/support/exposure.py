"""Two observers of a directory that must never expose a key: one looks, one tries.

`StatWatch` (root, in a thread) gets inotify events for the directory (ctypes, no
dependency) and lstat()s every file an event names at once, asking `holds_key(name)`;
a key file that is not root's or has any group/other bit is an exposure.

`UnprivilegedOpener` is a child process that drops to nobody (65534) and tries to open
every file in the directory for reading, as fast as it can (tests/support/
unprivileged_open.py). For its attempts to mean anything, nobody must be able to reach the
directory: every ancestor traversable, the directory itself 0755.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import stat
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

NOBODY = 65534
_OPENER = Path(__file__).with_name("unprivileged_open.py")
# The system's python3: the venv's interpreter may live where nobody cannot go (~root).
_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_TO, IN_CREATE, IN_Q_OVERFLOW = 0x80, 0x100, 0x4000
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name


class StatWatch:
    def __init__(self, directory: Path, holds_key: Callable[[str], bool]) -> None:
        self.directory = directory
        self.holds_key = holds_key
        self.files: set[str] = set()
        self.events = self.stats = self.vanished = self.overflows = 0
        self.exposures: list[str] = []
        self._stop = threading.Event()
        libc = ctypes.CDLL(None, use_errno=True)
        self._fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        mask = IN_CREATE | IN_MOVED_TO | IN_ATTRIB | IN_MODIFY | IN_CLOSE_WRITE
        if libc.inotify_add_watch(self._fd, os.fsencode(directory), mask) < 0:
            os.close(self._fd)
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
        self._thread = threading.Thread(target=self._run, name="stat-watch", daemon=True)

    def __enter__(self) -> StatWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        os.close(self._fd)

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.1)
            if not ready:
                continue
            data = os.read(self._fd, 1 << 20)
            offset = 0
            while offset < len(data):
                _, mask, _, length = _EVENT.unpack_from(data, offset)
                raw = data[offset + _EVENT.size : offset + _EVENT.size + length]
                offset += _EVENT.size + length
                self.events += 1
                if mask & IN_Q_OVERFLOW:
                    self.overflows += 1
                name = raw.rstrip(b"\0").decode(errors="replace")
                if name:
                    self._judge(name)

    def _judge(self, name: str) -> None:
        try:
            st = os.lstat(self.directory / name)
        except FileNotFoundError:
            self.vanished += 1  # renamed or removed before we looked
            return
        self.stats += 1
        self.files.add(name)
        if not stat.S_ISREG(st.st_mode) or not self.holds_key(name):
            return
        if st.st_uid != 0 or st.st_mode & 0o077:
            self.exposures.append(f"{name}: mode {stat.S_IMODE(st.st_mode):04o} uid {st.st_uid}")


class UnprivilegedOpener:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.report: dict[str, Any] = {}
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> UnprivilegedOpener:
        self._proc = subprocess.Popen(
            [_PYTHON, "-I", "-c", _OPENER.read_text(), str(self.directory)],
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            cwd="/",
            env={"PATH": "/usr/bin:/bin", "LANG": "C"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGTERM)
        try:
            out, err = self._proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate(timeout=10)
            raise
        if self._proc.returncode != 0 or not out:
            raise RuntimeError(f"opener exited {self._proc.returncode}: {err.strip()}")
        self.report = json.loads(out)


__all__ = ["NOBODY", "StatWatch", "UnprivilegedOpener"]
